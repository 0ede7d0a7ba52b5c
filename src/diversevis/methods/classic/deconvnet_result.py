"""DeconvNet results: projections with their receptive-field boxes, the figure and the saved files.

See :mod:`diversevis.methods.classic.deconvnet` for the method.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diversevis.core.cache import atomic_write_bytes, atomic_write_json, output_dir
from diversevis.core.receptive import ReceptiveField
from diversevis.core.result import image_grid

__all__ = ["DeconvResult", "rf_box"]


# ---------------------------------------------------------------------------------------------- boxes


def rf_box(rf: ReceptiveField, y: int, x: int, height: int, width: int, clip: bool = True) -> tuple[int, ...]:
    """Pixel box of the receptive field of map position ``(y, x)``.

    Parameters
    ----------
    rf : ReceptiveField
        The layer's geometry.
    y, x : int
        Position in the layer's map.
    height, width : int
        Image size in pixels (for clipping).
    clip : bool
        Clip the box to the image.

    Returns
    -------
    tuple of int
        ``(top, left, bottom, right)``, half-open (``bottom``/``right`` excluded), in input pixels.
    """
    half = (rf.size - 1) / 2
    top = math.ceil(rf.center(y) - half - 1e-6)
    left = math.ceil(rf.center(x) - half - 1e-6)
    box = (top, left, top + rf.size, left + rf.size)
    if not clip:
        return box
    return (max(0, box[0]), max(0, box[1]), min(height, box[2]), min(width, box[3]))


# ---------------------------------------------------------------------------------------------- tiles


def _symmetric(p: torch.Tensor) -> torch.Tensor:
    """Signed ``(C, H, W)`` map -> display ``[0, 1]`` with zero at grey 0.5 (per-image symmetric scale)."""
    m = float(p.abs().max())
    return torch.full_like(p, 0.5) if m == 0 else 0.5 + p / (2 * m)


def _outline(img: torch.Tensor, box: Sequence[int]) -> torch.Tensor:
    """Copy of a ``(C, H, W)`` display image with a one-pixel red frame on ``box`` (half-open)."""
    out = img.clone().clamp(0, 1)
    t, left, b, r = box
    if b <= t or r <= left:
        return out
    red = torch.tensor([1.0, 0.0, 0.0] if out.shape[0] == 3 else [1.0]).view(-1, 1)
    out[:, t, left:r] = red
    out[:, b - 1, left:r] = red
    out[:, t:b, left] = red
    out[:, t:b, r - 1] = red
    return out


def _crop(img: torch.Tensor, box: Sequence[int], fill: float) -> torch.Tensor:
    """Square crop of ``(C, H, W)`` at an unclipped half-open box, padding outside the image with ``fill``."""
    t, left, b, r = box
    s = b - t
    pad = s
    padded = F.pad(img, (pad, pad, pad, pad), value=fill)
    return padded[:, t + pad : b + pad, left + pad : r + pad]


def _grid(tiles: list[torch.Tensor], labels: list[str], title: str, per_row: int) -> bytes:
    """``image_grid`` of tiles of different sizes: each is upscaled (nearest) to a common side first."""
    side = max(max(t.shape[-2:]) for t in tiles)
    side = max(side, 96)
    same = []
    for t in tiles:
        h, w = t.shape[-2:]
        f = side / max(h, w)
        nh, nw = max(1, round(h * f)), max(1, round(w * f))
        t = F.interpolate(t[None], size=(nh, nw), mode="nearest")[0]
        same.append(F.pad(t, (0, side - nw, 0, side - nh), value=1.0))
    return image_grid(torch.stack(same), labels, title=title, tile=side, columns=min(per_row, len(same)))


# --------------------------------------------------------------------------------------------- result


@dataclass
class DeconvResult:
    """DeconvNet projections of one unit for one or more images (or top natural patches).

    Attributes
    ----------
    images : torch.Tensor
        ``(N, C, H, W)`` display-space images (or patches) that were projected.
    projections : torch.Tensor
        ``(N, C, H, W)`` signed projections in display space (arbitrary units).
    activations : torch.Tensor
        ``(N,)`` the unit's activation at the projected position.
    positions : torch.Tensor
        ``(N, 2)`` int64 ``(y, x)`` projected position in the layer's map.
    rf_boxes : torch.Tensor
        ``(N, 4)`` int64 ``(top, left, bottom, right)`` receptive-field box of that position in image
        pixels, half-open, clipped to the image.
    spec : dict
        Full run spec (model, layer, unit, position, image source, receptive field, versions, seconds).
    """

    images: torch.Tensor
    projections: torch.Tensor
    activations: torch.Tensor
    positions: torch.Tensor
    rf_boxes: torch.Tensor
    spec: dict[str, Any]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def energy_fraction(self) -> torch.Tensor:
        """``(N,)`` share of each projection's energy (sum of squares) inside its receptive-field box."""
        e = self.projections.pow(2).sum(1)
        out = torch.zeros(len(self))
        for i, (t, left, b, r) in enumerate(self.rf_boxes.tolist()):
            total = float(e[i].sum())
            out[i] = float(e[i, t:b, left:r].sum()) / total if total > 0 else math.nan
        return out

    def metrics(self) -> dict[str, Any]:
        """Headline numbers as plain Python values."""
        return {
            "activations": [float(a) for a in self.activations],
            "positions": [[int(v) for v in p] for p in self.positions],
            "rf_boxes": [[int(v) for v in b] for b in self.rf_boxes],
            "energy_fraction_in_rf": [None if math.isnan(v) else float(v) for v in self.energy_fraction],
            "seconds": self.spec.get("seconds"),
        }

    def figure(self) -> bytes:
        """PNG: each image next to its projection (zero = grey, symmetric scale per projection).

        Photos projected at one position also get zoomed crops of image and projection at the unit's
        receptive field (red frame on the photo); top natural patches are shown three pairs per row.
        """
        s = self.spec
        single = s.get("position") != "all" and s.get("source", {}).get("kind") != "top_patches"
        tiles, labels = [], []
        size = int(s.get("rf", {}).get("size") or 0)
        for i in range(len(self)):
            img, proj = self.images[i].cpu().float(), self.projections[i].cpu().float()
            a = f"{float(self.activations[i]):.3g}"
            if single and size:
                y, x = (int(v) for v in self.positions[i])
                rf = ReceptiveField(size, int(s["rf"]["stride"]), float(s["rf"]["start"]))
                box = rf_box(rf, y, x, img.shape[1], img.shape[2], clip=False)
                tiles += [
                    _outline(img, self.rf_boxes[i].tolist()),
                    _symmetric(proj),
                    _crop(img, box, 0.5),
                    _symmetric(_crop(proj, box, 0.0)),
                ]
                labels += [f"act {a} at ({y},{x})", "projection", "RF crop", "projection (RF)"]
            else:
                tiles += [img, _symmetric(proj)]
                labels += [f"act {a}", "projection"]
        per_row = 4 if single and size else 6
        src = s.get("source", {})
        what = (
            f"top {src.get('k')} of {src.get('candidates')} natural patches"
            if src.get("kind") == "top_patches"
            else f"position {s.get('position')}"
        )
        title = f"{s.get('model')}  {s.get('layer')}  unit {s.get('unit')}  DeconvNet, {what}"
        return _grid(tiles, labels, title, per_row)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``deconv.png``, ``deconv.npz`` and ``deconv.json`` (last) into ``directory``, atomically."""
        out = output_dir(directory)
        atomic_write_bytes(out / "deconv.png", self.figure())
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            images=self.images.detach().cpu().float().numpy(),
            projections=self.projections.detach().cpu().float().numpy(),
            activations=self.activations.detach().cpu().float().numpy(),
            positions=self.positions.cpu().numpy(),
            rf_boxes=self.rf_boxes.cpu().numpy(),
            energy_fraction=self.energy_fraction.numpy(),
        )
        atomic_write_bytes(out / "deconv.npz", buf.getvalue())
        atomic_write_json(out / "deconv.json", {"spec": self.spec, "metrics": self.metrics()})
        return out

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"DeconvResult({s.get('model')} {s.get('layer')} unit={s.get('unit')}: {len(self)} image(s), "
            f"position={s.get('position')!r}, activations={[round(float(a), 4) for a in self.activations]})"
        )
