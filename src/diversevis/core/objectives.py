"""Objectives: what a unit "likes" (targets) and how different a set of images is (diversity).

Targets (method.md A.5), for the activation vector ``a`` (``(N, K)``, the channels at the read position)
and a direction ``d`` (one-hot for an int unit):

* ``max``: ``<a, d / ||d||>`` (for a unit: its activation);
* ``cos``: ``<a / sqrt(||a||^2 + 0.01), d / ||d||>`` (direction only);
* ``mse``: ``-mean_k (a_k - d_k)^2`` (match an activation vector).

Diversity of a set of feature vectors ``f`` (``(..., N, D)``, groups of ``N`` images):

* ``min`` (Cadena et al.): the smallest pairwise RMS distance ``sqrt(mean((f_i - f_j)^2))``;
* ``softmin``: a smooth lower bound of it, ``-tau * log sum_{i<j} exp(-d_ij / tau)``;
* ``gram``: Lucid's diversity, minus the mean cosine similarity between the images' channel Gram matrices.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diversevis.core.errors import DiversevisError

__all__ = [
    "METRICS",
    "DIVERSITIES",
    "Target",
    "target_value",
    "pairwise_rms",
    "pairwise_rms_matrix",
    "min_distance",
    "softmin_distance",
    "gram_cosine_diversity",
    "diversity_value",
]

METRICS = ("max", "cos", "mse")
DIVERSITIES = ("min", "softmin", "gram")


@dataclass(frozen=True)
class Target:
    """What to maximise: a unit or direction of one layer.

    Attributes
    ----------
    layer : str
        Layer alias or dot path.
    unit : int or None
        Channel index (mutually exclusive with ``direction``).
    direction : torch.Tensor or None
        ``(K,)`` direction in channel space.
    metric : str
        One of ``max``, ``cos``, ``mse``.
    """

    layer: str
    unit: int | None = None
    direction: torch.Tensor | None = None
    metric: str = "max"

    def __post_init__(self) -> None:
        if isinstance(self.unit, numbers.Integral) and not isinstance(self.unit, (bool, int)):
            object.__setattr__(self, "unit", int(self.unit))  # np.int64 from argsort, a torch scalar
        elif (
            isinstance(self.unit, torch.Tensor) and self.unit.dim() == 0 and not self.unit.is_floating_point()
        ):
            object.__setattr__(self, "unit", int(self.unit))

    def check(self, channels: int) -> Target:
        """Validate against the layer's channel count; returns ``self``."""
        if self.metric not in METRICS:
            raise DiversevisError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if (self.unit is None) == (self.direction is None):
            raise DiversevisError("give exactly one of unit (a channel index) or direction (a vector)")
        if self.unit is not None:
            if isinstance(self.unit, bool) or not isinstance(self.unit, int):
                raise DiversevisError(f"unit must be an int channel index, got {self.unit!r}")
            if not 0 <= self.unit < channels:
                raise DiversevisError(
                    f"unit {self.unit} is out of range for layer {self.layer!r}, which has {channels} "
                    f"units (valid: 0..{channels - 1})"
                )
        else:
            d = torch.as_tensor(self.direction)
            if d.dim() != 1 or d.numel() != channels:
                raise DiversevisError(
                    f"direction must be a vector of length {channels} (the channels of {self.layer!r}), "
                    f"got shape {tuple(d.shape)}"
                )
            if not bool(torch.isfinite(d).all()):
                raise DiversevisError("direction must be finite (it holds nan or inf)")
            if self.metric != "mse" and float(d.norm()) == 0:
                raise DiversevisError("direction must be non-zero")
        return self

    def vector(self, channels: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """The direction ``d`` as a ``(K,)`` tensor (one-hot for a unit)."""
        if self.unit is not None:
            d = torch.zeros(channels, device=device, dtype=dtype)
            d[self.unit] = 1.0
            return d
        return torch.as_tensor(self.direction, device=device, dtype=dtype)


def target_value(a: torch.Tensor, d: torch.Tensor, metric: str = "max") -> torch.Tensor:
    """Per-image objective value.

    Parameters
    ----------
    a : torch.Tensor
        Activations ``(N, K)``.
    d : torch.Tensor
        Direction ``(K,)`` (not normalised for ``mse``).
    metric : str
        ``max``, ``cos`` or ``mse``.

    Returns
    -------
    torch.Tensor
        ``(N,)`` values; larger is better.
    """
    if metric == "max":
        return a @ (d / d.norm())
    if metric == "cos":
        return (a / torch.sqrt((a * a).sum(1, keepdim=True) + 0.01)) @ (d / d.norm())
    if metric == "mse":
        return -((a - d) ** 2).mean(1)
    raise DiversevisError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def _pairs(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    iu = torch.triu_indices(n, n, 1, device=device)
    return iu[0], iu[1]


def pairwise_rms(f: torch.Tensor) -> torch.Tensor:
    """RMS distances of all pairs ``i < j`` within each group.

    Parameters
    ----------
    f : torch.Tensor
        Features ``(..., N, D)``.

    Returns
    -------
    torch.Tensor
        ``(..., N * (N - 1) / 2)`` distances ``sqrt(mean_k (f_ik - f_jk)^2)`` in ``triu_indices`` order.
        The gradient is finite (zero) for identical images.
    """
    i, j = _pairs(f.shape[-2], f.device)
    # Direct differences (not |fi|^2 + |fj|^2 - 2 fi.fj, which cancels catastrophically in float32 when
    # two images nearly coincide); N (N - 1) / 2 x D values is small for the set sizes used here.
    d2 = (f[..., i, :] - f[..., j, :]).pow(2).mean(-1)
    return torch.sqrt(d2.clamp_min(1e-30)) * (d2 > 0)


def pairwise_rms_matrix(f: torch.Tensor) -> torch.Tensor:
    """Full symmetric ``(..., N, N)`` matrix of RMS distances (zero diagonal), for reporting."""
    n = f.shape[-2]
    out = f.new_zeros(*f.shape[:-2], n, n)
    i, j = _pairs(n, f.device)
    d = pairwise_rms(f)
    out[..., i, j] = d
    out[..., j, i] = d
    return out


def min_distance(f: torch.Tensor) -> torch.Tensor:
    """Smallest pairwise RMS distance per group, ``(...,)``; its gradient reaches only the closest pair."""
    return pairwise_rms(f).min(dim=-1).values


def softmin_distance(f: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Soft minimum ``-tau log sum_{i<j} exp(-d_ij / tau)`` of the pairwise RMS distances, ``(...,)``.

    A lower bound of :func:`min_distance` that spreads the gradient over all close pairs; ``tau`` is in
    the units of the distance.
    """
    return -tau * torch.logsumexp(-pairwise_rms(f) / tau, dim=-1)


def gram_cosine_diversity(f: torch.Tensor) -> torch.Tensor:
    """Lucid's diversity: minus the mean pairwise cosine similarity of the channel Gram matrices.

    Parameters
    ----------
    f : torch.Tensor
        Feature maps ``(..., N, K, H, W)``.

    Returns
    -------
    torch.Tensor
        ``(...,)`` values in ``[-1, 1]``; larger means more diverse.
    """
    flat = f.flatten(-2)  # (..., N, K, HW)
    gram = flat @ flat.transpose(-1, -2)  # (..., N, K, K)
    g = F.normalize(gram.flatten(-2), dim=-1)  # (..., N, K*K)
    n = g.shape[-2]
    i, j = _pairs(n, g.device)
    sim = (g[..., i, :] * g[..., j, :]).sum(-1)
    return -sim.mean(-1)


def diversity_value(f: torch.Tensor, kind: str = "min", tau: float = 0.1) -> torch.Tensor:
    """Diversity of groups of images.

    Parameters
    ----------
    f : torch.Tensor
        ``(..., N, K, H, W)`` feature maps (or ``(..., N, D)`` vectors for ``min``/``softmin``).
    kind : str
        ``min``, ``softmin`` or ``gram``.
    """
    if kind == "gram":
        if f.dim() < 4:
            raise DiversevisError("gram diversity needs spatial feature maps (N, K, H, W)")
        return gram_cosine_diversity(f)
    flat = f.flatten(-3) if f.dim() >= 4 else f
    if kind == "min":
        return min_distance(flat)
    if kind == "softmin":
        return softmin_distance(flat, tau)
    raise DiversevisError(f"unknown diversity {kind!r}; choose one of {', '.join(DIVERSITIES)}")
