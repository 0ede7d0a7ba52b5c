"""A plateau stopping rule: stop when every watched quantity has stopped changing.

The loss of a regularised objective keeps creeping down long after the quantities a user reads off the
result (activations, diversity, crop ratios) have settled, so an early stop on new minima of a smoothed
loss runs a long tail. This rule watches the quantities themselves: a run has *plateaued* when, for
every quantity, the mean over the last half-window of checks differs from the mean over the half-window
before it by at most ``rtol * |recent mean| + atol``. Averaging over half-windows absorbs the step-to-step
noise of Adam at a constant learning rate; comparing two adjacent halves measures the drift per window.
"""

from __future__ import annotations

import torch

__all__ = ["plateaued", "window_change"]


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


def plateaued(history: torch.Tensor, window: int, rtol: float = 0.0, atol: float = 0.0) -> torch.Tensor:
    """Which groups have plateaued: every quantity's drift ``<= rtol * |recent| + atol``.

    Parameters
    ----------
    history : torch.Tensor
        ``(T, G, K)`` watched values per check (see :func:`window_change`). Fewer than ``window`` rows:
        no group has plateaued yet.
    window : int
        Checks per comparison (two half-windows).
    rtol, atol : float
        Relative and absolute tolerance on the drift of one window; a non-finite value never plateaus.

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
