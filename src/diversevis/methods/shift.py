"""The shift-invariance (texture) test of Cadena et al. (method.md A.10).

One texture ``T`` of side ``L = 2 rf - 1`` is optimised so that *every* crop ``T[i:i+rf, j:j+rf]``,
``0 <= i, j < rf - 1``, multiplied by a super-Gaussian window ``M``, drives the unit. The crops share one
contrast: the RMS of their L2 norms is the DFV norm. A unit that responds to a texture wherever it sits
(a texture or complex-like unit) admits such a texture, and every crop keeps close to the MEI's
activation; a phase- or position-selective unit does not, so some crops fall far below it.

The loss blends the mean and the worst crop: ``-(1 - w_min) mean_ij p_ij - w_min min_ij p_ij`` (default
``w_min = 0.5``; see :func:`shift_test`). Adam (lr 0.1, up to 700 iterations) with the shared
early-stopping loop. With a learned window the final window is reported and used to recompute the
crop activations of the best texture. Reported: ``mean_ratio`` and
``min_ratio`` of the crop activations to the unit's MEI at the same contrast.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diversevis.core.cache import atomic_write_bytes, atomic_write_json, output_dir
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.optimize import PartialRun, StepInfo, optimize
from diversevis.core.params import precondition
from diversevis.core.result import Result, clip_report, image_grid, png_html
from diversevis.methods.dfv import run_mei
from diversevis.methods.problem import Problem, _prepare, effective_problem, resolve_mei
from diversevis.methods.settings import ShiftSettings
from diversevis.methods.shift_subset import shift_objective, subset_optimize

__all__ = ["super_gaussian_mask", "crop_offsets", "crop_batch", "TextureImage", "ShiftResult", "shift_test"]


def super_gaussian_mask(
    size: int,
    p: float | torch.Tensor = 2.0,
    q: float | torch.Tensor = 4.0,
    sigma: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Super-Gaussian window ``M(x, y) = exp(-(r / sigma)^q)``, ``r = (|x|^p + |y|^p)^(1/p)``.

    Coordinates are centred: ``t = k - (size - 1) / 2``.

    Parameters
    ----------
    size : int
        Side in pixels.
    p : float or tensor
        Norm of the radius (2: round, large: square).
    q : float or tensor
        Sharpness of the edge (2: Gaussian, 4: the reference's flat-topped window).
    sigma : float or tensor, optional
        Radius scale in pixels (default ``size / 2.4``: the reference's choice, sigma = 10 at rf 24).

    Returns
    -------
    torch.Tensor
        ``(size, size)`` window, 1 at the centre. Differentiable in ``p``, ``q`` and ``sigma``.
    """
    sigma = size / 2.4 if sigma is None else sigma
    dtype = sigma.dtype if isinstance(sigma, torch.Tensor) else torch.float32
    device = sigma.device if isinstance(sigma, torch.Tensor) else None
    t = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    ax = t.abs().clamp_min(1e-12)  # keeps d/dp finite at the centre line
    r = (ax[:, None] ** p + ax[None, :] ** p) ** (1.0 / p)
    return torch.exp(-((r / sigma) ** q))


def crop_offsets(rf: int, stride: int = 1) -> list[int]:
    """Crop offsets along one axis: ``0, stride, ... < rf - 1`` (reference: stride 1, ``rf - 1`` offsets)."""
    return list(range(0, rf - 1, stride)) or [0]


def crop_batch(texture: torch.Tensor, rf: int, stride: int = 1) -> torch.Tensor:
    """All ``rf x rf`` crops of a texture at the test's offsets, without a Python loop.

    Parameters
    ----------
    texture : torch.Tensor
        ``(C, L, L)`` or ``(1, C, L, L)`` with ``L >= 2 rf - 2``.
    rf : int
        Crop side.
    stride : int
        Offset step (1 = every shift).

    Returns
    -------
    torch.Tensor
        ``(n * n, C, rf, rf)`` crops, row-major over offsets ``(i, j)``; ``n = len(crop_offsets(rf, stride))``
        offsets per axis.
    """
    t = texture if texture.dim() == 4 else texture[None]
    n = len(crop_offsets(rf, stride))
    # (1, C, nH, nW, rf, rf) windows; keep offsets 0, stride, ... (rf - 1 excluded, as in the reference)
    win = t.unfold(2, rf, stride).unfold(3, rf, stride)[:, :, :n, :n]
    c = t.shape[1]
    return win.permute(0, 2, 3, 1, 4, 5).reshape(n * n, c, rf, rf)


