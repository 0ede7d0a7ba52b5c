"""``Result``: the images of a run, their numbers, the full run spec, and how they are saved.

``Result.save(dir)`` writes three files, each atomically (temporary file + rename), ``result.json`` last,
so a directory with a ``result.json`` always holds a complete result:

* ``grid.png``: the MEI (if known) and the images, each labelled with its activation and ratio to the MEI;
* ``images.npz``: ``images`` ``(N, C, H, W)`` float32 display space, ``activations``, ``ratios``,
  ``distances`` ``(N, N)``, ``loss_history``, ``mei_image`` and (when measured) ``shown_activations``;
* ``result.json``: the run spec (model, layer, unit, every hyperparameter, seed, versions) and metrics.

What the user sees is what was measured. The optimised images live in display space around grey 0.5 at a
fixed L2 norm, so a few values can fall outside ``[0, 1]``; a PNG clips them and rounds to 8 bits.
:func:`clip_report` gives the images exactly as ``grid.png`` stores them and the fraction of values that
were clipped; :meth:`Result.measure_shown` evaluates those images with the network (the caller passes the
read-out, since this layer has no network) and the numbers go into ``result.json`` and the grid's captions.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diversevis.core.cache import atomic_write_bytes, atomic_write_json, output_dir
from diversevis.core.errors import DiversevisError

__all__ = ["Result", "clip_report", "grid_tiles", "image_grid", "png_html"]


@dataclass
class Result:
    """Output of :func:`diversevis.diverse` or :func:`diversevis.mei`.

    Attributes
    ----------
    images : torch.Tensor
        ``(N, C, H, W)`` optimised images in display space (grey 0.5; the norm constraint can push a few
        pixels slightly outside ``[0, 1]``; the PNG clips them: see ``shown_activations``).
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
    extra : dict
        Further JSON entries written next to ``spec`` and ``metrics``.
    shown_activations : torch.Tensor or None
        ``(N,)`` activations of the images as ``grid.png`` shows them (clipped to ``[0, 1]``, 8-bit), filled
        by :meth:`measure_shown`; ``None`` if not measured.
    shown_mei_activation : float or None
        The same for the MEI image shown in the grid.
    clipped_fraction : float or None
        Fraction of the images' values (pixels x channels) outside ``[0, 1]``, clipped in the PNG.
    """

    images: torch.Tensor
    activations: torch.Tensor
    distances: torch.Tensor
    loss_history: np.ndarray
    spec: dict[str, Any]
    mei_activation: float | None = None
    mei_image: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    shown_activations: torch.Tensor | None = None
    shown_mei_activation: float | None = None
    clipped_fraction: float | None = None

    # ------------------------------------------------------- what is shown
    def measure_shown(
        self,
        evaluate: Callable[[torch.Tensor], torch.Tensor],
        device: str | torch.device | None = None,
    ) -> Result:
        """Measure the images as the PNG shows them; fills ``shown_*`` and ``clipped_fraction``.

        Parameters
        ----------
        evaluate : callable
            Maps ``(B, C, H, W)`` display-space images to their ``(B,)`` target values (the same read-out
            that produced ``activations``). Called once, without gradients, on the images and the MEI.
        device : str or torch.device, optional
            Where ``evaluate`` wants its input (default: where the images are).

        Returns
        -------
        Result
            ``self``, for chaining.
        """
        shown, frac = clip_report(self.images)
        mei = self.mei_image
        if mei is not None and tuple(mei.shape) != tuple(shown.shape[1:]):
            mei = None  # an MEI of another size (images cropped to an effective field): not re-measured
        batch = shown if mei is None else torch.cat([shown, clip_report(mei[None])[0]])
        with torch.no_grad():
            acts = evaluate(batch.to(device or self.images.device)).detach().float().cpu().reshape(-1)
        if acts.numel() != batch.shape[0]:
            raise DiversevisError(f"evaluate returned {acts.numel()} values for {batch.shape[0]} images")
        n = shown.shape[0]
        self.shown_activations = acts[:n]
        self.shown_mei_activation = None if mei is None else float(acts[n])
        self.clipped_fraction = frac
        return self

    def shown_metrics(self) -> dict[str, Any]:
        """The ``shown_*`` numbers of :meth:`metrics` (all ``None`` until :meth:`measure_shown` ran)."""
        s = self.shown_activations
        if s is None:
            keys = ("shown_activations", "shown_mean_activation", "shown_loss", "shown_mei_activation")
            return {**dict.fromkeys(keys), "clipped_fraction": self.clipped_fraction}
        mean, optimised = float(s.mean()), float(self.activations.float().mean())
        return {
            "shown_activations": [float(a) for a in s],
            "shown_mean_activation": mean,
            "shown_loss": _finite_or_none(1.0 - mean / optimised) if optimised else None,
            "shown_mei_activation": self.shown_mei_activation,
            "clipped_fraction": self.clipped_fraction,
        }

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
            **_index_metrics(self.spec.get("diversity_index")),
            **self.shown_metrics(),
        }

    def __repr__(self) -> str:
        m = self.metrics()
        ratio = "" if m["mean_ratio"] is None else f", mean_ratio={m['mean_ratio']:.3f}"
        dist = "" if m["min_distance"] is None else f", min_distance={m['min_distance']:.4g}"
        return (
            f"Result({self.spec.get('model')} {self.spec.get('layer')} unit={self.spec.get('unit')}: "
            f"{len(self.activations)} images, mean_activation={m['mean_activation']:.4g}{ratio}{dist}, "
            f"n_iter={m['n_iter']}{_shown_repr(m)})"
        )

    def grid_png(self) -> bytes:
        """``grid.png`` as bytes: the MEI (if known) and the images with their captions."""
        mei = None if self.mei_image is None else self.mei_image[None]
        return image_grid(self.images, _labels(self), title=_title(self.spec), mei=mei)

    def _repr_png_(self) -> bytes:
        """Jupyter: the result shows itself as its grid."""
        return self.grid_png()

    def _repr_html_(self) -> str:
        """Jupyter: the summary line above the grid (inline PNG)."""
        return png_html(self.grid_png(), repr(self))

    # ------------------------------------------------------------------ I/O
    def save(self, directory: str | Path) -> Path:
        """Write ``grid.png``, ``images.npz`` and ``result.json`` (last) into ``directory``."""
        out = output_dir(directory)
        atomic_write_bytes(out / "grid.png", self.grid_png())
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
        if self.shown_activations is not None:
            arrays["shown_activations"] = self.shown_activations.detach().cpu().float().numpy()
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
        shown = arrays.get("shown_activations")
        return cls(
            images=torch.from_numpy(arrays["images"]),
            activations=torch.from_numpy(arrays["activations"]),
            distances=torch.from_numpy(arrays["distances"]),
            loss_history=arrays["loss_history"],
            spec=meta["spec"],
            mei_activation=meta["metrics"].get("mei_activation"),
            mei_image=torch.from_numpy(arrays["mei_image"]) if "mei_image" in arrays else None,
            extra=extra,
            shown_activations=None if shown is None else torch.from_numpy(shown),
            shown_mei_activation=meta["metrics"].get("shown_mei_activation"),
            clipped_fraction=meta["metrics"].get("clipped_fraction"),
        )


def _index_metrics(di: Any) -> dict[str, float | None]:
    """The calibrated diversity index entries of a diverse set's spec, if it has them."""
    if not isinstance(di, dict):
        return {}
    return {k: di.get(k) for k in ("di", "di_min", "di_feature", "di_feature_min") if k in di}


