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

Layout: this module runs the two passes over the dataset; the quantile estimators, masks and IoU counts
are in :mod:`.dissection_stats` and the result (table, plot, files) in :mod:`.dissection_result`. Their
public names are re-exported here.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.methods.classic.concepts import ConceptDataset, Sample
from diversevis.methods.classic.dissection_result import DissectionResult
from diversevis.methods.classic.dissection_stats import (
    ExactQuantile,
    HistogramQuantile,
    _Accumulator,
    _check_quantile,
    _chunked_masks,
    iou,
    quantile_threshold,
    unit_masks,
    upsample,
)
from diversevis.methods.dfv import versions
from diversevis.methods.problem import _prepare

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


# ------------------------------------------------------------------------------------------ arguments


def _check_arguments(
    quantile: float, quantile_method: str, iou_threshold: float, batch: int, bins: int, memory: int
) -> float:
    """Refuse bad settings; returns the quantile as a float."""
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
    return q


def _open_dataset(
    dataset: ConceptDataset | str | Path | None,
    size: int,
    images: str | Path | None,
    categories: Sequence[str] | None,
    max_images: int | None,
) -> ConceptDataset:
    """The dataset: as given, a Broden directory, or by default the colour probe on natural photos."""
    if dataset is None:
        from diversevis.methods.classic.concepts import ColorProbe

        return ColorProbe(size, folder=images, max_images=max_images)
    if isinstance(dataset, (str, Path)):
        from diversevis.methods.classic.concepts import BrodenDataset

        return BrodenDataset(dataset, categories=categories, max_images=max_images)
    if not isinstance(dataset, ConceptDataset):
        raise DiversevisError(
            f"dataset must be a ConceptDataset or a Broden directory, got {type(dataset).__name__}"
        )
    return dataset


def _images_used(net: Network, dataset: ConceptDataset, max_images: int | None) -> int:
    """Number of images dissected; refuses an empty dataset, one without concepts, a non-RGB network."""
    n_images = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if n_images < 1:
        raise DiversevisError("the dataset has no images")
    if not dataset.concepts:
        raise DiversevisError("the dataset defines no concepts")
    if net.in_channels != 3:
        raise DiversevisError(f"dissection needs an RGB network, {net.name} takes {net.in_channels} channels")
    return n_images


def _count_positions(net: Network, layer: str, sizes: list[tuple[int, int]]) -> int:
    """Positions of the layer's maps over all images (known before any forward pass)."""
    total = 0
    shapes: dict[tuple[int, int], tuple[int, ...]] = {}
    for s in sizes:
        if s not in shapes:
            shapes[s] = net.output_shape(layer, s)
            if len(shapes[s]) != 3:
                raise DiversevisError(
                    f"layer {layer!r} has no spatial output for a {s[1]}x{s[0]} image; choose a conv layer"
                )
        total += shapes[s][1] * shapes[s][2]
    return total


# ------------------------------------------------------------------------------------- the dataset passes


class _LayerReader:
    """Runs groups of dataset images through the network and keeps the chosen units of one layer."""

    def __init__(
        self,
        net: Network,
        layer: str,
        path: str,
        units: list[int],
        dataset: ConceptDataset,
        n_images: int,
        progress: bool,
    ) -> None:
        self.net, self.layer, self.path, self.dataset = net, layer, path, dataset
        self.n_units = len(units)
        self.idx = torch.tensor(units, dtype=torch.long, device=net.device)
        self.n_images, self.progress = n_images, progress

    def __call__(self, ix: list[int]) -> tuple[torch.Tensor, list[Sample]]:
        """``(B, U, h, w)`` float32 activations of images ``ix``, and their samples."""
        samples = [self.dataset[i] for i in ix]
        x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            a = self.net.activations(x.to(self.net.device), [self.path])[self.path]
            a = a.index_select(1, self.idx).float()
        if not bool(torch.isfinite(a).all()):
            raise DiversevisError(f"{self.net.name} returned non-finite activations in layer {self.layer!r}")
        return a, samples

    def bar(self, what: str):
        """A tqdm bar over the images (hidden unless ``progress``)."""
        from tqdm.auto import tqdm

        desc = f"dissect {self.net.display_name(self.layer)}: {what}"
        return tqdm(
            total=self.n_images, desc=desc, disable=not self.progress, leave=False, dynamic_ncols=True
        )


def _estimator(
    method: str, n_units: int, total: int, q: float, bins: int, device: torch.device
) -> ExactQuantile | HistogramQuantile:
    if method == "exact":
        return ExactQuantile(n_units, total, q, device=device)
    return HistogramQuantile(n_units, q, bins, device=device)


def _threshold_pass(
    read: _LayerReader, groups: list[list[int]], est: ExactQuantile | HistogramQuantile, keep: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Pass 1: every unit's threshold ``T_k``; also the activations (on the CPU) when ``keep``."""
    kept: list[torch.Tensor] = []
    with read.bar("quantiles") as pb:
        for ix in groups:
            a, _ = read(ix)
            est.update(a.transpose(0, 1).reshape(read.n_units, -1))
            if keep:
                kept.append(a.cpu())
            pb.update(len(ix))
    return est.threshold().to(read.net.device), kept


def _iou_pass(
    read: _LayerReader, groups: list[list[int]], thresholds: torch.Tensor, kept: list[torch.Tensor] | None
) -> torch.Tensor:
    """Pass 2: ``(U, C)`` IoU of every unit's masks with every concept (from ``kept`` activations if given)."""
    acc = _Accumulator(read.n_units, list(read.dataset.concepts), read.net.device)
    with read.bar("IoU") as pb:
        for g, ix in enumerate(groups):
            if kept is not None:
                a = kept[g].to(read.net.device)
                samples = [read.dataset[i] for i in ix]
            else:
                a, samples = read(ix)
            for j, sample in enumerate(samples):
                acc.add(_chunked_masks(a[j], thresholds, sample.mask_size), sample)
            pb.update(len(ix))
    return acc.iou()


# ------------------------------------------------------------------------------------------- the method


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
    net = _prepare(model, device)
    q = _check_arguments(quantile, quantile_method, iou_threshold, batch, bins, memory)
    dataset = _open_dataset(dataset, size, images, categories, max_images)
    n_images = _images_used(net, dataset, max_images)

    path = net.resolve(layer)
    channels = net.channels(layer)
    unit_list = _resolve_units(units, channels)
    n_units = len(unit_list)
    read = _LayerReader(net, layer, path, unit_list, dataset, n_images, progress)
    sizes = [tuple(dataset.image_size(i)) for i in range(n_images)]
    total = _count_positions(net, layer, sizes)
    method = quantile_method
    if method == "auto":
        method = "exact" if n_units * ExactQuantile.size(total, q) <= memory else "histogram"
    est = _estimator(method, n_units, total, q, bins, net.device)
    keep = n_units * total <= memory  # pass 2 reuses the activations of pass 1
    groups = list(_batches(sizes, batch))

    t1 = time.perf_counter()
    thresholds, kept = _threshold_pass(read, groups, est, keep)
    t1 = time.perf_counter() - t1
    t2 = time.perf_counter()
    ious = _iou_pass(read, groups, thresholds, kept if keep else None)
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