class TextureImage(nn.Module):
    """A texture whose masked crops have a fixed RMS norm (the shift test's parametrisation).

    Parameters
    ----------
    channels, rf : int
        Channels and crop side; the texture is ``2 rf - 1`` pixels wide.
    norm : float
        Target RMS over crops of the masked crops' L2 norms (display units).
    learn_mask : bool
        Learn the window's ``p``, ``q``, ``sigma`` (``p = 2 + |p~|``, ``q = 1 + |q~|``, ``sigma = exp(s)``,
        starting at p 2, q 2, sigma rf) instead of the fixed p 2, q 4, sigma rf / 2.4.
    stride : int
        Crop offset step.
    generator : torch.Generator, optional
        Source of the N(0, 1) initial texture.

    Calling the module returns the display-space texture ``(1, C, L, L)`` (grey 0.5 + scaled raw texture).
    """

    def __init__(
        self,
        channels: int,
        rf: int,
        norm: float,
        *,
        learn_mask: bool = False,
        stride: int = 1,
        generator: torch.Generator | None = None,
        device=None,
    ) -> None:
        super().__init__()
        side = 2 * rf - 1
        self.rf, self.stride, self.learn_mask = rf, stride, learn_mask
        self.raw = nn.Parameter(torch.randn(1, channels, side, side, generator=generator).to(device))
        self.register_buffer("norm", torch.tensor(float(norm), device=device))
        if learn_mask:
            self.p_raw = nn.Parameter(torch.zeros((), device=device))
            self.q_raw = nn.Parameter(torch.ones((), device=device))
            self.log_sigma = nn.Parameter(torch.tensor(math.log(rf), device=device))
        else:
            self.register_buffer("fixed_mask", super_gaussian_mask(rf).to(device))

    def mask_params(self) -> dict[str, float]:
        """Current window parameters ``p``, ``q``, ``sigma``."""
        if not self.learn_mask:
            return {"p": 2.0, "q": 4.0, "sigma": self.rf / 2.4}
        return {
            "p": float(2 + self.p_raw.detach().abs()),
            "q": float(1 + self.q_raw.detach().abs()),
            "sigma": float(self.log_sigma.detach().exp()),
        }

    def mask(self) -> torch.Tensor:
        """The window ``(rf, rf)``."""
        if not self.learn_mask:
            return self.fixed_mask
        return super_gaussian_mask(self.rf, 2 + self.p_raw.abs(), 1 + self.q_raw.abs(), self.log_sigma.exp())

    def scale(self) -> torch.Tensor:
        """Factor that sets the RMS norm of the masked raw crops to ``norm``."""
        crops = crop_batch(self.raw, self.rf, self.stride) * self.mask()
        return self.norm / crops.flatten(1).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)

    def forward(self) -> torch.Tensor:
        return 0.5 + self.scale() * self.raw


