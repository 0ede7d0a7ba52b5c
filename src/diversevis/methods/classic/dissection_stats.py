"""Network dissection's statistics: streaming activation quantiles, unit masks and dataset-wide IoU.

The quantile estimators (:class:`ExactQuantile`, :class:`HistogramQuantile`) and the IoU counts are
described in :mod:`diversevis.methods.classic.dissection`, which runs them over a dataset.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from diversevis.core.errors import DiversevisError
from diversevis.methods.classic.concepts import Concept, Sample

__all__ = ["iou", "quantile_threshold", "ExactQuantile", "HistogramQuantile", "upsample", "unit_masks"]


# ------------------------------------------------------------------------------ IoU and quantiles


def iou(intersection: torch.Tensor, area_a: torch.Tensor, area_b: torch.Tensor) -> torch.Tensor:
    """Intersection over union from counts: ``I / (A + B - I)``, 0 where the union is empty.

    Parameters
    ----------
    intersection : torch.Tensor
        ``|A & B|`` (any shape, broadcastable with the areas).
    area_a, area_b : torch.Tensor
        ``|A|`` and ``|B|``.

    Returns
    -------
    torch.Tensor
        float64 IoU in ``[0, 1]``.
    """
    inter = intersection.double()
    union = area_a.double() + area_b.double() - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-300), torch.zeros_like(union))


def quantile_threshold(values: torch.Tensor, quantile: float) -> torch.Tensor:
    """Per-row threshold ``T`` with ``P(v > T) = quantile``: ``numpy.quantile(v, 1 - quantile)`` per row.

    Parameters
    ----------
    values : torch.Tensor
        ``(U, N)`` values (or ``(N,)``).
    quantile : float
        Upper-tail fraction in ``[0, 1)``.

    Returns
    -------
    torch.Tensor
        ``(U,)`` (or scalar) float64 thresholds, linear interpolation between order statistics.
    """
    v = values.double()
    return torch.quantile(v, 1 - quantile, dim=-1, interpolation="linear")


def _check_quantile(q: float) -> float:
    try:
        q = float(q)
    except (TypeError, ValueError):
        raise DiversevisError(f"quantile must be a number in (0, 1), got {q!r}") from None
    if not 0 < q < 1:
        raise DiversevisError(f"quantile must be in (0, 1) (paper: 0.005), got {q}")
    return q


class ExactQuantile:
    """Exact streaming upper quantile of ``U`` rows of values when the total count ``N`` is known.

    Keeps the top ``m = N - floor((1 - q)(N - 1))`` values per row; :meth:`threshold` equals
    ``numpy.quantile(all_values, 1 - q)`` (linear) per row once exactly ``N`` values per row were seen.

    Parameters
    ----------
    rows : int
        Number of rows (units).
    total : int
        Values per row over the whole stream.
    quantile : float
        Upper-tail fraction ``q``.
    device : torch.device, optional
        Where the buffer lives.
    """

    def __init__(self, rows: int, total: int, quantile: float, device=None) -> None:
        self.q = _check_quantile(quantile)
        if total < 1:
            raise DiversevisError("no activation values to take a quantile of")
        self.total = int(total)
        pos = (1 - self.q) * (self.total - 1)
        self.lo = int(math.floor(pos))
        self.frac = pos - self.lo
        self.m = self.total - self.lo
        self.buf = torch.empty(rows, 0, device=device)
        self.seen = 0

    @staticmethod
    def size(total: int, quantile: float) -> int:
        """Values kept per row, ``m``."""
        return int(total) - int(math.floor((1 - quantile) * (int(total) - 1)))

    def update(self, values: torch.Tensor) -> None:
        """Add ``(U, n)`` values."""
        self.seen += values.shape[1]
        both = torch.cat([self.buf, values.float()], dim=1)
        if both.shape[1] > self.m:
            both = torch.topk(both, self.m, dim=1, sorted=False).values
        self.buf = both

    def threshold(self) -> torch.Tensor:
        """``(U,)`` float64 thresholds."""
        if self.seen != self.total:
            raise RuntimeError(f"saw {self.seen} values per row, expected {self.total}")
        top = torch.sort(self.buf.double(), dim=1, descending=True).values
        a = top[:, self.m - 1]  # ascending index lo
        b = top[:, self.m - 2] if self.m >= 2 else a  # ascending index lo + 1
        return a + self.frac * (b - a)


class HistogramQuantile:
    """Approximate streaming upper quantile with a per-row histogram of growing range.

    Parameters
    ----------
    rows : int
        Number of rows (units).
    quantile : float
        Upper-tail fraction ``q``.
    bins : int
        Bins per row (even).
    device : torch.device, optional
        Where the counts live.
    """

    def __init__(self, rows: int, quantile: float, bins: int = 4096, device=None) -> None:
        self.q = _check_quantile(quantile)
        self.bins = int(bins) + int(bins) % 2
        self.rows = rows
        self.device = device
        self.counts: torch.Tensor | None = None  # (U, bins) int64
        self.lo: torch.Tensor | None = None  # (U,) float64
        self.width: torch.Tensor | None = None  # (U,) float64
        self.under = torch.zeros(rows, dtype=torch.long, device=device)
        self.seen = 0

    def update(self, values: torch.Tensor) -> None:
        """Add ``(U, n)`` values."""
        v = values.double()
        if not bool(torch.isfinite(v).all()):
            raise DiversevisError("histogram quantiles need finite values")
        self.seen += v.shape[1]
        if self.counts is None:
            lo = v.min(1).values
            hi = v.max(1).values
            span = (hi - lo).clamp_min(1e-12)
            self.lo = lo
            self.width = span / self.bins * (1 + 1e-9)
            self.counts = torch.zeros(self.rows, self.bins, dtype=torch.long, device=v.device)
        hi_needed = v.max(1).values
        while True:
            top = self.lo + self.width * self.bins
            grow = hi_needed >= top
            if not bool(grow.any()):
                break
            merged = self.counts.view(self.rows, self.bins // 2, 2).sum(-1)
            doubled = torch.cat([merged, torch.zeros_like(merged)], dim=1)
            self.counts = torch.where(grow[:, None], doubled, self.counts)
            self.width = torch.where(grow, self.width * 2, self.width)
        idx = torch.floor((v - self.lo[:, None]) / self.width[:, None])
        below = idx < 0
        self.under += below.sum(1)
        idx = idx.clamp(0, self.bins - 1).long()
        ones = (~below).long()
        self.counts.scatter_add_(1, idx, ones)

    def threshold(self) -> torch.Tensor:
        """``(U,)`` float64 thresholds (linear inside the bin crossing the quantile)."""
        if self.counts is None:
            raise RuntimeError("no values seen")
        target = self.q * self.seen  # values above the threshold
        above = torch.flip(torch.cumsum(torch.flip(self.counts, [1]), 1), [1]).double()  # count >= bin start
        # the bin b where the count above its start first reaches the target (scanning from the top)
        reach = above >= target
        b = (reach.long() * torch.arange(self.bins, device=reach.device)).amax(1)
        cnt = self.counts.gather(1, b[:, None])[:, 0].double()
        above_b_end = above.gather(1, b[:, None])[:, 0] - cnt
        need = (target - above_b_end).clamp_min(0)
        frac = torch.where(cnt > 0, 1 - need / cnt.clamp_min(1), torch.zeros_like(cnt))
        t = self.lo + self.width * (b.double() + frac)
        return torch.where(reach.any(1), t, self.lo)


# ----------------------------------------------------------------------------------------------- masks


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of activation maps (``align_corners=False``).

    Parameters
    ----------
    maps : torch.Tensor
        ``(U, h, w)`` maps.
    size : tuple of int
        ``(H, W)`` target resolution.

    Returns
    -------
    torch.Tensor
        ``(U, H, W)`` float32; ``maps`` itself when it already has that size.
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[None].float(), size=size, mode="bilinear", align_corners=False)[0]


def unit_masks(maps: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary unit masks ``M_k = upsample(A_k) >= T_k``.

    Parameters
    ----------
    maps : torch.Tensor
        ``(U, h, w)`` activation maps of one image.
    thresholds : torch.Tensor
        ``(U,)`` thresholds.
    size : tuple of int
        ``(H, W)`` of the label maps.

    Returns
    -------
    torch.Tensor
        ``(U, H, W)`` bool.
    """
    s = upsample(maps, size)
    return s >= thresholds.to(s.dtype).view(-1, 1, 1)


