"""Invariance types across a layer: manifolds of many units, their A->B similarities, and clusters.

For every unit of a selection the study trains (or loads) its invariance manifold, aligns each unit A's
manifold to every unit B (:func:`~diversevis.methods.manifold_align.align`, all B's in one batch) and
clusters the similarity matrix with scikit-learn (method.md E.2).

``S[A, B]`` is asymmetric by construction: a simple cell's collapsed manifold (one image) can be placed
to drive a complex cell fully, but a complex cell's phase loop drives a simple cell only at the phases
near its preferred one, so ``S[simple, complex]`` is high and ``S[complex, simple]`` low. Two units
share an invariance type when *each* one's manifold drives the other, so the clustering uses
``min(S, S^T)`` (clipped to ``[0, 1]``): a large value needs both directions to work, and the direction
where the invariance sets differ decides. (The mean would put a simple and a complex cell halfway,
between the two types; the max would call every simple cell similar to every complex cell.)
The distance ``1 - min(S, S^T)`` is clustered by average-linkage agglomeration (deterministic, works on
a precomputed distance), the number of clusters given or chosen by the best silhouette.

Output folder ``OUT``: ``u{unit}/`` each unit's manifold (the manifold method's own format),
``align/u{unit}.json`` each A's alignments (resumable), ``manifold_cluster.json``, one gallery PNG per
cluster and ``similarity.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diversevis.core.cache import atomic_write_json, output_dir
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.spec import common_spec
from diversevis.core.units import parse_units
from diversevis.methods.manifold_align import AlignSettings, align
from diversevis.methods.problem import _prepare
from diversevis.study.manifold_cluster_figures import write_gallery, write_heatmap

__all__ = [
    "ClusterResult",
    "symmetrize",
    "cluster_similarity",
    "similarity_matrix",
    "manifold_cluster",
]

#: Most clusters tried when the number is chosen by silhouette.
MAX_AUTO_CLUSTERS = 8


@dataclass
class ClusterResult:
    """A clustering of a layer's units by their invariance manifolds.

    Attributes
    ----------
    units : list of int
    similarity : numpy.ndarray
        ``(K, K)`` ``S[A, B]``: B's mean activation ratio over A's aligned manifold.
    symmetric : numpy.ndarray
        ``(K, K)`` ``min(S, S^T)`` clipped to ``[0, 1]``, what is clustered.
    labels : numpy.ndarray
        ``(K,)`` cluster of each unit, ``0 .. n_clusters - 1`` (cluster 0 holds the first unit).
    n_clusters : int
    silhouette : float or None
        Silhouette of the clustering on ``1 - symmetric`` (``None`` for 1 or K clusters).
    seconds : float
    spec : dict
    out_dir : Path or None
    """

    units: list[int]
    similarity: np.ndarray
    symmetric: np.ndarray
    labels: np.ndarray
    n_clusters: int
    silhouette: float | None
    seconds: float
    spec: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None


def symmetrize(similarity: np.ndarray) -> np.ndarray:
    """``min(S, S^T)`` clipped to ``[0, 1]``, diagonal 1 (see the module docstring for why)."""
    s = np.asarray(similarity, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise DiversevisError(f"a similarity matrix is square, got shape {s.shape}")
    sym = np.clip(np.minimum(s, s.T), 0.0, 1.0)
    np.fill_diagonal(sym, 1.0)
    return sym


def cluster_similarity(symmetric: np.ndarray, k: int | None = None) -> tuple[np.ndarray, int, float | None]:
    """Cluster units on the distance ``1 - symmetric`` (average linkage).

    Parameters
    ----------
    symmetric : numpy.ndarray
        ``(K, K)`` symmetric similarities in ``[0, 1]``.
    k : int, optional
        Number of clusters (``1 .. K``); ``None``: the best silhouette over ``2 .. min(8, K - 1)``.

    Returns
    -------
    labels : numpy.ndarray
        ``(K,)`` ints, renumbered in order of first appearance.
    k : int
    silhouette : float or None
    """
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import silhouette_score

    dist = 1.0 - np.asarray(symmetric, dtype=np.float64)
    np.fill_diagonal(dist, 0.0)
    n = len(dist)
    check_clusters(k, n)

    def fit(c: int) -> tuple[np.ndarray, float | None]:
        if c == 1:
            return np.zeros(n, dtype=int), None
        if c == n:
            return np.arange(n), None
        lab = AgglomerativeClustering(n_clusters=c, metric="precomputed", linkage="average").fit_predict(dist)
        return lab, float(silhouette_score(dist, lab, metric="precomputed"))

    if k is None:
        scored = [(c, *fit(c)) for c in range(2, min(MAX_AUTO_CLUSTERS, n - 1) + 1)]
        k, labels, sil = max(scored, key=lambda t: (t[2], -t[0]))
    else:
        labels, sil = fit(k)
    _, first = np.unique(labels, return_index=True)
    rank = {int(labels[i]): r for r, i in enumerate(sorted(first))}
    return np.array([rank[int(x)] for x in labels]), int(k), sil


def check_clusters(k: int | None, n: int) -> None:
    """``n`` units can be clustered into ``k`` (``None``: chosen, needs ``n >= 3``) clusters."""
    if n < 2:
        raise DiversevisError(f"clustering needs at least 2 units, got {n}")
    if k is None:
        if n < 3:
            raise DiversevisError("choosing the number of clusters needs at least 3 units; give clusters=K")
        return
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise DiversevisError(f"the number of clusters must be an integer in [1, {n}] (the units), got {k!r}")


def similarity_matrix(
    net: Network,
    layer: str,
    units: Sequence[int],
    manifolds: Sequence[Any],
    settings: AlignSettings,
    *,
    cache: Path | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, dict[int, list[dict]]]:
    """``S[A, B]`` for every pair of units, one batched alignment per A.

    Parameters
    ----------
    manifolds : sequence
        Each unit's manifold result (``.generator``, ``.mei_activation``), in the order of ``units``.
    cache : Path, optional
        Folder of ``u{A}.json`` rows: a row made with the same units and settings is reused, a new one
        written (atomically) as soon as it is computed.

    Returns
    -------
    similarity : numpy.ndarray
        ``(K, K)``.
    alignments : dict
        ``{A: [Alignment.to_dict() per B]}``.
    """
    meis = [float(m.mei_activation) for m in manifolds]
    key = {"units": list(units), "settings": settings.as_dict(), "meis": meis}
    rows, out = [], {}
    for a, res in _bar(list(zip(units, manifolds)), "align", progress):
        path = None if cache is None else cache / f"u{a}.json"
        row = _cached_row(path, key)
        if row is None:
            row = [al.to_dict() for al in align(net, layer, res.generator, units, meis, settings=settings)]
            if path is not None:
                atomic_write_json(path, {**key, "alignments": row})
        rows.append([r["ratio"] for r in row])
        out[int(a)] = row
    return np.array(rows), out


def _cached_row(path: Path | None, key: dict) -> list[dict] | None:
    """The alignments stored at ``path`` if they were made with ``key``'s units and settings."""
    if path is None or not path.exists():
        return None
    blob = json.loads(path.read_text())
    return blob["alignments"] if all(blob.get(k) == v for k, v in key.items()) else None


