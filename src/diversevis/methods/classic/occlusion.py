"""Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7): how much a unit or class loses when a grey square
covers each part of an image.

A ``size x size`` square of a constant colour (display-space grey 0.5 by default, or the natural-image
mean) slides over the image with a step of ``stride`` pixels: top-left corners ``(i * stride, j * stride)``
for ``i < n_y = (H - size) // stride + 1`` and ``j < n_x = (W - size) // stride + 1``. For every position
the target is evaluated on the occluded image and the map holds the **drop**

    drop[i, j] = f(image) - f(image occluded at (i, j))

(positive where covering the image hurts the target). The target ``f`` is either

* a unit: channel ``unit`` of ``layer``, read out as the spatial sum of its rectified map
  (``readout="sum"``: ``sum_yx relu(a[unit, y, x])``, the "total activation" of Z&F Fig. 7b), or the raw
  value at the map's centre (``"center"``) or at the position where the unoccluded image drives it most
  (``"max"``). Only the truncated forward pass up to ``layer`` runs
  (:meth:`Network.activations`), never the head;
* a class logit (``class_index``): the model's final output ``(N, classes)``, i.e. the whole network.

Occluded images are evaluated ``batch_size`` at a time. The pixel heatmap averages the drops of all the
windows covering each pixel (``NaN`` where none does, at the right/bottom remainder when the stride does
not divide ``H - size``).

>>> from diversevis.classic.occlusion import occlusion
>>> occlusion("vgg16", "chelsea", layer="conv5_3", unit=21, size=32, stride=16, image_size=224).save("occ")
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diversevis.core.cache import atomic_write_bytes, atomic_write_json, output_dir
from diversevis.core.checks import integer
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.images.photos import load_photo
from diversevis.methods.dfv import versions
from diversevis.methods.problem import _prepare

__all__ = [
    "READOUTS",
    "OcclusionResult",
    "occlusion_grid",
    "occlude",
    "fill_color",
    "pixel_heatmap",
    "occlusion",
]

#: How a unit's channel map becomes one number per image.
READOUTS = ("sum", "center", "max")


def occlusion_grid(height: int, width: int, size: int, stride: int) -> tuple[list[int], list[int]]:
    """Top rows and left columns of the occluder positions.

    Parameters
    ----------
    height, width : int
        Image size in pixels.
    size : int
        Side of the square occluder, ``1 <= size <= min(height, width)``.
    stride : int
        Step between positions in pixels (>= 1).

    Returns
    -------
    (list of int, list of int)
        ``n_y`` top rows ``0, stride, ...`` and ``n_x`` left columns, every square inside the image.

    Raises
    ------
    DiversevisError
        If ``size`` or ``stride`` is not a positive integer or the square does not fit in the image.
    """
    size = integer("size", size, 1)
    stride = integer("stride", stride, 1)
    if size > min(height, width):
        raise DiversevisError(
            f"occluder size {size} px is larger than the {height}x{width} image; choose a size "
            f"in 1..{min(height, width)}"
        )
    return list(range(0, height - size + 1, stride)), list(range(0, width - size + 1, stride))


def fill_color(fill: str | float | Sequence[float], channels: int = 3) -> torch.Tensor:
    """The occluder's colour in display space.

    Parameters
    ----------
    fill : "grey", "mean", float or sequence of float
        ``"grey"`` (0.5 in every channel), ``"mean"`` (the per-channel mean of the bundled natural
        images, :func:`diversevis.naturals.dataset_mean`), one value for all channels, or one per channel.
    channels : int
        Number of image channels.

    Returns
    -------
    torch.Tensor
        ``(channels, 1, 1)`` float32.
    """
    if isinstance(fill, str):
        if fill in ("grey", "gray"):
            values = [0.5] * channels
        elif fill == "mean":
            from diversevis.images.naturals import dataset_mean

            if channels != 3:
                raise DiversevisError(
                    "fill='mean' is the RGB natural-image mean; give a value for this network"
                )
            values = [float(v) for v in dataset_mean()]
        else:
            raise DiversevisError(
                f"fill must be 'grey', 'mean', a number or one number per channel, got {fill!r}"
            )
    elif isinstance(fill, (int, float)) and not isinstance(fill, bool):
        values = [float(fill)] * channels
    else:
        values = [float(v) for v in fill]
        if len(values) != channels:
            raise DiversevisError(f"fill needs 1 or {channels} values, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise DiversevisError(f"fill values must be finite, got {values}")
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1)


def occlude(
    image: torch.Tensor, corners: Sequence[tuple[int, int]], size: int, color: torch.Tensor
) -> torch.Tensor:
    """Copies of an image, each with one square painted over.

    Parameters
    ----------
    image : torch.Tensor
        ``(C, H, W)`` display-space image.
    corners : sequence of (int, int)
        Top-left ``(row, column)`` of each square.
    size : int
        Side of the square in pixels.
    color : torch.Tensor
        ``(C, 1, 1)`` fill colour.

    Returns
    -------
    torch.Tensor
        ``(len(corners), C, H, W)``.
    """
    batch = image.unsqueeze(0).repeat(len(corners), 1, 1, 1)
    color = color.to(image)
    for b, (y, x) in enumerate(corners):
        batch[b, :, y : y + size, x : x + size] = color
    return batch


def pixel_heatmap(drop: torch.Tensor, size: int, stride: int, height: int, width: int) -> torch.Tensor:
    """Upsample an occlusion map to pixels: each pixel gets the mean drop of the windows covering it.

    Parameters
    ----------
    drop : torch.Tensor
        ``(n_y, n_x)`` drop per occluder position.
    size, stride : int
        Occluder side and step in pixels.
    height, width : int
        Image size.

    Returns
    -------
    torch.Tensor
        ``(height, width)`` float32; ``NaN`` at pixels no window covers.
    """
    d = drop.detach().float().cpu()[None, None]
    ones = torch.ones(1, 1, size, size)
    total = F.conv_transpose2d(d, ones, stride=stride)[0, 0]
    count = F.conv_transpose2d(torch.ones_like(d), ones, stride=stride)[0, 0]
    h, w = total.shape
    total = F.pad(total, (0, width - w, 0, height - h))
    count = F.pad(count, (0, width - w, 0, height - h))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


# ------------------------------------------------------------------------------------------- targets


def _unit_target(
    net: Network, layer: str, unit: int, readout: str, image: torch.Tensor
) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """Read-out of channel ``unit`` of ``layer`` (truncated forward) and its description for the spec."""
    if readout == "centre":
        readout = "center"
    if readout not in READOUTS:
        raise DiversevisError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
    _check_reaches(net, layer, image)
    with torch.no_grad():
        a = net.activations(image[None], [layer])[layer]
    k = a.shape[1] if a.dim() >= 2 else 0
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) or not 0 <= unit < k:
        raise DiversevisError(
            f"unit must be an integer in 0..{k - 1} ({net.display_name(layer)} has {k} channels), got {unit!r}"
        )
    info: dict[str, Any] = {
        "kind": "unit",
        "layer": net.display_name(layer),
        "layer_path": net.resolve(layer),
    }
    info.update(unit=int(unit), readout=readout)
    if a.dim() == 2:  # a flat layer: the unit is one number already
        info["readout"] = "value"
        return (lambda x: net.activations(x, [layer])[layer][:, unit]), info
    if a.dim() != 4:
        raise DiversevisError(
            f"layer {layer!r} gives shape {tuple(a.shape)}; expected (N, C, h, w) or (N, C)"
        )
    h, w = a.shape[-2:]
    if readout == "sum":
        return (lambda x: torch.relu(net.activations(x, [layer])[layer][:, unit]).sum((1, 2))), info
    if readout == "center":
        y, x0 = (h - 1) // 2, (w - 1) // 2
    else:
        flat = int(a[0, unit].flatten().argmax())
        y, x0 = divmod(flat, w)
    info["map_position"] = [int(y), int(x0)]
    return (lambda x: net.activations(x, [layer])[layer][:, unit, y, x0]), info


def _check_reaches(net: Network, layer: str, image: torch.Tensor) -> None:
    """The image must be large enough for ``layer`` to give an output (at least its receptive field)."""
    h, w = image.shape[-2:]
    if net.output_shape(layer, (h, w)):
        return
    rf = net.receptive_field(layer).size
    raise DiversevisError(
        f"the {h}x{w} px image is smaller than what {net.display_name(layer)} needs (receptive field "
        f"{rf} px): it gives no output; use a larger image (CLI: --image-size {max(rf, 2 * rf)})"
    )


def _class_target(
    net: Network, class_index: int, image: torch.Tensor
) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """Read-out of one logit of the model's final output (the full forward pass)."""
    with torch.no_grad():
        out = net(image[None])
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DiversevisError(
            f"a class target needs a model whose output is class logits (N, classes); {net.name} outputs "
            f"{shape}: give a layer and unit instead"
        )
    n = out.shape[1]
    if (
        isinstance(class_index, bool)
        or not isinstance(class_index, (int, np.integer))
        or not 0 <= class_index < n
    ):
        raise DiversevisError(f"class index must be an integer in 0..{n - 1}, got {class_index!r}")
    top = [int(i) for i in out[0].topk(min(5, n)).indices]
    info = {"kind": "class", "class_index": int(class_index), "top5_unoccluded": top}
    return (lambda x: net(x)[:, class_index]), info