@dataclass
class ShiftResult:
    """Outcome of :func:`shift_test`.

    Attributes
    ----------
    texture : torch.Tensor
        ``(C, L, L)`` display-space texture, ``L = 2 rf - 1``.
    mask : torch.Tensor
        ``(rf, rf)`` window applied to every crop.
    activations : torch.Tensor
        ``(n, n)`` activation of the crop at offset ``(i * stride, j * stride)``.
    mei_activation : float
        The unit's MEI activation at the same contrast.
    spec : dict
        Full run spec.
    loss_history : numpy.ndarray
        Loss per iteration.
    """

    texture: torch.Tensor
    mask: torch.Tensor
    activations: torch.Tensor
    mei_activation: float
    spec: dict[str, Any]
    loss_history: np.ndarray
    mei_image: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_ratio(self) -> float:
        """Mean crop activation over the MEI activation (``r_tex`` of method.md A.11)."""
        return float(self.activations.mean()) / self.mei_activation

    @property
    def min_ratio(self) -> float:
        """Worst crop's activation over the MEI activation."""
        return float(self.activations.min()) / self.mei_activation

    def metrics(self) -> dict[str, Any]:
        """Headline numbers."""
        return {
            "mean_ratio": self.mean_ratio,
            "min_ratio": self.min_ratio,
            "mean_activation": float(self.activations.mean()),
            "min_activation": float(self.activations.min()),
            "max_activation": float(self.activations.max()),
            "mei_activation": self.mei_activation,
            "n_crops": int(self.activations.numel()),
            "mask": self.spec.get("mask_params"),
            "n_iter": self.spec.get("n_iter"),
            "seconds": self.spec.get("seconds"),
            "clipped_fraction": clip_report(self.texture)[1],
        }

    def __repr__(self) -> str:
        return (
            f"ShiftResult({self.spec.get('model')} {self.spec.get('layer')} unit={self.spec.get('unit')}: "
            f"mean_ratio={self.mean_ratio:.3f}, min_ratio={self.min_ratio:.3f}, "
            f"crops={self.activations.numel()})"
        )

    def crops(self) -> torch.Tensor:
        """The masked crops as the unit saw them, ``(n * n, C, rf, rf)`` display space."""
        rf = self.spec["image_size"]
        return 0.5 + crop_batch(self.texture - 0.5, rf, self.spec["stride"]) * self.mask

    def texture_png(self) -> bytes:
        """``texture.png`` as bytes: the part of the texture the crops cover, next to the MEI."""
        title = f"{self.spec.get('model')} {self.spec.get('layer')} unit {self.spec.get('unit')}: shift test"
        # show the part the crops cover (the last row and column of the 2 rf - 1 texture are in no crop)
        used = crop_offsets(self.spec["image_size"], self.spec["stride"])[-1] + self.spec["image_size"]
        return image_grid(
            self.texture[None, :, :used, :used],
            [f"mean {self.mean_ratio:.0%}, min {self.min_ratio:.0%} of MEI"],
            title=title,
            mei=None if self.mei_image is None else self.mei_image[None],
            tile=200,
        )

    def _repr_png_(self) -> bytes:
        """Jupyter: the result shows itself as its texture (and the MEI)."""
        return self.texture_png()

    def _repr_html_(self) -> str:
        """Jupyter: the summary line above the texture (inline PNG)."""
        return png_html(self.texture_png(), repr(self))

    def save(self, directory: str | Path) -> Path:
        """Write ``texture.png``, ``mask.png``, ``shift_map.png``, ``shift.npz`` and ``shift.json`` (last)."""
        out = output_dir(directory)
        atomic_write_bytes(out / "texture.png", self.texture_png())
        mask_img = self.mask.detach().cpu()[None, None].expand(1, 3, -1, -1)
        atomic_write_bytes(out / "mask.png", image_grid(mask_img, ["window"], tile=120))
        atomic_write_bytes(out / "shift_map.png", _heat_map(self))
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            texture=self.texture.detach().cpu().numpy(),
            mask=self.mask.detach().cpu().numpy(),
            activations=self.activations.detach().cpu().numpy(),
            loss_history=np.asarray(self.loss_history, dtype=np.float32),
        )
        atomic_write_bytes(out / "shift.npz", buf.getvalue())
        atomic_write_json(out / "shift.json", {"spec": self.spec, "metrics": self.metrics(), **self.extra})
        return out


