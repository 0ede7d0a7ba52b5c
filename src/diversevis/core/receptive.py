"""Receptive fields: size, stride and centre of a layer's units in input pixels.

Two ways to get them:

* **analytic** (:func:`chain_receptive_fields`): for any network whose leaves run as a chain of
  convolutions, poolings and elementwise ops (VGG, AlexNet, ...), the classic recursion
  ``r += (k - 1) * d * j``, ``start += ((k - 1) * d / 2 - p) * j``, ``j *= s``;
* **gradient probe** (:func:`probe_receptive_field`): for any graph (residual, inverted-residual,
  attention ...), the bounding box of the input pixels with a non-zero gradient of the centre unit.

Coordinates are in input pixels of the network (after its input normalisation); ``start`` is the centre
of unit 0's receptive field, so unit ``i`` is centred at ``start + i * stride`` (half-integers are
possible, e.g. after 2x2 pooling).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from diversevis.core.errors import DiversevisError

__all__ = [
    "ReceptiveField",
    "Placement",
    "chain_receptive_fields",
    "probe_receptive_field",
    "place_image",
    "positions_inside",
]

# Leaves that do not change the spatial geometry.
_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Mish,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.BatchNorm2d,
    nn.InstanceNorm2d,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive-field geometry of one layer.

    Attributes
    ----------
    size : int
        Side length of the receptive field, in input pixels.
    stride : int
        Distance in input pixels between the centres of adjacent units (the "jump").
    start : float
        Input coordinate of the centre of unit 0's receptive field (may be negative for padded layers).
    method : str
        ``"analytic"`` or ``"probe"``.
    """

    size: int
    stride: int
    start: float
    method: str = "analytic"

    def center(self, index: int) -> float:
        """Input coordinate of the centre of unit ``index`` (along one axis)."""
        return self.start + index * self.stride


@dataclass(frozen=True)
class Placement:
    """Where an RF-sized image sits in the canvas fed to the network, and which unit reads it.

    Attributes
    ----------
    image_size : int or (int, int)
        Side of the optimised image (= receptive-field size); ``(height, width)`` when the image is the
        model's whole (non-square) input.
    canvas_size : int or (int, int)
        Side of the (mean-grey) canvas given to the network; equal to ``image_size`` for VALID networks
        and whole-input targets.
    offset : int
        Row/column of the image's top-left pixel in the canvas.
    unit_index : int or None
        Row/column index of the unit read in the layer's output map; ``None`` for a layer without
        spatial dimensions (a ``(B, N)`` readout or logit vector), read as it is.
    misalignment : float
        Distance in pixels between the unit's RF centre and the image centre (0 when exact).
    whole_input : bool
        The image is the model's whole input: the target is a readout or logit vector, or a map that is
        1x1 at the model's input size (global pooling), not one unit of a spatial map.
    """

    image_size: int | tuple[int, int]
    canvas_size: int | tuple[int, int]
    offset: int
    unit_index: int | None
    misalignment: float = 0.0
    whole_input: bool = False


def _pair(v) -> int | None:
    if isinstance(v, tuple):
        if len(set(v)) != 1:
            return None
        return int(v[0])
    return int(v)


def _leaf_geometry(m: nn.Module) -> tuple[int, int, int, int] | None:
    """(kernel, stride, padding, dilation) of a leaf; (1, 1, 0, 1) if elementwise, None if unknown."""
    if isinstance(m, _ELEMENTWISE):
        return (1, 1, 0, 1)
    if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        k = _pair(m.kernel_size)
        s = _pair(m.stride)
        p = m.padding
        if isinstance(p, str):
            if p == "valid":
                p = 0
            else:  # "same" padding: only odd stride-1 kernels are symmetric
                return None
        p = _pair(p)
        d = _pair(getattr(m, "dilation", 1))
        if None in (k, s, p, d):
            return None
        return (k, s, p, d)
    return None


def chain_receptive_fields(
    module: nn.Module, x: torch.Tensor, names: dict[nn.Module, str] | None = None
) -> tuple[dict[str, ReceptiveField | None], dict[str, tuple[int, ...]]]:
    """Trace one forward pass and compute analytic receptive fields of every module on the chain.

    Parameters
    ----------
    module : nn.Module
        The network (without input normalisation).
    x : torch.Tensor
        Probe input, shape ``(1, C, H, W)``.
    names : dict, optional
        Module -> dot-name; defaults to ``module.named_modules()``.

    Returns
    -------
    rfs : dict[str, ReceptiveField | None]
        For every module that ran (if ``x`` is too small for deeper layers, only those that fit): its
        analytic receptive field, or ``None`` where the chain is broken (a branch, a skip connection, or a
        leaf of unknown geometry).
    shapes : dict[str, tuple[int, ...]]
        Output shape without the batch dimension, for every module whose output is a tensor.
    """
    if names is None:
        names = {m: n for n, m in module.named_modules() if n}
    out_id_to_rf: dict[int, ReceptiveField] = {id(x): ReceptiveField(1, 1, 0.0)}
    rfs: dict[str, ReceptiveField | None] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    keep: list[torch.Tensor] = [x]  # keep tensors alive so ids stay unique during the trace

    def hook(mod: nn.Module, inputs, output) -> None:
        name = names.get(mod)
        if name is None or not isinstance(output, torch.Tensor):
            return
        shapes[name] = tuple(output.shape[1:])
        keep.append(output)
        is_leaf = next(mod.children(), None) is None
        if not is_leaf:
            # A container: its output is the output of a leaf we already traced, if it is on the chain.
            rfs[name] = out_id_to_rf.get(id(output))
            return
        inp = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        parent = out_id_to_rf.get(id(inp)) if inp is not None else None
        geom = _leaf_geometry(mod)
        if parent is None or geom is None or len(inputs) != 1:
            rfs[name] = None
            return
        k, s, p, d = geom
        rf = ReceptiveField(
            size=parent.size + (k - 1) * d * parent.stride,
            stride=parent.stride * s,
            start=parent.start + ((k - 1) * d / 2 - p) * parent.stride,
        )
        rfs[name] = rf
        out_id_to_rf[id(output)] = rf

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            module(x)
    except RuntimeError:
        pass  # input too small for the deeper layers: keep what was traced up to there
    finally:
        for h in handles:
            h.remove()
    return rfs, shapes


