"""``Result``: the images of a run, their numbers, the full run spec, and how they are saved.

``Result.save(dir)`` writes three files, each atomically (temporary file + rename), ``result.json`` last,
so a directory with a ``result.json`` always holds a complete result:

* ``grid.png``: the MEI (if known) and the images, each labelled with its activation and ratio to the MEI;
* ``images.npz``: ``images`` ``(N, C, H, W)`` float32 display space, ``activations``, ``ratios``,
  ``distances`` ``(N, N)``, ``loss_history`` and ``mei_image``;
* ``result.json``: the run spec (model, layer, unit, every hyperparameter, seed, versions) and metrics.
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
from diversevis.core.errors import DiversevisError

__all__ = ["Result", "image_grid"]


@dataclass
class Result:
    """Output of :func:`diversevis.diverse` or :func:`diversevis.mei`.

    Attributes
    ----------
    images : torch.Tensor
        ``(N, C, H, W)`` optimised images in display space (grey 0.5; the norm constraint can push a few
        pixels slightly outside ``[0, 1]``; the PNG clips them).
    activations : torch.Tensor
        ``(N,)`` target values of the images.
    distances : torch.Tensor
        ``(N, N)`` pairwise RMS distances in the distance space (pixels or the distance layer).
    loss_history : numpy.ndarray
        Loss per iteration.
    spec : dict
        The full run spec (model, layer, unit, hyperparameters, seed, versions, timings).
    mei_activation : float or None
        Activation of the single-image MEI at the same contrast.
    mei_image : torch.Tensor or None
        ``(C, H, W)`` MEI.
    """

    images: torch.Tensor
    activations: torch.Tensor
    distances: torch.Tensor
    loss_history: np.ndarray
    spec: dict[str, Any]
    mei_activation: float | None = None
    mei_image: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # --------------------------------------------------------------- metrics
    @property
    def ratios(self) -> torch.Tensor | None:
        """``(N,)`` activations divided by the MEI activation (``None`` if no MEI was computed)."""
        if self.mei_activation is None or self.mei_activation == 0:
            return None
        return self.activations / self.mei_activation

    @property
    def min_distance(self) -> float:
        """Smallest pairwise distance (``nan`` for a single image)."""
        n = self.distances.shape[0]
        if n < 2:
            return math.nan
        iu = torch.triu_indices(n, n, 1)
        return float(self.distances[iu[0], iu[1]].min())

    @property
    def mean_distance(self) -> float:
        """Mean pairwise distance (``nan`` for a single image)."""
        n = self.distances.shape[0]
        if n < 2:
            return math.nan
        iu = torch.triu_indices(n, n, 1)
        return float(self.distances[iu[0], iu[1]].mean())

    def metrics(self) -> dict[str, Any]:
        """The headline numbers as plain Python values."""
        r = self.ratios
        return {
            "mean_activation": float(self.activations.mean()),
            "activations": [float(a) for a in self.activations],
            "mei_activation": self.mei_activation,
            "ratios": None if r is None else [float(v) for v in r],
            "min_ratio": None if r is None else float(r.min()),
            "mean_ratio": None if r is None else float(r.mean()),
            "min_distance": _finite_or_none(self.min_distance),
            "mean_distance": _finite_or_none(self.mean_distance),
            "n_iter": self.spec.get("n_iter"),
            "seconds": self.spec.get("seconds"),
        }

    def __repr__(self) -> str:
        m = self.metrics()
        ratio = "" if m["mean_ratio"] is None else f", mean_ratio={m['mean_ratio']:.3f}"
        dist = "" if m["min_distance"] is None else f", min_distance={m['min_distance']:.4g}"
        return (
            f"Result({self.spec.get('model')} {self.spec.get('layer')} unit={self.spec.get('unit')}: "
            f"{len(self.activations)} images, mean_activation={m['mean_activation']:.4g}{ratio}{dist}, "
            f"n_iter={m['n_iter']})"
        )

    # ------------------------------------------------------------------ I/O
    def save(self, directory: str | Path) -> Path:
        """Write ``grid.png``, ``images.npz`` and ``result.json`` (last) into ``directory``."""
        out = output_dir(directory)
        labels = _labels(self)
        mei = None if self.mei_image is None else self.mei_image[None]
        title = _title(self.spec)
        atomic_write_bytes(out / "grid.png", image_grid(self.images, labels, title=title, mei=mei))
        buf = io.BytesIO()
        arrays = {
            "images": self.images.detach().cpu().float().numpy(),
            "activations": self.activations.detach().cpu().float().numpy(),
            "distances": self.distances.detach().cpu().float().numpy(),
            "loss_history": np.asarray(self.loss_history, dtype=np.float32),
        }
        if self.ratios is not None:
            arrays["ratios"] = self.ratios.detach().cpu().float().numpy()
        if self.mei_image is not None:
            arrays["mei_image"] = self.mei_image.detach().cpu().float().numpy()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(out / "images.npz", buf.getvalue())
        atomic_write_json(out / "result.json", {"spec": self.spec, "metrics": self.metrics(), **self.extra})
        return out

    @classmethod
    def load(cls, directory: str | Path) -> Result:
        """Read a result written by :meth:`save`."""
        d = Path(directory)
        if not (d / "result.json").is_file() or not (d / "images.npz").is_file():
            raise DiversevisError(
                f"{str(d)!r} holds no complete result (result.json and images.npz expected)"
            )
        meta = json.loads((d / "result.json").read_text())
        with np.load(d / "images.npz") as z:
            arrays = {k: z[k] for k in z.files}
        extra = {k: v for k, v in meta.items() if k not in ("spec", "metrics")}
        return cls(
            images=torch.from_numpy(arrays["images"]),
            activations=torch.from_numpy(arrays["activations"]),
            distances=torch.from_numpy(arrays["distances"]),
            loss_history=arrays["loss_history"],
            spec=meta["spec"],
            mei_activation=meta["metrics"].get("mei_activation"),
            mei_image=torch.from_numpy(arrays["mei_image"]) if "mei_image" in arrays else None,
            extra=extra,
        )


def _finite_or_none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _labels(res: Result) -> list[str]:
    r = res.ratios
    out = []
    for i, a in enumerate(res.activations.tolist()):
        out.append(f"{a:.3g}" + ("" if r is None else f"  ({float(r[i]):.0%})"))
    return out


def _title(spec: dict[str, Any]) -> str:
    unit = spec.get("unit")
    what = f"unit {unit}" if unit is not None else "direction"
    parts = [str(spec.get("model", "")), str(spec.get("layer", "")), what]
    if spec.get("method") == "diverse":
        dl = spec.get("distance_layer") or "pixels"
        parts.append(f"lambda={spec.get('diversity')} ({spec.get('distance', 'min')} dist. in {dl})")
    return "  ".join(p for p in parts if p)


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    a = img.detach().cpu().float().clamp(0, 1).numpy()
    if a.shape[0] == 1:
        a = np.repeat(a, 3, axis=0)
    return (a.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)


def image_grid(
    images: torch.Tensor,
    labels: list[str] | None = None,
    *,
    title: str | None = None,
    mei: torch.Tensor | None = None,
    tile: int = 112,
    columns: int | None = None,
) -> bytes:
    """Render images as a labelled PNG grid.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, C, H, W)`` display-space images (clipped to ``[0, 1]``; C = 1 or 3).
    labels : list of str, optional
        One caption per image.
    title : str, optional
        A line above the grid.
    mei : torch.Tensor, optional
        ``(1, C, H, W)``: shown first, captioned "MEI".
    tile : int
        Minimum displayed side of each image in pixels (nearest-neighbour upscaling by an integer factor).
    columns : int, optional
        Images per row (default: all in one row up to 8).

    Returns
    -------
    bytes
        The PNG file.
    """
    from PIL import Image, ImageDraw, ImageFont

    imgs = list(images)
    caps = list(labels) if labels is not None else [""] * len(imgs)
    if mei is not None:
        imgs = [mei[0]] + imgs
        caps = ["MEI"] + caps
    n = len(imgs)
    h, w = imgs[0].shape[-2:]
    scale = max(1, math.ceil(tile / max(h, w)))
    th, tw = h * scale, w * scale
    cols = columns or min(n, 8)
    rows = math.ceil(n / cols)
    font = ImageFont.load_default(size=13)
    pad, cap_h = 8, 20
    title_h = 24 if title else 0
    width = cols * (tw + pad) + pad
    height = title_h + rows * (th + cap_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 5), title, fill=(0, 0, 0), font=font)
    for k, (img, cap) in enumerate(zip(imgs, caps)):
        r, c = divmod(k, cols)
        x0 = pad + c * (tw + pad)
        y0 = title_h + pad + r * (th + cap_h + pad)
        tile_img = Image.fromarray(_to_uint8(img)).resize((tw, th), Image.NEAREST)
        canvas.paste(tile_img, (x0, y0))
        if mei is not None and k == 0:
            draw.rectangle([x0 - 3, y0 - 3, x0 + tw + 2, y0 + th + 2], outline=(200, 40, 40), width=2)
        draw.text((x0, y0 + th + 3), cap, fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()
