"""``ManifoldResult``: an invariance manifold's generator, its latent grid, numbers, and how they are saved.

``ManifoldResult.save(dir)`` writes (each file atomically: temporary file + rename; ``manifold.json``
last, so a directory with a ``manifold.json`` always holds a complete manifold):

* ``generator.pt``: the generator (:meth:`~diversevis.core.cppn.ImplicitGenerator.save`, loadable with
  ``weights_only=True``);
* ``images.npz``: ``images`` ``(P, C, H, W)`` float32 display space, ``latents`` ``(P, dim)``,
  ``activations``, ``ratios``;
* ``frames/NNN.png``: each grid image (row-major: index ``i * per_dim + j`` for ``dim=2``), upscaled
  by an integer factor (nearest neighbour) to at least 96 px;
* ``contact_sheet.png``: the grid, each image captioned with its ratio to the MEI;
* ``loop.gif``: a finer loop through the latent (48 frames of ``z: 0 -> 1`` along each latent axis
  in turn, the other at 0);
* ``manifold.json``: the run spec and the numbers (``dim``, ``per_dim``, ``latents``, ``activations``,
  ``ratios``, ``mei_activation``, ``floor``, ``mean_floor``, ``floor_holds``, ``min_ratio``,
  ``mean_ratio``, ``di``, the file names, ``seconds``).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diversevis.core.cache import atomic_write_bytes, atomic_write_json, output_dir
from diversevis.core.cppn import ImplicitGenerator
from diversevis.core.errors import DiversevisError
from diversevis.core.result import image_grid

__all__ = ["ManifoldResult", "load_manifold", "loop_latents", "FRAME_SIDE", "LOOP_FRAMES"]

#: Smallest side (px) of a saved frame; grid images are upscaled by an integer factor to reach it.
FRAME_SIDE = 96
#: Frames of the animation per latent axis.
LOOP_FRAMES = 48


@dataclass
class ManifoldResult:
    """Output of :func:`diversevis.manifold`.

    Attributes
    ----------
    generator : ImplicitGenerator
        The trained generator (CPU, eval mode); ``generator.render(z)`` gives the image of any latent.
    latents : torch.Tensor
        ``(P, dim)`` the grid latents in ``[0, 1)`` (row-major, last axis fastest).
    images : torch.Tensor
        ``(P, C, H, W)`` the grid's images in display space (grey 0.5, fixed L2 norm).
    activations, ratios : torch.Tensor
        ``(P,)`` the unit's activation for each grid image and its ratio to the MEI.
    mei_activation : float
        The MEI's activation at the same contrast.
    floor, mean_floor : float, float or None
        The activity requirements.
    floor_holds : bool
        Whether every grid ratio is ``>= floor`` and the mean ``>= mean_floor`` (within
        :data:`~diversevis.methods.floor.FLOOR_TOLERANCE`); ``spec["floor_failure"]`` says why not.
    di : float or None
        The grid's calibrated diversity index in pixels (0: a simple cell, 1: a complex cell).
    spec : dict
        The run spec: model, layer, unit, every hyperparameter, seed, versions, iterations, timings.
    dim, per_dim : int
        Latent dimension and grid latents per dimension (``P = per_dim ** dim``).
    loss_history : numpy.ndarray
        The loop's value per step.
    seconds : float
        Wall time of the whole call (MEI and DI calibration included).
    mei_image : torch.Tensor, optional
        ``(C, H, W)`` the MEI.
    """

    generator: ImplicitGenerator
    latents: torch.Tensor
    images: torch.Tensor
    activations: torch.Tensor
    ratios: torch.Tensor
    mei_activation: float
    floor: float
    mean_floor: float | None
    floor_holds: bool
    di: float | None
    spec: dict[str, Any]
    dim: int
    per_dim: int
    loss_history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: float = 0.0
    mei_image: torch.Tensor | None = None

    @property
    def min_ratio(self) -> float:
        return float(self.ratios.min())

    @property
    def mean_ratio(self) -> float:
        return float(self.ratios.mean())

    def __repr__(self) -> str:
        s = self.spec
        di = "n/a" if self.di is None else f"{self.di:.2f}"
        return (
            f"ManifoldResult({s.get('model')} {s.get('layer')}:{s.get('unit')}, dim {self.dim}, "
            f"{len(self.latents)} latents, ratio min {self.min_ratio:.3f} mean {self.mean_ratio:.3f}, "
            f"floor {'holds' if self.floor_holds else 'FAILS'}, DI {di})"
        )

    def loop_images(self, frames: int = LOOP_FRAMES) -> torch.Tensor:
        """``(frames * dim, C, H, W)`` the generator's images along :func:`loop_latents`."""
        with torch.no_grad():
            return self.generator.render(loop_latents(self.dim, frames))

    def to_json(self) -> dict[str, Any]:
        """The ``manifold.json`` document."""
        P = len(self.latents)
        return {
            "spec": self.spec,
            "dim": self.dim,
            "per_dim": self.per_dim,
            "latents": [[round(float(v), 6) for v in z] for z in self.latents],
            "activations": [float(v) for v in self.activations],
            "ratios": [float(v) for v in self.ratios],
            "mei_activation": float(self.mei_activation),
            "floor": float(self.floor),
            "mean_floor": None if self.mean_floor is None else float(self.mean_floor),
            "floor_holds": bool(self.floor_holds),
            "min_ratio": self.min_ratio,
            "mean_ratio": self.mean_ratio,
            "di": _finite_or_none(self.di),
            "frames": [_frame_name(i, P) for i in range(P)],
            "contact_sheet": "contact_sheet.png",
            "animation": "loop.gif",
            "generator": "generator.pt",
            "seconds": float(self.seconds),
        }

    def save(self, directory: str | Path) -> Path:
        """Write the manifold's files (module docstring) to ``directory``; returns it."""
        out = output_dir(directory)
        buf = io.BytesIO()
        self.generator.save(buf)
        atomic_write_bytes(out / "generator.pt", buf.getvalue())
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            images=self.images.float().numpy(),
            latents=self.latents.float().numpy(),
            activations=self.activations.float().numpy(),
            ratios=self.ratios.float().numpy(),
        )
        atomic_write_bytes(out / "images.npz", buf.getvalue())
        doc = self.to_json()
        for i, name in enumerate(doc["frames"]):
            atomic_write_bytes(out / name, _png(self.images[i]))
        atomic_write_bytes(out / "contact_sheet.png", self.contact_sheet())
        atomic_write_bytes(out / "loop.gif", _gif(self.loop_images()))
        atomic_write_json(out / "manifold.json", doc)
        return out

    def contact_sheet(self) -> bytes:
        """The grid as a PNG: one row per first-axis latent for ``dim=2``, each image with its ratio."""
        labels = [f"r={float(r):.2f}" for r in self.ratios]
        s = self.spec
        title = (
            f"{s.get('model')} {s.get('layer')}:{s.get('unit')}  manifold dim {self.dim}  "
            f"min {self.min_ratio:.2f} mean {self.mean_ratio:.2f} (floor {self.floor:g}"
            + ("" if self.floor_holds else " NOT MET")
            + ")"
            + ("" if self.di is None else f"  DI {self.di:.2f}")
        )
        columns = self.per_dim if self.dim == 2 else min(len(self.latents), 8)
        return image_grid(self.images, labels, title=title, tile=FRAME_SIDE, columns=columns)


