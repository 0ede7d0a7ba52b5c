"""The optimisation loop shared by every method: Adam, early stopping, best iterate, callbacks.

Two stopping rules (``stop``):

* ``"ema"`` follows the reference code (method.md A.8): ``ema_0 = L_0``,
  ``ema_t = alpha * ema_{t-1} + (1 - alpha) * L_t``; the run stops once the EMA has not reached a new
  minimum for more than ``patience`` consecutive iterations.
* ``"plateau"`` (:mod:`diversevis.core.plateau`) stops once every quantity the loss function watches
  (it returns a :class:`~diversevis.core.plateau.Watched`: the losses, ``(B, K)`` values and whether
  each group may stop yet) has drifted by at most ``rtol * |value| + atol`` between the two halves of
  the last ``window`` iterations; a loss function that watches nothing has its loss watched.

Unlike the reference code the loop returns the *best* iterate (lowest loss seen), not the last one.

All bookkeeping (loss history, EMA, best images) stays on the device; the host synchronises only every
``check_every`` steps (1 on CPU, where it is free; 25 on GPUs).

Each step also checks, on the device, that the images, the losses of the groups still running and the
gradients are finite; the first non-finite one stops the run at the next host check with a
:class:`NonFiniteError` naming the quantity, the iteration and the likely cause. The loss history grows
in chunks with the run instead of being allocated for ``max_iter`` steps up front.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from diversevis.core.checks import check_stop
from diversevis.core.errors import DiversevisError
from diversevis.core.plateau import Watched, WatchHistory
from diversevis.core.precision import check_precision, precision_context

__all__ = [
    "StepInfo",
    "OptimizeResult",
    "NonFiniteError",
    "Interrupted",
    "PartialRun",
    "Watched",
    "optimize",
    "optimize_groups",
]

#: Rows of one chunk of the loss history.
_HISTORY_CHUNK = 1024


class NonFiniteError(DiversevisError):
    """The images, a loss or the gradients became NaN or infinite during an optimisation."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during an optimisation, carrying what was found so far.

    ``results`` are the runs' :class:`OptimizeResult` up to the last completed step (best iterates
    included); a method that catches it builds its partial ``result`` (marked ``interrupted`` in its
    spec) and raises it again, so that the CLI can save it before exiting 130. Code that does not
    catch it sees an ordinary :class:`KeyboardInterrupt`.
    """

    def __init__(self, results: list | None = None, result: Any = None) -> None:
        super().__init__("interrupted")
        self.results = results
        self.result = result


class PartialRun:
    """Context: Ctrl-C in the optimisation keeps the best iterate so far.

    On :class:`Interrupted` the block ends with ``opt`` = the partial run and
    ``spec`` = ``{"interrupted": True}``; :meth:`finish` then raises ``Interrupted(result=...)`` with
    the result built from it, for the caller (the CLI saves it and exits 130).
    """

    def __init__(self) -> None:
        self.opt = None
        self.spec: dict[str, Any] = {}

    def __enter__(self) -> PartialRun:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, Interrupted) and exc.results:
            self.opt, self.spec = exc.results[0], {"interrupted": True}
            return True
        return False

    def finish(self, result: Any) -> Any:
        """``result`` (the finished run's), or ``Interrupted(result=result)`` raised after a Ctrl-C."""
        if self.spec.get("interrupted"):
            raise Interrupted(result=result)
        return result


@dataclass
class StepInfo:
    """What a callback sees after each host check.

    Attributes
    ----------
    step : int
        Index of the iteration just taken (0-based).
    loss : float
        Its loss.
    ema : float
        Smoothed loss.
    images : torch.Tensor
        The images the loss was computed on (detached).
    """

    step: int
    loss: float
    ema: float
    images: torch.Tensor


@dataclass
class OptimizeResult:
    """Outcome of :func:`optimize`.

    Attributes
    ----------
    images : torch.Tensor
        The best iterate (lowest loss), detached.
    best_loss : float
        Its loss.
    best_step : int
        Iteration at which it was reached.
    n_iter : int
        Iterations run.
    stopped_early : bool
        Whether early stopping (or a callback) ended the run before ``max_iter``.
    history : numpy.ndarray
        ``(n_iter,)`` loss per iteration.
    seconds : float
        Wall time of the loop.
    watched : numpy.ndarray, optional
        ``(n_iter, K)`` the values the loss function watched (:class:`Watched`) per iteration; ``None``
        when it watched nothing.
    """

    images: torch.Tensor
    best_loss: float
    best_step: int
    n_iter: int
    stopped_early: bool
    history: np.ndarray
    seconds: float
    watched: np.ndarray | None = None

    def summary(self) -> dict[str, int | bool | float]:
        """The run's counts and timing, for run specs."""
        return {
            "n_iter": self.n_iter,
            "best_step": self.best_step,
            "stopped_early": self.stopped_early,
            "seconds": round(self.seconds, 3),
        }


def optimize(
    param: nn.Module,
    loss_fn: Callable[[torch.Tensor], torch.Tensor | Watched],
    *,
    lr: float = 1.0,
    max_iter: int = 1000,
    patience: int = 100,
    ema: float = 0.9,
    stop: str = "ema",
    window: int = 100,
    rtol: float | Sequence[float] = 0.005,
    atol: float | Sequence[float] = 0.0,
    check_every: int | None = None,
    callbacks: Iterable[Callable[[StepInfo], bool | None]] = (),
    progress: bool = False,
    desc: str = "optimise",
    precision: str = "fp32",
) -> OptimizeResult:
    """Minimise ``loss_fn(param())`` with Adam over ``param``'s parameters.

    Parameters
    ----------
    param : nn.Module
        Image parametrisation; ``param()`` returns the images ``(N, C, H, W)``.
    loss_fn : callable
        Images -> scalar loss tensor, or a :class:`Watched` (the loss, the ``(K,)`` quantities the
        plateau rule watches and whether the run may stop yet).
    lr : float
        Adam learning rate (betas 0.9/0.999, eps 1e-8 as in TensorFlow).
    max_iter : int
        Maximum number of iterations.
    patience : int
        ``stop="ema"``: stop when the EMA loss has not improved for more than this many iterations
        (``0`` disables).
    ema : float
        EMA coefficient ``alpha``.
    stop : {"ema", "plateau"}
        The stopping rule (module docstring).
    window : int
        ``stop="plateau"``: iterations compared (two halves; ``0`` disables, else ``>= 2``).
    rtol, atol : float or sequence of float
        ``stop="plateau"``: relative and absolute tolerance on a watched value's drift per window
        (one number, or one per watched quantity).
    check_every : int, optional
        Host-synchronisation period for early stopping, progress and callbacks.
    callbacks : iterable of callables
        Called with a :class:`StepInfo` at each check; returning ``True`` stops the run.
    progress : bool
        Show a tqdm progress bar.
    desc : str
        Progress-bar label.
    precision : {"fp32", "tf32", "bf16"}
        Precision of the forward pass (:func:`~diversevis.precision.precision_context`); images, Adam
        and the bookkeeping stay in float32.

    Returns
    -------
    OptimizeResult

    Raises
    ------
    NonFiniteError
        When the images, the loss or the gradients become NaN or infinite.
    """
    return optimize_groups(
        param,
        loss_fn,
        groups=1,
        lr=lr,
        max_iter=max_iter,
        patience=patience,
        ema=ema,
        stop=stop,
        window=window,
        rtol=rtol,
        atol=atol,
        check_every=check_every,
        callbacks=callbacks,
        progress=progress,
        desc=desc,
        precision=precision,
    )[0]


def optimize_groups(
    param: nn.Module,
    loss_fn: Callable[..., torch.Tensor | Watched],
    *,
    groups: int,
    lr: float = 1.0,
    max_iter: int = 1000,
    patience: int = 100,
    ema: float = 0.9,
    stop: str = "ema",
    window: int = 100,
    rtol: float | Sequence[float] = 0.005,
    atol: float | Sequence[float] = 0.0,
    check_every: int | None = None,
    callbacks: Iterable[Callable[[StepInfo], bool | None]] = (),
    progress: bool = False,
    desc: str = "optimise",
    compact: bool = False,
    precision: str = "fp32",
) -> list[OptimizeResult]:
    """Optimise ``groups`` independent problems in one batch, each with its own early stopping.

    ``param()`` returns ``groups * M`` images, group ``g`` owning images ``g * M .. (g + 1) * M - 1``;
    ``loss_fn`` returns one loss per group, ``(groups,)`` (or a scalar when ``groups == 1``), or a
    :class:`Watched` with them and ``(groups, K)`` watched values, and must make group ``g``'s loss
    depend only on group ``g``'s images. Adam is elementwise, so each group follows exactly the
    trajectory it would follow alone; a group that meets the stopping rule on its own (its EMA loss
    stops improving, or its watched values plateau) is *frozen*: its best iterate, loss history and
    iteration count are final, and the run ends when every group is frozen (or a callback stops it).

    Parameters
    ----------
    compact : bool
        Drop frozen groups from the batch, so late iterations cost only what the groups still running
        need. Every parameter of ``param`` (and every buffer with the same leading size) must then hold
        its rows group by group (leading dimension ``active_groups * rows_per_group``); they are sliced
        in place together with Adam's state, and ``loss_fn`` is called as ``loss_fn(images, groups)``
        with ``groups`` the ``(B,)`` long tensor of the original indices of the groups in the batch,
        returning ``(B,)`` losses (or a :class:`Watched` of ``B`` groups). Without ``compact``
        (default) frozen groups ride along in the batch and ``loss_fn(images)`` is called.

    Other parameters are those of :func:`optimize`.

    Returns
    -------
    list of OptimizeResult
        One per group (``seconds`` is the wall time of the whole batch).

    Raises
    ------
    NonFiniteError
        When the images or the loss of a group still running, or the gradients (while every loss is
        finite), become NaN or infinite; the whole batch stops.
    """
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    _check_lr(lr)
    check_stop(stop, window, rtol, atol)
    check_precision(precision)
    params = [p for p in param.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    device = params[0].device
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 25
    callbacks = list(callbacks)
    G = groups
    if compact:
        _check_rows(params, G)
    state = _GroupState.start(G, max_iter, device)
    watch = WatchHistory(G, state.chunk, device)
    idx = torch.arange(G, device=device)  # original indices of the groups in the batch
    bar = _progress_bar(max_iter, desc) if progress else None
    t0 = time.perf_counter()
    stopped_by_callback = interrupted = False
    it = last = -1
    try:
        for it in range(max_iter):
            images = param()
            with precision_context(device, precision):
                out = loss_fn(images, idx) if compact else loss_fn(images)
            losses = _record_watched(watch, it, out, idx, stop)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            lt = losses.detach()
            state.record(it, lt, images, idx, ema)
            last = it
            state.check_finite(it, lt, images, idx, params)
            opt.step()
            if (it + 1) % check_every == 0 or it == max_iter - 1:
                state.raise_nonfinite(lr)
                _show_progress(bar, it, lt, state.active)
                if callbacks and _callbacks_stop(callbacks, it, lt, state.ema_t, images):
                    stopped_by_callback = True
                    break
                done = _converged(state, watch, it, stop, patience, window, rtol, atol)
                if done is not None and state.freeze(it, done):
                    if not bool(state.active.any()):
                        break
                    if compact:
                        idx = _drop_frozen(param, opt, idx, state.active[idx])
    except KeyboardInterrupt:
        if last < 0:  # not one step done: nothing to keep
            raise
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    results = state.results(
        last if interrupted else it, time.perf_counter() - t0, max_iter, stopped_by_callback or interrupted
    )
    _attach_watched(results, watch)
    if interrupted:
        raise Interrupted(results)
    return results


def _check_rows(params: list[torch.Tensor], G: int) -> None:
    """``compact=True`` needs every parameter to hold ``G`` groups of rows."""
    bad_rows = [tuple(p.shape) for p in params if p.dim() == 0 or p.shape[0] % G]
    if bad_rows:
        raise ValueError(f"compact=True needs parameters with groups ({G}) x rows, got shapes {bad_rows}")


def _attach_watched(results: list[OptimizeResult], watch: WatchHistory) -> None:
    """Give each group's result its watched values per iteration (when the loss watched any)."""
    if watch.blocks:
        for g, r in enumerate(results):
            r.watched = watch.group(g, r.n_iter)


def _record_watched(
    watch: WatchHistory, it: int, out: torch.Tensor | Watched, idx: torch.Tensor, stop: str
) -> torch.Tensor:
    """The ``(B,)`` losses of a loss function's output; its watched values (for the plateau rule
    without any: the losses) go into ``watch``."""
    if isinstance(out, Watched):
        losses = out.loss.reshape(len(idx)).float()
        watch.record(it, out.values, out.ready, idx)
        return losses
    losses = out.reshape(len(idx)).float()
    if stop == "plateau":
        watch.record(it, losses.detach().view(-1, 1), None, idx)
    return losses


def _converged(
    state: _GroupState, watch: WatchHistory, it: int, stop: str, patience: int, window: int, rtol, atol
) -> torch.Tensor | None:
    """``(G,)`` the groups the stopping rule ends after step ``it`` (``None``: the rule is off)."""
    if stop == "plateau":
        return watch.settled(it, window, rtol, atol) if window > 0 else None
    return state.bad > patience if patience > 0 else None


def _check_lr(lr: float) -> None:
    """Refuse a learning rate whose first Adam step (``lr / (1 - beta1)``) would overflow float32."""
    top = torch.finfo(torch.float32).max * (1 - 0.9)
    if not 0 < lr <= top:
        raise DiversevisError(
            f"lr must be a number > 0 and <= {top:.3g} (Adam's first step, 10 x lr, must fit float32), got {lr:g}"
        )


def _progress_bar(max_iter: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=max_iter, desc=desc, leave=False, dynamic_ncols=True)


def _show_progress(bar, it: int, lt: torch.Tensor, active: torch.Tensor) -> None:
    """Advance the bar to ``it + 1``; the summed loss, and the groups still running when batched."""
    if bar is None:
        return
    bar.update(it + 1 - bar.n)
    post = {"loss": f"{float(lt.sum()):.4g}"}
    if len(active) > 1:
        post["active"] = int(active.sum())
    bar.set_postfix(post, refresh=False)  # tqdm's own mininterval limits redraws


def _callbacks_stop(callbacks, it: int, lt: torch.Tensor, ema_t: torch.Tensor, images: torch.Tensor) -> bool:
    """Call every callback with a :class:`StepInfo`; ``True`` when any asks to stop."""
    info = StepInfo(step=it, loss=float(lt.sum()), ema=float(ema_t.sum()), images=images.detach())
    return any(cb(info) is True for cb in callbacks)


@dataclass
class _GroupState:
    """Per-group bookkeeping of :func:`optimize_groups`: loss history, best iterate, EMA early stopping.

    Every tensor has one entry per group (the history is a list of ``(chunk, G)`` blocks, one more
    each ``chunk`` steps); the batch may hold only some groups (``idx``: their original indices), and
    only the active ones are updated. ``first_bad`` holds the first iteration at which the images, a
    loss or the gradients were non-finite (``-1``: never) and ``bad_value`` that loss.
    """

    history: list[torch.Tensor]
    chunk: int
    ema_t: torch.Tensor
    ema_min: torch.Tensor
    bad: torch.Tensor
    best_loss: torch.Tensor
    best_step: torch.Tensor
    active: torch.Tensor
    n_iter: torch.Tensor
    first_bad: torch.Tensor
    bad_value: torch.Tensor
    best_images: torch.Tensor | None = None

    @classmethod
    def start(cls, G: int, max_iter: int, device: torch.device) -> _GroupState:
        """The state before the first step."""
        return cls(
            history=[],
            chunk=min(max_iter, _HISTORY_CHUNK),
            ema_t=torch.zeros(G, device=device),
            ema_min=torch.full((G,), math.inf, device=device),
            bad=torch.zeros(G, dtype=torch.long, device=device),
            best_loss=torch.full((G,), math.inf, device=device),
            best_step=torch.zeros(G, dtype=torch.long, device=device),
            active=torch.ones(G, dtype=torch.bool, device=device),
            n_iter=torch.full((G,), max_iter, dtype=torch.long, device=device),
            first_bad=torch.full((3,), -1, dtype=torch.long, device=device),
            bad_value=torch.zeros((), device=device),
        )

    @torch.no_grad()
    def record(self, it: int, lt: torch.Tensor, images: torch.Tensor, idx: torch.Tensor, ema: float) -> None:
        """Step ``it``'s losses ``lt`` ``(B,)`` of the groups ``idx``: history, best iterate, EMA, patience."""
        B = len(idx)
        if it % self.chunk == 0:
            self.history.append(torch.full((self.chunk, len(self.active)), math.nan, device=lt.device))
        self.history[it // self.chunk][it % self.chunk, idx] = lt
        grouped = images.detach().reshape(B, -1, *images.shape[1:])
        act = self.active[idx]
        better = (lt < self.best_loss[idx]) & act
        if self.best_images is None:
            self.best_images = grouped.clone()
        else:
            self.best_images[idx] = torch.where(
                better.view(B, *([1] * (grouped.dim() - 1))), grouped, self.best_images[idx]
            )
        self.best_step[idx] = torch.where(
            better, torch.full_like(lt, it, dtype=torch.long), self.best_step[idx]
        )
        self.best_loss[idx] = torch.where(act, torch.minimum(self.best_loss[idx], lt), self.best_loss[idx])
        new_ema = lt.clone() if it == 0 else ema * self.ema_t[idx] + (1 - ema) * lt
        ema_b = torch.where(act, new_ema, self.ema_t[idx])
        self.ema_t[idx] = ema_b
        improved = ema_b < self.ema_min[idx]
        self.ema_min[idx] = torch.where(act, torch.minimum(self.ema_min[idx], ema_b), self.ema_min[idx])
        bad_b = self.bad[idx]
        self.bad[idx] = torch.where(act, torch.where(improved, torch.zeros_like(bad_b), bad_b + 1), bad_b)

    @torch.no_grad()
    def check_finite(
        self, it: int, lt: torch.Tensor, images: torch.Tensor, idx: torch.Tensor, params: list[torch.Tensor]
    ) -> None:
        """Note (on the device) whether step ``it``'s images, active losses or gradients are non-finite.

        The gradients are checked only while every loss in the batch is finite (a frozen group's
        non-finite loss makes its own gradients non-finite without stopping the run).
        """
        B = len(idx)
        act = self.active[idx]
        loss_ok = torch.isfinite(lt)
        img_ok = torch.isfinite(images.detach().reshape(B, -1)).all(dim=1)
        grads = [p.grad for p in params if p.grad is not None]
        grad_ok = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else loss_ok.all()
        bad = torch.stack([(act & ~img_ok).any(), (act & ~loss_ok).any(), loss_ok.all() & ~grad_ok])
        new = bad & (self.first_bad < 0)
        self.first_bad.copy_(torch.where(new, torch.full_like(self.first_bad, it), self.first_bad))
        first_loss = lt.gather(0, (act & ~loss_ok).long().argmax().view(1))[0]  # no host sync
        self.bad_value.copy_(torch.where(new[1], first_loss, self.bad_value))

    def raise_nonfinite(self, lr: float) -> None:
        """Raise :class:`NonFiniteError` for the first non-finite quantity noted, if any (one sync)."""
        first = self.first_bad.tolist()
        if max(first) < 0:
            return
        at = min(i for i in first if i >= 0)
        if first[0] == at:
            raise NonFiniteError(
                f"the images became non-finite (NaN or inf) at iteration {at}: the optimiser's steps "
                f"blew up; check the learning rate (lr={lr:g}) and the image norm or contrast"
            )
        if first[1] == at:
            raise NonFiniteError(
                f"the loss became {float(self.bad_value)} at iteration {at}: the unit's activation or "
                f"the loss overflowed or is NaN; check the model for NaN weights, an absurd contrast or "
                f"image norm, diversity weight or learning rate (lr={lr:g})"
            )
        raise NonFiniteError(
            f"the gradients became non-finite (NaN or inf) at iteration {at} while the loss was finite: "
            f"check the model for NaN weights, an absurd contrast or image norm, or the learning rate "
            f"(lr={lr:g})"
        )

    def freeze(self, it: int, converged: torch.Tensor) -> bool:
        """Freeze the active groups among ``converged`` ``(G,)`` after step ``it``; any frozen?"""
        done = self.active & converged
        if not bool(done.any()):
            return False
        self.n_iter = torch.where(done, torch.full_like(self.n_iter, it + 1), self.n_iter)
        self.active = self.active & ~done
        return True

    def results(
        self, it: int, seconds: float, max_iter: int, stopped_by_callback: bool
    ) -> list[OptimizeResult]:
        """One :class:`OptimizeResult` per group after the last step ``it``."""
        n_iter = self.n_iter
        if stopped_by_callback:
            n_iter = torch.where(self.active, torch.full_like(n_iter, it + 1), n_iter)
        hist = torch.cat(self.history)[: it + 1].cpu().numpy()
        out = []
        for g in range(len(n_iter)):
            n = int(n_iter[g])
            out.append(
                OptimizeResult(
                    images=self.best_images[g],
                    best_loss=float(self.best_loss[g]),
                    best_step=int(self.best_step[g]),
                    n_iter=n,
                    stopped_early=stopped_by_callback or n < max_iter or bool(not self.active[g]),
                    history=hist[:n, g].copy(),
                    seconds=seconds,
                )
            )
        return out


def _drop_frozen(
    param: nn.Module, opt: torch.optim.Optimizer, idx: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """Slice ``param``'s rows (and Adam's state) to the groups in ``keep``; returns the new ``idx``.

    Each trainable parameter is replaced by a new one holding the kept rows, in the module and in the
    optimizer, with its Adam moments sliced the same way (the step count is shared, so it carries
    over); buffers with the parameters' leading size (e.g. per-image norms) are sliced as well.
    """
    B = len(idx)
    group = opt.param_groups[0]
    sizes: set[int] = set()
    with torch.no_grad():
        for mod in param.modules():
            for name, p in list(mod.named_parameters(recurse=False)):
                if not p.requires_grad:
                    continue
                n_rows = p.shape[0]
                rows = keep.repeat_interleave(n_rows // B)
                new = nn.Parameter(p.detach()[rows].clone())
                setattr(mod, name, new)
                group["params"] = [new if q is p else q for q in group["params"]]
                state = opt.state.pop(p, {})
                opt.state[new] = {
                    k: v[rows].clone() if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n_rows else v
                    for k, v in state.items()
                }
                sizes.add(n_rows)
        for mod in param.modules():
            for name, buf in list(mod.named_buffers(recurse=False)):
                if buf.dim() > 0 and buf.shape[0] in sizes:
                    setattr(mod, name, buf[keep.repeat_interleave(buf.shape[0] // B)].clone())
    return idx[keep]