def _heat_map(res: ShiftResult) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio = (res.activations / res.mei_activation).detach().cpu().numpy()
    stride = res.spec["stride"]
    n = ratio.shape[0]
    fig, ax = plt.subplots(figsize=(4.2, 3.6), dpi=110)
    im = ax.imshow(
        ratio,
        cmap="viridis",
        vmin=min(0.0, float(ratio.min())),
        vmax=max(1.0, float(ratio.max())),
        extent=(-0.5 * stride, (n - 0.5) * stride, (n - 0.5) * stride, -0.5 * stride),
    )
    ax.set_xlabel("horizontal shift (px)")
    ax.set_ylabel("vertical shift (px)")
    ax.set_title(f"activation / MEI: mean {res.mean_ratio:.2f}, min {res.min_ratio:.2f}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def shift_test(
    model: Network | nn.Module | str,
    layer: str,
    unit: int | None = None,
    *,
    direction: Sequence[float] | torch.Tensor | None = None,
    metric: str = "max",
    weight_min: float = ShiftSettings.weight_min,
    learn_mask: bool = ShiftSettings.learn_mask,
    stride: int = ShiftSettings.stride,
    contrast: float = ShiftSettings.contrast,
    norm: float | None = ShiftSettings.norm,
    precondition_grad: bool = ShiftSettings.precondition_grad,
    lr: float = ShiftSettings.lr,
    max_iter: int = ShiftSettings.max_iter,
    patience: int = ShiftSettings.patience,
    ema: float = ShiftSettings.ema,
    seed: int = ShiftSettings.seed,
    device: str | torch.device | None = None,
    mei: bool | float | Result = True,
    mei_restarts: int = ShiftSettings.mei_restarts,
    images: str | Path | None = ShiftSettings.images,
    crop: str = ShiftSettings.crop,
    crops_per_step: int | None = ShiftSettings.crops_per_step,
    refresh: int = ShiftSettings.refresh,
    precision: str = ShiftSettings.precision,
    progress: bool = False,
    callbacks: Iterable[Callable[[StepInfo], bool | None]] = (),
) -> ShiftResult:
    """Shift-invariance test: can one texture drive the unit at every shift?

    Parameters
    ----------
    model, layer, unit, direction, metric
        The target, as in :func:`diversevis.diverse`.
    weight_min : float
        Blend of the loss between the mean crop (0) and the worst crop (1). The reference notebook ran
        with 0; we default to 0.5 because maximising the mean alone lets the texture's amplitude pile up
        in its centre (central pixels belong to more crops), so the border crops lag and ``min_ratio``
        measures that rather than the unit: on the synthetic energy-model complex cell the min ratio is
        0.69 with 0 and 0.87 with 0.5 (texture cell 0.51 vs 0.93; simple cell -0.34 vs 0.04).
    learn_mask : bool
        Learn the window's shape (p, q, sigma) with the texture instead of the fixed window.
    stride : int
        Offset step between crops (1 = all ``(rf - 1)^2`` shifts as in the reference; 2 or more is faster).
    contrast, norm
        Crop contrast as in :func:`diversevis.diverse` (RMS over crops of their L2 norms).
    precondition_grad : bool
        Whiten the crops' gradient with the 1/sqrt(f) preconditioner.
    lr, max_iter, patience, ema : float, int, int, float
        Adam and early stopping (reference: 0.1, 700, 100, 0.9).
    seed : int
        Seed of the initial texture.
    mei : bool, float or Result
        The MEI used for the ratios: computed (``True``, ``mei_restarts`` restarts), given as an
        activation, or a :class:`Result` of :func:`diversevis.mei`.
    crop : {"nominal", "effective"}
        Crop side: the nominal receptive field, or the effective one (a square about the box holding
        95 % of the MEI's gradient energy; needs the MEI image). A unit that looks at 9 px of a 21 px
        field is then tested with 9 px crops, as its invariance is about those pixels.
    crops_per_step : int or None
        Crops the optimiser sees per step (default 64): the worst crops of the latest full evaluation
        plus a uniform sample of the others, with a full evaluation of every crop each ``refresh`` steps
        (which picks the best texture and stops the run when the crop ratios plateau). ``None``: every
        crop at every step (the reference; several times slower for layers with hundreds of crops).
        The reported ratios always come from a full evaluation at ``stride``.
    refresh : int
        Steps between full evaluations (default 10).
    precision : {"fp32", "bf16"}
        Forward pass of the optimisation (bf16 autocast is about 2x faster on CPUs with AMX or
        AVX512-BF16); the final evaluation is always fp32.

    Returns
    -------
    ShiftResult
        Texture, window, activation per shift, ``mean_ratio`` and ``min_ratio``.
    """
    settings = ShiftSettings.from_arguments(locals())
    net = _prepare(model, device)
    return run_shift_test(
        net, layer, unit, direction, metric, settings, mei=mei, progress=progress, callbacks=callbacks
    )


