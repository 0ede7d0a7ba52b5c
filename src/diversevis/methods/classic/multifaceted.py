"""Multifaceted feature visualization (Nguyen, Yosinski & Clune 2016, arXiv 1602.03616).

A unit can fire for several different kinds of input ("facets"). Plain activation maximisation mixes
them; multifaceted visualization (MFV) finds them first and then visualises each one separately:

1. **Exemplars.** The ``top`` most activating of ``candidates`` random natural patches (display space,
   the unit's receptive-field size by default; :func:`diversevis.exemplars.top_patches`), or a candidate
   set given by the caller.
2. **Embedding.** Each exemplar's rectified features in ``embed_layer`` (default: the unit's own layer),
   spatially mean- or max-pooled to ``(C,)`` or flattened; ``"pixels"`` embeds the pixels themselves.
   Rows are scaled to unit norm by default (k-means on directions: facets are kinds of input, not
   response strengths) and optionally reduced by PCA. (The paper embeds fc7 codes and runs t-SNE
   first; method.md C.2.)
3. **Facets.** k-means with ``k`` clusters (scikit-learn, ``n_init=10``, ``random_state=seed``).
   Facets are ordered by size, largest first.
4. **Initialisation.** Each facet starts from the mean of its ``n_mean`` members closest to the
   centroid (15 in the paper; all members when the cluster is smaller).
5. **Optimisation.** All facets are optimised together (one batch, independent losses and early
   stopping; :func:`diversevis.optimize.optimize_groups`). The loss of facet ``i`` is

       L_i = -a(J(x_i)) / a_ref + tv * TV(x_i)

   where ``x_i = sigmoid(v_i)`` keeps the image in ``[0, 1]`` display space, ``a`` is the unit read as
   :class:`diversevis.dfv.Problem` reads it (RF-sized image in a mean-grey canvas for padded networks),
   ``a_ref`` the largest exemplar activation (so ``tv`` does not depend on the unit's scale), ``TV`` the
   mean isotropic total variation per pixel and channel, and ``J`` the paper's centre-biased jitter:
   the image is padded with grey by ``jitter`` pixels and an image-sized window is cut at offsets
   ``o ~ round(N(jitter, window * 2 * jitter))`` clipped to ``[0, 2 * jitter]`` (independently per axis
   and per facet), so the centre of the image is seen most often. The reported activations are read
   without jitter. Optionally (``facet_weight = beta > 0``, not in the paper) the loss adds
   ``beta * (1 - cos(phi(J(x_i)), c_i))``, which keeps the image's embedding ``phi`` near its facet's
   mean unit-norm embedding ``c_i``; without it only the starting image distinguishes the facets, and
   for deep units whose natural mean images are blurry the facets tend to converge to the same pattern.

>>> import diversevis as dv
>>> from diversevis.classic.multifaceted import multifaceted
>>> res = multifaceted("vgg16", "conv4_3", 10, k=4, candidates=1024)
>>> res.sizes, res.activations
>>> res.save("runs/vgg16_conv4_3_u10_multifaceted")   # grid.png, facets.npz, result.json

Layout: this module holds the method and its optimisation (step 5 and its parts); steps 1-4 (read-out,
exemplars, embedding, k-means, mean images) are in :mod:`.multifaceted_facets`, the result (grid,
files) in :mod:`.multifaceted_result` and the settings (:class:`MultifacetedSettings`, whose defaults
are this function's) in :mod:`.multifaceted_settings`. Their public names are re-exported here.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diversevis.core.checks import integer
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.optimize import OptimizeResult, optimize_groups
from diversevis.methods.classic.multifaceted_facets import (
    _PIXEL_NAMES,
    POOLS,
    UnitReadout,
    _exemplars,
    _features,
    embed,
    facet_means,
    kmeans_facets,
)
from diversevis.methods.classic.multifaceted_result import MultifacetedResult
from diversevis.methods.classic.multifaceted_settings import MultifacetedSettings
from diversevis.methods.dfv import versions
from diversevis.methods.problem import _prepare

__all__ = [
    "POOLS",
    "MultifacetedResult",
    "MultifacetedSettings",
    "UnitReadout",
    "embed",
    "kmeans_facets",
    "facet_means",
    "centre_biased_offsets",
    "jitter_crop",
    "total_variation",
    "multifaceted",
]

# ------------------------------------------------------------------------------ parts of the optimisation


def centre_biased_offsets(
    n: int, jitter: int, window: float = 0.3, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop offsets biased to the centre (Nguyen et al.'s ``N(centre, window * range)``).

    Parameters
    ----------
    n : int
        Number of offset pairs.
    jitter : int
        Grey margin in pixels; offsets lie in ``[0, 2 * jitter]`` and ``jitter`` is the centre.
    window : float
        Standard deviation as a fraction of the range ``2 * jitter`` (paper: 0.3).
    generator : torch.Generator, optional
        Random source.

    Returns
    -------
    torch.Tensor
        ``(n, 2)`` int64 (row, column) offsets ``round(N(jitter, window * 2 * jitter))`` clipped to the range.
    """
    if jitter <= 0:
        return torch.zeros(n, 2, dtype=torch.long)
    z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    off = torch.round(jitter + z * (window * 2 * jitter))
    return off.clamp(0, 2 * jitter).long()