def _bar(items: list, desc: str, progress: bool):
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="unit", dynamic_ncols=True)


def manifold_cluster(
    model: Network | nn.Module | str,
    layer: str,
    units: str | Sequence[int] = "all",
    out: str | os.PathLike | None = None,
    *,
    dim: int = 1,
    clusters: int | None = None,
    seed: int = 0,
    align_settings: AlignSettings | None = None,
    manifold_kwargs: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> ClusterResult:
    """Train (or load) the manifolds of a layer's units, align every pair, cluster the similarities.

    Parameters
    ----------
    model : Network, nn.Module or str
    layer : str
    units : str or sequence of int
        ``all``, ``0-31``, ``1,5,9``, ``sample:32`` (drawn with ``seed``) or a list.
    out : path, optional
        Output folder (module docstring); a rerun skips units whose ``u{unit}/manifold.json`` exists
        and alignment rows made with the same settings. ``None``: nothing is written.
    dim : int
        Latent dimension of the manifolds (1: loops, 2: tori).
    clusters : int, optional
        Number of clusters; ``None``: the best silhouette.
    seed : int
        Seed of the unit sample and of each manifold.
    align_settings : AlignSettings, optional
    manifold_kwargs : dict, optional
        More keywords of the manifold method (``max_iter``, ``floor``, ``norm``, ...).
    device : str or torch.device, optional
    progress : bool
        Progress bars over the units.

    Returns
    -------
    ClusterResult
    """
    t0 = time.perf_counter()
    net = _prepare(model, device)
    net.resolve(layer)
    units = parse_units(units, net.channels(layer), seed)
    check_clusters(clusters, len(units))
    s = align_settings if align_settings is not None else AlignSettings()
    kw = dict(manifold_kwargs or {})
    folder = None if out is None else output_dir(out)
    manifolds, train_seconds = _unit_manifolds(net, layer, units, folder, dim, seed, kw, progress)
    t1 = time.perf_counter()
    cache = None if folder is None else folder / "align"
    sim, alignments = similarity_matrix(net, layer, units, manifolds, s, cache=cache, progress=progress)
    sym = symmetrize(sim)
    labels, k, sil = cluster_similarity(sym, clusters)
    spec = common_spec(
        method="manifold_cluster", model=net.name, model_spec=net.spec, layer=net.display_name(layer),
        units=units, dim=dim, clusters=clusters, seed=seed, align=s.as_dict(), manifold=kw,
        device=str(net.device), symmetrize="min(S, S^T) clipped to [0, 1]",
        clustering="agglomerative, average linkage, distance 1 - symmetric",
        manifold_seconds=train_seconds, align_seconds=round(time.perf_counter() - t1, 3),
    )  # fmt: skip
    res = ClusterResult(units, sim, sym, labels, k, sil, time.perf_counter() - t0, spec, folder)
    if folder is not None:
        _write(folder, res, manifolds, alignments)
    return res


def _manifold_api() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The manifold method's ``manifold`` and ``load_manifold``."""
    from diversevis.methods.manifold import manifold
    from diversevis.methods.manifold_result import load_manifold

    return manifold, load_manifold


def _unit_manifolds(
    net: Network,
    layer: str,
    units: list[int],
    folder: Path | None,
    dim: int,
    seed: int,
    kw: dict[str, Any],
    progress: bool,
) -> tuple[list[Any], dict[int, float]]:
    """Each unit's manifold, loaded from ``folder/u{unit}`` or trained (and saved there atomically).

    Returns the manifolds and the training seconds of the units trained in this call.
    """
    train, load = _manifold_api()
    out, seconds = [], {}
    for u in _bar(units, "manifolds", progress):
        d = None if folder is None else folder / f"u{u}"
        if d is not None and (d / "manifold.json").exists():
            out.append(load(d))
            continue
        t = time.perf_counter()
        res = train(net, layer, u, dim=dim, seed=seed, **kw)
        seconds[int(u)] = round(time.perf_counter() - t, 3)
        if d is not None:
            tmp = d.with_name(d.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            res.save(tmp)
            shutil.rmtree(d, ignore_errors=True)  # a partial folder of a killed run (no manifold.json)
            os.replace(tmp, d)
        out.append(res)
    return out, seconds


def _write(folder: Path, res: ClusterResult, manifolds: Sequence[Any], alignments: dict) -> None:
    """Galleries, the heat map and ``manifold_cluster.json`` (written last: the run is complete)."""
    galleries = []
    title = f"{res.spec['model']} {res.spec['layer']}"
    for c in range(res.n_clusters):
        members = [i for i, lab in enumerate(res.labels) if lab == c]
        rows = [(f"u{res.units[i]}  {_self_ratio(manifolds[i])}", manifolds[i].images) for i in members]
        name = f"cluster_{c}.png"
        write_gallery(folder / name, rows, f"{title}: cluster {c} ({len(members)} units)")
        galleries.append(name)
    write_heatmap(folder / "similarity.png", res.similarity, res.symmetric, res.units, res.labels, title)
    atomic_write_json(
        folder / "manifold_cluster.json",
        {
            "model": res.spec["model"],
            "layer": res.spec["layer"],
            "units": res.units,
            "similarity": res.similarity.round(4).tolist(),
            "symmetric": res.symmetric.round(4).tolist(),
            "labels": [int(x) for x in res.labels],
            "n_clusters": res.n_clusters,
            "silhouette": res.silhouette,
            "spec": res.spec,
            "seconds": round(res.seconds, 3),
            "unit_dirs": {str(u): f"u{u}" for u in res.units},
            "galleries": galleries,
            "heatmap": "similarity.png",
            "alignments": {str(a): row for a, row in alignments.items()},
        },
    )


def _self_ratio(m: Any) -> str:
    """A unit's own manifold's mean ratio to its MEI, for its gallery label."""
    r = getattr(m, "ratios", None)
    return "" if r is None else f"r={float(torch.as_tensor(r).float().mean()):.2f}"
