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

Layout: this module holds the way down (:func:`unpool`, :func:`step_down`, :func:`project`) and the
entry points; the way up (tracing the chain of leaf modules) is in :mod:`.deconvnet_trace`, the result
and its figure in :mod:`.deconvnet_result`. Their public names are re-exported here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network, as_network
from diversevis.core.receptive import ReceptiveField
from diversevis.images.photos import load_photo
from diversevis.methods.classic.deconvnet_result import DeconvResult, rf_box
from diversevis.methods.classic.deconvnet_trace import (
    SUPPORTED_MODULES,
    DeconvStep,
    _conv_padding,
    trace_chain,
)
from diversevis.methods.dfv import versions
from diversevis.methods.problem import _prepare

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

#: Which activations of the unit's channel are projected: ``"max"``, ``"all"`` or a ``(y, x)`` position.
Position = str | tuple[int, int]


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
    net = _prepare(model, device)
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
    net = _prepare(model, device)
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