def jitter_crop(images: torch.Tensor, offsets: torch.Tensor, jitter: int) -> torch.Tensor:
    """Translate each image by cutting it from a grey-padded copy.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, C, H, W)`` display-space images.
    offsets : torch.Tensor
        ``(N, 2)`` (row, column) offsets in ``[0, 2 * jitter]`` (``jitter`` = no shift).
    jitter : int
        Grey padding on every side, in pixels.

    Returns
    -------
    torch.Tensor
        ``(N, C, H, W)``: image ``i`` shifted by ``jitter - offsets[i]`` pixels, grey 0.5 where it left
        the frame.
    """
    if jitter <= 0:
        return images
    h, w = images.shape[-2:]
    padded = F.pad(images, (jitter, jitter, jitter, jitter), value=0.5)
    crops = [
        padded[i, :, int(oy) : int(oy) + h, int(ox) : int(ox) + w]
        for i, (oy, ox) in enumerate(offsets.tolist())
    ]
    return torch.stack(crops)


def total_variation(images: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean isotropic total variation per image.

    ``TV(x) = mean_{c, i, j} sqrt((x[c, i+1, j] - x[c, i, j])^2 + (x[c, i, j+1] - x[c, i, j])^2 + eps)``
    over the ``(H - 1) x (W - 1)`` positions that have both neighbours.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, C, H, W)``, ``H, W >= 2``.

    Returns
    -------
    torch.Tensor
        ``(N,)`` in image units per pixel (a step edge of height 1 across a 2x2 image gives
        ``sqrt(1 + eps)`` at its one position).
    """
    dy = images[:, :, 1:, :-1] - images[:, :, :-1, :-1]
    dx = images[:, :, :-1, 1:] - images[:, :, :-1, :-1]
    return torch.sqrt(dy**2 + dx**2 + eps).flatten(1).mean(1)


class _SigmoidImage(nn.Module):
    """``sigmoid(v)``: images that stay in ``(0, 1)``, started from given images."""

    def __init__(self, init: torch.Tensor, eps: float = 1e-3) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.logit(init.detach().float().clamp(eps, 1 - eps)))

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.raw)


# ------------------------------------------------------------------------------------------ arguments


def _rgb_network(model: Network | nn.Module | str, device: str | torch.device | None) -> Network:
    """The network, moved to ``device``; refused unless it takes RGB images."""
    net = _prepare(model, device)
    if net.in_channels != 3:
        raise DiversevisError(
            f"multifaceted visualization needs an RGB network, {net.name} takes {net.in_channels}"
        )
    return net


def _check_unit(unit: Any) -> int:
    """The unit as an int channel index (checked before the settings)."""
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)):
        raise DiversevisError(f"unit must be an int channel index, got {unit!r}")
    return int(unit)


def _check_jitter(jitter: int | None, size: int) -> int:
    """The jitter margin: by default ``round(size / 16)`` (at least 1), none below 8 px."""
    if jitter is None:
        jitter = max(1, round(size / 16)) if size >= 8 else 0
    return integer("jitter", jitter, 0)


def _embedding_layer(net: Network, layer: str, embed_layer: str | None) -> str:
    """The layer embedding the patches (default: the unit's own), resolved unless it names pixels."""
    emb_layer = layer if embed_layer is None else embed_layer
    if emb_layer.lower() not in _PIXEL_NAMES:
        net.resolve(emb_layer)
    return emb_layer


# ------------------------------------------------------------------------------------------ the steps


@dataclass
class _Facets:
    """Steps 1-4: the exemplars, their embedding and facets, and each facet's starting image."""

    images: torch.Tensor  # (P, 3, S, S) top patches, by activation (descending)
    activations: torch.Tensor  # (P,)
    source: str  # "given" or "natural"
    features: torch.Tensor  # (P, D) embedding
    labels: np.ndarray  # (P,) facet per patch, largest facet first
    distances: np.ndarray  # (P,) distance to the facet's centroid
    init: torch.Tensor  # (k, 3, S, S) mean images in [0, 1]
    scale: float  # a_ref: the largest exemplar activation magnitude (1 when all are zero)
    seconds: float  # time taken by step 1


def _find_facets(
    net: Network,
    layer: str,
    readout: UnitReadout,
    s: MultifacetedSettings,
    patches: torch.Tensor | None,
    embed_layer: str,
) -> _Facets:
    """Steps 1-4: exemplars, embedding, k-means facets and their mean images."""
    t_ex = time.perf_counter()
    top_imgs, top_acts, source = _exemplars(
        net,
        layer,
        readout.unit,
        readout,
        patches=patches,
        top=s.top,
        candidates=s.candidates,
        match_contrast=s.match_contrast,
        contrast=s.contrast,
        images=s.images,
        seed=s.seed,
        batch=s.batch,
    )
    t_ex = time.perf_counter() - t_ex
    feats = embed(net, top_imgs, embed_layer, pool=s.pool, batch=s.batch)
    labels, dist = kmeans_facets(feats, s.k, normalize=s.normalize, pca=s.pca, seed=s.seed)
    means, _ = facet_means(top_imgs, labels, dist, s.n_mean)
    scale = float(top_acts.abs().max())
    scale = scale if scale > 0 else 1.0
    return _Facets(top_imgs, top_acts, source, feats, labels, dist, means.clamp(0, 1), scale, t_ex)


def _facet_centroids(facets: _Facets, k: int, normalize: bool) -> torch.Tensor:
    """``(k, D)`` mean embedding of each facet's members (unit-norm embeddings with ``normalize``)."""
    unit_feats = F.normalize(facets.features, dim=1) if normalize else facets.features
    lab = torch.from_numpy(facets.labels)
    return torch.stack([unit_feats[lab == f].mean(0) for f in range(k)])


def _optimise_facets(
    net: Network,
    readout: UnitReadout,
    facets: _Facets,
    s: MultifacetedSettings,
    embed_layer: str,
    jitter: int,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[OptimizeResult]]:
    """Step 5: all facets optimised in one batch from their mean images.

    Returns the visualizations ``(k, 3, S, S)`` and their activations ``(k,)`` (CPU, read without
    jitter), the activations of the mean images ``(k,)``, and each facet's optimisation result.
    """
    scale = facets.scale
    gen = torch.Generator().manual_seed(s.seed)
    param = _SigmoidImage(facets.init).to(net.device)
    centroids = None
    if s.facet_weight > 0:
        centroids = _facet_centroids(facets, s.k, s.normalize).to(net.device)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        off = centre_biased_offsets(x.shape[0], jitter, s.window, generator=gen)
        xj = jitter_crop(x, off, jitter)
        loss = -readout(xj) / scale + s.tv * total_variation(x)
        if centroids is not None:
            phi = _features(net, xj, embed_layer, s.pool)
            loss = loss + s.facet_weight * (1 - F.cosine_similarity(phi, centroids, dim=1))
        return loss

    opts = optimize_groups(
        param,
        loss_fn,
        groups=s.k,
        lr=s.lr,
        max_iter=s.max_iter,
        patience=s.patience,
        progress=progress,
        desc=f"multifaceted {net.display_name(readout.layer)}:{readout.unit}",
    )
    vis = torch.cat([o.images for o in opts]).detach().cpu()
    with torch.no_grad():
        acts = readout(vis).float().cpu()
        mean_acts = readout(facets.init.to(net.device)).float().cpu()
    return vis, acts, mean_acts, opts


def _spec(
    net: Network,
    layer: str,
    s: MultifacetedSettings,
    readout: UnitReadout,
    facets: _Facets,
    patches: torch.Tensor | None,
    embed_layer: str,
    jitter: int,
    optimised: tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[OptimizeResult]],
    t0: float,
) -> dict[str, Any]:
    """The run spec: every setting, the facets' sizes, the activations, timings and versions."""
    _, acts, mean_acts, opts = optimised
    return {
        "method": "multifaceted",
        "model": net.name,
        "layer": net.display_name(layer),
        "layer_path": net.resolve(layer),
        "unit": readout.unit,
        "k": s.k,
        "top": s.top,
        "candidates": s.candidates if patches is None else int(torch.as_tensor(patches).shape[0]),
        "patch_source": facets.source,
        "patch_size": readout.size,
        "rf_size": readout.rf,
        "match_contrast": bool(s.match_contrast),
        "contrast": s.contrast if s.match_contrast else None,
        "embed_layer": "pixels" if embed_layer.lower() in _PIXEL_NAMES else net.display_name(embed_layer),
        "pool": s.pool,
        "normalize": bool(s.normalize),
        "pca": s.pca,
        "n_mean": s.n_mean,
        "parametrization": "sigmoid pixels",
        "lr": s.lr,
        "max_iter": s.max_iter,
        "patience": s.patience,
        "tv": s.tv,
        "facet_weight": s.facet_weight,
        "jitter": jitter,
        "window": s.window,
        "activation_scale": facets.scale,
        "seed": s.seed,
        "batch": s.batch,
        "natural_images": str(s.images) if s.images else "bundled",
        "device": str(net.device),
        "cluster_sizes": [int(v) for v in np.bincount(facets.labels, minlength=s.k)],
        "activations": [float(a) for a in acts],
        "mean_activations": [float(a) for a in mean_acts],
        "n_iter": [o.n_iter for o in opts],
        "exemplar_seconds": round(facets.seconds, 3),
        "optimize_seconds": round(opts[0].seconds, 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------------ the method


def multifaceted(
    model: Network | nn.Module | str,
    layer: str,
    unit: int,
    *,
    k: int = MultifacetedSettings.k,
    top: int = MultifacetedSettings.top,
    candidates: int = MultifacetedSettings.candidates,
    patches: torch.Tensor | None = None,
    patch_size: int | None = MultifacetedSettings.patch_size,
    match_contrast: bool = MultifacetedSettings.match_contrast,
    contrast: float = MultifacetedSettings.contrast,
    embed_layer: str | None = MultifacetedSettings.embed_layer,
    pool: str = MultifacetedSettings.pool,
    normalize: bool = MultifacetedSettings.normalize,
    pca: int | None = MultifacetedSettings.pca,
    n_mean: int = MultifacetedSettings.n_mean,
    lr: float = MultifacetedSettings.lr,
    max_iter: int = MultifacetedSettings.max_iter,
    patience: int = MultifacetedSettings.patience,
    tv: float = MultifacetedSettings.tv,
    facet_weight: float = MultifacetedSettings.facet_weight,
    jitter: int | None = MultifacetedSettings.jitter,
    window: float = MultifacetedSettings.window,
    seed: int = MultifacetedSettings.seed,
    batch: int = MultifacetedSettings.batch,
    images: str | Path | None = MultifacetedSettings.images,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> MultifacetedResult:
    """Multifaceted feature visualization of one unit (see the module docstring for the method).

    Parameters
    ----------
    model : Network, nn.Module or str
        The network (RGB input).
    layer : str
        Layer alias or dot path of the unit.
    unit : int
        Channel index.
    k : int
        Number of facets (k-means clusters), ``1 <= k <= top``.
    top : int
        Number of most activating patches clustered.
    candidates : int
        Random natural patches scored (ignored when ``patches`` is given).
    patches : torch.Tensor, optional
        ``(N, 3, S, S)`` display-space candidate set to use instead of natural patches; ``S`` sets the
        image size.
    patch_size : int, optional
        Side of the natural patches and visualizations (default: the unit's receptive-field size).
    match_contrast : bool
        Give every natural patch the DFV contrast before scoring (as :func:`top_patches`; RF size only).
    contrast : float
        DFV contrast for ``match_contrast``.
    embed_layer : str, optional
        Layer embedding the patches (default: ``layer``); ``"pixels"`` for pixel space.
    pool : {"mean", "max", "flatten"}
        Spatial pooling of the embedding.
    normalize : bool
        Cluster unit-norm embeddings (cosine k-means; default) instead of raw ones.
    pca : int, optional
        Principal components kept before k-means (default: none).
    n_mean : int
        Members closest to the centroid averaged into the starting image (paper: 15).
    lr : float
        Adam learning rate on the logits of the pixels.
    max_iter : int
        Iterations per facet.
    patience : int
        Early stopping patience of the shared loop (0, the default, runs ``max_iter`` iterations as the
        paper's fixed schedule does).
    tv : float
        Weight of the total-variation regulariser (relative to ``a / a_ref``).
    facet_weight : float
        Weight ``beta`` of an optional facet-consistency term ``beta * (1 - cos(phi(J(x_i)), c_i))``, where
        ``phi`` is the (pooled, rectified) embedding and ``c_i`` the mean unit-norm embedding of facet
        ``i``'s members: it keeps each visualization in its facet. 0 (default) is the paper's method,
        where only the starting image tells the facets apart.
    jitter : int, optional
        Grey margin of the centre-biased jitter in pixels (default ``round(S / 16)``; 0 disables).
    window : float
        Jitter SD as a fraction of the offset range (paper: 0.3).
    seed : int
        Seed of the natural pool, PCA, k-means and the jitter.
    batch : int
        Patches per forward pass when scoring and embedding.
    images : str or Path, optional
        Folder of natural images (default: the bundled photos).
    device : str, optional
        Move the network there.
    progress : bool
        Show a progress bar for the optimisation.

    Returns
    -------
    MultifacetedResult

    Raises
    ------
    DiversevisError
        On a bad layer or unit, ``k`` larger than ``top`` or the number of distinct patches, ``top``
        larger than the candidate pool, an unknown pool, or non-positive hyperparameters.
    """
    t0 = time.perf_counter()
    net = _rgb_network(model, device)
    unit = _check_unit(unit)
    s = MultifacetedSettings.from_arguments(locals())
    return _run(net, layer, unit, s, patches, progress, t0)


def run_multifaceted(
    model: Network | nn.Module | str,
    layer: str,
    unit: int,
    s: MultifacetedSettings,
    *,
    patches: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> MultifacetedResult:
    """:func:`multifaceted` with its settings given as one :class:`MultifacetedSettings` (as the CLI calls it)."""
    t0 = time.perf_counter()
    net = _rgb_network(model, device)
    return _run(net, layer, _check_unit(unit), s, patches, progress, t0)


def _run(
    net: Network,
    layer: str,
    unit: int,
    s: MultifacetedSettings,
    patches: torch.Tensor | None,
    progress: bool,
    t0: float,
) -> MultifacetedResult:
    """The five steps for a checked network, unit and settings; ``t0`` is when the call started."""
    patch_size = s.patch_size if patches is None else int(torch.as_tensor(patches).shape[-1])
    readout = UnitReadout(net, layer, unit, patch_size)
    jitter = _check_jitter(s.jitter, readout.size)
    emb_layer = _embedding_layer(net, layer, s.embed_layer)

    facets = _find_facets(net, layer, readout, s, patches, emb_layer)  # 1.-4.
    optimised = _optimise_facets(net, readout, facets, s, emb_layer, jitter, progress)  # 5.
    vis, acts, mean_acts, opts = optimised
    return MultifacetedResult(
        visualizations=vis,
        activations=acts,
        mean_images=facets.init.cpu(),
        mean_activations=mean_acts,
        patches=facets.images.cpu(),
        patch_activations=facets.activations.cpu(),
        labels=facets.labels,
        centroid_distances=facets.distances,
        loss_history=[o.history for o in opts],
        spec=_spec(net, layer, s, readout, facets, patches, emb_layer, jitter, optimised, t0),
    )