def _evaluate(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, fmt: list) -> torch.Tensor:
    """``f(x)`` as float32 on the CPU, channels-last while the model accepts it (``fmt`` is updated)."""
    if fmt[0] is torch.channels_last:
        try:
            return f(x.contiguous(memory_format=torch.channels_last)).float().cpu()
        except RuntimeError:
            fmt[0] = torch.contiguous_format
    return f(x).float().cpu()


# -------------------------------------------------------------------------------------------- result


@dataclass
class OcclusionResult:
    """An occlusion-sensitivity map.

    Attributes
    ----------
    image : torch.Tensor
        ``(C, H, W)`` the unoccluded display-space image.
    drop : torch.Tensor
        ``(n_y, n_x)`` baseline minus the target of the image occluded at each position (target units).
    values : torch.Tensor
        ``(n_y, n_x)`` the target for each occluded image.
    baseline : float
        The target for the unoccluded image.
    heatmap : torch.Tensor
        ``(H, W)`` mean drop of the windows covering each pixel (``NaN`` where none does).
    spec : dict
        Full run spec (model, target, size, stride, fill, image source, grid, versions, seconds).
    """

    image: torch.Tensor
    drop: torch.Tensor
    values: torch.Tensor
    baseline: float
    heatmap: torch.Tensor
    spec: dict[str, Any]

    @property
    def peak(self) -> tuple[int, int]:
        """Grid index ``(i, j)`` of the largest drop."""
        flat = int(self.drop.flatten().argmax())
        return divmod(flat, self.drop.shape[1])

    @property
    def peak_box(self) -> tuple[int, int, int, int]:
        """Pixel box ``(top, left, bottom, right)`` (half-open) of the occluder at :attr:`peak`."""
        i, j = self.peak
        s, t = self.spec["size"], self.spec["stride"]
        return (i * t, j * t, i * t + s, j * t + s)

    @property
    def peak_center(self) -> tuple[float, float]:
        """Pixel ``(row, column)`` of the centre of the occluder at :attr:`peak`."""
        t, left, b, r = self.peak_box
        return ((t + b - 1) / 2, (left + r - 1) / 2)

    def metrics(self) -> dict[str, Any]:
        """Headline numbers as plain Python values."""
        d = self.drop
        return {
            "baseline": self.baseline,
            "grid": [int(d.shape[0]), int(d.shape[1])],
            "peak": list(self.peak),
            "peak_box": list(self.peak_box),
            "peak_center": list(self.peak_center),
            "max_drop": float(d.max()),
            "min_drop": float(d.min()),
            "mean_drop": float(d.mean()),
            "max_drop_fraction": float(d.max()) / self.baseline if self.baseline else None,
            "seconds": self.spec.get("seconds"),
        }

    def describe_target(self) -> str:
        """``"conv5_3 unit 21 (sum)"`` or ``"class 285"``."""
        t = self.spec["target"]
        if t["kind"] == "class":
            return f"class {t['class_index']}"
        return f"{t['layer']} unit {t['unit']} ({t['readout']})"

    def figure(self) -> bytes:
        """PNG (matplotlib): the image with the peak occluder, the pixel heatmap, and the overlay."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle

        img = self.image.detach().cpu().float().clamp(0, 1)
        img = img.repeat(3, 1, 1) if img.shape[0] == 1 else img
        rgb = img.permute(1, 2, 0).numpy()
        heat = self.heatmap.numpy()
        finite = heat[np.isfinite(heat)]
        lim = float(np.abs(finite).max()) if finite.size else 1.0
        lim = lim or 1.0
        fig = Figure(figsize=(11.5, 4.0), dpi=100)
        FigureCanvasAgg(fig)
        axes = [fig.add_subplot(1, 3, k + 1) for k in range(3)]
        t, left, b, r = self.peak_box
        axes[0].imshow(rgb)
        axes[0].add_patch(Rectangle((left - 0.5, t - 0.5), r - left, b - t, fill=False, ec="red", lw=1.5))
        axes[0].set_title(f"image; occluder at the peak ({self.spec['size']} px)", fontsize=9)
        im = axes[1].imshow(np.ma.masked_invalid(heat), cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[1].set_title("drop = baseline - occluded", fontsize=9)
        fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
        axes[2].imshow(rgb)
        axes[2].imshow(np.ma.masked_invalid(heat), cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.55)
        axes[2].set_title("overlay", fontsize=9)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        m = self.metrics()
        fig.suptitle(
            f"{self.spec['model']}  {self.describe_target()}  occlusion {self.spec['size']} px / stride "
            f"{self.spec['stride']}: baseline {self.baseline:.4g}, max drop {m['max_drop']:.4g} at "
            f"rows {t}-{b - 1}, cols {left}-{r - 1}",
            fontsize=10,
        )
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``occlusion.png``, ``occlusion.npz`` and ``occlusion.json`` (last), atomically."""
        out = output_dir(directory)
        atomic_write_bytes(out / "occlusion.png", self.figure())
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            image=self.image.detach().cpu().float().numpy(),
            drop=self.drop.detach().cpu().float().numpy(),
            values=self.values.detach().cpu().float().numpy(),
            baseline=np.float32(self.baseline),
            heatmap=self.heatmap.detach().cpu().float().numpy(),
        )
        atomic_write_bytes(out / "occlusion.npz", buf.getvalue())
        atomic_write_json(out / "occlusion.json", {"spec": self.spec, "metrics": self.metrics()})
        return out

    def __repr__(self) -> str:
        m = self.metrics()
        return (
            f"OcclusionResult({self.spec['model']} {self.describe_target()}: grid {m['grid'][0]}x{m['grid'][1]}, "
            f"baseline={self.baseline:.4g}, max_drop={m['max_drop']:.4g} at {tuple(m['peak'])})"
        )


