"""The result of a multifaceted visualization: facets, their members, means and visualizations, saved.

See :mod:`diversevis.methods.classic.multifaceted` for the method.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diversevis.core.cache import atomic_write_bytes, atomic_write_json, output_dir

__all__ = ["MultifacetedResult"]


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