def run_shift_test(
    net: Network,
    layer: str,
    unit: int | None,
    direction: Sequence[float] | torch.Tensor | None,
    metric: str,
    s: ShiftSettings,
    *,
    mei: bool | float | Result = True,
    progress: bool = False,
    callbacks: Iterable[Callable[[StepInfo], bool | None]] = (),
) -> ShiftResult:
    """:func:`shift_test` on a prepared network with validated settings."""
    prob = Problem.build(
        net,
        layer,
        unit,
        direction,
        metric,
        contrast=s.contrast,
        norm=s.norm,
        distance_layer=None,
        images_folder=s.images,
    )
    rf = _check_crops(prob, layer, s.stride)
    mei_res, mei_act = _shift_mei(prob, layer, unit, direction, metric, s, mei, progress)
    if s.crop == "effective":
        prob = effective_problem(prob, mei_res, square=True)
        rf = _check_crops(prob, layer, s.stride)
    param = TextureImage(
        net.in_channels,
        rf,
        prob.norm,
        learn_mask=s.learn_mask,
        stride=s.stride,
        generator=torch.Generator().manual_seed(s.seed),
        device=net.device,
    )

    def crop_values(texture: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        crops = crop_batch(texture - 0.5, rf, s.stride)
        crops = (crops if idx is None else crops[idx]) * param.mask()
        if s.precondition_grad:
            crops = precondition(crops)
        return prob.evaluate(0.5 + crops, need_features=False)[0]

    n = len(crop_offsets(rf, s.stride))
    desc = f"shift {net.display_name(layer)}:{unit}"
    solver = {"optimizer": "subset" if _use_subset(s, n * n) else "all crops"}  # kept after a Ctrl-C
    with PartialRun() as stop:  # Ctrl-C: the best texture so far, marked interrupted
        opt, solver = _optimize_texture(param, crop_values, n * n, s, mei_act, progress, desc, callbacks)
    opt = stop.opt or opt
    with torch.no_grad():
        acts = crop_values(opt.images)
    result = ShiftResult(
        texture=opt.images[0].detach().cpu(),
        mask=param.mask().detach().cpu(),
        activations=acts.detach().cpu().reshape(n, n),
        mei_activation=float(mei_act),
        spec={**_shift_spec(prob, s, opt, param, n, mei is True, mei_res), **solver, **stop.spec},
        loss_history=opt.history,
        mei_image=None if mei_res is None else mei_res.mei_image,
    )
    return stop.finish(result)


def _optimize_texture(param, crop_values, n_crops: int, s: ShiftSettings, mei_act, progress, desc, callbacks):
    """The texture's optimisation: every crop at every step, or a subset per step (``crops_per_step``).

    Returns the run and the optimiser's spec entries.
    """
    if _use_subset(s, n_crops):
        return subset_optimize(
            param,
            crop_values,
            n_crops,
            per_step=s.crops_per_step,
            refresh=s.refresh,
            weight_min=s.weight_min,
            mei_activation=mei_act,
            seed=s.seed,
            loop=s.loop(),
            progress=progress,
            desc=desc,
            callbacks=callbacks,
        )
    loss_fn = lambda texture: shift_objective(crop_values(texture), s.weight_min)  # noqa: E731
    opt = optimize(param, loss_fn, **s.loop(), progress=progress, desc=desc, callbacks=callbacks)
    return opt, {"optimizer": "all crops"}


def _use_subset(s: ShiftSettings, n_crops: int) -> bool:
    """Whether the texture is optimised on a subset of crops per step (fewer than all of them)."""
    return s.crops_per_step is not None and s.crops_per_step < n_crops


def _check_crops(prob: Problem, layer: str, stride: int) -> int:
    """The receptive field (crop side, px) if it leaves at least two crops at ``stride``."""
    rf = prob.placement.image_size
    if prob.placement.unit_index is None or not isinstance(rf, int):
        raise DiversevisError(
            f"the shift test slides a unit's receptive field over a texture, but {layer!r} has no spatial "
            "units (a readout or logit vector): test a unit of a spatial layer of the model's core"
        )
    if rf < 3:
        raise DiversevisError(f"the shift test needs a receptive field of at least 3 px; {layer!r} has {rf}")
    if len(crop_offsets(rf, stride)) < 2:
        raise DiversevisError(
            f"stride {stride} leaves a single crop for a {rf}px receptive field; use a stride <= {max(1, (rf - 2) // 2)}"
        )
    return rf


def _shift_mei(prob, layer, unit, direction, metric, s: ShiftSettings, mei, progress) -> tuple:
    """The MEI the crops are compared with: ``(Result or None, activation)``; it must be positive."""
    mei_res, mei_act = resolve_mei(
        mei,
        lambda: run_mei(
            prob.net, layer, unit, direction, metric, s.mei_settings(prob.norm), progress=progress
        ),
    )
    if mei_act is None:
        raise DiversevisError(
            "the shift test reports ratios to the MEI: give mei=True, an activation or a Result"
        )
    if not mei_act or mei_act <= 0:
        raise DiversevisError(f"the unit's MEI activation is {mei_act}; ratios need a positive MEI")
    return mei_res, mei_act


def _shift_spec(prob: Problem, s: ShiftSettings, opt, param, n: int, mei_computed: bool, mei_res) -> dict:
    """The run spec of a shift test: the settings, the window's shape and the crop counts."""
    return prob.run_spec(
        "shift_test",
        contrast=s.contrast,
        norm=s.norm,
        images=s.images,
        seed=s.seed,
        opt=opt,
        weight_min=s.weight_min,
        learn_mask=s.learn_mask,
        mask_params=param.mask_params(),
        stride=s.stride,
        n_crops=n * n,
        texture_size=2 * prob.placement.image_size - 1,
        precondition=s.precondition_grad,
        **s.loop(),
        mei_restarts=s.mei_restarts if mei_computed else None,
        mei_seconds=None if mei_res is None else mei_res.spec.get("seconds"),
    )