def _finite_or_none(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _shown_repr(m: dict[str, Any]) -> str:
    if m["shown_mean_activation"] is None:
        return ""
    return f", shown_mean_activation={m['shown_mean_activation']:.4g} ({m['clipped_fraction']:.2%} clipped)"


def _labels(res: Result) -> list[str]:
    """Captions: the activation of each image as shown (when measured), and its ratio to the MEI."""
    acts = res.activations if res.shown_activations is None else res.shown_activations
    mei = res.mei_activation
    out = []
    for a in acts.tolist():
        out.append(f"{a:.3g}" + ("" if not mei else f"  ({a / mei:.0%})"))
    return out


def _title(spec: dict[str, Any]) -> str:
    unit = spec.get("unit")
    what = f"unit {unit}" if unit is not None else "direction"
    parts = [str(spec.get("model", "")), str(spec.get("layer", "")), what]
    if spec.get("method") == "diverse":
        dl = spec.get("distance_layer") or "pixels"
        mode = (
            f"floor {spec['floor']:g}" if spec.get("floor") is not None else f"lambda={spec.get('diversity')}"
        )
        di = spec.get("diversity_index")
        index = f", DI {di['di']:.2f}" if isinstance(di, dict) and di.get("di") is not None else ""
        parts.append(f"{mode} ({spec.get('distance', 'min')} dist. in {dl}{index})")
    return "  ".join(p for p in parts if p)


def _levels(images: torch.Tensor) -> torch.Tensor:
    """8-bit levels ``round(clip(x, 0, 1) * 255)`` (float32), exactly what the PNG stores."""
    return (images.detach().cpu().float().clamp(0, 1) * 255 + 0.5).floor()


def clip_report(images: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The images as a PNG shows them, and the fraction of their values that had to be clipped.

    Parameters
    ----------
    images : torch.Tensor
        ``(..., C, H, W)`` display-space images (grey 0.5).

    Returns
    -------
    shown : torch.Tensor
        The images clipped to ``[0, 1]`` and rounded to the 8-bit levels ``k / 255`` that ``grid.png``
        stores (float32, CPU): the network's response to ``shown`` is the response to the saved file.
    fraction : float
        Fraction of the values (pixels x channels) below 0 or above 1.
    """
    x = images.detach().cpu().float()
    fraction = float(((x < 0) | (x > 1)).float().mean()) if x.numel() else 0.0
    return _levels(x) / 255, fraction


def png_html(png: bytes, text: str = "") -> str:
    """HTML for notebooks: ``text`` (escaped, preformatted) above the PNG inlined as base64."""
    b64 = base64.b64encode(png).decode("ascii")
    pre = f"<pre>{html.escape(text)}</pre>" if text else ""
    return f'<div>{pre}<img src="data:image/png;base64,{b64}"/></div>'


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    a = _levels(img).numpy().astype(np.uint8)
    if a.shape[0] == 1:
        a = np.repeat(a, 3, axis=0)
    return a.transpose(1, 2, 0)


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
    h, w = imgs[0].shape[-2:]
    (width, height), (th, tw), corners = _grid_layout(len(imgs), h, w, tile, columns, bool(title))
    font = ImageFont.load_default(size=13)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((_PAD, 5), title, fill=(0, 0, 0), font=font)
    for k, (img, cap, (x0, y0)) in enumerate(zip(imgs, caps, corners)):
        tile_img = Image.fromarray(_to_uint8(img)).resize((tw, th), Image.NEAREST)
        canvas.paste(tile_img, (x0, y0))
        if mei is not None and k == 0:
            draw.rectangle([x0 - 3, y0 - 3, x0 + tw + 2, y0 + th + 2], outline=(200, 40, 40), width=2)
        draw.text((x0, y0 + th + 3), cap, fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


_PAD, _CAPTION_H, _TITLE_H = 8, 20, 24


def _grid_layout(
    n: int, h: int, w: int, tile: int, columns: int | None, title: bool
) -> tuple[tuple[int, int], tuple[int, int], list[tuple[int, int]]]:
    """Canvas ``(width, height)``, tile ``(height, width)`` and the top-left corner of each of ``n`` tiles."""
    scale = max(1, math.ceil(tile / max(h, w)))
    th, tw = h * scale, w * scale
    cols = columns or min(n, 8)
    rows = math.ceil(n / cols)
    title_h = _TITLE_H if title else 0
    size = (cols * (tw + _PAD) + _PAD, title_h + rows * (th + _CAPTION_H + _PAD) + _PAD)
    corners = []
    for k in range(n):
        r, c = divmod(k, cols)
        corners.append((_PAD + c * (tw + _PAD), title_h + _PAD + r * (th + _CAPTION_H + _PAD)))
    return size, (th, tw), corners


def grid_tiles(
    png: bytes | str | Path,
    n: int,
    size: int | tuple[int, int],
    *,
    mei: bool = False,
    title: bool = True,
    tile: int = 112,
    columns: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read the images back from a PNG written by :func:`image_grid` (e.g. a saved ``grid.png``).

    Parameters
    ----------
    png : bytes, str or Path
        The PNG file or its bytes.
    n : int
        Number of images (without the MEI).
    size : int or (int, int)
        Image side, or ``(height, width)``, in pixels.
    mei, title, tile, columns
        As given to :func:`image_grid` (``mei``: whether an MEI tile comes first; ``title``: whether a
        title line was drawn). ``Result.save`` draws a title and the MEI when it has one.

    Returns
    -------
    images : torch.Tensor
        ``(n, 3, H, W)`` float32 in ``[0, 1]`` (8-bit levels; grey images come back as three equal channels).
    mei_image : torch.Tensor or None
        ``(3, H, W)`` the MEI tile, if ``mei``.
    """
    from PIL import Image

    h, w = (size, size) if isinstance(size, int) else size
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    total = n + int(mei)
    (width, height), (th, tw), corners = _grid_layout(total, h, w, tile, columns, title)
    if a.shape[:2] != (height, width):
        raise DiversevisError(
            f"the PNG is {a.shape[1]}x{a.shape[0]}, not the {width}x{height} grid of {total} {h}x{w} tiles"
        )
    step = th // h
    tiles = [a[y0 : y0 + th : step, x0 : x0 + tw : step].transpose(2, 0, 1) for x0, y0 in corners]
    out = torch.from_numpy(np.stack(tiles).copy())
    return (out[1:], out[0]) if mei else (out, None)
