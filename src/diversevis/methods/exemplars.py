"""Natural exemplars: the sampling baseline that diverse feature visualisation is compared with.

Cadena et al. (2018) argue (claim iii) that methods which *sample* natural images underestimate how
diverse the inputs driving a unit are. This module builds that baseline:

1. :func:`top_patches` crops ``candidates`` random natural patches of the unit's receptive-field size
   from the natural photographs (:func:`diversevis.naturals.sample_patches`), optionally gives each one
   the same L2 contrast as the DFV images and the MEI, reads the unit exactly as :func:`diversevis.diverse`
   does (:class:`diversevis.dfv.Problem`), and keeps the ``k`` most activating ones;
2. :func:`diverse_exemplars` picks ``n`` of those with the greedy max-min (farthest-point) rule
   :func:`greedy_max_min` in the *same* distance space as DFV (pixels around grey, or the rectified
   features of a lower layer over the image), starting from the most activating exemplar.

Contrast matching (``match_contrast=True``) maps a patch ``p`` (display space, ``(3, s, s)``) to

    x = 0.5 + rho * (p - mu) / ||p - mu||_2

where ``mu`` is the per-channel mean of the natural image set (:func:`diversevis.naturals.dataset_mean`,
broadcast over the patch) and ``rho`` the DFV norm (``contrast`` times the mean natural-patch norm, or an
absolute ``norm``). So ``||x - 0.5||_2 = rho`` exactly, the constraint every DFV image and the MEI obey,
and the patch keeps its spatial and chromatic structure relative to the natural mean. Pixels may leave
``[0, 1]`` (as they may for DFV images); a patch equal to ``mu`` everywhere maps to uniform grey.

>>> import diversevis as dv
>>> from diversevis.exemplars import top_patches, diverse_exemplars
>>> top = top_patches("vgg16-paper", "conv3_1", 21, k=64, candidates=8192)
>>> div = diverse_exemplars(top, 6, distance_layer="conv2_2")
>>> div.as_result(mei_activation=dv.mei("vgg16-paper", "conv3_1", 21).mei_activation).save("exemplars")
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diversevis.core.checks import integer
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.objectives import pairwise_rms_matrix
from diversevis.core.result import Result
from diversevis.images.naturals import DEFAULT_SCALES, _resolve_folder, _sample_locations, dataset_mean
from diversevis.methods.dfv import Problem, _common_spec
from diversevis.methods.problem import _prepare

__all__ = ["ExemplarSet", "greedy_max_min", "top_patches", "diverse_exemplars"]

_PIXEL_NAMES = (None, "", "pixel", "pixels", "none")


# ------------------------------------------------------------------------------------------- selection


def greedy_max_min(features: torch.Tensor, n: int, *, start: int = 0) -> list[int]:
    """Greedy max-min (farthest-point) selection of ``n`` diverse rows under the RMS distance.

    Starts with row ``start``; then repeatedly adds the row whose minimum RMS distance
    ``sqrt(mean_k (f_ik - f_jk)^2)`` to the rows selected so far is largest (ties go to the lowest index;
    rows already selected are never picked again, even when every remaining row duplicates one of them).
    A running ``(M,)`` vector of minimum distances is updated once per pick, so the cost is
    ``O(n * M * D)`` time and ``O(M)`` extra memory.

    The minimum pairwise distance of the result is at least half that of the best ``n``-subset (the
    classic 2-approximation for max-min dispersion in a metric space, whatever the start).

    Parameters
    ----------
    features : torch.Tensor
        ``(M, D)`` feature vectors, one per candidate (any ``(M, ...)`` shape is flattened to ``(M, D)``).
    n : int
        Number of rows to select, ``1 <= n <= M``.
    start : int
        Index of the first selected row, ``0 <= start < M``.

    Returns
    -------
    list of int
        ``n`` distinct row indices in selection order (``start`` first).

    Raises
    ------
    DiversevisError
        If ``features`` is not at least 2-D with ``M >= 1``, ``n`` is not in ``1..M``, or ``start`` is out
        of range.
    """
    if not isinstance(features, torch.Tensor):
        features = torch.as_tensor(features)
    if features.dim() < 2 or features.shape[0] < 1:
        raise DiversevisError(f"features must have shape (M, D) with M >= 1, got {tuple(features.shape)}")
    f = features.detach().flatten(1)
    if not f.is_floating_point():
        f = f.double()
    m = f.shape[0]
    n = integer("n", n, 1)
    if n > m:
        raise DiversevisError(f"cannot select n={n} rows from {m} candidates")
    start = integer("start", start, 0)
    if start >= m:
        raise DiversevisError(f"start={start} is out of range for {m} candidates")
    d = max(1, f.shape[1])
    selected = [start]
    taken = torch.zeros(m, dtype=torch.bool, device=f.device)
    taken[start] = True
    mind = torch.full((m,), math.inf, dtype=f.dtype, device=f.device)
    for _ in range(n - 1):
        last = f[selected[-1]]
        dist = torch.sqrt(((f - last) ** 2).sum(1) / d)
        torch.minimum(mind, dist, out=mind)
        # argmax returns the first maximal index; selected rows are excluded outright
        nxt = int(torch.where(taken, -math.inf, mind).argmax())
        selected.append(nxt)
        taken[nxt] = True
    return selected


# ------------------------------------------------------------------------------------------ the result


@dataclass
class ExemplarSet:
    """Natural patches that drive a unit, with their activations and (optionally) distances.

    Attributes
    ----------
    images : torch.Tensor
        ``(N, 3, H, W)`` display-space patches (contrast-matched if the spec says so; then pixels may
        leave ``[0, 1]``), ``H = W`` = the unit's receptive-field size.
    activations : torch.Tensor
        ``(N,)`` target values of ``images`` (the same read-out as :func:`diversevis.diverse`).
    indices : torch.Tensor
        ``(N,)`` int64 indices into the candidate pool ``sample_patches(H, candidates, seed=seed,
        folder=images)``.
    distances : torch.Tensor or None
        ``(N, N)`` RMS distances in the distance space named by ``spec["distance_layer"]`` (``None``
        until :func:`diverse_exemplars` computes them).
    spec : dict
        How the set was made: model, layer, unit, metric, k, candidates, seed, match_contrast, norm,
        distance_layer, versions, ... (JSON-serialisable).
    contrasts : torch.Tensor or None
        ``(N,)`` L2 norm of each *original* patch minus the dataset mean, ``||p - mu||_2`` (display units),
        i.e. the natural contrast before any matching.
    network : Network or None
        The network the activations came from (needed by :func:`diverse_exemplars`; not saved).
    """

    images: torch.Tensor
    activations: torch.Tensor
    indices: torch.Tensor
    distances: torch.Tensor | None
    spec: dict[str, Any]
    contrasts: torch.Tensor | None = None
    network: Network | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.activations.shape[0])

    def _pair_values(self) -> torch.Tensor | None:
        n = len(self)
        if self.distances is None or n < 2:
            return None
        iu = torch.triu_indices(n, n, 1)
        return self.distances[iu[0], iu[1]]

    @property
    def min_distance(self) -> float:
        """Smallest pairwise distance (``nan`` if not computed or fewer than two images)."""
        v = self._pair_values()
        return math.nan if v is None else float(v.min())

    @property
    def mean_distance(self) -> float:
        """Mean pairwise distance (``nan`` if not computed or fewer than two images)."""
        v = self._pair_values()
        return math.nan if v is None else float(v.mean())

    def as_result(self, mei_activation: float | None = None) -> Result:
        """Wrap as a :class:`~diversevis.result.Result` (to save, plot or compare with DFV output).

        Parameters
        ----------
        mei_activation : float, optional
            MEI activation at the same contrast, for the ratios (default: ``spec["mei_activation"]`` if
            :func:`diverse_exemplars` was given one).

        Returns
        -------
        Result
            ``images``, ``activations``, ``distances`` (``NaN`` off the diagonal when not computed), an
            empty ``loss_history``, the spec (``method="natural_exemplars"``), and ``extra`` holding the
            pool ``indices`` and natural ``contrasts``.
        """
        n = len(self)
        if self.distances is None:
            dist = torch.full((n, n), math.nan)
            dist.fill_diagonal_(0.0)
        else:
            dist = self.distances.detach().cpu().float()
        if mei_activation is None:
            mei_activation = self.spec.get("mei_activation")
        extra: dict[str, Any] = {"indices": [int(i) for i in self.indices]}
        if self.contrasts is not None:
            extra["contrasts"] = [float(c) for c in self.contrasts]
        return Result(
            images=self.images.detach().cpu().float(),
            activations=self.activations.detach().cpu().float(),
            distances=dist,
            loss_history=np.zeros(0, dtype=np.float32),
            spec=dict(self.spec),
            mei_activation=None if mei_activation is None else float(mei_activation),
            extra=extra,
        )

    def __repr__(self) -> str:
        s = self.spec
        dist = "" if math.isnan(self.min_distance) else f", min_distance={self.min_distance:.4g}"
        top = f", top={float(self.activations.max()):.4g}" if len(self) else ""
        return (
            f"ExemplarSet({s.get('model')} {s.get('layer')} unit={s.get('unit')}: {len(self)} patches"
            f"{top}{dist}, distance_layer={s.get('distance_layer')})"
        )


# ----------------------------------------------------------------------------------------- top patches


def _match(patches: torch.Tensor, mu: torch.Tensor, norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Contrast-matched patches ``0.5 + norm * (p - mu) / ||p - mu||`` and the original norms ``(N,)``."""
    diff = patches - mu
    c = diff.flatten(1).norm(dim=1)
    scale = torch.where(c > 0, norm / c.clamp_min(1e-30), torch.zeros_like(c))
    return 0.5 + diff * scale.view(-1, 1, 1, 1), c


