"""Network dissection (Bau, Zhou, Khosla, Oliva & Torralba, CVPR 2017, arXiv 1704.05796).

For every unit ``k`` of a layer and every concept ``c`` of a segmentation dataset:

1. **Threshold.** ``T_k`` is the top-``quantile`` value of the unit's activations over all positions of
   all images, ``P(a_k > T_k) = quantile`` (paper: 0.005), computed on the layer's own resolution.
2. **Masks.** Each activation map is upsampled bilinearly to the resolution of the image's label maps
   (``align_corners=False``) and thresholded, ``M_k = S_k >= T_k``.
3. **IoU.** Accumulated over the dataset, ``IoU_kc = sum |M_k & L_c| / sum |M_k | L_c|``, where, as in
   NetDissect, ``|M_k|`` is summed only over the images annotated for ``c``'s category. Image-level
   labels count as masks covering the whole image.
4. **Label.** The unit's label is ``argmax_c IoU_kc``; it is a *detector* if that IoU exceeds
   ``iou_threshold`` (0.04). Layer interpretability is the number of unique detected concepts.

Streaming and memory. Pass 1 runs the network over the images in batches and feeds every unit's values
to a quantile estimator; pass 2 computes the masks and IoU counts image by image, vectorised over units
(in chunks) and over the concepts present in the image. Pass 2 reuses the pass-1 activations when they
fit in ``memory`` values, else it runs the network again. Quantiles:

* ``"exact"``: the total number ``N`` of positions is known from the image sizes, so keeping the top
  ``m = N - floor((1 - q)(N - 1))`` values per unit (merged batch by batch with :func:`torch.topk`)
  gives exactly ``numpy.quantile(values, 1 - q)`` (linear interpolation). Memory ``units x m``.
* ``"histogram"``: a per-unit histogram of ``bins`` bins whose range starts at the first batch's
  ``[min, max]`` and doubles (merging bin pairs) whenever a larger value arrives; values below the
  first minimum are only counted. Linear interpolation inside the bin that crosses the quantile; the
  error is at most one bin width (the final range / ``bins``). Memory ``units x bins``.
* ``"auto"`` (default): exact when ``units x m <= memory``, else histogram.

For Broden-scale data (63k images, conv5 at 14x14 and q = 0.005: m ~ 62k values per unit) exact
quantiles fit in memory; for early layers at 224x224 the histogram takes over.

>>> from diversevis.classic.dissection import dissect
>>> res = dissect("vgg16", "conv1_2")                 # colour probe on the bundled photos
>>> res.n_detectors, res.top_labels(5)
>>> res.save("runs/vgg16_conv1_2_dissect")           # dissection.json/.md, detectors.png, iou.npz
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diversevis.core.cache import atomic_write_bytes, atomic_write_json, atomic_write_text, output_dir
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network, as_network
from diversevis.methods.classic.concepts import Concept, ConceptDataset, Sample
from diversevis.methods.dfv import versions

__all__ = [
    "QUANTILE_METHODS",
    "iou",
    "quantile_threshold",
    "ExactQuantile",
    "HistogramQuantile",
    "upsample",
    "unit_masks",
    "DissectionResult",
    "dissect",
]

QUANTILE_METHODS = ("auto", "exact", "histogram")
_DEFAULT_MEMORY = 1 << 26  # values (float32): 256 MiB


# ----------------------------------------------------------------------------------- small pure parts


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


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of ``(U, h, w)`` maps to ``(U, H, W)`` (``align_corners=False``; identity if equal)."""
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


# ------------------------------------------------------------------------------------------- result


