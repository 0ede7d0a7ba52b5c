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
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diversevis.core.cache import atomic_write_bytes, atomic_write_json, output_dir
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network, as_network
from diversevis.core.optimize import optimize_groups
from diversevis.methods.dfv import Problem, versions

__all__ = [
    "POOLS",
    "MultifacetedResult",
    "UnitReadout",
    "embed",
    "kmeans_facets",
    "facet_means",
    "centre_biased_offsets",
    "jitter_crop",
    "total_variation",
    "multifaceted",
]

#: Spatial pooling of the embedding features.
POOLS = ("mean", "max", "flatten")
_PIXEL_NAMES = ("pixel", "pixels", "none", "")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DiversevisError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_float(name: str, value: Any, lo: float, hi: float = math.inf, *, open_lo: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DiversevisError(f"{name} must be a number, got {value!r}") from None
    ok = (v > lo if open_lo else v >= lo) and v <= hi and math.isfinite(v)
    if not ok:
        rule = f"{'>' if open_lo else '>='} {lo}" + ("" if hi == math.inf else f" and <= {hi}")
        raise DiversevisError(f"{name} must be a finite number {rule}, got {value!r}")
    return v


# ------------------------------------------------------------------------------------------- read-out


class UnitReadout:
    """Reads one unit for display-space images of a given side, as :class:`~diversevis.dfv.Problem` does.

    * ``size <= rf``: the image is centred in the unit's receptive field inside the mean-grey canvas of
      :meth:`Network.placement` and the unit whose receptive field is that region is read (for
      ``size == rf`` this is exactly ``Problem.evaluate``);
    * ``size > rf``: the image is fed as it is and the unit whose receptive-field centre is closest to
      the image centre is read.

    Parameters
    ----------
    net : Network
        The network.
    layer : str
        Layer alias or dot path.
    unit : int
        Channel index.
    size : int, optional
        Image side in pixels (default: the receptive-field size).
    """

    def __init__(self, net: Network, layer: str, unit: int, size: int | None = None) -> None:
        # an absolute norm: the read-out needs no natural-image statistics
        prob = Problem.build(
            net, layer, unit, None, "max", contrast=1.0, norm=1.0, distance_layer=None, images_folder=None
        )
        p = prob.placement
        self.net = net
        self.layer = layer
        self.unit = int(unit)
        self.rf = p.image_size
        self.size = p.image_size if size is None else _check_int("patch size", size, 1)
        if self.size <= p.image_size:
            lo = p.offset + (p.image_size - self.size) // 2
            hi = p.canvas_size - self.size - lo
            self.pad = (lo, hi, lo, hi)
            self.index = (p.unit_index, p.unit_index)
        else:
            shape = net.output_shape(layer, self.size)
            if len(shape) != 3:
                raise DiversevisError(f"layer {layer!r} has no spatial output for a {self.size}px input")
            rf = net.receptive_field(layer)
            c = (self.size - 1) / 2
            i = min(range(shape[1]), key=lambda j: abs(rf.center(j) - c))
            self.pad = (0, 0, 0, 0)
            self.index = (i, i)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Unit activation ``(N,)`` for display-space images ``(N, C, size, size)``."""
        x = images.to(self.net.device)
        if any(self.pad):
            x = F.pad(x, self.pad, value=0.5)
        a = self.net.activations(x, [self.layer])[self.layer]
        return a[:, self.unit, self.index[0], self.index[1]]


# ----------------------------------------------------------------------------------- small pure parts


def _features(net: Network, images: torch.Tensor, layer: str | None, pool: str) -> torch.Tensor:
    """Differentiable embedding ``(N, D)`` of display-space images (see :func:`embed`)."""
    if layer is None or layer.lower() in _PIXEL_NAMES:
        return (images - 0.5).flatten(1)
    a = torch.relu(net.activations(images.to(net.device), [layer])[layer])
    if a.dim() == 4 and pool == "mean":
        a = a.mean(dim=(2, 3))
    elif a.dim() == 4 and pool == "max":
        a = a.amax(dim=(2, 3))
    return a.flatten(1)


def embed(
    net: Network,
    images: torch.Tensor,
    layer: str | None,
    *,
    pool: str = "mean",
    batch: int = 64,
) -> torch.Tensor:
    """Feature vectors of images for clustering.

    Parameters
    ----------
    net : Network
        The network.
    images : torch.Tensor
        ``(N, C, H, W)`` display-space images (fed as they are, no canvas).
    layer : str or None
        Layer whose rectified output ``relu(A)`` ``(N, K, h, w)`` embeds the images; ``None`` or
        ``"pixels"``: the pixels minus grey 0.5.
    pool : {"mean", "max", "flatten"}
        Spatial mean or max over ``(h, w)`` giving ``(N, K)``, or all values ``(N, K * h * w)``. Ignored
        for pixels (always flattened).
    batch : int
        Images per forward pass.

    Returns
    -------
    torch.Tensor
        ``(N, D)`` float32 on the CPU.
    """
    if pool not in POOLS:
        raise DiversevisError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch):
            out.append(_features(net, images[start : start + batch], layer, pool).float().cpu())
    return torch.cat(out)


def kmeans_facets(
    features: np.ndarray | torch.Tensor,
    k: int,
    *,
    normalize: bool = True,
    pca: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster feature vectors into ``k`` facets, largest facet first.

    Parameters
    ----------
    features : array-like
        ``(N, D)`` feature vectors.
    k : int
        Number of clusters, ``1 <= k <=`` number of distinct rows.
    normalize : bool
        Scale every row to unit L2 norm first (k-means on directions, i.e. cosine similarity), so that
        facets are kinds of input rather than strengths of response (all-zero rows stay zero).
    pca : int, optional
        Reduce to this many principal components first (capped at ``min(N, D)``).
    seed : int
        ``random_state`` of PCA and k-means (``n_init=10``).

    Returns
    -------
    labels : numpy.ndarray
        ``(N,)`` int64 facet index per row; facet 0 is the largest (ties: k-means order).
    distances : numpy.ndarray
        ``(N,)`` float64 Euclidean distance of each row to its facet's centroid (after the
        normalisation and PCA).

    Raises
    ------
    DiversevisError
        If ``k`` exceeds the number of rows or of distinct rows.
    """
    from sklearn.cluster import KMeans

    x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features)
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    n = x.shape[0]
    k = _check_int("k", k, 1)
    if k > n:
        raise DiversevisError(f"k={k} exceeds the number of patches to cluster ({n}); lower k or raise top")
    distinct = len(np.unique(x, axis=0))
    if k > distinct:
        raise DiversevisError(
            f"k={k} exceeds the number of distinct embedded patches ({distinct}); lower k, raise top, or "
            "embed in a layer with more channels (a 1-channel layer puts every unit-norm embedding on one point)"
        )
    if pca is not None:
        from sklearn.decomposition import PCA

        pca = _check_int("pca", pca, 1)
        x = PCA(n_components=min(pca, n, x.shape[1]), random_state=seed).fit_transform(x)
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    raw = km.labels_.astype(np.int64)
    sizes = np.bincount(raw, minlength=k)
    order = sorted(range(k), key=lambda c: (-sizes[c], c))
    relabel = np.empty(k, dtype=np.int64)
    relabel[order] = np.arange(k)
    dist = np.linalg.norm(x - km.cluster_centers_[raw], axis=1)
    return relabel[raw], dist


