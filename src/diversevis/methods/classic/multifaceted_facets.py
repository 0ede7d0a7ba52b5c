"""Multifaceted visualization, steps 1-4: the unit's exemplars, their embedding, the facets and their means.

The unit is read as :class:`~diversevis.methods.dfv.Problem` reads it (:class:`UnitReadout`); the ``top``
most activating patches are clustered by k-means on their (unit-norm) embeddings, and each facet's
starting image is the mean of its members closest to the centroid. The method as a whole is described
in :mod:`diversevis.methods.classic.multifaceted`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diversevis.core.checks import integer
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.methods.dfv import Problem

__all__ = ["POOLS", "UnitReadout", "embed", "kmeans_facets", "facet_means"]

#: Spatial pooling of the embedding features.
POOLS = ("mean", "max", "flatten")
_PIXEL_NAMES = ("pixel", "pixels", "none", "")


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
        self.size = p.image_size if size is None else integer("patch size", size, 1)
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


# ----------------------------------------------------------------------------- embedding and facets


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
    k = integer("k", k, 1)
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

        pca = integer("pca", pca, 1)
        x = PCA(n_components=min(pca, n, x.shape[1]), random_state=seed % 2**32).fit_transform(x)
    km = KMeans(n_clusters=k, n_init=10, random_state=seed % 2**32).fit(x)
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
    n_mean = integer("n_mean", n_mean, 1)
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
    """Step 1: the ``top`` most activating patches, their activations and their source.

    From ``patches`` when given (``"given"``), else from random natural patches (``"natural"``): through
    :func:`~diversevis.methods.exemplars.top_patches` at the receptive-field size, else scored here.
    """
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
