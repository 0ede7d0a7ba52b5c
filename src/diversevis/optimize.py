"""The optimisation loop shared by every method: Adam, EMA-loss early stopping, best iterate, callbacks.

Early stopping follows the reference code (method.md A.8): ``ema_0 = L_0``,
``ema_t = alpha * ema_{t-1} + (1 - alpha) * L_t``; the run stops once the EMA has not reached a new
minimum for more than ``patience`` consecutive iterations. Unlike the reference code the loop returns
the *best* iterate (lowest loss seen), not the last one.

All bookkeeping (loss history, EMA, best images) stays on the device; the host synchronises only every
``check_every`` steps (1 on CPU, where it is free; 25 on GPUs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["StepInfo", "OptimizeResult", "optimize"]


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
    """

    images: torch.Tensor
    best_loss: float
    best_step: int
    n_iter: int
    stopped_early: bool
    history: np.ndarray
    seconds: float

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
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    lr: float = 1.0,
    max_iter: int = 1000,
    patience: int = 100,
    ema: float = 0.9,
    check_every: int | None = None,
    callbacks: Iterable[Callable[[StepInfo], bool | None]] = (),
    progress: bool = False,
    desc: str = "optimise",
) -> OptimizeResult:
    """Minimise ``loss_fn(param())`` with Adam over ``param``'s parameters.

    Parameters
    ----------
    param : nn.Module
        Image parametrisation; ``param()`` returns the images ``(N, C, H, W)``.
    loss_fn : callable
        Images -> scalar loss tensor.
    lr : float
        Adam learning rate (betas 0.9/0.999, eps 1e-8 as in TensorFlow).
    max_iter : int
        Maximum number of iterations.
    patience : int
        Stop when the EMA loss has not improved for more than this many iterations (``0`` disables).
    ema : float
        EMA coefficient ``alpha``.
    check_every : int, optional
        Host-synchronisation period for early stopping, progress and callbacks.
    callbacks : iterable of callables
        Called with a :class:`StepInfo` at each check; returning ``True`` stops the run.
    progress : bool
        Show a tqdm progress bar.
    desc : str
        Progress-bar label.

    Returns
    -------
    OptimizeResult
    """
    return optimize_groups(
        param,
        loss_fn,
        groups=1,
        lr=lr,
        max_iter=max_iter,
        patience=patience,
        ema=ema,
        check_every=check_every,
        callbacks=callbacks,
        progress=progress,
        desc=desc,
    )[0]


def optimize_groups(
    param: nn.Module,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    groups: int,
    lr: float = 1.0,
    max_iter: int = 1000,
    patience: int = 100,
    ema: float = 0.9,
    check_every: int | None = None,
    callbacks: Iterable[Callable[[StepInfo], bool | None]] = (),
    progress: bool = False,
    desc: str = "optimise",
) -> list[OptimizeResult]:
    """Optimise ``groups`` independent problems in one batch, each with its own early stopping.

    ``param()`` returns ``groups * M`` images, group ``g`` owning images ``g * M .. (g + 1) * M - 1``;
    ``loss_fn`` returns one loss per group, ``(groups,)`` (or a scalar when ``groups == 1``), and must
    make group ``g``'s loss depend only on group ``g``'s images. Adam is elementwise, so each group follows
    exactly the trajectory it would follow alone; a group whose EMA loss stops improving is *frozen*:
    its best iterate, loss history and iteration count are final, and the run ends when every group is
    frozen (or a callback stops it). Frozen groups still ride along in the batch.

    Returns
    -------
    list of OptimizeResult
        One per group (``seconds`` is the wall time of the whole batch).
    """
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    params = [p for p in param.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    device = params[0].device
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 25
    callbacks = list(callbacks)
    G = groups

    history = torch.empty(max_iter, G, device=device)
    ema_t = torch.zeros(G, device=device)
    ema_min = torch.full((G,), math.inf, device=device)
    bad = torch.zeros(G, dtype=torch.long, device=device)
    best_loss = torch.full((G,), math.inf, device=device)
    best_step = torch.zeros(G, dtype=torch.long, device=device)
    active = torch.ones(G, dtype=torch.bool, device=device)
    n_iter = torch.full((G,), max_iter, dtype=torch.long, device=device)
    best_images: torch.Tensor | None = None

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc=desc, leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    stopped_by_callback = False
    it = 0
    try:
        for it in range(max_iter):
            images = param()
            losses = loss_fn(images).reshape(G)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            with torch.no_grad():
                lt = losses.detach()
                history[it] = lt
                grouped = images.detach().reshape(G, -1, *images.shape[1:])
                better = (lt < best_loss) & active
                if best_images is None:
                    best_images = grouped.clone()
                else:
                    best_images = torch.where(
                        better.view(G, *([1] * (grouped.dim() - 1))), grouped, best_images
                    )
                best_step = torch.where(better, torch.full_like(best_step, it), best_step)
                best_loss = torch.where(active, torch.minimum(best_loss, lt), best_loss)
                new_ema = lt.clone() if it == 0 else ema * ema_t + (1 - ema) * lt
                ema_t = torch.where(active, new_ema, ema_t)
                improved = ema_t < ema_min
                ema_min = torch.where(active, torch.minimum(ema_min, ema_t), ema_min)
                bad = torch.where(active, torch.where(improved, torch.zeros_like(bad), bad + 1), bad)
            opt.step()
            if (it + 1) % check_every == 0 or it == max_iter - 1:
                if bar is not None:
                    bar.update(it + 1 - bar.n)
                    post = {"loss": f"{float(lt.sum()):.4g}"}
                    if G > 1:
                        post["active"] = int(active.sum())
                    bar.set_postfix(post, refresh=False)  # tqdm's own mininterval limits redraws
                if callbacks:
                    info = StepInfo(
                        step=it, loss=float(lt.sum()), ema=float(ema_t.sum()), images=images.detach()
                    )
                    if any(cb(info) is True for cb in callbacks):
                        stopped_by_callback = True
                        break
                if patience > 0:
                    done = active & (bad > patience)
                    if bool(done.any()):
                        n_iter = torch.where(done, torch.full_like(n_iter, it + 1), n_iter)
                        active = active & ~done
                        if not bool(active.any()):
                            break
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    if stopped_by_callback:
        n_iter = torch.where(active, torch.full_like(n_iter, it + 1), n_iter)
    hist = history[: it + 1].cpu().numpy()
    out = []
    for g in range(G):
        n = int(n_iter[g])
        out.append(
            OptimizeResult(
                images=best_images[g],
                best_loss=float(best_loss[g]),
                best_step=int(best_step[g]),
                n_iter=n,
                stopped_early=stopped_by_callback or n < max_iter or bool(not active[g]),
                history=hist[:n, g].copy(),
                seconds=seconds,
            )
        )
    return out