def _patch_pool(
    locs: Any, mu: torch.Tensor, norm: float, match_contrast: bool
) -> Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]:
    """``pool(start, stop)``: the pool patches ``start:stop`` (contrast-matched or raw) and their natural
    contrasts ``||p - mu||``, cropped on demand from the sampled locations ``locs``."""

    def pool(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.from_numpy(locs.crop(start, stop)).permute(0, 3, 1, 2).contiguous()
        if match_contrast:
            return _match(p, mu, norm)
        return p, (p - mu).flatten(1).norm(dim=1)

    return pool


def _pool_activations(
    prob: Problem, pool: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]], candidates: int, batch: int
) -> torch.Tensor:
    """Target values ``(candidates,)`` (float32, CPU) of the whole pool, ``batch`` patches at a time."""
    net = prob.net
    # channels-last batches run the convolutions about 1.5x faster on CPU (oneDNN); a model that cannot
    # take them (e.g. it calls .view on its feature maps) gets ordinary contiguous batches instead
    fmt = [torch.channels_last if net.device.type == "cpu" else torch.contiguous_format]
    acts = torch.empty(candidates, dtype=torch.float32)

    def values(x: torch.Tensor) -> torch.Tensor:
        x = x.to(net.device)
        if fmt[0] is torch.channels_last:
            try:
                return prob.evaluate(x.contiguous(memory_format=fmt[0]), need_features=False)[0]
            except RuntimeError:
                fmt[0] = torch.contiguous_format
        return prob.evaluate(x, need_features=False)[0]

    with torch.no_grad():
        for start in range(0, candidates, batch):
            stop = min(candidates, start + batch)
            acts[start:stop] = values(pool(start, stop)[0]).float().cpu()
    if not torch.isfinite(acts).all():
        raise DiversevisError(f"{net.name} returned non-finite activations for some natural patches")
    return acts