def facet_means(
    images: torch.Tensor, labels: np.ndarray, distances: np.ndarray, n_mean: int = 15
) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Mean image of each facet's ``n_mean`` members closest to the centroid.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, C, H, W)`` display-space images.
    labels : numpy.ndarray
        ``(N,)`` facet index per image, values ``0 .. k - 1``, every facet non-empty.
    distances : numpy.ndarray
        ``(N,)`` distance of each image to its facet's centroid.
    n_mean : int
        Members averaged per facet (all of them when the facet is smaller).

    Returns
    -------
    means : torch.Tensor
        ``(k, C, H, W)`` mean images.
    members : list of numpy.ndarray
        Per facet, the indices of all its members sorted by distance to the centroid (ties: index).
    """
    n_mean = _check_int("n_mean", n_mean, 1)
    labels = np.asarray(labels)
    distances = np.asarray(distances, dtype=np.float64)
    k = int(labels.max()) + 1
    members = []
    means = []
    for f in range(k):
        idx = np.flatnonzero(labels == f)
        if idx.size == 0:
            raise DiversevisError(f"facet {f} has no members")
        idx = idx[np.lexsort((idx, distances[idx]))]
        members.append(idx)
        means.append(images[torch.from_numpy(idx[:n_mean])].float().mean(0))
    return torch.stack(means), members


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


# -------------------------------------------------------------------------------------------- result


@dataclass
class MultifacetedResult:
    """Facets of a unit: clusters of its top natural patches, their means and one visualization each.

    Attributes
    ----------
    visualizations : torch.Tensor
        ``(k, 3, S, S)`` optimised image per facet, display space ``[0, 1]``.
    activations : torch.Tensor
        ``(k,)`` unit activation of each visualization (no jitter).
    mean_images : torch.Tensor
        ``(k, 3, S, S)`` starting images: mean of the ``n_mean`` members closest to the centroid.
    mean_activations : torch.Tensor
        ``(k,)`` unit activation of the mean images.
    patches : torch.Tensor
        ``(P, 3, S, S)`` the clustered top patches, sorted by activation (descending).
    patch_activations : torch.Tensor
        ``(P,)`` their activations.
    labels : numpy.ndarray
        ``(P,)`` facet of each patch (facet 0 is the largest).
    centroid_distances : numpy.ndarray
        ``(P,)`` distance of each patch to its facet's centroid in the embedding (after PCA).
    loss_history : list of numpy.ndarray
        Per facet, the loss per iteration.
    spec : dict
        Run spec: model, layer, unit, k, embedding, seed, every hyperparameter, versions, timings.
    """

    visualizations: torch.Tensor
    activations: torch.Tensor
    mean_images: torch.Tensor
    mean_activations: torch.Tensor
    patches: torch.Tensor
    patch_activations: torch.Tensor
    labels: np.ndarray
    centroid_distances: np.ndarray
    loss_history: list[np.ndarray] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """Number of facets."""
        return int(self.visualizations.shape[0])

    @property
    def sizes(self) -> list[int]:
        """Number of patches per facet (descending)."""
        return [int(v) for v in np.bincount(self.labels, minlength=self.k)]

    def members(self, facet: int) -> np.ndarray:
        """Indices into :attr:`patches` of a facet's members, closest to the centroid first."""
        idx = np.flatnonzero(self.labels == facet)
        return idx[np.lexsort((idx, self.centroid_distances[idx]))]

    def metrics(self) -> dict[str, Any]:
        """Headline numbers as plain Python values."""
        return {
            "k": self.k,
            "sizes": self.sizes,
            "activations": [float(a) for a in self.activations],
            "mean_activations": [float(a) for a in self.mean_activations],
            "member_mean_activations": [
                float(self.patch_activations[torch.from_numpy(self.members(f))].mean()) for f in range(self.k)
            ],
            "top_patch_activation": float(self.patch_activations.max()),
            "n_iter": [len(h) for h in self.loss_history],
            "seconds": self.spec.get("seconds"),
        }

    def __repr__(self) -> str:
        s = self.spec
        acts = ", ".join(f"{float(a):.3g}" for a in self.activations)
        return (
            f"MultifacetedResult({s.get('model')} {s.get('layer')} unit={s.get('unit')}: k={self.k}, "
            f"sizes={self.sizes}, activations=[{acts}])"
        )

    def grid_png(self, n_show: int = 6, tile: int = 80) -> bytes:
        """PNG with one row per facet: its ``n_show`` closest members | mean image | visualization.

        Captions are activations; the first member's also gives the facet size ``n``.
        """
        from diversevis.core.result import image_grid

        c, h, w = self.visualizations.shape[1:]
        blank = torch.ones(c, h, w)
        tiles, caps = [], []
        for f in range(self.k):
            idx = self.members(f)[:n_show]
            for j in range(n_show):
                if j < len(idx):
                    tiles.append(self.patches[int(idx[j])].float().cpu())
                    caps.append(f"{float(self.patch_activations[int(idx[j])]):.3g}")
                else:
                    tiles.append(blank)
                    caps.append("")
            caps[len(caps) - n_show] = f"n={self.sizes[f]}: " + caps[len(caps) - n_show]
            tiles.append(self.mean_images[f].float().cpu())
            caps.append(f"mean {float(self.mean_activations[f]):.3g}")
            tiles.append(self.visualizations[f].float().cpu())
            caps.append(f"#{f}: {float(self.activations[f]):.3g}")
        s = self.spec
        title = (
            f"{s.get('model', '')}  {s.get('layer', '')}  unit {s.get('unit')}  multifaceted k={self.k}"
            f"  (members | mean | facet)"
        )
        return image_grid(torch.stack(tiles), caps, title=title, tile=tile, columns=n_show + 2)

    def save(self, directory: str | Path, n_show: int = 6) -> Path:
        """Write ``grid.png``, ``facets.npz`` and ``result.json`` (last), each atomically.

        ``facets.npz`` holds ``visualizations``, ``activations``, ``mean_images``, ``mean_activations``,
        ``patches``, ``patch_activations``, ``labels``, ``centroid_distances`` and ``loss_history``
        ``(max_iter_run, k)`` (NaN after a facet stopped).
        """
        out = output_dir(directory)
        atomic_write_bytes(out / "grid.png", self.grid_png(n_show))
        n_it = max((len(h) for h in self.loss_history), default=0)
        hist = np.full((n_it, self.k), np.nan, dtype=np.float32)
        for f, h in enumerate(self.loss_history):
            hist[: len(h), f] = h
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            visualizations=self.visualizations.detach().cpu().float().numpy(),
            activations=self.activations.detach().cpu().float().numpy(),
            mean_images=self.mean_images.detach().cpu().float().numpy(),
            mean_activations=self.mean_activations.detach().cpu().float().numpy(),
            patches=self.patches.detach().cpu().float().numpy(),
            patch_activations=self.patch_activations.detach().cpu().float().numpy(),
            labels=np.asarray(self.labels, dtype=np.int64),
            centroid_distances=np.asarray(self.centroid_distances, dtype=np.float64),
            loss_history=hist,
        )
        atomic_write_bytes(out / "facets.npz", buf.getvalue())
        atomic_write_json(out / "result.json", {"spec": self.spec, "metrics": self.metrics()})
        return out