def probe_receptive_field(
    forward: Callable[[torch.Tensor], torch.Tensor],
    in_channels: int,
    *,
    size: int = 64,
    max_size: int = 1024,
    samples: int = 8,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ReceptiveField:
    """Measure a layer's receptive field with a gradient probe (works for any graph).

    The input grows until the non-zero gradient of the centre unit no longer touches the border.

    Parameters
    ----------
    forward : callable
        Maps a model-space input ``(B, C, S, S)`` to the layer's output ``(B, K, h, w)``.
    in_channels : int
        Number of input channels ``C``.
    size, max_size : int
        First and largest probe input side, in pixels.
    samples : int
        Random inputs whose gradient magnitudes are pooled (covers max-pool switches, dead ReLUs).
    seed : int
        Seed of the random probe inputs.

    Returns
    -------
    ReceptiveField
        ``method="probe"``; ``size`` is the larger side of the gradient's bounding box.
    """
    gen = torch.Generator().manual_seed(seed)
    s = size
    while True:
        x = torch.randn(samples, in_channels, s, s, generator=gen).to(device).requires_grad_(True)
        y = forward(x)
        if y.dim() != 4:
            raise DiversevisError(
                f"a receptive field needs a spatial (B, K, h, w) output, got shape {tuple(y.shape)}: a layer "
                "without a spatial map (a readout, a logit) is optimised on the whole input instead"
            )
        h, w = y.shape[-2:]
        i, j = (h - 1) // 2, (w - 1) // 2
        # Two adjacent units give the stride; weight channels randomly to avoid cancellations.
        wts = torch.rand(y.shape[1], generator=gen).to(device) + 0.5
        boxes = []
        for di in (0, 1) if h > 1 else (0,):
            g = torch.autograd.grad((y[:, :, min(i + di, h - 1), j] * wts).sum(), x, retain_graph=True)[0]
            mask = g.abs().sum(dim=(0, 1)) > 0
            rows = torch.nonzero(mask.any(dim=1)).flatten()
            cols = torch.nonzero(mask.any(dim=0)).flatten()
            if rows.numel() == 0:
                raise DiversevisError(
                    "the probed unit has zero gradient for every random probe input (a dead unit or a layer "
                    "cut off from the input); its receptive field cannot be measured"
                )
            boxes.append((int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])))
        r0, r1, c0, c1 = boxes[0]
        # grow while either box is clipped by the border: the neighbour's box gives the stride
        touches = any(b[0] == 0 or b[2] == 0 or b[1] == s - 1 or b[3] == s - 1 for b in boxes)
        if touches and s * 2 <= max_size:
            s *= 2
            continue
        rf_size = max(r1 - r0 + 1, c1 - c0 + 1)
        centre = (r0 + r1) / 2
        stride = 1
        if len(boxes) == 2:
            stride = max(1, round(((boxes[1][0] + boxes[1][1]) / 2) - centre))
        return ReceptiveField(size=rf_size, stride=stride, start=centre - i * stride, method="probe")


def place_image(rf: ReceptiveField, out_size: Callable[[int], int]) -> Placement:
    """Choose the canvas for an RF-sized image so that one unit's receptive field is exactly the image.

    Parameters
    ----------
    rf : ReceptiveField
        Geometry of the target layer.
    out_size : callable
        Maps a square input side ``S`` to the layer's output side (``0`` if too small).

    Returns
    -------
    Placement
        For VALID-padded networks the canvas is the image itself and the unit is ``(0, 0)``;
        padded networks get the image inside a larger canvas at the offset where a unit's RF starts.
    """
    r = rf.size
    half = (r - 1) / 2
    for i in range(0, 64):
        c = rf.center(i)
        a_exact = c - half
        a = math.floor(a_exact + 1e-6)
        if a < 0:
            continue
        mis = abs(a_exact - a)
        s = a + r + a  # symmetric grey margin
        for _ in range(8 * max(1, rf.stride)):
            if out_size(s) > i:
                return Placement(image_size=r, canvas_size=s, offset=a, unit_index=i, misalignment=mis)
            s += 1
    raise DiversevisError(
        f"could not place a {r}px image under any unit of this layer (rf={rf}): the layer gives no unit "
        "for canvases up to 64 strides wide; check the layer (it may not be spatial) or pass input_size"
    )


def positions_inside(rf: ReceptiveField, lo: float, hi: float, n: int) -> slice:
    """Indices ``i < n`` whose RF centre lies in the pixel interval ``[lo, hi)`` (a contiguous slice)."""
    idx = [i for i in range(n) if lo <= rf.center(i) < hi]
    if not idx:
        raise DiversevisError(
            f"no unit centre of this layer (rf={rf}) lies in the pixel interval [{lo}, {hi}): the image is "
            "smaller than the layer's stride; use a shallower distance layer or a larger image"
        )
    return slice(idx[0], idx[-1] + 1)