# --------------------------------------------------------------------------------------------- entry


def occlusion(
    model: Network | nn.Module | str,
    image: torch.Tensor | str | os.PathLike,
    layer: str | None = None,
    unit: int | None = None,
    *,
    class_index: int | None = None,
    size: int = 32,
    stride: int = 16,
    fill: str | float | Sequence[float] = "grey",
    readout: str = "sum",
    batch_size: int = 32,
    image_size: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> OcclusionResult:
    """Occlusion-sensitivity map of a unit or a class for one image.

    Parameters
    ----------
    model : Network, nn.Module or str
        The network or a zoo spec.
    image : torch.Tensor, str or path-like
        ``(C, H, W)`` display-space image, a bundled photo name (``"chelsea"``) or an image file.
    layer, unit : str, int
        The unit: channel ``unit`` of ``layer`` (give both, or neither with ``class_index``).
    class_index : int, optional
        Target the model's output logit ``class_index`` instead (the model must output ``(N, classes)``).
    size : int
        Side of the square occluder in pixels.
    stride : int
        Step between occluder positions in pixels.
    fill : "grey", "mean", float or sequence of float
        Occluder colour (see :func:`fill_color`).
    readout : {"sum", "center", "max"}
        Unit read-out: spatial sum of the rectified channel map, or its value at the centre position or at
        the position of its maximum in the unoccluded image.
    batch_size : int
        Occluded images per forward pass (the map does not depend on it).
    image_size : int, optional
        For names and files: resize the short side to this and crop the centre square.
    progress : bool
        Show a progress bar when more than one batch is needed.
    device : str, optional
        Move the network there.

    Returns
    -------
    OcclusionResult
        Drop map ``(n_y, n_x)``, occluded values, baseline, pixel heatmap ``(H, W)`` and run spec.

    Raises
    ------
    DiversevisError
        Bad target (neither or both of unit and class), unknown layer, unit or class out of range, an
        occluder larger than the image, bad fill, size, stride or batch size.
    """
    t0 = time.perf_counter()
    net = _prepare(model, device)
    img, source = _load_image(net, image, image_size)
    batch_size = integer("batch_size", batch_size, 1)
    h, w = img.shape[-2:]
    ys, xs = occlusion_grid(h, w, size, stride)
    color = fill_color(fill, img.shape[0])
    img = img.to(net.device)
    f, target = _target(net, img, layer, unit, class_index, readout)
    corners = [(y, x) for y in ys for x in xs]
    baseline, values = _occluded_values(f, img, corners, size, color, batch_size, progress, net.device)
    values = values.view(len(ys), len(xs))
    drop = baseline - values
    spec = {
        "method": "occlusion",
        "model": net.name,
        "model_spec": net.spec,
        "target": target,
        "size": int(size),
        "stride": int(stride),
        "fill": [float(v) for v in color.flatten()],
        "fill_name": fill if isinstance(fill, str) else None,
        "batch_size": batch_size,
        "image": {"source": source, "height": int(h), "width": int(w), "image_size": image_size},
        "grid": [len(ys), len(xs)],
        "forward_passes": len(corners) + 1,
        "device": str(net.device),
        "seconds": round(time.perf_counter() - t0, 3),
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    heat = pixel_heatmap(drop, size, stride, h, w)
    return OcclusionResult(img.cpu(), drop, values, baseline, heat, spec)


def _load_image(
    net: Network, image: torch.Tensor | str | os.PathLike, image_size: int | None
) -> tuple[torch.Tensor, str]:
    """The ``(C, H, W)`` display-space image (a tensor, a bundled photo or a file) and its source."""
    if isinstance(image, (str, os.PathLike)):
        img, source = load_photo(image, image_size)
    elif isinstance(image, torch.Tensor) and image.dim() == 3:
        if image_size is not None:
            raise DiversevisError(
                "image_size= applies to photo names and files only; resize tensors yourself"
            )
        img, source = image.detach().float().cpu(), "tensor"
    else:
        raise DiversevisError("image must be a (C, H, W) tensor, a bundled photo name or an image file path")
    if img.shape[0] != net.in_channels:
        raise DiversevisError(
            f"{net.name} takes {net.in_channels}-channel images, got {img.shape[0]} channels"
        )
    return img, source


def _target(
    net: Network,
    img: torch.Tensor,
    layer: str | None,
    unit: int | None,
    class_index: int | None,
    readout: str,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """The target read-out, a unit or a class (exactly one of them must be given), and its description."""
    if class_index is not None:
        if layer is not None or unit is not None:
            raise DiversevisError("give either a class index or a layer and unit, not both")
        return _class_target(net, class_index, img)
    if layer is None or unit is None:
        raise DiversevisError("occlusion needs a target: a layer and a unit, or a class index")
    return _unit_target(net, layer, unit, readout, img)


def _occluded_values(
    f: Callable[[torch.Tensor], torch.Tensor],
    img: torch.Tensor,
    corners: list[tuple[int, int]],
    size: int,
    color: torch.Tensor,
    batch_size: int,
    progress: bool,
    device: torch.device,
) -> tuple[float, torch.Tensor]:
    """The target for the image and, ``batch_size`` at a time, for the image occluded at each corner."""
    # channels-last batches run convolutions faster on CPU (oneDNN); models that cannot take them fall back
    fmt = [torch.channels_last if device.type == "cpu" else torch.contiguous_format]
    values = torch.empty(len(corners))
    batches = range(0, len(corners), batch_size)
    bar = None
    if progress and len(batches) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(corners), desc="occlusion", unit="img", leave=False, dynamic_ncols=True)
    try:
        with torch.no_grad():
            baseline = float(f(img[None])[0])
            for start in batches:
                chunk = corners[start : start + batch_size]
                values[start : start + len(chunk)] = _evaluate(f, occlude(img, chunk, size, color), fmt)
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return baseline, values