def top_patches(
    model: Network | nn.Module | str,
    layer: str,
    unit: int | None = None,
    *,
    direction: Sequence[float] | torch.Tensor | None = None,
    metric: str = "max",
    k: int = 64,
    candidates: int = 8192,
    match_contrast: bool = True,
    contrast: float = 0.5,
    norm: float | None = None,
    images: str | Path | None = None,
    seed: int = 0,
    batch: int = 256,
    device: str | torch.device | None = None,
) -> ExemplarSet:
    """The ``k`` natural patches (of ``candidates`` random ones) that drive a unit most.

    Draws the pool ``sample_patches(size, candidates, seed=seed, folder=images)`` with ``size`` the
    unit's receptive-field size (``Problem.build(...).placement.image_size``), cropping and evaluating it
    ``batch`` patches at a time under :func:`torch.no_grad` (memory stays ``O(batch)``), and keeps the
    ``k`` highest target values.

    Parameters
    ----------
    model : Network, nn.Module or str
        The network (a zoo name such as ``"vgg16-paper"`` is loaded); it must take RGB input.
    layer, unit, direction, metric
        The target, as in :func:`diversevis.diverse`.
    k : int
        Number of exemplars kept, ``1 <= k <= candidates``.
    candidates : int
        Size of the random patch pool.
    match_contrast : bool
        Rescale every patch to the DFV contrast, ``x = 0.5 + norm * (p - mu) / ||p - mu||`` (see the
        module docstring); ``False`` keeps the raw patches.
    contrast : float
        DFV contrast as a fraction of the mean natural-patch norm (paper: 0.5).
    norm : float, optional
        Absolute L2 norm (display units) overriding ``contrast``.
    images : str or Path, optional
        Folder of natural images (default: the bundled photos); used for the pool, ``mu`` and the norm.
    seed : int
        Seed of the pool; the result is deterministic on CPU.
    batch : int
        Patches per forward pass (256 is about the fastest on CPU for RFs of 10--40 px: 8192 patches of
        24 px up to vgg16-paper conv3_1 take about 3 s on 2 cores).
    device : str, optional
        Move the network there (default: where it is).

    Returns
    -------
    ExemplarSet
        ``k`` patches sorted by activation, descending (ties: lower pool index first), with their pool
        ``indices`` and natural ``contrasts``; ``distances`` is ``None``.

    Raises
    ------
    DiversevisError
        On a bad target, layer, ``k``/``candidates``/``batch``/``seed``, a non-RGB network, a bad image
        folder, or a receptive field larger than every natural image.
    """
    t0 = time.perf_counter()
    net = _prepare(model, device)
    if net.in_channels != 3:
        raise DiversevisError(
            f"natural exemplars need an RGB network (3 input channels), {net.name} takes {net.in_channels}"
        )
    k = integer("k", k, 1)
    candidates = integer("candidates", candidates, 1)
    batch = integer("batch", batch, 1)
    if k > candidates:
        raise DiversevisError(f"k={k} exceeds the number of candidates ({candidates})")
    prob = Problem.build(
        net,
        layer,
        unit,
        direction,
        metric,
        contrast=contrast,
        norm=norm,
        distance_layer=None,
        images_folder=images,
    )
    size = prob.placement.image_size
    # sample_patches(size, candidates, seed=seed, folder=images) is locs.crop(0, candidates); cropping
    # chunk by chunk gives the same patches without holding the whole pool in memory
    locs = _sample_locations(size, candidates, _resolve_folder(images), DEFAULT_SCALES, seed)
    mu = torch.from_numpy(dataset_mean(images).astype(np.float32)).view(3, 1, 1)
    pool = _patch_pool(locs, mu, prob.norm, match_contrast)
    acts = _pool_activations(prob, pool, candidates, batch)
    order = torch.sort(acts, descending=True, stable=True).indices[:k]
    chosen = [pool(int(i), int(i) + 1) for i in order]
    imgs = torch.cat([c[0] for c in chosen])
    contrasts = torch.cat([c[1] for c in chosen])
    spec = _common_spec(
        method="natural_exemplars",
        **prob.spec(),
        contrast=contrast if norm is None else None,
        k=k,
        candidates=candidates,
        seed=seed,
        match_contrast=bool(match_contrast),
        scales=list(DEFAULT_SCALES),
        dataset_mean=[float(v) for v in mu.flatten()],
        natural_images=str(images) if images else "bundled",
        device=str(net.device),
        dtype="float32",
        batch=batch,
        seconds=round(time.perf_counter() - t0, 3),
    )
    return ExemplarSet(
        images=imgs,
        activations=acts[order].clone(),
        indices=order.clone(),
        distances=None,
        spec=spec,
        contrasts=contrasts,
        network=net,
    )