def loop_latents(dim: int, frames: int = LOOP_FRAMES) -> torch.Tensor:
    """``(frames * dim, dim)``: ``z: 0 -> 1`` in ``frames`` steps along each latent axis in turn (others 0)."""
    t = torch.arange(frames, dtype=torch.float32) / frames
    out = torch.zeros(frames * dim, dim)
    for k in range(dim):
        out[k * frames : (k + 1) * frames, k] = t
    return out


def load_manifold(directory: str | Path) -> ManifoldResult:
    """A manifold written by :meth:`ManifoldResult.save` (the generator read with ``weights_only=True``)."""
    d = Path(directory)
    try:
        doc = json.loads((d / "manifold.json").read_text())
        arrays = np.load(d / "images.npz", allow_pickle=False)
        gen = ImplicitGenerator.load(d / doc.get("generator", "generator.pt"))
    except (OSError, ValueError, KeyError) as e:
        raise DiversevisError(f"{str(d)!r} does not hold a saved manifold ({e})") from None
    return ManifoldResult(
        generator=gen.eval(),
        latents=torch.from_numpy(arrays["latents"]),
        images=torch.from_numpy(arrays["images"]),
        activations=torch.from_numpy(arrays["activations"]),
        ratios=torch.from_numpy(arrays["ratios"]),
        mei_activation=float(doc["mei_activation"]),
        floor=float(doc["floor"]),
        mean_floor=doc["mean_floor"],
        floor_holds=bool(doc["floor_holds"]),
        di=doc["di"],
        spec=doc["spec"],
        dim=int(doc["dim"]),
        per_dim=int(doc["per_dim"]),
        seconds=float(doc["seconds"]),
    )


def _frame_name(i: int, n: int) -> str:
    return f"frames/{i:0{max(3, len(str(n - 1)))}d}.png"


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _uint8(img: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` display image -> ``(H, W)`` (grey) or ``(H, W, 3)`` uint8, clipped to [0, 1]."""
    a = (img.detach().cpu().float().clamp(0, 1) * 255 + 0.5).floor().numpy().astype(np.uint8)
    return a[0] if a.shape[0] == 1 else a[:3].transpose(1, 2, 0)


def _upscaled(img: torch.Tensor):
    """A Pillow image of ``img`` upscaled (nearest neighbour) by an integer factor to >= FRAME_SIDE px."""
    from PIL import Image

    h, w = img.shape[-2:]
    k = max(1, math.ceil(FRAME_SIDE / max(h, w)))
    return Image.fromarray(_uint8(img)).resize((w * k, h * k), Image.NEAREST)


def _png(img: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    _upscaled(img).save(buf, format="PNG")
    return buf.getvalue()


def _gif(images: torch.Tensor, ms: int = 60) -> bytes:
    """An endlessly looping GIF of ``images`` ``(T, C, H, W)``, ``ms`` per frame."""
    frames = [_upscaled(x).convert("RGB") for x in images]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=ms, loop=0)
    return buf.getvalue()