def _chunked_masks(maps: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """:func:`unit_masks` of ``(U, h, w)`` maps, computed for about ``2^24`` mask pixels at a time."""
    chunk = max(1, (1 << 24) // max(1, size[0] * size[1]))
    return torch.cat(
        [
            unit_masks(maps[s : s + chunk], thresholds[s : s + chunk], size)
            for s in range(0, maps.shape[0], chunk)
        ]
    )


# ------------------------------------------------------------------------------------------------- IoU


class _Accumulator:
    """Dataset-wide IoU counts (vectorised over units and the concepts of each image)."""

    def __init__(self, n_units: int, concepts: list[Concept], device) -> None:
        self.concepts = concepts
        self.cats = list(dict.fromkeys(c.category for c in concepts))
        max_id = max(c.id for c in concepts)
        self.col = torch.full((max_id + 1,), -1, dtype=torch.long)
        for j, c in enumerate(concepts):
            self.col[c.id] = j
        self.cat_of = torch.tensor([self.cats.index(c.category) for c in concepts], dtype=torch.long)
        self.inter = torch.zeros(n_units, len(concepts), dtype=torch.float64, device=device)
        self.unit_area = torch.zeros(n_units, len(self.cats), dtype=torch.float64, device=device)
        self.label_area = torch.zeros(len(concepts), dtype=torch.float64, device=device)
        self.device = device

    def _cols(self, ids: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        ids = ids[(ids > 0) & (ids < len(self.col))]
        cols = self.col[torch.from_numpy(ids)] if ids.size else torch.zeros(0, dtype=torch.long)
        keep = (cols >= 0).numpy()
        return ids[keep], cols[cols >= 0]

    def add(self, masks: torch.Tensor, sample: Sample) -> None:
        """Add one image: ``masks`` ``(U, h, w)`` bool unit masks at the label-map resolution."""
        u = masks.shape[0]
        flat = masks.reshape(u, -1)
        area = flat.sum(1).double()
        for g in sample.categories:
            if g in self.cats:
                self.unit_area[:, self.cats.index(g)] += area
        lm = sample.label_maps
        if lm.shape[0]:
            ids, cols = self._cols(np.unique(lm))
            if ids.size:
                onehot = torch.from_numpy((lm[None] == ids[:, None, None, None]).any(1).reshape(ids.size, -1))
                onehot = onehot.to(self.device)
                inter = flat.float() @ onehot.float().T  # (U, n): exact counts below 2^24 pixels
                self.inter.index_add_(1, cols.to(self.device), inter.double())
                self.label_area.index_add_(0, cols.to(self.device), onehot.sum(1).double())
        if sample.image_labels:
            ids, cols = self._cols(np.asarray(sample.image_labels, dtype=np.int64))
            hw = flat.shape[1]
            for c in cols.tolist():
                self.inter[:, c] += area
                self.label_area[c] += hw

    def iou(self) -> torch.Tensor:
        return iou(self.inter, self.unit_area[:, self.cat_of.to(self.device)], self.label_area[None]).cpu()