# ----------------------------------------------------------------------------------- diverse exemplars


def _eligible(
    acts: torch.Tensor, n: int, min_ratio: float | None, mei_activation: float | None
) -> tuple[torch.Tensor, float | None]:
    """Indices of the exemplars reaching ``min_ratio * mei_activation`` (all without ``min_ratio``), and
    ``min_ratio`` as a float; raises if fewer than ``n`` are eligible."""
    eligible = torch.arange(len(acts))
    if min_ratio is not None:
        min_ratio = float(min_ratio)
        if mei_activation is None or mei_activation <= 0:
            raise DiversevisError("min_ratio needs a positive mei_activation (the MEI at the same contrast)")
        if not math.isfinite(min_ratio):
            raise DiversevisError(f"min_ratio must be finite, got {min_ratio}")
        eligible = torch.nonzero(acts >= min_ratio * mei_activation).flatten()
    if n > len(eligible):
        why = ""
        if min_ratio is not None:
            best = float(acts.max()) / mei_activation if len(acts) else math.nan
            why = f" (activation >= {min_ratio:g} x MEI; the best exemplar reaches {best:.1%} of the MEI)"
        raise DiversevisError(
            f"cannot select n={n} exemplars: only {len(eligible)} of {len(acts)} are eligible{why}"
        )
    return eligible, min_ratio


def _distance_problem(exemplars: ExemplarSet, net: Network, distance_layer: str | None) -> Problem:
    """The exemplars' target (from their spec) with ``distance_layer`` as the distance space."""
    s = exemplars.spec
    prob = Problem.build(
        net,
        s["layer_path"],
        s["unit"],
        s["direction"],
        s["metric"],
        contrast=1.0,
        norm=s["norm"],
        distance_layer=distance_layer,
        images_folder=None,
    )
    if tuple(exemplars.images.shape[-2:]) != (prob.placement.image_size,) * 2:
        raise DiversevisError(
            f"exemplar images are {tuple(exemplars.images.shape[-2:])} but the unit's receptive field is "
            f"{prob.placement.image_size} px"
        )
    return prob


