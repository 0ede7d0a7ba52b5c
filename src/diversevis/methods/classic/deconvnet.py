"""DeconvNet projections (Zeiler & Fergus 2014): one unit's activation for an image, mapped back to pixels.

For a display-space image ``x`` and a unit (channel ``k`` of layer ``L``):

1. run ``x`` forward (after the network's input normalisation) up to ``L``, recording every leaf module
   on the way, and the *switches* (argmax locations) of every max-pooling layer;
2. keep only channel ``k`` of ``L``'s output -- only its strongest position (``position="max"``, the
   default), a given ``(y, x)`` position, or the whole map (``"all"``) -- zero everything else, rectify;
3. walk down the recorded layers in reverse: max-pool -> **unpool** with the switches, ReLU ->
   **rectify** the signal, Conv2d -> **transposed convolution** with the same weights, stride, padding,
   dilation and groups (the bias is not added), BatchNorm2d (eval) -> multiply by its per-channel scale
   ``gamma / sqrt(var + eps)`` (the transpose of its linear part), Identity / Dropout -> nothing;
4. map the model-space signal to display space with the transpose of the input normalisation
   ``(x - mean) / std``, i.e. divide by ``std``.

The projection is signed and has arbitrary units; it depends on the image (through the switches) and is
not a sample of inputs that drive the unit. With ``position="max"`` it lies entirely inside the unit's
receptive field.

Only networks whose forward pass up to ``L`` is a *chain* of the supported leaves can be projected (VGG,
AlexNet-like ``nn.Sequential`` stacks, wrapped in any container that just calls them). The chain is
checked on the actual forward pass: every leaf must receive, unchanged, the tensor the previous leaf
returned (a leaf that returns its very input, unchanged, counts as an identity whatever its type).
Residual or branching blocks, functional operations between modules and other layer types (AvgPool,
ReLU6, LayerNorm, ...) raise a :class:`~diversevis.errors.DiversevisError` naming each such
module's type and path.

>>> import diversevis as dv
>>> from diversevis.classic.deconvnet import deconvnet, deconv_top_patches
>>> deconvnet("vgg16", "conv3_1", 21, "chelsea", size=224).save("runs/deconv_u21")
>>> deconv_top_patches("vgg16", "conv3_1", 21, k=9).save("runs/deconv_u21_top")  # Z&F Fig. 2
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diversevis.core.cache import atomic_write_bytes, atomic_write_json, output_dir
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network, as_network
from diversevis.core.receptive import ReceptiveField
from diversevis.core.result import image_grid
from diversevis.images.photos import load_photo
from diversevis.methods.dfv import versions

__all__ = [
    "SUPPORTED_MODULES",
    "Position",
    "DeconvStep",
    "DeconvResult",
    "trace_chain",
    "unpool",
    "step_down",
    "project",
    "rf_box",
    "deconvnet",
    "deconv_top_patches",
]

#: Leaf module types the DeconvNet walks through (BatchNorm2d only in eval mode with running statistics).
SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.BatchNorm2d,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)

#: Which activations of the unit's channel are projected: ``"max"``, ``"all"`` or a ``(y, x)`` position.
Position = str | tuple[int, int]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


# -------------------------------------------------------------------------------------------- tracing


@dataclass
class DeconvStep:
    """One leaf module call of the forward pass, as the DeconvNet needs it to go back down.

    Attributes
    ----------
    path : str
        Dot path of the module in the network (``features.4``).
    module : nn.Module
        The leaf module.
    input : torch.Tensor
        Its input ``(N, C, H, W)`` in model space (kept for the max-pooling switches and shapes).
    output : torch.Tensor or None
        Its output.
    passthrough : bool
        The module returned its input unchanged (any identity-like module): nothing to undo.
    """

    path: str
    module: nn.Module
    input: torch.Tensor | None
    input_version: int = -1
    output: Any = None
    output_version: int = -1
    passthrough: bool = False


class _Stop(Exception):
    """Raised by the target layer's hook: the forward pass need not go further."""


def _unsupported_reason(m: nn.Module) -> str | None:
    """Why the DeconvNet cannot walk back through leaf ``m`` (``None`` if it can)."""
    if not isinstance(m, SUPPORTED_MODULES):
        return type(m).__name__
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            return f"Conv2d with padding_mode={m.padding_mode!r}"
        if _conv_padding(m) is None:
            return "Conv2d with asymmetric 'same' padding"
    if isinstance(m, nn.BatchNorm2d) and (m.training or m.running_var is None):
        return "BatchNorm2d without running statistics (or in training mode)"
    return None