# ---------------------------------------------------------------------------------------- exemplars


def _score_pool(
    readout: UnitReadout, chunks: Callable[[int, int], torch.Tensor], n: int, top: int, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top`` most activating of ``n`` images produced chunk by chunk (memory ``O(batch)``)."""
    acts = torch.empty(n, dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            acts[start:stop] = readout(chunks(start, stop)).float().cpu()
    if not torch.isfinite(acts).all():
        raise DiversevisError("the network returned non-finite activations for some candidate patches")
    order = torch.sort(acts, descending=True, stable=True).indices[:top]
    imgs = torch.cat([chunks(int(i), int(i) + 1) for i in order])
    return imgs, acts[order].clone()


def _exemplars(
    net: Network,
    layer: str,
    unit: int,
    readout: UnitReadout,
    *,
    patches: torch.Tensor | None,
    top: int,
    candidates: int,
    match_contrast: bool,
    contrast: float,
    images: str | Path | None,
    seed: int,
    batch: int,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    if patches is not None:
        p = torch.as_tensor(patches).float()
        if p.dim() != 4 or p.shape[1] != net.in_channels or p.shape[2] != p.shape[3]:
            raise DiversevisError(
                f"patches must have shape (N, {net.in_channels}, S, S), got {tuple(p.shape)}"
            )
        if top > p.shape[0]:
            raise DiversevisError(f"top={top} exceeds the number of given patches ({p.shape[0]})")
        imgs, acts = _score_pool(readout, lambda a, b: p[a:b], p.shape[0], top, batch)
        return imgs, acts, "given"
    if top > candidates:
        raise DiversevisError(f"top={top} exceeds the number of candidates ({candidates}); raise candidates")
    if readout.size == readout.rf:
        from diversevis.methods.exemplars import top_patches

        ex = top_patches(
            net,
            layer,
            unit,
            k=top,
            candidates=candidates,
            match_contrast=match_contrast,
            contrast=contrast,
            norm=None if match_contrast else 1.0,  # the norm only matters for contrast matching
            images=images,
            seed=seed,
            batch=batch,
        )
        return ex.images.float(), ex.activations.float(), "natural"
    if match_contrast:
        raise DiversevisError(
            "match_contrast needs patches of the receptive-field size (leave patch_size unset)"
        )
    from diversevis.images.naturals import DEFAULT_SCALES, _resolve_folder, _sample_locations

    # the pool of sample_patches(size, candidates, seed=seed, folder=images), cropped chunk by chunk
    locs = _sample_locations(readout.size, candidates, _resolve_folder(images), DEFAULT_SCALES, seed)

    def chunk(a: int, b: int) -> torch.Tensor:
        return torch.from_numpy(locs.crop(a, b)).permute(0, 3, 1, 2).contiguous()

    imgs, acts = _score_pool(readout, chunk, candidates, top, batch)
    return imgs, acts, "natural"


# ------------------------------------------------------------------------------------------ the method


def multifaceted(
    model: Network | nn.Module | str,
    layer: str,
    unit: int,
    *,
    k: int = 4,
    top: int = 128,
    candidates: int = 2048,
    patches: torch.Tensor | None = None,
    patch_size: int | None = None,
    match_contrast: bool = False,
    contrast: float = 0.5,
    embed_layer: str | None = None,
    pool: str = "mean",
    normalize: bool = True,
    pca: int | None = None,
    n_mean: int = 15,
    lr: float = 0.02,
    max_iter: int = 200,
    patience: int = 0,
    tv: float = 2.0,
    facet_weight: float = 0.0,
    jitter: int | None = None,
    window: float = 0.3,
    seed: int = 0,
    batch: int = 64,
    images: str | Path | None = None,
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
    net = as_network(model)
    if device is not None:
        net.to(device)
    if net.in_channels != 3:
        raise DiversevisError(
            f"multifaceted visualization needs an RGB network, {net.name} takes {net.in_channels}"
        )
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)):
        raise DiversevisError(f"unit must be an int channel index, got {unit!r}")
    unit = int(unit)
    k = _check_int("k", k, 1)
    top = _check_int("top", top, 1)
    candidates = _check_int("candidates", candidates, 1)
    n_mean = _check_int("n_mean", n_mean, 1)
    max_iter = _check_int("max_iter", max_iter, 1)
    patience = _check_int("patience", patience, 0)
    batch = _check_int("batch", batch, 1)
    seed = _check_int("seed", seed, 0)
    lr = _check_float("lr", lr, 0.0, open_lo=True)
    tv = _check_float("tv", tv, 0.0)
    window = _check_float("window", window, 0.0)
    facet_weight = _check_float("facet_weight", facet_weight, 0.0)
    if pool not in POOLS:
        raise DiversevisError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
    if k > top:
        raise DiversevisError(f"k={k} exceeds the number of top patches ({top}); lower k or raise top")
    if patches is not None:
        patch_size = int(torch.as_tensor(patches).shape[-1])
    readout = UnitReadout(net, layer, unit, patch_size)
    size = readout.size
    if jitter is None:
        jitter = max(1, round(size / 16)) if size >= 8 else 0
    jitter = _check_int("jitter", jitter, 0)
    emb_layer = layer if embed_layer is None else embed_layer
    if emb_layer.lower() not in _PIXEL_NAMES:
        net.resolve(emb_layer)

    # 1. exemplars
    t_ex = time.perf_counter()
    top_imgs, top_acts, source = _exemplars(
        net,
        layer,
        unit,
        readout,
        patches=patches,
        top=top,
        candidates=candidates,
        match_contrast=match_contrast,
        contrast=contrast,
        images=images,
        seed=seed,
        batch=batch,
    )
    t_ex = time.perf_counter() - t_ex

    # 2.-4. embedding, facets, starting images
    feats = embed(net, top_imgs, emb_layer, pool=pool, batch=batch)
    labels, dist = kmeans_facets(feats, k, normalize=normalize, pca=pca, seed=seed)
    means, _ = facet_means(top_imgs, labels, dist, n_mean)
    init = means.clamp(0, 1)

    # 5. optimisation, all facets in one batch
    scale = float(top_acts.abs().max())
    scale = scale if scale > 0 else 1.0
    gen = torch.Generator().manual_seed(seed)
    param = _SigmoidImage(init).to(net.device)

    centroids = None
    if facet_weight > 0:
        unit_feats = F.normalize(feats, dim=1) if normalize else feats
        lab = torch.from_numpy(labels)
        centroids = torch.stack([unit_feats[lab == f].mean(0) for f in range(k)]).to(net.device)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        off = centre_biased_offsets(x.shape[0], jitter, window, generator=gen)
        xj = jitter_crop(x, off, jitter)
        loss = -readout(xj) / scale + tv * total_variation(x)
        if centroids is not None:
            phi = _features(net, xj, emb_layer, pool)
            loss = loss + facet_weight * (1 - F.cosine_similarity(phi, centroids, dim=1))
        return loss

    opts = optimize_groups(
        param,
        loss_fn,
        groups=k,
        lr=lr,
        max_iter=max_iter,
        patience=patience,
        progress=progress,
        desc=f"multifaceted {net.display_name(layer)}:{unit}",
    )
    vis = torch.cat([o.images for o in opts]).detach().cpu()
    with torch.no_grad():
        acts = readout(vis).float().cpu()
        mean_acts = readout(init.to(net.device)).float().cpu()

    sizes = [int(v) for v in np.bincount(labels, minlength=k)]
    spec = {
        "method": "multifaceted",
        "model": net.name,
        "layer": net.display_name(layer),
        "layer_path": net.resolve(layer),
        "unit": unit,
        "k": k,
        "top": top,
        "candidates": candidates if patches is None else int(torch.as_tensor(patches).shape[0]),
        "patch_source": source,
        "patch_size": size,
        "rf_size": readout.rf,
        "match_contrast": bool(match_contrast),
        "contrast": contrast if match_contrast else None,
        "embed_layer": "pixels" if emb_layer.lower() in _PIXEL_NAMES else net.display_name(emb_layer),
        "pool": pool,
        "normalize": bool(normalize),
        "pca": pca,
        "n_mean": n_mean,
        "parametrization": "sigmoid pixels",
        "lr": lr,
        "max_iter": max_iter,
        "patience": patience,
        "tv": tv,
        "facet_weight": facet_weight,
        "jitter": jitter,
        "window": window,
        "activation_scale": scale,
        "seed": seed,
        "batch": batch,
        "natural_images": str(images) if images else "bundled",
        "device": str(net.device),
        "cluster_sizes": sizes,
        "activations": [float(a) for a in acts],
        "mean_activations": [float(a) for a in mean_acts],
        "n_iter": [o.n_iter for o in opts],
        "exemplar_seconds": round(t_ex, 3),
        "optimize_seconds": round(opts[0].seconds, 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return MultifacetedResult(
        visualizations=vis,
        activations=acts,
        mean_images=init.cpu(),
        mean_activations=mean_acts,
        patches=top_imgs.cpu(),
        patch_activations=top_acts.cpu(),
        labels=labels,
        centroid_distances=dist,
        loss_history=[o.history for o in opts],
        spec=spec,
    )
