"""Diverse feature visualisation (Cadena et al., ECCV 2018) and the single-image MEI.

``diverse`` optimises ``N`` images of the unit's receptive-field size, each with the same L2 contrast,
to maximise

    L = mean_i p(x_i) + lambda * D({phi(x_i)})

where ``p`` is the target (a unit, or a direction with metric max/cos/mse) read at the unit whose
receptive field is exactly the image, and ``D`` is the diversity (by default the smallest pairwise RMS
distance) in pixel space or in the feature space ``phi`` of a lower layer (post-ReLU, restricted to the
positions that lie over the image). See ``method.md`` A.2-A.9 for the reference hyperparameters.
"""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network, as_network
from diversevis.core.objectives import DIVERSITIES, Target, diversity_value, pairwise_rms_matrix, target_value
from diversevis.core.optimize import OptimizeResult, StepInfo, optimize, optimize_groups
from diversevis.core.params import PixelImage
from diversevis.core.receptive import Placement, positions_inside
from diversevis.core.result import Result

__all__ = ["diverse", "mei", "diverse_units", "mei_units", "Problem"]


def versions() -> dict[str, str]:
    """Versions of the software that produced a result."""
    from diversevis import __version__

    return {
        "diversevis": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


@dataclass
class Problem:
    """Everything fixed for one target: geometry, contrast, the read-out and the distance space.

    Build it with :meth:`Problem.build`; :meth:`evaluate` maps images to target values and features.
    """

    net: Network
    target: Target
    direction: torch.Tensor
    placement: Placement
    norm: float
    distance_layer: str | None
    distance_slice: tuple[slice, slice] | None

    @classmethod
    def build(
        cls,
        net: Network,
        layer: str,
        unit: int | None,
        direction: Sequence[float] | torch.Tensor | None,
        metric: str,
        *,
        contrast: float,
        norm: float | None,
        distance_layer: str | None,
        images_folder: str | Path | None,
    ) -> Problem:
        """Validate the request and work out the geometry (raises :class:`DiversevisError` on bad input)."""
        net.resolve(layer)
        if distance_layer in ("", "pixel", "pixels", "none"):
            distance_layer = None
        if distance_layer is not None:
            net.resolve(distance_layer)
        channels = net.channels(layer)
        target = Target(layer, unit, direction, metric).check(channels)
        placement = net.placement(layer)
        size = placement.image_size
        if norm is None:
            if not contrast > 0:
                raise DiversevisError(
                    f"contrast must be > 0 (a fraction of the natural-patch norm), got {contrast}"
                )
            if net.in_channels != 3:
                raise DiversevisError(
                    "natural-image contrast needs an RGB network; give an absolute norm= for "
                    f"{net.in_channels}-channel inputs"
                )
            from diversevis.images.naturals import natural_patch_norm

            norm = contrast * natural_patch_norm(size, folder=images_folder)
        elif not norm > 0:
            raise DiversevisError(f"norm must be > 0, got {norm}")
        dslice = None
        if distance_layer is not None:
            shape = net.output_shape(distance_layer, placement.canvas_size)
            if len(shape) != 3:
                raise DiversevisError(
                    f"distance layer {distance_layer!r} has no spatial output for a "
                    f"{placement.canvas_size}px input; choose a lower layer"
                )
            rf_d = net.receptive_field(distance_layer)
            lo, hi = placement.offset, placement.offset + size
            try:
                dslice = (positions_inside(rf_d, lo, hi, shape[1]), positions_inside(rf_d, lo, hi, shape[2]))
            except ValueError:
                raise DiversevisError(
                    f"no unit of distance layer {distance_layer!r} lies over the {size}px image; "
                    "choose a lower layer"
                ) from None
        d = target.vector(channels, device=net.device)
        return cls(net, target, d, placement, float(norm), distance_layer, dslice)

    def canvas(self, images: torch.Tensor) -> torch.Tensor:
        """Place RF-sized images in a mean-grey canvas (identity for VALID networks)."""
        p = self.placement
        if p.canvas_size == p.image_size:
            return images
        a = p.offset
        b = p.canvas_size - p.image_size - a
        return F.pad(images, (a, b, a, b), value=0.5)

    def evaluate(
        self, images: torch.Tensor, need_features: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Target values ``(N,)`` and distance-space features ``(N, K, h, w)`` (or ``None``)."""
        a, feats = self.read(images, need_features)
        return target_value(a, self.direction, self.target.metric), feats

    def read(
        self, images: torch.Tensor, need_features: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All channels ``(N, K)`` of the read-out position, and the distance-space features (or ``None``)."""
        layers = [self.target.layer]
        if need_features and self.distance_layer is not None:
            layers.append(self.distance_layer)
        acts = self.net.activations(self.canvas(images), layers)
        i = self.placement.unit_index
        a = acts[self.target.layer][:, :, i, i]
        feats = None
        if need_features:
            if self.distance_layer is None:
                feats = images - 0.5
            else:
                rs, cs = self.distance_slice
                feats = torch.relu(acts[self.distance_layer][:, :, rs, cs])
        return a, feats

    def spec(self) -> dict[str, Any]:
        """The geometry and target part of a run spec."""
        p = self.placement
        t = self.target
        return {
            "model": self.net.name,
            "layer": self.net.display_name(t.layer),
            "layer_path": self.net.resolve(t.layer),
            "unit": t.unit,
            "direction": None if t.direction is None else [float(v) for v in torch.as_tensor(t.direction)],
            "metric": t.metric,
            "norm": self.norm,
            "image_size": p.image_size,
            "canvas_size": p.canvas_size,
            "offset": p.offset,
            "unit_index": p.unit_index,
            "rf_misalignment": p.misalignment,
            "distance_layer": None
            if self.distance_layer is None
            else self.net.display_name(self.distance_layer),
        }

    def run_spec(
        self,
        method: str,
        *,
        contrast: float,
        norm: float | None,
        images: str | Path | None,
        seed: int,
        opt: OptimizeResult | None = None,
        **settings: Any,
    ) -> dict[str, Any]:
        """The full run spec: method, target and geometry, ``settings``, seed, device, counts, versions."""
        return _common_spec(
            method=method,
            **self.spec(),
            **settings,
            contrast=contrast if norm is None else None,
            seed=seed,
            device=str(self.net.device),
            dtype="float32",
            natural_images=str(images) if images else "bundled",
            **({} if opt is None else opt.summary()),
        )


def resolve_mei(
    mei: bool | float | Result | None, compute: Callable[[], Result]
) -> tuple[Result | None, float | None]:
    """Interpret a ``mei=`` argument: ``True`` computes it, a :class:`Result` or a number supplies it.

    Returns
    -------
    (Result or None, float or None)
        The MEI result (if there is one) and its activation (``None`` for ``False``/``None``).
    """
    if isinstance(mei, Result):
        return mei, mei.mei_activation
    if mei is True:
        res = compute()
        return res, res.mei_activation
    if mei is False or mei is None:
        return None, None
    return None, float(mei)


def _prepare(model, device) -> Network:
    net = as_network(model)
    if device is not None:
        net.to(device)
    return net


def _common_spec(**kw) -> dict[str, Any]:
    return {
        **kw,
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def mei(
    model: Network | nn.Module | str,
    layer: str,
    unit: int | None = None,
    *,
    direction: Sequence[float] | torch.Tensor | None = None,
    metric: str = "max",
    restarts: int = 4,
    contrast: float = 0.5,
    norm: float | None = None,
    precondition: bool = True,
    lr: float = 1.0,
    max_iter: int = 1000,
    patience: int = 100,
    ema: float = 0.9,
    precision: str = "fp32",
    seed: int = 0,
    device: str | torch.device | None = None,
    images: str | Path | None = None,
    progress: bool = False,
    callbacks: Iterable[Callable[[StepInfo], bool | None]] = (),
) -> Result:
    """Most exciting input: the best single image over ``restarts`` independent starts.

    The restarts are optimised together as one batch (their losses are independent), and the image with
    the highest final activation is returned. Parameters are those of :func:`diverse`.

    Returns
    -------
    Result
        One image; ``mei_activation`` is its activation and ``extra["restart_activations"]`` lists all.
    """
    if restarts < 1:
        raise DiversevisError(f"restarts must be >= 1, got {restarts}")
    net = _prepare(model, device)
    prob = Problem.build(
        net,
        layer,
        unit,
        direction,
        metric,
        contrast=contrast,
        norm=norm,
        distance_layer=None,
        images_folder=images,
    )
    gen = torch.Generator().manual_seed(seed)
    size = prob.placement.image_size
    param = PixelImage(
        restarts,
        net.in_channels,
        size,
        prob.norm,
        precondition=precondition,
        generator=gen,
        device=net.device,
    )

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        return -prob.evaluate(x, need_features=False)[0].mean()

    opt = optimize(
        param,
        loss_fn,
        lr=lr,
        max_iter=max_iter,
        patience=patience,
        ema=ema,
        precision=precision,
        progress=progress,
        desc=f"MEI {net.display_name(layer)}:{unit}",
        callbacks=callbacks,
    )
    with torch.no_grad():
        acts = prob.evaluate(opt.images, need_features=False)[0]
    settings = dict(
        contrast=contrast,
        norm=norm,
        images=images,
        seed=seed,
        restarts=restarts,
        precondition=precondition,
        lr=lr,
        max_iter=max_iter,
        patience=patience,
        ema=ema,
        precision=precision,
    )
    return _mei_result(prob, opt, acts, settings)


def _mei_result(
    prob: Problem, opt: OptimizeResult, acts: torch.Tensor, settings: dict[str, Any], **extra
) -> Result:
    """The best restart of an MEI run as a :class:`Result` (shared by :func:`mei` and :func:`mei_units`)."""
    best = int(acts.argmax())
    spec = prob.run_spec("mei", opt=opt, **settings)
    spec.update(extra)
    img = opt.images[best : best + 1].detach().cpu()
    return Result(
        images=img,
        activations=acts[best : best + 1].detach().cpu(),
        distances=torch.zeros(1, 1),
        loss_history=opt.history,
        spec=spec,
        mei_activation=float(acts[best]),
        mei_image=img[0],
        extra={"restart_activations": [float(a) for a in acts]},
    )


_mei = mei  # diverse() has a parameter called ``mei``


def diverse(
    model: Network | nn.Module | str,
    layer: str,
    unit: int | None = None,
    *,
    direction: Sequence[float] | torch.Tensor | None = None,
    metric: str = "max",
    n_images: int = 6,
    diversity: float = 0.01,
    distance_layer: str | None = None,
    distance: str = "min",
    tau: float = 0.1,
    contrast: float = 0.5,
    norm: float | None = None,
    precondition: bool = True,
    lr: float = 1.0,
    max_iter: int = 1000,
    patience: int = 100,
    ema: float = 0.9,
    precision: str = "fp32",
    seed: int = 0,
    device: str | torch.device | None = None,
    mei: bool | float | Result = True,
    mei_restarts: int = 4,
    images: str | Path | None = None,
    progress: bool = False,
    callbacks: Iterable[Callable[[StepInfo], bool | None]] = (),
    prior: Any = None,
    prior_weight: float = 0.0,
) -> Result:
    """Diverse feature visualisation of one unit (or direction).

    Parameters
    ----------
    model : Network, nn.Module or str
        The network (a zoo name such as ``"vgg16-paper"`` is loaded).
    layer : str
        Target layer (alias such as ``"conv3_1"`` or dot path such as ``"features.10"``); its output is
        read before any following ReLU.
    unit : int, optional
        Channel index of the target unit.
    direction : sequence of float, optional
        Target direction in channel space instead of a unit.
    metric : {"max", "cos", "mse"}
        Target metric.
    n_images : int
        Number of images ``N`` (>= 2).
    diversity : float
        Weight ``lambda`` of the diversity term (0.01 in the reference notebook).
    distance_layer : str, optional
        Layer whose (rectified) feature map measures distances; ``None`` = pixel space.
    distance : {"min", "softmin", "gram"}
        Diversity term: min pairwise RMS distance (the paper), its soft minimum with temperature ``tau``,
        or Lucid's Gram-cosine diversity (for comparison).
    contrast : float
        Image L2 norm as a fraction of the mean norm of natural patches of the same size (paper: 0.5).
    norm : float, optional
        Absolute L2 norm (display units) overriding ``contrast``.
    precondition : bool
        Use the 1/sqrt(f) gradient preconditioner.
    lr, max_iter, patience, ema : float, int, int, float
        Adam learning rate and early-stopping settings (reference: 1.0, 1000, 100, 0.9).
    precision : {"fp32", "tf32", "bf16"}
        Precision of the network's forward pass (:mod:`diversevis.precision`): ``tf32`` is for
        Ampere-or-newer GPUs (fp32 elsewhere), ``bf16`` autocasts convolutions on any device. The images
        and Adam stay in float32. Recorded in the run spec.
    seed : int
        Seed of the initial images; the same seed gives the same result on CPU.
    device : str, optional
        Move the network there (default: where the network already is).
    mei : bool, float or Result
        ``True``: also compute the MEI (``mei_restarts`` starts) to report ratios; a float or a
        :class:`Result` supplies the MEI activation; ``False`` skips it.
    images : str or Path, optional
        Folder of natural images for the contrast statistics (default: the bundled photos).
    progress : bool
        Show progress bars.
    callbacks : iterable of callables
        Called with a :class:`~diversevis.optimize.StepInfo` during the optimisation; ``True`` stops.
    prior : PixelCNNPrior or str, optional
        Natural-image prior (:mod:`diversevis.prior`): a model, a preset name or a ``.pt`` path; used
        when ``prior_weight > 0`` (default: the ``"default"`` preset, trained once and cached, about
        5 minutes on a CPU the first time).
    prior_weight : float
        Weight ``beta`` of the prior's negative log-likelihood (nats summed over the set's pixels, as
        the reference code; the notebook used 1e-4). 0 disables the prior.

    Returns
    -------
    Result
        ``images`` ``(N, C, rf, rf)``, ``activations`` ``(N,)``, ``ratios``, ``distances``,
        ``min_distance``, ``loss_history`` and the run ``spec``.
    """
    if not isinstance(n_images, int) or n_images < 2:
        raise DiversevisError(f"n_images must be an int >= 2 for a diverse set, got {n_images!r}")
    if distance not in DIVERSITIES:
        raise DiversevisError(f"unknown distance {distance!r}; choose one of {', '.join(DIVERSITIES)}")
    if diversity < 0:
        raise DiversevisError(f"diversity (lambda) must be >= 0, got {diversity}")
    if prior_weight < 0:
        raise DiversevisError(f"prior_weight (beta) must be >= 0, got {prior_weight}")
    net = _prepare(model, device)
    prior_model = _resolve_prior(prior, net.device) if prior_weight > 0 else None
    prob = Problem.build(
        net,
        layer,
        unit,
        direction,
        metric,
        contrast=contrast,
        norm=norm,
        distance_layer=distance_layer,
        images_folder=images,
    )
    if distance == "gram" and prob.distance_layer is None:
        raise DiversevisError("gram diversity needs a distance_layer (a feature map), not pixel space")

    mei_res, mei_act = resolve_mei(
        mei,
        lambda: _mei(
            net,
            layer,
            unit,
            direction=direction,
            metric=metric,
            restarts=mei_restarts,
            contrast=contrast,
            norm=prob.norm,
            precondition=precondition,
            lr=lr,
            max_iter=max_iter,
            patience=patience,
            ema=ema,
            precision=precision,
            seed=seed,
            images=images,
            progress=progress,
        ),
    )

    gen = torch.Generator().manual_seed(seed)
    size = prob.placement.image_size
    param = PixelImage(
        n_images,
        net.in_channels,
        size,
        prob.norm,
        precondition=precondition,
        generator=gen,
        device=net.device,
    )

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        p, f = prob.evaluate(x, need_features=diversity > 0)
        loss = -p.mean()
        if diversity > 0:
            loss = loss - diversity * diversity_value(f, distance, tau)
        if prior_model is not None:
            loss = loss - prior_weight * prior_model.log_prob(x.clamp(0, 1)).sum()
        return loss

    label = f"diverse {net.display_name(layer)}:{unit if unit is not None else 'dir'}"
    opt = optimize(
        param,
        loss_fn,
        lr=lr,
        max_iter=max_iter,
        patience=patience,
        ema=ema,
        precision=precision,
        progress=progress,
        desc=label,
        callbacks=callbacks,
    )
    with torch.no_grad():
        acts, feats = prob.evaluate(opt.images)
    settings = dict(
        contrast=contrast,
        norm=norm,
        images=images,
        seed=seed,
        n_images=n_images,
        diversity=diversity,
        distance=distance,
        tau=tau if distance == "softmin" else None,
        precondition=precondition,
        lr=lr,
        max_iter=max_iter,
        patience=patience,
        ema=ema,
        precision=precision,
        mei_restarts=mei_restarts if mei is True else None,
    )
    if prior_model is not None:
        with torch.no_grad():
            nll = prior_model.nll(opt.images.clamp(0, 1))
        settings.update(
            prior=str(prior) if isinstance(prior, (str, Path)) else ("default" if prior is None else "model"),
            prior_weight=prior_weight,
            prior_val_bits_per_dim=prior_model.metrics.get("val_bpd"),
            prior_nll_bits_per_dim=[round(float(v), 4) for v in nll],
        )
    return _diverse_result(prob, opt, acts, feats, mei_res, mei_act, settings)


def _resolve_prior(prior: Any, device: torch.device):
    """A :class:`~diversevis.prior.PixelCNNPrior` on ``device`` from a model, preset name or path."""
    from diversevis.images.prior import PixelCNNPrior, load_prior

    if isinstance(prior, PixelCNNPrior):
        return prior.to(device)
    return load_prior(prior or "default", device=device)


def _diverse_result(
    prob: Problem,
    opt: OptimizeResult,
    acts: torch.Tensor,
    feats: torch.Tensor,
    mei_res: Result | None,
    mei_act: float | None,
    settings: dict[str, Any],
    **extra,
) -> Result:
    """A diverse set as a :class:`Result` (shared by :func:`diverse` and :func:`diverse_units`)."""
    dist = pairwise_rms_matrix(feats.flatten(1))
    spec = prob.run_spec(
        "diverse",
        opt=opt,
        **settings,
        mei_seconds=None if mei_res is None else mei_res.spec.get("seconds"),
        mei_n_iter=None if mei_res is None else mei_res.spec.get("n_iter"),
    )
    spec.update(extra)
    return Result(
        images=opt.images.detach().cpu(),
        activations=acts.detach().cpu(),
        distances=dist.cpu(),
        loss_history=opt.history,
        spec=spec,
        mei_activation=mei_act,
        mei_image=None if mei_res is None else mei_res.mei_image,
    )


def _check_units(net: Network, layer: str, units: Sequence[int]) -> list[int]:
    units = [int(u) for u in units]
    if not units:
        raise DiversevisError("give at least one unit")
    if len(set(units)) != len(units):
        raise DiversevisError("units must be distinct")
    channels = net.channels(layer)
    for u in units:
        Target(layer, u).check(channels)
    return units


def _seeded_images(groups: int, n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """The initial raw images of ``groups`` runs that each start like a single run with ``seed``."""
    one = torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))
    return one.repeat(groups, 1, 1, 1)


def mei_units(
    model: Network | nn.Module | str,
    layer: str,
    units: Sequence[int],
    *,
    restarts: int = 4,
    contrast: float = 0.5,
    norm: float | None = None,
    precondition: bool = True,
    lr: float = 1.0,
    max_iter: int = 1000,
    patience: int = 100,
    ema: float = 0.9,
    precision: str = "fp32",
    seed: int = 0,
    device: str | torch.device | None = None,
    images: str | Path | None = None,
    progress: bool = False,
) -> list[Result]:
    """:func:`mei` of many units of one layer, optimised together in one batch.

    Each unit's restarts form a group with its own early stopping and the same initial images as
    ``mei(model, layer, unit, seed=seed)``, so the results match the one-unit path.

    Returns
    -------
    list of Result
        One per unit, in the order given.
    """
    net = _prepare(model, device)
    units = _check_units(net, layer, units)
    prob = Problem.build(
        net,
        layer,
        units[0],
        None,
        "max",
        contrast=contrast,
        norm=norm,
        distance_layer=None,
        images_folder=images,
    )
    G, R, size = len(units), restarts, prob.placement.image_size
    param = PixelImage(G * R, net.in_channels, size, prob.norm, precondition=precondition, device=net.device)
    with torch.no_grad():
        param.raw.copy_(_seeded_images(G, R, net.in_channels, size, seed))
    unit_t = torch.tensor(units, device=net.device)

    def loss_fn(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        a, _ = prob.read(x, need_features=False)
        uidx = unit_t[groups].repeat_interleave(R)
        return -a[torch.arange(len(x), device=x.device), uidx].view(-1, R).mean(1)

    runs = optimize_groups(
        param,
        loss_fn,
        groups=G,
        lr=lr,
        max_iter=max_iter,
        patience=patience,
        ema=ema,
        precision=precision,
        progress=progress,
        desc=f"MEI {net.display_name(layer)} x{G}",
        compact=True,
    )
    settings = dict(
        contrast=contrast,
        norm=norm,
        images=images,
        seed=seed,
        restarts=R,
        precondition=precondition,
        lr=lr,
        max_iter=max_iter,
        patience=patience,
        ema=ema,
        precision=precision,
    )
    out = []
    for u, opt in zip(units, runs):
        with torch.no_grad():
            a, _ = prob.read(opt.images, need_features=False)
        out.append(_mei_result(prob, opt, a[:, u], settings, unit=u, batched_units=G))
    return out


def diverse_units(
    model: Network | nn.Module | str,
    layer: str,
    units: Sequence[int],
    *,
    n_images: int = 6,
    diversity: float = 0.01,
    distance_layer: str | None = None,
    distance: str = "min",
    tau: float = 0.1,
    contrast: float = 0.5,
    norm: float | None = None,
    precondition: bool = True,
    lr: float = 1.0,
    max_iter: int = 1000,
    patience: int = 100,
    ema: float = 0.9,
    precision: str = "fp32",
    seed: int = 0,
    device: str | torch.device | None = None,
    mei: bool | Sequence[Result] | Sequence[float] = True,
    mei_restarts: int = 4,
    images: str | Path | None = None,
    progress: bool = False,
) -> list[Result]:
    """:func:`diverse` for many units of one layer, optimised together in one batch.

    Every unit's ``n_images`` images form a group with its own diversity term and early stopping, and
    start from the same images as ``diverse(model, layer, unit, seed=seed)``: a sweep is a few large
    batched runs instead of a Python loop of small ones, with the same results as the one-unit path.
    Parameters are those of :func:`diverse`; ``mei`` is ``True`` (computed with :func:`mei_units`),
    ``False``, or one MEI :class:`Result` or activation per unit.

    Returns
    -------
    list of Result
        One per unit, in the order given.
    """
    if not isinstance(n_images, int) or n_images < 2:
        raise DiversevisError(f"n_images must be an int >= 2 for a diverse set, got {n_images!r}")
    if distance not in DIVERSITIES:
        raise DiversevisError(f"unknown distance {distance!r}; choose one of {', '.join(DIVERSITIES)}")
    net = _prepare(model, device)
    units = _check_units(net, layer, units)
    prob = Problem.build(
        net,
        layer,
        units[0],
        None,
        "max",
        contrast=contrast,
        norm=norm,
        distance_layer=distance_layer,
        images_folder=images,
    )
    if distance == "gram" and prob.distance_layer is None:
        raise DiversevisError("gram diversity needs a distance_layer (a feature map), not pixel space")
    G, N, size = len(units), n_images, prob.placement.image_size
    if mei is True:
        meis = mei_units(
            net,
            layer,
            units,
            restarts=mei_restarts,
            norm=prob.norm,
            precondition=precondition,
            lr=lr,
            max_iter=max_iter,
            patience=patience,
            ema=ema,
            precision=precision,
            seed=seed,
            images=images,
            progress=progress,
        )
    elif mei is False or mei is None:
        meis = [None] * G
    else:
        meis = list(mei)
        if len(meis) != G:
            raise DiversevisError(f"give one MEI per unit ({G}), got {len(meis)}")

    param = PixelImage(G * N, net.in_channels, size, prob.norm, precondition=precondition, device=net.device)
    with torch.no_grad():
        param.raw.copy_(_seeded_images(G, N, net.in_channels, size, seed))
    unit_t = torch.tensor(units, device=net.device)

    def loss_fn(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        a, f = prob.read(x, need_features=diversity > 0)
        uidx = unit_t[groups].repeat_interleave(N)
        loss = -a[torch.arange(len(x), device=x.device), uidx].view(-1, N).mean(1)
        if diversity > 0:
            loss = loss - diversity * diversity_value(f.reshape(-1, N, *f.shape[1:]), distance, tau)
        return loss

    runs = optimize_groups(
        param,
        loss_fn,
        groups=G,
        lr=lr,
        max_iter=max_iter,
        patience=patience,
        ema=ema,
        precision=precision,
        progress=progress,
        desc=f"diverse {net.display_name(layer)} x{G}",
        compact=True,
    )
    settings = dict(
        contrast=contrast,
        norm=norm,
        images=images,
        seed=seed,
        n_images=N,
        diversity=diversity,
        distance=distance,
        tau=tau if distance == "softmin" else None,
        precondition=precondition,
        lr=lr,
        max_iter=max_iter,
        patience=patience,
        ema=ema,
        precision=precision,
        mei_restarts=mei_restarts if mei is True else None,
    )
    out = []
    for u, opt, m in zip(units, runs, meis):
        mei_res, mei_act = resolve_mei(m, lambda: None)
        with torch.no_grad():
            a, feats = prob.read(opt.images)
        out.append(
            _diverse_result(prob, opt, a[:, u], feats, mei_res, mei_act, settings, unit=u, batched_units=G)
        )
    return out
