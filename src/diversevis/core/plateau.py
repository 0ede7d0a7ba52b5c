"""A plateau stopping rule: stop when every watched quantity has stopped changing.

The loss of a regularised objective keeps creeping down long after the quantities a user reads off the
result (activations, diversity, crop ratios) have settled, so an early stop on new minima of a smoothed
loss runs a long tail. This rule watches the quantities themselves: a run has *plateaued* when, for
every quantity, the mean over the last half-window of checks differs from the mean over the half-window
before it by at most ``rtol * |recent mean| + atol``. Averaging over half-windows absorbs the step-to-step
noise of Adam at a constant learning rate; comparing two adjacent halves measures the drift per window.

The optimisation loop (:func:`diversevis.core.optimize.optimize_groups` with ``stop="plateau"``) keeps
the watched values of every step in a :class:`WatchHistory`; a loss function reports them by returning
a :class:`Watched` instead of the bare losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["plateaued", "window_change", "Watched", "WatchHistory"]


def window_change(history: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Drift of each watched quantity over the last ``window`` rows.

    Parameters
    ----------
    history : torch.Tensor
        ``(T, G, K)`` values, one row per check (oldest first), ``G`` groups (independent runs) and
        ``K`` quantities each; ``T >= window``.
    window : int
        Rows compared: the last ``window // 2`` against the ``window // 2`` before them (``>= 2``).

    Returns
    -------
    change, recent : torch.Tensor
        ``(G, K)`` absolute difference of the two half-window means, and the recent half's mean.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    if history.dim() != 3 or history.shape[0] < window:
        raise ValueError(f"need a (T >= {window}, G, K) history, got shape {tuple(history.shape)}")
    half = window // 2
    recent = history[-half:].mean(0)
    before = history[-2 * half : -half].mean(0)
    return (recent - before).abs(), recent


def plateaued(
    history: torch.Tensor, window: int, rtol: float | torch.Tensor = 0.0, atol: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Which groups have plateaued: every quantity's drift ``<= rtol * |recent| + atol``.

    Parameters
    ----------
    history : torch.Tensor
        ``(T, G, K)`` watched values per check (see :func:`window_change`). Fewer than ``window`` rows:
        no group has plateaued yet.
    window : int
        Checks per comparison (two half-windows).
    rtol, atol : float or torch.Tensor
        Relative and absolute tolerance on the drift of one window (a ``(K,)`` tensor: one per
        quantity); a non-finite value never plateaus.

    Returns
    -------
    torch.Tensor
        ``(G,)`` bool.
    """
    if history.shape[0] < window:
        return torch.zeros(history.shape[1], dtype=torch.bool, device=history.device)
    change, recent = window_change(history, window)
    ok = torch.isfinite(change) & (change <= rtol * recent.abs() + atol)
    return ok.all(dim=1)


class Watched(NamedTuple):
    """What a loss function returns to the loop when it reports the quantities to watch.

    Attributes
    ----------
    loss : torch.Tensor
        ``(B,)`` the groups' losses (a scalar for one group), as a bare return would be.
    values : torch.Tensor
        ``(B, K)`` (or ``(K,)`` for one group) the quantities whose plateau ends a group's run, on
        comparable scales (e.g. activation ratios, a diversity relative to its start); detached here.
    ready : torch.Tensor, optional
        ``(B,)`` bool: whether a group may stop at all yet (e.g. a constraint has been met); ``None``:
        always. The latest value counts.
    """

    loss: torch.Tensor
    values: torch.Tensor
    ready: torch.Tensor | None = None


class WatchHistory:
    """The watched values of every step of ``G`` groups, on the device, in ``(chunk, G, K)`` blocks.

    Rows of groups outside the batch (frozen and compacted away) stay NaN; ``ready`` holds each
    group's latest readiness.
    """

    def __init__(self, groups: int, chunk: int, device: torch.device) -> None:
        self.G, self.chunk, self.device = groups, chunk, device
        self.blocks: list[torch.Tensor] = []
        self.ready = torch.ones(groups, dtype=torch.bool, device=device)

    @torch.no_grad()
    def record(self, it: int, values: torch.Tensor, ready: torch.Tensor | None, idx: torch.Tensor) -> None:
        """Step ``it``'s values ``(B, K)`` (and readiness ``(B,)``) of the groups ``idx``."""
        values = values.detach().float().reshape(len(idx), -1)
        if it % self.chunk == 0:
            K = values.shape[1]
            self.blocks.append(torch.full((self.chunk, self.G, K), math.nan, device=self.device))
        self.blocks[it // self.chunk][it % self.chunk, idx] = values
        if ready is not None:
            self.ready[idx] = ready.detach().reshape(len(idx)).bool()

    def last(self, it: int, window: int) -> torch.Tensor:
        """``(min(window, it + 1), G, K)`` the rows of steps ``it - window + 1 .. it``."""
        lo = max(0, it + 1 - window)
        first, last = lo // self.chunk, it // self.chunk
        rows = torch.cat(self.blocks[first : last + 1]) if last > first else self.blocks[first]
        return rows[lo - first * self.chunk : it + 1 - first * self.chunk]

    def settled(
        self, it: int, window: int, rtol: float | Sequence[float], atol: float | Sequence[float]
    ) -> torch.Tensor:
        """``(G,)`` bool: ready, and every value plateaued over the ``window`` steps up to ``it``
        (``rtol``, ``atol``: one number, or one per watched quantity)."""
        if it + 1 < window:
            return torch.zeros(self.G, dtype=torch.bool, device=self.device)
        rows = self.last(it, window)
        rtol, atol = (
            _per_quantity(name, v, rows.shape[2], self.device) for name, v in (("rtol", rtol), ("atol", atol))
        )
        return plateaued(rows, window, rtol, atol) & self.ready

    def group(self, g: int, n: int) -> np.ndarray:
        """``(n, K)`` group ``g``'s values of steps ``0 .. n - 1``."""
        return torch.cat(self.blocks)[:n, g].cpu().numpy() if self.blocks else np.zeros((n, 0))


def _per_quantity(name: str, value, K: int, device) -> float | torch.Tensor:
    """A tolerance as a number, or as a ``(K,)`` tensor when one is given per watched quantity."""
    if not isinstance(value, (tuple, list)):
        return value
    if len(value) != K:
        raise ValueError(f"{name} gives {len(value)} tolerances for {K} watched quantities")
    return torch.tensor(value, dtype=torch.float32, device=device)