def _features(prob: Problem, imgs: torch.Tensor, batch: int) -> torch.Tensor:
    """Flattened distance-space features ``(N, D)`` (float32, CPU) of ``imgs``, ``batch`` at a time."""
    net = prob.net
    feats = []
    with torch.no_grad():
        for start in range(0, len(imgs), batch):
            x = imgs[start : start + batch].to(net.device)
            feats.append(prob.evaluate(x)[1].flatten(1).float().cpu())
    return torch.cat(feats)


def diverse_exemplars(
    exemplars: ExemplarSet,
    n: int = 6,
    *,
    distance_layer: str | None = None,
    min_ratio: float | None = None,
    mei_activation: float | None = None,
    batch: int = 256,
) -> ExemplarSet:
    """A diverse subset of the top exemplars, in the same distance space as :func:`diversevis.diverse`.

    Among the exemplars (optionally only those with ``activation >= min_ratio * mei_activation``), selects
    ``n`` with :func:`greedy_max_min`, starting from the most activating one. The features are those of
    ``Problem.build(..., distance_layer=distance_layer).evaluate(images)`` -- pixels minus grey 0.5, or the
    rectified ``distance_layer`` map restricted to the positions over the image -- so the distances are
    the ones DFV maximises and reports.

    Parameters
    ----------
    exemplars : ExemplarSet
        Output of :func:`top_patches` (it carries the network).
    n : int
        Size of the subset, ``1 <= n <=`` number of eligible exemplars.
    distance_layer : str, optional
        Layer whose rectified features measure distances (``None`` or ``"pixels"``: pixel space).
    min_ratio : float, optional
        Keep only exemplars reaching this fraction of ``mei_activation`` (needs ``mei_activation > 0``).
    mei_activation : float, optional
        MEI activation at the same contrast; recorded in the spec (for ratios in :meth:`as_result`).
    batch : int
        Images per forward pass when computing features.

    Returns
    -------
    ExemplarSet
        ``n`` exemplars in selection order (the most activating eligible one first), with ``distances``
        ``(n, n)`` in the distance space and ``spec`` extended by ``n``, ``distance_layer``, ``min_ratio``,
        ``mei_activation``, ``eligible`` and ``ranks`` (positions in the input set).

    Raises
    ------
    DiversevisError
        If the set carries no network, ``n`` is out of range, fewer than ``n`` exemplars are eligible,
        ``min_ratio`` is given without a positive ``mei_activation``, or the distance layer is invalid.
    """
    if not isinstance(exemplars, ExemplarSet):
        raise DiversevisError(f"expected an ExemplarSet (from top_patches), got {type(exemplars).__name__}")
    net = exemplars.network
    if net is None:
        raise DiversevisError(
            "this ExemplarSet carries no network; make it with top_patches (or set .network)"
        )
    n = integer("n", n, 1)
    batch = integer("batch", batch, 1)
    if mei_activation is not None:
        mei_activation = float(mei_activation)
        if not math.isfinite(mei_activation):
            raise DiversevisError(f"mei_activation must be finite, got {mei_activation}")
    acts = exemplars.activations.detach().cpu()
    eligible, min_ratio = _eligible(acts, n, min_ratio, mei_activation)
    if distance_layer in _PIXEL_NAMES:
        distance_layer = None
    prob = _distance_problem(exemplars, net, distance_layer)
    f = _features(prob, exemplars.images[eligible], batch)
    first = int(torch.sort(acts[eligible], descending=True, stable=True).indices[0])
    picked = greedy_max_min(f, n, start=first)
    ranks = eligible[picked]
    spec = dict(exemplars.spec)
    spec.update(
        method="natural_exemplars",
        n=n,
        selection="greedy_max_min",
        distance_layer=None if prob.distance_layer is None else net.display_name(prob.distance_layer),
        min_ratio=min_ratio,
        mei_activation=mei_activation,
        eligible=int(len(eligible)),
        ranks=[int(r) for r in ranks],
    )
    return ExemplarSet(
        images=exemplars.images[ranks].clone(),
        activations=exemplars.activations[ranks].clone(),
        indices=exemplars.indices[ranks].clone(),
        distances=pairwise_rms_matrix(f[picked]),
        spec=spec,
        contrasts=None if exemplars.contrasts is None else exemplars.contrasts[ranks].clone(),
        network=net,
    )
