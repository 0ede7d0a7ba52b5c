"""Figures of a manifold clustering: one gallery per cluster and the similarity heat map.

A gallery shows each member unit of a cluster as one row of its manifold's frames (evenly spaced
latents), so units whose manifolds are loops (phase, position) read as rows of changing images and
collapsed manifolds as rows of one repeated image. The heat map shows the A->B similarity matrix and
its symmetrised form side by side, rows and columns ordered by cluster.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from diversevis.core.cache import atomic_write_bytes

__all__ = ["cluster_order", "gallery_image", "write_gallery", "write_heatmap"]

#: Smallest side of a frame in a gallery, in pixels (small receptive fields are upscaled).
TILE = 48
#: Frames shown per unit.
MAX_FRAMES = 12


def cluster_order(labels: Sequence[int]) -> list[int]:
    """Indices that sort units by cluster (stable: a cluster keeps the units' order)."""
    return sorted(range(len(labels)), key=lambda i: (int(labels[i]), i))


def _frames(images: torch.Tensor, n: int) -> np.ndarray:
    """``(F, H, W, 3)`` uint8: ``n`` evenly spaced images of ``images (G, C, H, W)`` in ``[0, 1]``."""
    pick = np.unique(np.linspace(0, len(images) - 1, min(n, len(images))).round().astype(int))
    x = images[pick].detach().float().clamp(0, 1).cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x[:, :3].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def gallery_image(rows: Sequence[tuple[str, torch.Tensor]], title: str) -> Image.Image:
    """A gallery: one labelled row of frames per unit.

    Parameters
    ----------
    rows : sequence of (str, torch.Tensor)
        Each row's label and its manifold's grid images ``(G, C, H, W)`` in ``[0, 1]``.
    title : str
        Text above the rows.
    """
    frames = [_frames(images, MAX_FRAMES) for _, images in rows]
    h, w = frames[0].shape[1:3]
    k = max(1, -(-TILE // max(h, w)))
    th, tw, gap, left, top = h * k, w * k, 2, 110, 20
    n_cols = max(len(f) for f in frames)
    canvas = Image.new("RGB", (left + n_cols * (tw + gap), top + len(rows) * (th + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill="black")
    for r, ((label, _), fr) in enumerate(zip(rows, frames)):
        y = top + r * (th + gap)
        draw.text((4, y + th // 2 - 5), label, fill="black")
        for c, f in enumerate(fr):
            tile = Image.fromarray(f).resize((tw, th), Image.NEAREST)
            canvas.paste(tile, (left + c * (tw + gap), y))
    return canvas


def write_gallery(path: str | Path, rows: Sequence[tuple[str, torch.Tensor]], title: str) -> Path:
    """:func:`gallery_image` saved as a PNG at ``path`` (atomically)."""
    buf = io.BytesIO()
    gallery_image(rows, title).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def write_heatmap(
    path: str | Path,
    similarity: np.ndarray,
    symmetric: np.ndarray,
    units: Sequence[int],
    labels: Sequence[int],
    title: str,
) -> Path:
    """The A->B similarity (rows A, columns B) and its symmetric form, ordered by cluster, as a PNG.

    Thin lines separate the clusters; both panels share the colour scale ``[0, 1]``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = cluster_order(labels)
    names = [str(units[i]) for i in order]
    bounds = [i + 0.5 for i in range(len(order) - 1) if labels[order[i]] != labels[order[i + 1]]]
    n = len(order)
    side = min(12.0, 2.5 + 0.22 * n)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side), constrained_layout=True)
    for ax, mat, name in zip(axes, (similarity, symmetric), ("S[A, B] (row A drives column B)", "symmetric")):
        im = ax.imshow(np.asarray(mat)[np.ix_(order, order)], vmin=0, vmax=1, cmap="viridis")
        for b in bounds:
            ax.axhline(b, color="white", lw=1)
            ax.axvline(b, color="white", lw=1)
        ax.set_xticks(range(n), names, rotation=90, fontsize=6)
        ax.set_yticks(range(n), names, fontsize=6)
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8, label="mean activation ratio")
    fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
