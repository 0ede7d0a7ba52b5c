"""Activation maximisation for deep units and class logits (Erhan et al. 2009; Olah et al. 2017).

The image that maximises one unit is searched in a parametrisation that favours natural-looking
solutions (Lucid's recipe, re-implemented):

* **FFT parametrisation** (:class:`~diversevis.params.FFTImage`): Fourier coefficients scaled by
  ``1/|f|^decay_power``, so Adam's steps follow the 1/f spectrum of natural images;
* **colour decorrelation** (:func:`~diversevis.images.color.natural_color_matrix`): the three channels are
  optimised in the principal-component space of natural colours measured on the bundled photos;
* a **constraint** to display space: ``sigmoid`` (Lucid) or ``norm`` (the paper's fixed L2 contrast
  around grey, clamped to ``[0, 1]``);
* **random transforms** (:class:`~diversevis.transforms.RandomTransforms`): grey padding, jitter, scale
  and rotation drawn independently for every image at every step;
* optional **L1** (distance from grey) and **total-variation** penalties;
* optional **redirected ReLU** gradients (:class:`RedirectedReLU`, from :mod:`diversevis.core.redirect`) during
  the first steps, for units whose images stay grey because every path to them starts dead.

Target: for a convolutional layer the unit at the spatial position whose receptive-field centre is
nearest the image centre (``objective="center"``) or the channel's mean over positions
(``objective="channel"``); for a layer with a flat output ``(N, K)`` (class logits) entry ``unit``.
Activations are read at the layer's output (pre-ReLU for a conv layer followed by a ReLU module).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diversevis.core.checks import IMAGES_MAX, SIDE_MAX, check_fields, check_loop, finite
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.objectives import pairwise_rms_matrix
from diversevis.core.optimize import OptimizeResult, StepInfo, optimize
from diversevis.core.params import CONSTRAINTS, DecorrelatedImage
from diversevis.core.redirect import RedirectedReLU, redirected_relu, redirected_relu_grad
from diversevis.core.result import Result
from diversevis.core.settings import Settings
from diversevis.core.transforms import RandomTransforms
from diversevis.images.color import natural_color_matrix
from diversevis.methods.classic.inversion import tv_norm
from diversevis.methods.dfv import versions
from diversevis.methods.problem import _prepare

__all__ = [
    "actmax",
    "ActmaxSettings",
    "redirected_relu_grad",
    "redirected_relu",
    "RedirectedReLU",
    "OBJECTIVES",
    "center_index",
    "read_target",
]

#: How a convolutional layer's map is read: the centre unit, or the channel mean over positions.
OBJECTIVES = ("center", "channel")


# -------------------------------------------------------------------------------------------- reading


def center_index(net: Network, layer: str, input_size: int, map_size: int) -> int:
    """Index of the unit whose receptive-field centre is nearest the centre of a square input.

    Parameters
    ----------
    net : Network
        The network.
    layer : str
        Layer name.
    input_size : int
        Side of the input in pixels.
    map_size : int
        Side of the layer's output map for that input.

    Returns
    -------
    int
        Row (= column) index in ``[0, map_size)``; the map's middle ``map_size // 2`` if the receptive
        field cannot be worked out.
    """
    try:
        rf = net.receptive_field(layer)
    except Exception:  # noqa: BLE001 - any failure of the probe falls back to the map's middle
        return map_size // 2
    i = round(((input_size - 1) / 2 - rf.start) / rf.stride)
    return int(min(max(i, 0), map_size - 1))


def read_target(a: torch.Tensor, unit: int, objective: str, index: int | None = None) -> torch.Tensor:
    """Per-image target value from a layer output.

    Parameters
    ----------
    a : torch.Tensor
        ``(N, K)`` (logits) or ``(N, K, H, W)`` (feature maps).
    unit : int
        Channel or class index.
    objective : {"center", "channel"}
        Read the unit at ``(index, index)`` or the channel's mean over positions (maps only).
    index : int, optional
        Row/column of the centre unit (default ``H // 2`` and ``W // 2``).

    Returns
    -------
    torch.Tensor
        ``(N,)``.
    """
    if a.dim() == 2:
        return a[:, unit]
    if a.dim() == 4:
        if objective == "channel":
            return a[:, unit].mean((1, 2))
        i = a.shape[2] // 2 if index is None else index
        j = a.shape[3] // 2 if index is None else index
        return a[:, unit, i, j]
    raise DiversevisError(
        f"cannot read a unit from a layer output of shape {tuple(a.shape)} (expected 2-D or 4-D)"
    )


class _Reader:
    """Target read-out with the centre index cached per input size."""

    def __init__(self, net: Network, layer: str, unit: int, objective: str) -> None:
        self.net, self.layer, self.unit, self.objective = net, layer, unit, objective
        self._index: dict[int, int] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = self.net.activations(x, [self.layer])[self.layer]
        index = None
        if a.dim() == 4 and self.objective == "center":
            s = x.shape[-1]
            if s not in self._index:
                self._index[s] = center_index(self.net, self.layer, s, a.shape[-1])
            index = self._index[s]
        return read_target(a, self.unit, self.objective, index)


def _check_target(net: Network, layer: str, unit: int | None, size: int, objective: str) -> int:
    """Validate layer/unit/size; return the unit index."""
    net.resolve(layer)
    if objective not in OBJECTIVES:
        raise DiversevisError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    shape = net.output_shape(layer, size)
    if not shape:
        try:
            rf = f" (its receptive field is {net.receptive_field(layer).size}px)"
        except Exception:  # noqa: BLE001
            rf = ""
        raise DiversevisError(
            f"layer {net.display_name(layer)!r} produces no output for a {size}px image{rf}; use a larger size"
        )
    if len(shape) not in (1, 3):
        raise DiversevisError(
            f"layer {net.display_name(layer)!r} outputs shape {shape}; actmax reads (K,) logits or (K, H, W) maps"
        )
    k = int(shape[0])
    if unit is None:
        if k != 1:
            kind = "class index" if len(shape) == 1 else "channel index"
            raise DiversevisError(
                f"layer {net.display_name(layer)!r} has {k} units; give unit= (a {kind} in 0..{k - 1})"
            )
        return 0
    if isinstance(unit, bool) or not isinstance(unit, int):
        raise DiversevisError(f"unit must be an int index, got {unit!r}")
    if not 0 <= unit < k:
        raise DiversevisError(
            f"unit {unit} is out of range for layer {net.display_name(layer)!r}, which has {k} units "
            f"(valid: 0..{k - 1})"
        )
    return unit


# ------------------------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class ActmaxSettings(Settings):
    """The settings of :func:`actmax` (images, objective, parametrisation, transforms, penalties, loop).

    Fields and defaults are the keyword arguments of :func:`actmax` (see there); building one refuses bad
    values before the network is loaded. ``objective`` is checked with the target layer (unknown
    objectives are reported after the layer is resolved).
    """

    n_images: int = 1
    size: int = 128
    objective: str = "center"
    fft: bool = True
    decay_power: float = 1.0
    decorrelate: bool = True
    constraint: str = "sigmoid"
    contrast: float = 0.5
    norm: float | None = None
    transforms: bool = True
    pad: int = 12
    jitter: int = 8
    scale: tuple[float, float] = (0.9, 1.1)
    rotate: float = 10.0
    l1: float = 0.0
    tv: float = 0.0
    tv_beta: float = 2.0
    redirect_relu: int = 0
    init_sd: float = 0.01
    lr: float = 0.1
    max_iter: int = 512
    patience: int = 100
    ema: float = 0.9
    seed: int = 0
    images: str | Path | None = None

    def check(self) -> None:
        """Refuse bad values before the network is loaded."""
        check_fields(
            self,
            ints=[
                ("n_images", 1, IMAGES_MAX),
                ("size", 1, SIDE_MAX),
                ("pad", 0, SIDE_MAX),
                ("jitter", 0, SIDE_MAX),
            ]
            + [("redirect_relu", 0)],
            floats=[("decay_power", 0.0), ("contrast", 0.0, math.inf, True), ("norm", 0.0, math.inf, True)]
            + [("rotate", 0.0, 360.0), ("l1", 0.0), ("tv", 0.0), ("tv_beta", 0.0, math.inf, True)]
            + [("init_sd", 0.0, math.inf, True)],
            optional=["norm"],
        )
        check_loop(self)
        if self.constraint not in CONSTRAINTS:
            raise DiversevisError(
                f"unknown constraint {self.constraint!r}; choose one of {', '.join(CONSTRAINTS)}"
            )
        lo, hi = (finite("scale", v, 0.0, open_lo=True) for v in self.scale)
        if lo > hi:
            raise DiversevisError(f"need 0 < scale[0] <= scale[1], got scale={self.scale}")


# --------------------------------------------------------------------------------------------- actmax


def actmax(
    model: Network | nn.Module | str,
    layer: str,
    unit: int | None = None,
    *,
    n_images: int = ActmaxSettings.n_images,
    size: int = ActmaxSettings.size,
    objective: str = ActmaxSettings.objective,
    fft: bool = ActmaxSettings.fft,
    decay_power: float = ActmaxSettings.decay_power,
    decorrelate: bool = ActmaxSettings.decorrelate,
    constraint: str = ActmaxSettings.constraint,
    contrast: float = ActmaxSettings.contrast,
    norm: float | None = ActmaxSettings.norm,
    transforms: bool = ActmaxSettings.transforms,
    pad: int = ActmaxSettings.pad,
    jitter: int = ActmaxSettings.jitter,
    scale: tuple[float, float] = ActmaxSettings.scale,
    rotate: float = ActmaxSettings.rotate,
    l1: float = ActmaxSettings.l1,
    tv: float = ActmaxSettings.tv,
    tv_beta: float = ActmaxSettings.tv_beta,
    redirect_relu: int = ActmaxSettings.redirect_relu,
    init_sd: float = ActmaxSettings.init_sd,
    lr: float = ActmaxSettings.lr,
    max_iter: int = ActmaxSettings.max_iter,
    patience: int = ActmaxSettings.patience,
    ema: float = ActmaxSettings.ema,
    seed: int = ActmaxSettings.seed,
    device: str | torch.device | None = None,
    images: str | Path | None = ActmaxSettings.images,
    progress: bool = False,
    callbacks: Iterable[Callable[[StepInfo], bool | None]] = (),
) -> Result:
    """Activation maximisation of one unit (or class logit) with Lucid-style regularisation.

    Minimises, over the image parameters,

        mean_i [ -a(T_i(x_i)) + l1 * mean|x_i - 0.5| + tv * R_V(x_i) / (C H W) ]

    where ``a`` is the target value, ``T_i`` a fresh random transform per image and step, and
    ``R_V`` the total variation :func:`~diversevis.classic.inversion.tv_norm` with exponent ``tv_beta``.

    Parameters
    ----------
    model : Network, nn.Module or str
        The network (a zoo name is loaded).
    layer : str
        Target layer (alias or dot path); its output is read (pre-ReLU for conv layers).
    unit : int, optional
        Channel index, or class index for a logit layer; may be omitted for single-unit layers.
    n_images : int
        Number of images optimised independently (different random starts and transforms).
    size : int
        Image side in pixels (128 by default; 224 for full ImageNet views).
    objective : {"center", "channel"}
        For feature maps: the unit nearest the image centre, or the mean over all positions.
    fft : bool
        Fourier parametrisation (else free pixels).
    decay_power : float
        Spectrum fall-off ``1/|f|^decay_power`` of the Fourier parametrisation.
    decorrelate : bool
        Optimise in decorrelated colour space (natural-image colour matrix; RGB networks only).
    constraint : {"sigmoid", "norm"}
        Map to ``[0, 1]`` by a sigmoid, or by a fixed L2 norm around grey (``contrast`` times the mean
        natural-patch norm at this size, or ``norm``) clamped to ``[0, 1]``.
    contrast : float
        For ``constraint="norm"``: fraction of the natural-patch norm (the paper's 0.5).
    norm : float, optional
        For ``constraint="norm"``: absolute L2 norm in display units (overrides ``contrast``).
    transforms : bool
        Apply random transforms (``pad``, ``jitter``, ``scale``, ``rotate``) before the network.
    pad : int
        Grey border in pixels.
    jitter : int
        Maximum shift in pixels.
    scale : (float, float)
        Range of scale factors.
    rotate : float
        Maximum rotation in degrees.
    l1 : float
        Weight of the mean absolute deviation from grey.
    tv : float
        Weight of the per-value total variation.
    tv_beta : float
        Exponent ``beta`` of the total variation.
    redirect_relu : int
        Number of initial steps with redirected ReLU gradients (0 = off).
    init_sd : float
        SD of the initial parameters.
    lr, max_iter, patience, ema : float, int, int, float
        Adam learning rate (the FFT parametrisation is normalised so that ``lr`` is roughly the RMS
        change of the unconstrained image per step; 0.1 matches Lucid's default of 0.05 with its
        factor 1/4) and the shared loop's stopping settings.
    seed : int
        Seed of the initial images and of the transforms; the same seed gives the same result on CPU.
    device : str, optional
        Move the network there.
    images : str or Path, optional
        Natural-image folder for the colour matrix and contrast (default: the bundled photos).
    progress : bool
        Show a progress bar.
    callbacks : iterable of callables
        Passed to :func:`~diversevis.optimize.optimize`.

    Returns
    -------
    Result
        ``images`` ``(n_images, C, size, size)`` in ``[0, 1]``; ``activations`` ``(n_images,)`` read on
        the untransformed images; ``spec`` with every setting, ``grey_activation`` (the target value of a
        uniform grey image), counts, timings and versions.
    """
    s = ActmaxSettings.from_arguments(locals())
    return run_actmax(model, layer, unit, s, device=device, progress=progress, callbacks=callbacks)


def run_actmax(
    model: Network | nn.Module | str,
    layer: str,
    unit: int | None,
    s: ActmaxSettings,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
    callbacks: Iterable[Callable[[StepInfo], bool | None]] = (),
) -> Result:
    """:func:`actmax` with its settings given as one :class:`ActmaxSettings` (as the CLI calls it)."""
    net = _prepare(model, device)
    unit = _check_target(net, layer, unit, s.size, s.objective)
    channels = net.in_channels
    decorrelate = s.decorrelate
    if decorrelate and channels != 3:
        decorrelate = False  # colour decorrelation is defined for RGB only
    color = natural_color_matrix(s.images) if decorrelate else None
    norm_value = _norm_value(s, channels)

    gen = torch.Generator().manual_seed(s.seed)
    param = DecorrelatedImage(
        s.n_images,
        channels,
        s.size,
        fft=s.fft,
        color_matrix=color,
        constraint=s.constraint,
        norm=norm_value,
        decay_power=s.decay_power,
        sd=s.init_sd,
        generator=gen,
        device=net.device,
    )
    tf = RandomTransforms(s.pad, s.jitter, s.scale, s.rotate) if s.transforms else None
    reader = _Reader(net, layer, unit, s.objective)
    with torch.no_grad():
        grey_activation = float(reader(torch.full((1, channels, s.size, s.size), 0.5, device=net.device))[0])
    label = f"actmax {net.display_name(layer)}:{unit}"
    opt, n_relus = _optimise(net, param, reader, tf, gen, s, label, progress, callbacks)

    with torch.no_grad():
        acts = reader(opt.images)
    imgs = opt.images.detach().cpu()
    dist = pairwise_rms_matrix((imgs - 0.5).flatten(1)) if s.n_images > 1 else torch.zeros(1, 1)
    spec = _spec(net, layer, unit, s, decorrelate, color, norm_value, tf, n_relus, grey_activation, opt)
    return Result(
        images=imgs,
        activations=acts.detach().cpu(),
        distances=dist,
        loss_history=opt.history,
        spec=spec,
        extra={"grey_activation": grey_activation},
    )


def _norm_value(s: ActmaxSettings, channels: int) -> float | None:
    """The fixed L2 norm of ``constraint="norm"``: ``norm``, or ``contrast`` times the natural-patch norm."""
    if s.constraint != "norm":
        return None
    if s.norm is None:
        if not s.contrast > 0:
            raise DiversevisError(f"contrast must be > 0, got {s.contrast}")
        if channels != 3:
            raise DiversevisError("natural-image contrast needs an RGB network; give an absolute norm=")
        from diversevis.images.naturals import natural_patch_norm

        return s.contrast * natural_patch_norm(s.size, folder=s.images)
    if not s.norm > 0:
        raise DiversevisError(f"norm must be > 0, got {s.norm}")
    return float(s.norm)


def _optimise(
    net: Network,
    param: DecorrelatedImage,
    reader: _Reader,
    tf: RandomTransforms | None,
    gen: torch.Generator,
    s: ActmaxSettings,
    desc: str,
    progress: bool,
    callbacks: Iterable[Callable[[StepInfo], bool | None]],
) -> tuple[OptimizeResult, int]:
    """Minimise the objective of :func:`actmax`; also returns how many ReLUs had redirected gradients."""
    relu = RedirectedReLU(net.module, active=s.redirect_relu > 0)
    step = [0]

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        relu.active = step[0] < s.redirect_relu
        step[0] += 1
        xt = tf(x, gen) if tf is not None else x
        per_image = -reader(xt)
        if s.l1 > 0:
            per_image = per_image + s.l1 * (x - 0.5).abs().flatten(1).mean(1)
        if s.tv > 0:
            per_image = per_image + s.tv * tv_norm(x, s.tv_beta, reduce=False) / x[0].numel()
        return per_image.mean()

    with relu if s.redirect_relu > 0 else contextlib.nullcontext():
        n_relus = relu.n_relus
        opt = optimize(
            param,
            loss_fn,
            **s.loop(),
            progress=progress,
            desc=desc,
            callbacks=callbacks,
        )
    return opt, n_relus


def _spec(
    net: Network,
    layer: str,
    unit: int,
    s: ActmaxSettings,
    decorrelate: bool,
    color: torch.Tensor | None,
    norm_value: float | None,
    tf: RandomTransforms | None,
    n_relus: int,
    grey_activation: float,
    opt: OptimizeResult,
) -> dict[str, Any]:
    """The run spec: every setting, the grey image's activation, counts, timings and versions."""
    return {
        "method": "actmax",
        "model": net.name,
        "layer": net.display_name(layer),
        "layer_path": net.resolve(layer),
        "unit": unit,
        "objective": s.objective,
        "n_images": s.n_images,
        "image_size": s.size,
        "fft": s.fft,
        "decay_power": s.decay_power if s.fft else None,
        "decorrelate": decorrelate,
        "color_matrix": None if color is None else [[round(float(v), 6) for v in row] for row in color],
        "constraint": s.constraint,
        "contrast": s.contrast if s.constraint == "norm" and s.norm is None else None,
        "norm": norm_value,
        "transforms": None if tf is None else tf.spec(),
        "l1": s.l1,
        "tv": s.tv,
        "tv_beta": s.tv_beta if s.tv > 0 else None,
        "redirect_relu": s.redirect_relu,
        "redirected_relus": n_relus,
        "init_sd": s.init_sd,
        "lr": s.lr,
        "max_iter": s.max_iter,
        "patience": s.patience,
        "ema": s.ema,
        "seed": s.seed,
        "device": str(net.device),
        "dtype": "float32",
        "natural_images": str(s.images) if s.images else "bundled",
        "grey_activation": grey_activation,
        **opt.summary(),
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