def _conv_padding(m: nn.Conv2d) -> tuple[int, int] | None:
    """Symmetric ``(pad_h, pad_w)`` of a convolution, or ``None`` when ``'same'`` pads asymmetrically."""
    if m.padding == "valid":
        return (0, 0)
    if m.padding == "same":
        totals = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        if any(t % 2 for t in totals):
            return None
        return (totals[0] // 2, totals[1] // 2)
    return (int(m.padding[0]), int(m.padding[1]))


def _parents(path: str) -> list[str]:
    """Dot paths of the containers above ``path``, outermost first (``""`` is the root)."""
    parts = path.split(".") if path else []
    return [".".join(parts[:i]) for i in range(len(parts))]


def _contains(parent: str, path: str) -> bool:
    return parent == "" or path == parent or path.startswith(parent + ".")


def _culprit(modules: dict[str, nn.Module], before: str | None, after: str) -> str:
    """The container whose forward changed the tensor between leaf ``before`` and leaf ``after``.

    The innermost block that ``before`` ends (e.g. a residual block returning ``x + f(x)``), else the
    innermost block holding both (e.g. a skip inside it), else the root. Plain ``nn.Sequential`` /
    ``ModuleList`` containers only call their children, so they are never blamed.
    """

    def active(p: str) -> bool:
        return not isinstance(modules[p], _CONTAINERS)

    if before is not None:
        ended = [p for p in _parents(before) if not _contains(p, after) and active(p)]
        if ended:
            return ended[-1]
        shared = [p for p in _parents(after) if _contains(p, before) and active(p)]
        if shared:
            return shared[-1]
    else:
        above = [p for p in _parents(after) if active(p)]
        if above:
            return above[-1]
    return ""


def trace_chain(net: Network, layer: str, x: torch.Tensor) -> tuple[list[DeconvStep], torch.Tensor]:
    """Run a model-space batch up to ``layer`` and record the chain of leaf modules it went through.

    Parameters
    ----------
    net : Network
        The network.
    layer : str
        Target layer (alias or dot path); it must produce a ``(N, C, h, w)`` map.
    x : torch.Tensor
        ``(N, C, H, W)`` batch in *model* space (already normalised).

    Returns
    -------
    steps : list of DeconvStep
        The leaf calls from the input to the target, in forward order (the target included when it is a
        leaf).
    output : torch.Tensor
        ``(N, K, h, w)`` output of ``layer``.

    Raises
    ------
    DiversevisError
        If a module up to ``layer`` is not supported or the forward pass is not a chain of leaf modules;
        the message names every offending module's type and path.
    """
    path = net.resolve(layer)
    target = net.layer_module(layer)
    modules = dict(net.module.named_modules())
    steps: list[DeconvStep] = []
    result: dict[str, Any] = {}

    def pre_hook(name: str):
        def hook(mod, inputs):
            inp = inputs[0] if len(inputs) == 1 and isinstance(inputs[0], torch.Tensor) else None
            steps.append(DeconvStep(name, mod, inp, -1 if inp is None else inp._version))

        return hook

    def post_hook(mod, inputs, output):
        if steps and steps[-1].module is mod and steps[-1].output is None:
            steps[-1].output = output
            if isinstance(output, torch.Tensor):
                steps[-1].output_version = output._version

    def target_hook(mod, inputs, output):
        result["output"] = output
        result["version"] = output._version if isinstance(output, torch.Tensor) else -1
        raise _Stop

    handles = []
    try:
        for name, m in modules.items():
            if next(m.children(), None) is None:
                handles.append(m.register_forward_pre_hook(pre_hook(name)))
                handles.append(m.register_forward_hook(post_hook))
        handles.append(target.register_forward_hook(target_hook))
        with torch.no_grad():
            net.module(x)
    except _Stop:
        pass
    except RuntimeError as e:
        raise DiversevisError(
            f"the forward pass of {net.name} failed on a {tuple(x.shape)} input before {layer!r}: {e}"
        ) from None
    finally:
        for h in handles:
            h.remove()
    if "output" not in result:
        raise DiversevisError(f"layer {layer!r} was not reached by the forward pass of {net.name}")
    out = result["output"]
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DiversevisError(
            f"DeconvNet needs a layer with (N, C, h, w) feature maps; {layer!r} of {net.name} gives {shape}"
        )
    problems: dict[str, str] = {}
    prev, prev_version, prev_path = x, x._version, None
    for s in steps:
        s.passthrough = s.output is s.input is not None and s.output_version == s.input_version
        why = None if s.passthrough else _unsupported_reason(s.module)
        if why is not None:
            problems.setdefault(s.path, why)
        if s.input is None or s.input is not prev or s.input_version != prev_version:
            c = _culprit(modules, prev_path, s.path)
            problems.setdefault(
                c, f"{type(modules[c]).__name__} (not a chain: skip connection, branch or op)"
            )
        prev = s.output
        prev_version = s.output_version if isinstance(s.output, torch.Tensor) else -2
        prev_path = s.path
    if out is not prev or result["version"] != prev_version:  # a container target changed its leaves' output
        problems.setdefault(path, f"{type(target).__name__} (not a chain: skip connection, branch or op)")
    if problems:
        listed = _group_problems(problems)
        raise DiversevisError(
            f"DeconvNet cannot project {net.display_name(layer)!r} of {net.name} back to pixels: unsupported "
            f"modules up to it: {listed}. Supported: a chain of Conv2d, ReLU, MaxPool2d, BatchNorm2d (eval), "
            "Identity and Dropout modules (VGG-style nn.Sequential stacks)"
        )
    return steps, out


def _group_problems(problems: dict[str, str], shown: int = 3) -> str:
    """``"ReLU6 at a, b, c (+4 more); AvgPool2d at d"``: paths grouped by reason, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for path, why in problems.items():
        groups.setdefault(why, []).append(path or "<root>")
    parts = []
    for why, paths in groups.items():
        more = f" (+{len(paths) - shown} more)" if len(paths) > shown else ""
        parts.append(f"{why} at {', '.join(paths[:shown])}{more}")
    return "; ".join(parts)


# -------------------------------------------------------------------------------------------- going down


def unpool(signal: torch.Tensor, switches: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
    """Max-unpooling with the forward pass's switches.

    Each pooled value goes back to the input location its window's maximum came from; everything else is
    zero. Values of overlapping windows that chose the same location add up (the transpose of max
    pooling); for non-overlapping windows this equals :func:`torch.nn.functional.max_unpool2d`.

    Parameters
    ----------
    signal : torch.Tensor
        ``(N, C, h, w)`` values at the pooled positions.
    switches : torch.Tensor
        ``(N, C, h, w)`` int64 flat indices into each ``H x W`` input plane (``return_indices=True``).
    input_shape : sequence of int
        ``(N, C, H, W)`` shape of the pooling layer's input.

    Returns
    -------
    torch.Tensor
        ``(N, C, H, W)``.
    """
    n, c, h, w = input_shape
    out = signal.new_zeros(n, c, h * w)
    out.scatter_add_(2, switches.flatten(2), signal.flatten(2))
    return out.view(n, c, h, w)


def step_down(step: DeconvStep, signal: torch.Tensor) -> torch.Tensor:
    """Map a signal at a leaf's output back to its input (one DeconvNet layer).

    Parameters
    ----------
    step : DeconvStep
        The recorded leaf call (its module and input).
    signal : torch.Tensor
        ``(N, C_out, h, w)`` signal at the module's output.

    Returns
    -------
    torch.Tensor
        ``(N, C_in, H, W)`` signal at the module's input: unpooled (MaxPool2d), rectified (ReLU),
        transposed-convolved without bias (Conv2d), scaled by ``gamma / sqrt(var + eps)``
        (BatchNorm2d), or unchanged (Identity, Dropout, any module that returned its input as is).
    """
    m = step.module
    if step.passthrough:
        return signal
    if isinstance(m, nn.Conv2d):
        pad = _conv_padding(m)
        size = step.input.shape[-2:]
        extra = []
        for i in range(2):
            base = (
                (signal.shape[2 + i] - 1) * m.stride[i]
                - 2 * pad[i]
                + m.dilation[i] * (m.kernel_size[i] - 1)
                + 1
            )
            extra.append(int(size[i]) - base)
        return F.conv_transpose2d(signal, m.weight, None, m.stride, pad, tuple(extra), m.groups, m.dilation)
    if isinstance(m, nn.ReLU):
        return torch.relu(signal)
    if isinstance(m, nn.MaxPool2d):
        _, switches = F.max_pool2d(
            step.input, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True
        )
        return unpool(signal, switches, step.input.shape)
    if isinstance(m, nn.BatchNorm2d):
        scale = torch.rsqrt(m.running_var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight
        return signal * scale.view(1, -1, 1, 1)
    return signal  # Identity, Dropout (eval)


def _check_position(position: Position) -> Position:
    if isinstance(position, str):
        if position in ("max", "all"):
            return position
    elif (
        isinstance(position, Sequence)
        and len(position) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in position)
    ):
        return (int(position[0]), int(position[1]))
    raise DiversevisError(f"position must be 'max', 'all' or a (y, x) pair of ints, got {position!r}")


def _start_signal(
    out: torch.Tensor, unit: int, position: Position
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked, rectified copy of the target output; positions ``(N, 2)``; activations ``(N,)``."""
    n, k, h, w = out.shape
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) or not 0 <= unit < k:
        raise DiversevisError(
            f"unit must be an integer in 0..{k - 1} (the layer has {k} channels), got {unit!r}"
        )
    chan = out[:, unit]
    if isinstance(position, tuple):
        y, x = position
        if not (0 <= y < h and 0 <= x < w):
            raise DiversevisError(f"position {position} is outside the layer's {h}x{w} map")
        pos = torch.tensor([[y, x]] * n, dtype=torch.long)
    else:
        flat = chan.flatten(1).argmax(1).cpu()
        pos = torch.stack([flat // w, flat % w], 1)
    rows = torch.arange(n)
    acts = chan[rows, pos[:, 0], pos[:, 1]]
    signal = torch.zeros_like(out)
    if position == "all":
        signal[:, unit] = chan
    else:
        signal[rows, unit, pos[:, 0], pos[:, 1]] = acts
    return torch.relu(signal), pos, acts


def project(
    net: Network | nn.Module, layer: str, unit: int, x: torch.Tensor, position: Position = "max"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DeconvNet projection of one unit's activations for a batch of images.

    Parameters
    ----------
    net : Network or nn.Module
        The network (a plain module gets identity normalisation).
    layer : str
        Target layer (alias or dot path) with ``(N, K, h, w)`` output.
    unit : int
        Channel index ``0 <= unit < K``.
    x : torch.Tensor
        ``(N, C, H, W)`` display-space images.
    position : {"max", "all"} or (int, int)
        Project only the channel's strongest activation per image (``"max"``), the activation at map
        position ``(y, x)``, or the whole channel map (``"all"``).

    Returns
    -------
    projections : torch.Tensor
        ``(N, C, H, W)`` float32 on the CPU, display space (signed, arbitrary units).
    positions : torch.Tensor
        ``(N, 2)`` int64 ``(y, x)`` in the layer's map: the projected position (the argmax for ``"all"``).
    activations : torch.Tensor
        ``(N,)`` the unit's activation there (before rectification).
    """
    net = as_network(net)
    position = _check_position(position)
    if x.dim() != 4 or x.shape[1] != net.in_channels:
        raise DiversevisError(f"images must have shape (N, {net.in_channels}, H, W), got {tuple(x.shape)}")
    with torch.no_grad():
        xm = net.normalize(x.to(net.device, torch.float32))
        steps, out = trace_chain(net, layer, xm)
        signal, pos, acts = _start_signal(out, unit, position)
        for step in reversed(steps):
            signal = step_down(step, signal)
        proj = signal / net.std
    return proj.float().cpu(), pos, acts.float().cpu()


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


# --------------------------------------------------------------------------------------------- result


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


# ------------------------------------------------------------------------------------------ entry points


def _rf_spec(rf: ReceptiveField) -> dict[str, Any]:
    return {"size": rf.size, "stride": rf.stride, "start": rf.start, "method": rf.method}


def _prepare_images(
    net: Network, image: torch.Tensor | str | os.PathLike, size: int | None
) -> tuple[torch.Tensor, dict[str, Any]]:
    if isinstance(image, (str, os.PathLike)):
        img, source = load_photo(image, size)
        return img[None], {"kind": "photo", "image": source, "size": size}
    if not isinstance(image, torch.Tensor):
        raise DiversevisError(
            f"image must be a tensor (C, H, W) / (N, C, H, W), a photo name or a path, got {type(image).__name__}"
        )
    x = image[None] if image.dim() == 3 else image
    if x.dim() != 4:
        raise DiversevisError(f"image must have shape (C, H, W) or (N, C, H, W), got {tuple(image.shape)}")
    if size is not None:
        raise DiversevisError("size= applies to photo names and files only; resize tensors yourself")
    return x.detach().float(), {"kind": "tensor", "shape": list(x.shape)}


def deconvnet(
    model: Network | nn.Module | str,
    layer: str,
    unit: int,
    image: torch.Tensor | str | os.PathLike,
    *,
    position: Position = "max",
    size: int | None = None,
    device: str | torch.device | None = None,
) -> DeconvResult:
    """Project one unit's activation for an image back to pixels (Zeiler & Fergus DeconvNet).

    Parameters
    ----------
    model : Network, nn.Module or str
        The network or a zoo spec (``"vgg16"``).
    layer : str
        Target layer (alias or dot path), e.g. ``"conv3_1"``.
    unit : int
        Channel index in ``layer``.
    image : torch.Tensor, str or path-like
        ``(C, H, W)`` or ``(N, C, H, W)`` display-space tensor, a bundled photo name (``"chelsea"``) or an
        image file.
    position : {"max", "all"} or (int, int)
        What to project: the strongest activation of the channel (default), the one at ``(y, x)`` in the
        layer's map, or the whole channel.
    size : int, optional
        For names and files: resize the short side to ``size`` and crop the centre square.
    device : str, optional
        Move the network there.

    Returns
    -------
    DeconvResult
        Images, projections, activations, positions, receptive-field boxes and run spec.

    Raises
    ------
    DiversevisError
        Unknown layer or photo, unit or position out of range, unsupported modules up to ``layer``.
    """
    t0 = time.perf_counter()
    net = as_network(model)
    if device is not None:
        net.to(device)
    x, source = _prepare_images(net, image, size)
    position = _check_position(position)
    proj, pos, acts = project(net, layer, unit, x, position)
    rf = net.receptive_field(layer)
    h, w = x.shape[-2:]
    boxes = torch.tensor([rf_box(rf, int(p[0]), int(p[1]), h, w) for p in pos], dtype=torch.long)
    spec = _spec(net, layer, unit, position, source, rf, t0)
    return DeconvResult(x.cpu(), proj, acts, pos, boxes, spec)


def _spec(
    net: Network, layer: str, unit: int, position: Position, source: dict, rf: ReceptiveField, t0: float
) -> dict[str, Any]:
    import datetime as _dt

    return {
        "method": "deconvnet",
        "model": net.name,
        "model_spec": net.spec,
        "layer": net.display_name(layer),
        "layer_path": net.resolve(layer),
        "unit": int(unit),
        "position": list(position) if isinstance(position, tuple) else position,
        "source": source,
        "rf": _rf_spec(rf),
        "device": str(net.device),
        "seconds": round(time.perf_counter() - t0, 3),
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def deconv_top_patches(
    model: Network | nn.Module | str,
    layer: str,
    unit: int,
    k: int = 9,
    *,
    candidates: int = 2048,
    seed: int = 0,
    images: str | os.PathLike | None = None,
    match_contrast: bool = False,
    device: str | torch.device | None = None,
) -> DeconvResult:
    """The unit's top natural patches, each with its DeconvNet projection (Zeiler & Fergus, Fig. 2).

    The patches (receptive-field sized) come from :func:`diversevis.exemplars.top_patches`; each is put
    in the mean-grey canvas of :meth:`Network.placement` and the unit whose receptive field it fills is
    projected; the projection is cropped back to the patch.

    Parameters
    ----------
    model, layer, unit
        As in :func:`deconvnet`.
    k : int
        Number of patches (9 in the paper).
    candidates : int
        Random natural patches searched.
    seed : int
        Seed of the candidate pool.
    images : str or path-like, optional
        Folder of natural images (default: the bundled photos).
    match_contrast : bool
        Give every patch the DFV contrast first (default: raw patches, as the paper).
    device : str, optional
        Move the network there.

    Returns
    -------
    DeconvResult
        ``k`` patches ``(k, 3, r, r)`` (``r`` = receptive-field size) sorted by activation, their
        projections, and the spec (``source.kind = "top_patches"`` with the pool indices).
    """
    from diversevis.methods.exemplars import top_patches

    t0 = time.perf_counter()
    net = as_network(model)
    if device is not None:
        net.to(device)
    top = top_patches(
        net, layer, unit, k=k, candidates=candidates, match_contrast=match_contrast, images=images, seed=seed
    )
    p = net.placement(layer)
    a, b = p.offset, p.canvas_size - p.image_size - p.offset
    canvas = F.pad(top.images, (a, b, a, b), value=0.5)
    proj, pos, acts = project(net, layer, unit, canvas, (p.unit_index, p.unit_index))
    proj = proj[:, :, a : a + p.image_size, a : a + p.image_size].contiguous()
    r = p.image_size
    boxes = torch.tensor([[0, 0, r, r]] * len(top), dtype=torch.long)
    source = {
        "kind": "top_patches",
        "k": int(k),
        "candidates": int(candidates),
        "seed": int(seed),
        "match_contrast": bool(match_contrast),
        "natural_images": str(images) if images else "bundled",
        "indices": [int(i) for i in top.indices],
        "canvas_size": p.canvas_size,
        "offset": p.offset,
    }
    spec = _spec(net, layer, unit, (p.unit_index, p.unit_index), source, net.receptive_field(layer), t0)
    return DeconvResult(top.images.cpu().float(), proj, acts, pos, boxes, spec)
