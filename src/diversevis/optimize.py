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
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    params = [p for p in param.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    device = params[0].device
    if check_every is None:
        check_every = 1 if device.type == "cpu" else 25
    callbacks = list(callbacks)

    history = torch.empty(max_iter, device=device)
    ema_t = torch.zeros((), device=device)
    ema_min = torch.full((), math.inf, device=device)
    bad = torch.zeros((), dtype=torch.long, device=device)
    best_loss = torch.full((), math.inf, device=device)
    best_step = torch.zeros((), dtype=torch.long, device=device)
    best_images: torch.Tensor | None = None

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc=desc, leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    stopped = False
    it = 0
    try:
        for it in range(max_iter):
            images = param()
            loss = loss_fn(images)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                lt = loss.detach()
                history[it] = lt
                better = lt < best_loss
                if best_images is None:
                    best_images = images.detach().clone()
                else:
                    best_images = torch.where(better, images.detach(), best_images)
                best_step = torch.where(better, torch.tensor(it, device=device), best_step)
                best_loss = torch.minimum(best_loss, lt)
                ema_t = lt.clone() if it == 0 else ema * ema_t + (1 - ema) * lt
                improved = ema_t < ema_min
                ema_min = torch.minimum(ema_min, ema_t)
                bad = torch.where(improved, torch.zeros_like(bad), bad + 1)
            opt.step()
            if (it + 1) % check_every == 0 or it == max_iter - 1:
                if bar is not None:
                    bar.update(it + 1 - bar.n)
                    bar.set_postfix(loss=f"{float(lt):.4g}")
                if callbacks:
                    info = StepInfo(step=it, loss=float(lt), ema=float(ema_t), images=images.detach())
                    if any(cb(info) is True for cb in callbacks):
                        stopped = True
                        break
                if patience > 0 and int(bad) > patience:
                    stopped = True
                    break
    finally:
        if bar is not None:
            bar.close()
    n_iter = it + 1
    return OptimizeResult(
        images=best_images,
        best_loss=float(best_loss),
        best_step=int(best_step),
        n_iter=n_iter,
        stopped_early=stopped,
        history=history[:n_iter].cpu().numpy(),
        seconds=time.perf_counter() - t0,
    )