@dataclass
class DissectionResult:
    """IoU of every unit of a layer with every concept, thresholds, labels and detectors.

    Attributes
    ----------
    units : list of int
        Channel indices dissected.
    thresholds : torch.Tensor
        ``(U,)`` activation thresholds ``T_k``.
    iou : torch.Tensor
        ``(U, C)`` float64 dataset-wide IoU.
    concepts : list of Concept
        The ``C`` concepts (columns of ``iou``).
    iou_threshold : float
        Detector criterion ``IoU > iou_threshold``.
    spec : dict
        Run spec (model, layer, dataset, quantile, method, versions, timings).
    """

    units: list[int]
    thresholds: torch.Tensor
    iou: torch.Tensor
    concepts: list[Concept]
    iou_threshold: float = 0.04
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U,)`` best IoU and ``(U,)`` index of its concept (first on ties)."""
        if self.iou.shape[1] == 0:
            z = torch.zeros(len(self.units), dtype=torch.float64)
            return z, torch.zeros(len(self.units), dtype=torch.long)
        v, i = self.iou.max(dim=1)
        return v, i

    @property
    def detectors(self) -> torch.Tensor:
        """``(U,)`` bool: best IoU > ``iou_threshold``."""
        return self.best[0] > self.iou_threshold

    @property
    def n_detectors(self) -> int:
        """Number of detector units."""
        return int(self.detectors.sum())

    @property
    def unique_detectors(self) -> int:
        """Number of distinct concepts detected (the paper's layer interpretability)."""
        v, i = self.best
        return len({int(c) for c, d in zip(i, self.detectors) if d})

    def rows(self) -> list[dict[str, Any]]:
        """Per unit: ``unit, label, category, iou, detector, threshold`` (label ``None`` if IoU is 0)."""
        v, idx = self.best
        out = []
        for j, u in enumerate(self.units):
            c = self.concepts[int(idx[j])] if self.concepts and float(v[j]) > 0 else None
            out.append(
                {
                    "unit": int(u),
                    "label": None if c is None else c.name,
                    "category": None if c is None else c.category,
                    "iou": float(v[j]),
                    "detector": bool(float(v[j]) > self.iou_threshold),
                    "threshold": float(self.thresholds[j]),
                }
            )
        return out

    def detector_counts(self) -> dict[str, int]:
        """Detector units per concept name, most frequent first (ties: name)."""
        counts: dict[str, int] = {}
        for r in self.rows():
            if r["detector"]:
                counts[r["label"]] = counts.get(r["label"], 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def top_labels(self, n: int = 5) -> list[tuple[str, int]]:
        """The ``n`` most frequent detector labels with their counts."""
        return list(self.detector_counts().items())[:n]

    def summary(self) -> dict[str, Any]:
        """Headline numbers."""
        v, _ = self.best
        return {
            "units": len(self.units),
            "detectors": self.n_detectors,
            "unique_detectors": self.unique_detectors,
            "detector_counts": self.detector_counts(),
            "mean_best_iou": float(v.mean()) if len(v) else None,
            "max_iou": float(v.max()) if len(v) else None,
        }

    def __repr__(self) -> str:
        s = self.spec
        top = ", ".join(f"{k} {n}" for k, n in self.top_labels(3))
        return (
            f"DissectionResult({s.get('model')} {s.get('layer')}: {len(self.units)} units, "
            f"{self.n_detectors} detectors, {self.unique_detectors} unique concepts"
            + (f"; {top}" if top else "")
            + ")"
        )

    def markdown(self) -> str:
        """Markdown: a summary line and a table ``unit | label | category | IoU | detector``."""
        s = self.spec
        lines = [
            f"# Network dissection: {s.get('model')} {s.get('layer')}",
            "",
            f"Dataset {s.get('dataset', {}).get('name')} ({s.get('n_images')} images, {len(self.concepts)} concepts); "
            f"threshold: top {s.get('quantile')} quantile ({s.get('quantile_method')}); "
            f"detector: IoU > {self.iou_threshold}.",
            "",
            f"**{self.n_detectors} of {len(self.units)} units are detectors, {self.unique_detectors} unique concepts.**",
            "",
            "| unit | label | category | IoU | detector |",
            "|---:|---|---|---:|:---:|",
        ]
        for r in self.rows():
            lines.append(
                f"| {r['unit']} | {r['label'] or '-'} | {r['category'] or '-'} | {r['iou']:.4f} | "
                f"{'yes' if r['detector'] else ''} |"
            )
        return "\n".join(lines) + "\n"

    def bar_plot_png(self) -> bytes:
        """PNG bar plot of detector units per concept (colour concepts in their colour, others by category)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import is_color_like
        from matplotlib.figure import Figure

        counts = self.detector_counts()
        cat_of = {c.name: c.category for c in self.concepts}
        names = list(counts)
        fig = Figure(figsize=(max(4.0, 0.35 * len(names) + 1.5), 3.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        s = self.spec
        title = f"{s.get('model')} {s.get('layer')}: {self.n_detectors}/{len(self.units)} detectors"
        if names:
            cats = list(dict.fromkeys(cat_of.get(n, "-") for n in names))
            palette = [f"C{i % 10}" for i in range(len(cats))]
            colours = [
                n
                if cat_of.get(n) == "color" and is_color_like(n)
                else palette[cats.index(cat_of.get(n, "-"))]
                for n in names
            ]
            ax.bar(range(len(names)), [counts[n] for n in names], color=colours, edgecolor="k", linewidth=0.5)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
            ax.set_ylabel("detector units")
            from matplotlib.patches import Patch

            ax.legend(handles=[Patch(color=palette[i], label=c) for i, c in enumerate(cats)], fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no detectors (IoU > {self.iou_threshold})", ha="center", va="center")
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def save(self, directory: str | Path) -> Path:
        """Write ``detectors.png``, ``dissection.md``, ``iou.npz`` and ``dissection.json`` (last), atomically.

        ``iou.npz`` holds ``iou`` ``(U, C)``, ``units``, ``thresholds``, ``concept_ids``.
        """
        out = output_dir(directory)
        atomic_write_bytes(out / "detectors.png", self.bar_plot_png())
        atomic_write_text(out / "dissection.md", self.markdown())
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            iou=self.iou.cpu().numpy(),
            units=np.asarray(self.units, dtype=np.int64),
            thresholds=self.thresholds.double().cpu().numpy(),
            concept_ids=np.asarray([c.id for c in self.concepts], dtype=np.int64),
        )
        atomic_write_bytes(out / "iou.npz", buf.getvalue())
        atomic_write_json(
            out / "dissection.json",
            {
                "spec": self.spec,
                "summary": self.summary(),
                "concepts": [{"id": c.id, "name": c.name, "category": c.category} for c in self.concepts],
                "units": self.rows(),
            },
        )
        return out


# ------------------------------------------------------------------------------------------- the method


def _batches(sizes: Sequence[tuple[int, int]], batch: int) -> Iterator[list[int]]:
    """Consecutive indices in groups of at most ``batch`` images of the same size."""
    group: list[int] = []
    shape = None
    for i, s in enumerate(sizes):
        if group and (s != shape or len(group) == batch):
            yield group
            group = []
        shape = s
        group.append(i)
    if group:
        yield group


def _resolve_units(units: str | Sequence[int] | None, channels: int) -> list[int]:
    from diversevis.core.units import parse_units

    if units is None:
        return list(range(channels))
    return parse_units(units, channels)


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


def dissect(
    model: Network | nn.Module | str,
    layer: str,
    dataset: ConceptDataset | str | Path | None = None,
    *,
    units: str | Sequence[int] | None = None,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    quantile_method: str = "auto",
    bins: int = 4096,
    memory: int = _DEFAULT_MEMORY,
    batch: int = 8,
    size: int = 224,
    categories: Sequence[str] | None = None,
    max_images: int | None = None,
    images: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> DissectionResult:
    """Network dissection of a layer's units against a concept dataset.

    Parameters
    ----------
    model : Network, nn.Module or str
        The network (RGB input; images are fed in display space ``[0, 1]`` and normalised by it).
    layer : str
        Layer alias or dot path (its output must be ``(N, K, h, w)``).
    dataset : ConceptDataset, str or Path, optional
        A concept dataset, or the path of a Broden-format directory; default: the colour probe
        (:class:`~diversevis.classic.concepts.ColorProbe`) on the bundled natural photos at ``size`` px.
    units : str or sequence of int, optional
        ``"all"`` (default), ``"0-63"``, ``"1,5,9"``, ``"sample:32"`` or a list of channel indices.
    quantile : float
        Upper-tail fraction of activations above the threshold (paper: 0.005).
    iou_threshold : float
        Detector criterion ``IoU > iou_threshold`` (paper: 0.04).
    quantile_method : {"auto", "exact", "histogram"}
        See the module docstring.
    bins : int
        Histogram bins per unit.
    memory : int
        Budget in float32 values for the exact-quantile buffer and for keeping pass-1 activations.
    batch : int
        Images per forward pass.
    size : int
        Image side of the default colour probe.
    categories : sequence of str, optional
        Broden categories to use (default: all).
    max_images : int, optional
        Use only the first images of the dataset.
    images : str or Path, optional
        Folder of natural photos for the colour probe (default: bundled).
    device : str, optional
        Move the network there.
    progress : bool
        Show tqdm progress bars over the images (one per pass).

    Returns
    -------
    DissectionResult

    Raises
    ------
    DiversevisError
        On a bad layer, units, quantile, method or dataset (missing ``index.csv``, unknown category ...).
    """
    t0 = time.perf_counter()
    net = as_network(model)
    if device is not None:
        net.to(device)
    q = _check_quantile(quantile)
    if quantile_method not in QUANTILE_METHODS:
        raise DiversevisError(
            f"unknown quantile method {quantile_method!r}; choose one of {', '.join(QUANTILE_METHODS)}"
        )
    if not 0 <= float(iou_threshold) <= 1:
        raise DiversevisError(f"iou_threshold must be in [0, 1] (paper: 0.04), got {iou_threshold}")
    for name, v in (("batch", batch), ("bins", bins), ("memory", memory)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise DiversevisError(f"{name} must be a positive integer, got {v!r}")
    if dataset is None:
        from diversevis.methods.classic.concepts import ColorProbe

        dataset = ColorProbe(size, folder=images, max_images=max_images)
    elif isinstance(dataset, (str, Path)):
        from diversevis.methods.classic.concepts import BrodenDataset

        dataset = BrodenDataset(dataset, categories=categories, max_images=max_images)
    elif not isinstance(dataset, ConceptDataset):
        raise DiversevisError(
            f"dataset must be a ConceptDataset or a Broden directory, got {type(dataset).__name__}"
        )
    n_images = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if n_images < 1:
        raise DiversevisError("the dataset has no images")
    if not dataset.concepts:
        raise DiversevisError("the dataset defines no concepts")
    if net.in_channels != 3:
        raise DiversevisError(f"dissection needs an RGB network, {net.name} takes {net.in_channels} channels")

    path = net.resolve(layer)
    channels = net.channels(layer)
    unit_list = _resolve_units(units, channels)
    idx = torch.tensor(unit_list, dtype=torch.long, device=net.device)
    n_units = len(unit_list)

    # positions per image at the layer's resolution (known before any forward pass)
    total = 0
    shapes: dict[tuple[int, int], tuple[int, ...]] = {}
    sizes = [tuple(dataset.image_size(i)) for i in range(n_images)]
    for s in sizes:
        if s not in shapes:
            shapes[s] = net.output_shape(layer, s)
            if len(shapes[s]) != 3:
                raise DiversevisError(
                    f"layer {layer!r} has no spatial output for a {s[1]}x{s[0]} image; choose a conv layer"
                )
        total += shapes[s][1] * shapes[s][2]
    m = ExactQuantile.size(total, q)
    method = quantile_method
    if method == "auto":
        method = "exact" if n_units * m <= memory else "histogram"
    est: ExactQuantile | HistogramQuantile
    if method == "exact":
        est = ExactQuantile(n_units, total, q, device=net.device)
    else:
        est = HistogramQuantile(n_units, q, bins, device=net.device)
    keep = n_units * total <= memory
    kept: list[torch.Tensor] = []

    def bar(desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=n_images, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)

    groups = list(_batches(sizes, batch))

    def forward(ix: list[int]) -> tuple[torch.Tensor, list[Sample]]:
        samples = [dataset[i] for i in ix]
        x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            a = net.activations(x.to(net.device), [path])[path].index_select(1, idx).float()
        if not bool(torch.isfinite(a).all()):
            raise DiversevisError(f"{net.name} returned non-finite activations in layer {layer!r}")
        return a, samples

    # pass 1: thresholds
    t1 = time.perf_counter()
    with bar(f"dissect {net.display_name(layer)}: quantiles") as pb:
        for ix in groups:
            a, _ = forward(ix)
            est.update(a.transpose(0, 1).reshape(n_units, -1))
            if keep:
                kept.append(a.cpu())
            pb.update(len(ix))
    thresholds = est.threshold().to(net.device)
    t1 = time.perf_counter() - t1

    # pass 2: IoU
    t2 = time.perf_counter()
    acc = _Accumulator(n_units, list(dataset.concepts), net.device)
    with bar(f"dissect {net.display_name(layer)}: IoU") as pb:
        for g, ix in enumerate(groups):
            if keep:
                a = kept[g].to(net.device)
                samples = [dataset[i] for i in ix]
            else:
                a, samples = forward(ix)
            for j, sample in enumerate(samples):
                hw = sample.mask_size
                chunk = max(1, (1 << 24) // max(1, hw[0] * hw[1]))
                masks = torch.cat(
                    [
                        unit_masks(a[j, s : s + chunk], thresholds[s : s + chunk], hw)
                        for s in range(0, n_units, chunk)
                    ]
                )
                acc.add(masks, sample)
            pb.update(len(ix))
    ious = acc.iou()
    t2 = time.perf_counter() - t2

    spec = {
        "method": "dissection",
        "model": net.name,
        "layer": net.display_name(layer),
        "layer_path": path,
        "units": "all" if unit_list == list(range(channels)) else unit_list,
        "n_units": n_units,
        "dataset": dataset.describe() | {"images_used": n_images},
        "n_images": n_images,
        "positions": total,
        "quantile": q,
        "quantile_method": method,
        "histogram_bins": bins if method == "histogram" else None,
        "iou_threshold": float(iou_threshold),
        "upsampling": "bilinear, align_corners=False, to the label-map resolution",
        "batch": batch,
        "device": str(net.device),
        "reused_activations": keep,
        "quantile_seconds": round(t1, 3),
        "iou_seconds": round(t2, 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return DissectionResult(
        units=unit_list,
        thresholds=thresholds.double().cpu(),
        iou=ious,
        concepts=list(dataset.concepts),
        iou_threshold=float(iou_threshold),
        spec=spec,
    )
