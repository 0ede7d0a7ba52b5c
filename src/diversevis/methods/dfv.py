"""Diverse feature visualisation (Cadena et al., ECCV 2018) and the single-image MEI.

``diverse`` optimises ``N`` images of the unit's receptive-field size, each with the same L2 contrast,
to maximise

    L = mean_i p(x_i) + lambda * D({phi(x_i)})

where ``p`` is the target (a unit, or a direction with metric max/cos/mse) read at the unit whose
receptive field is exactly the image, and ``D`` is the diversity (by default the smallest pairwise RMS
distance) in pixel space or in the feature space ``phi`` of a lower layer (post-ReLU, restricted to the
positions that lie over the image). See ``method.md`` A.2-A.9 for the reference hyperparameters.
The hyperparameters are declared once in :mod:`diversevis.methods.settings`; many units of a layer at
once: :mod:`diversevis.methods.dfv_units`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diversevis.core.network import Network
from diversevis.core.objectives import diversity_value
from diversevis.core.optimize import PartialRun, StepInfo, Watched, optimize
from diversevis.core.params import PixelImage
from diversevis.core.result import Result
from diversevis.core.spec import versions  # noqa: F401 (imported from here by older code)
from diversevis.methods.dead_starts import alive_starts, dead_images, dead_unit_message, starts_spec
from diversevis.methods.dfv_units import SetWatch, diverse_units, mei_units, mei_watch
from diversevis.methods.diversity_index import index_spec
from diversevis.methods.floor import FloorConstraint, floor_constraint, floor_spec
from diversevis.methods.problem import (
    Problem,
    _common_spec,  # noqa: F401 (imported from here by older code)
    _diverse_result,
    _mei_result,
    _prepare,
    _resolve_prior,
    effective_problem,
    resolve_mei,
)
from diversevis.methods.settings import DiverseSettings, MEISettings

__all__ = ["diverse", "mei", "diverse_units", "mei_units", "Problem"]

Callback = Callable[[StepInfo], bool | None]


def mei(
    model: Network | nn.Module | str,
    layer: str,
    unit: int | None = None,
    *,
    direction: Sequence[float] | torch.Tensor | None = None,
    metric: str = "max",
    restarts: int = MEISettings.restarts,
    contrast: float = MEISettings.contrast,
    norm: float | None = MEISettings.norm,
    precondition: bool = MEISettings.precondition,
    display_range: bool = MEISettings.display_range,
    lr: float = MEISettings.lr,
    max_iter: int = MEISettings.max_iter,
    patience: int = MEISettings.patience,
    ema: float = MEISettings.ema,
    stop: str = MEISettings.stop,
    plateau_window: int = MEISettings.plateau_window,
    plateau_rtol: float = MEISettings.plateau_rtol,
    precision: str = MEISettings.precision,
    seed: int = MEISettings.seed,
    device: str | torch.device | None = None,
    images: str | Path | None = MEISettings.images,
    progress: bool = False,
    callbacks: Iterable[Callback] = (),
) -> Result:
    """Most exciting input: the best single image over ``restarts`` independent starts.

    The restarts are optimised together as one batch (their losses are independent), and the image with
    the highest final activation is returned. Parameters are those of :func:`diverse`
    (:class:`~diversevis.methods.settings.MEISettings`).

    Returns
    -------
    Result
        One image; ``mei_activation`` is its activation and ``extra["restart_activations"]`` lists all.
    """
    settings = MEISettings.from_arguments(locals())
    net = _prepare(model, device)
    return run_mei(net, layer, unit, direction, metric, settings, progress=progress, callbacks=callbacks)


def run_mei(
    net: Network,
    layer: str,
    unit: int | None,
    direction: Sequence[float] | torch.Tensor | None,
    metric: str,
    s: MEISettings,
    *,
    progress: bool = False,
    callbacks: Iterable[Callback] = (),
) -> Result:
    """:func:`mei` on a prepared network with validated settings."""
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
    param = PixelImage(
        s.restarts,
        net.in_channels,
        prob.placement.image_size,
        prob.norm,
        precondition=s.precondition,
        generator=torch.Generator().manual_seed(s.seed),
        device=net.device,
        clip=s.display_range,
    )

    def values(x: torch.Tensor) -> torch.Tensor:
        return prob.evaluate(x, need_features=False)[0]

    def loss_fn(x: torch.Tensor) -> Watched:
        a = values(x)
        return mei_watch(-a.mean(), a.view(1, -1))

    context, redraws, redirected = alive_starts(param, values, s.seed, s.restarts, net.module)
    with context, PartialRun() as stop:
        opt = optimize(
            param,
            loss_fn,
            **s.loop(),
            progress=progress,
            desc=f"MEI {net.display_name(layer)}:{unit}",
            callbacks=callbacks,
        )
    opt = stop.opt or opt
    with torch.no_grad():
        acts = values(opt.images)
    res = _mei_result(prob, opt, acts, s.spec(), **starts_spec(redraws, redirected), **stop.spec)
    if not res.mei_activation > 0:
        res.spec["dead_unit"] = dead_unit_message(net, layer, unit)
        warnings.warn(res.spec["dead_unit"], RuntimeWarning, stacklevel=3)
    return stop.finish(res)


def diverse(
    model: Network | nn.Module | str,
    layer: str,
    unit: int | None = None,
    *,
    direction: Sequence[float] | torch.Tensor | None = None,
    metric: str = "max",
    n_images: int = DiverseSettings.n_images,
    diversity: float = DiverseSettings.diversity,
    distance_layer: str | None = DiverseSettings.distance_layer,
    distance: str = DiverseSettings.distance,
    tau: float = DiverseSettings.tau,
    contrast: float = DiverseSettings.contrast,
    norm: float | None = DiverseSettings.norm,
    precondition: bool = DiverseSettings.precondition,
    display_range: bool = DiverseSettings.display_range,
    lr: float = DiverseSettings.lr,
    max_iter: int = DiverseSettings.max_iter,
    patience: int = DiverseSettings.patience,
    ema: float = DiverseSettings.ema,
    stop: str = DiverseSettings.stop,
    plateau_window: int | None = DiverseSettings.plateau_window,
    plateau_rtol: float | None = DiverseSettings.plateau_rtol,
    plateau_rtol_diversity: float | None = DiverseSettings.plateau_rtol_diversity,
    precision: str = DiverseSettings.precision,
    seed: int = DiverseSettings.seed,
    device: str | torch.device | None = None,
    mei: bool | float | Result = True,
    mei_restarts: int = DiverseSettings.mei_restarts,
    images: str | Path | None = DiverseSettings.images,
    floor: float | None = DiverseSettings.floor,
    mean_floor: float | None = DiverseSettings.mean_floor,
    calibrate: bool = DiverseSettings.calibrate,
    progress: bool = False,
    callbacks: Iterable[Callback] = (),
    prior: Any = None,
    prior_weight: float = DiverseSettings.prior_weight,
    crop: str = DiverseSettings.crop,
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
    display_range : bool
        Keep every image (and the MEI) in ``[0, 1]`` while optimising: clipped after the norm step with
        a straight-through gradient, so the floor, the ratios and the diversity index hold for what the
        saved PNG shows (default off: the images may leave ``[0, 1]`` and a PNG then clips them).
    lr, max_iter : float, int
        Adam learning rate and the most iterations (reference: 1.0, 1000).
    stop : {"plateau", "ema"}
        Early stopping. ``"plateau"`` (default) ends the run once the set's mean and min activation
        (relative to the MEI) and its diversity have each drifted by at most ``plateau_rtol`` /
        ``plateau_rtol_diversity`` (relative) between the two halves of the last ``plateau_window``
        iterations, in floor mode only after some iterate met the floor; ``None`` takes the mode's
        default (:data:`~diversevis.methods.settings.PLATEAU`: 50, 0.0015, 0.02 in lambda mode; 200,
        0.005, 0.005 in floor mode). The MEI stops the same way on its restarts' activations.
        ``"ema"`` is the reference code's rule: ``patience`` iterations without a new minimum of the
        loss's EMA (coefficient ``ema``; reference 100, 0.9). Recorded in the run spec.
    patience, ema : int, float
        The ``"ema"`` rule's settings.
    plateau_window, plateau_rtol, plateau_rtol_diversity : int, float, float, optional
        The ``"plateau"`` rule's settings (``plateau_window=0`` disables early stopping).
    precision : {"fp32", "tf32", "bf16"}
        Precision of the network's forward pass (:mod:`diversevis.core.precision`): ``tf32`` is for
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
    floor : float, optional
        Floor mode (:mod:`diversevis.methods.floor`): maximise the diversity term subject to every
        image reaching ``floor`` times the MEI's activation at the same contrast (e.g. 0.85); lambda
        (``diversity``) is then unused. Needs the MEI. ``spec["floor_holds"]`` says whether the
        returned set meets the floor (within 0.005); when it does not, a warning says why.
    mean_floor : float, optional
        In floor mode, also hold the set's mean activation at ``mean_floor`` times the MEI (e.g. 0.9).
    calibrate : bool
        Report the calibrated diversity index (``spec["diversity_index"]``: ``di``, ``di_min`` in
        pixels, ``di_feature``, ``di_feature_min`` in the distance layer; 0 = a simple cell, 1 = an
        energy-model complex cell under the same settings; :mod:`diversevis.methods.diversity_index`).
        The reference cells are optimised once per setting and cached (needs the MEI).
    progress : bool
        Show progress bars.
    callbacks : iterable of callables
        Called with a :class:`~diversevis.core.optimize.StepInfo` during the optimisation; ``True`` stops.
    prior : PixelCNNPrior or str, optional
        Natural-image prior (:mod:`diversevis.images.prior`): a model, a preset name or a ``.pt`` path; used
        when ``prior_weight > 0`` (default: the ``"default"`` preset, trained once and cached, about
        5 minutes on a CPU the first time).
    prior_weight : float
        Weight ``beta`` of the prior's negative log-likelihood (nats summed over the set's pixels, as
        the reference code; the notebook used 1e-4). 0 disables the prior.
    crop : {"nominal", "effective"}
        Image size: the unit's nominal receptive field (or, for a readout / logit, the whole input), or
        its effective field, the box holding 95 % of the gradient energy at the MEI (needs the MEI
        image), in a grey canvas; ``spec["window"]`` gives the box's top-left corner.

    Returns
    -------
    Result
        ``images`` ``(N, C, rf, rf)``, ``activations`` ``(N,)``, ``ratios``, ``distances``,
        ``min_distance``, ``loss_history`` and the run ``spec``.
    """
    settings = DiverseSettings.from_arguments(locals())
    net = _prepare(model, device)
    return run_diverse(
        net,
        layer,
        unit,
        direction,
        metric,
        settings,
        mei=mei,
        prior=prior,
        progress=progress,
        callbacks=callbacks,
    )


def run_diverse(
    net: Network,
    layer: str,
    unit: int | None,
    direction: Sequence[float] | torch.Tensor | None,
    metric: str,
    s: DiverseSettings,
    *,
    mei: bool | float | Result = True,
    prior: Any = None,
    progress: bool = False,
    callbacks: Iterable[Callback] = (),
) -> Result:
    """:func:`diverse` on a prepared network with validated settings."""
    prior_model = _resolve_prior(prior, net.device) if s.prior_weight > 0 else None
    prob = Problem.build(
        net,
        layer,
        unit,
        direction,
        metric,
        contrast=s.contrast,
        norm=s.norm,
        distance_layer=s.distance_layer,
        images_folder=s.images,
    )
    prob.check_distance(s.distance)
    mei_res, mei_act = resolve_mei(
        mei,
        lambda: run_mei(net, layer, unit, direction, metric, s.mei_settings(prob.norm), progress=progress),
    )
    if s.crop == "effective":
        prob = effective_problem(prob, mei_res)
    param = PixelImage(
        s.n_images,
        net.in_channels,
        prob.placement.image_size,
        prob.norm,
        precondition=s.precondition,
        generator=torch.Generator().manual_seed(s.seed),
        device=net.device,
        clip=s.display_range,
    )
    floor = floor_constraint(s, [mei_act], net.device)
    loss_fn = _diverse_loss(prob, s, prior_model, floor, mei_act)
    label = f"diverse {net.display_name(layer)}:{unit if unit is not None else 'dir'}"
    values = lambda x: prob.evaluate(x, need_features=False)[0]  # noqa: E731
    context, redraws, redirected = alive_starts(param, values, s.seed, s.n_images, net.module)
    with context, PartialRun() as stop:
        opt = optimize(
            param,
            loss_fn,
            **s.loop(),
            progress=progress,
            desc=label,
            callbacks=callbacks,
        )
    opt = stop.opt or opt
    found = None
    if floor is not None:  # the most diverse set with every image at the floor (or the last one)
        images, found = floor.images(0)
        opt = dataclasses.replace(opt, images=images)
    with torch.no_grad():
        acts, feats = prob.evaluate(opt.images)
    spec = {**s.spec(mei_computed=mei is True), **starts_spec(redraws, redirected), **dead_images(acts)}
    spec.update(stop.spec)
    if floor is not None:
        spec.update(floor_spec(s, acts, mei_act, found, layer, unit, floor.why_not_found(0)))
    ratios = acts / mei_act if mei_act is not None and mei_act > 0 else None
    spec.update(index_spec(prob, s, opt.images, feats, ratios, progress=progress))
    if mei_res is not None and mei_res.spec.get("dead_unit"):
        spec["dead_unit"] = mei_res.spec["dead_unit"]
    if prior_model is not None:
        spec.update(_prior_spec(prior, prior_model, opt.images, s.prior_weight))
    return stop.finish(_diverse_result(prob, opt, acts, feats, mei_res, mei_act, spec))


def _diverse_loss(
    prob: Problem,
    s: DiverseSettings,
    prior_model,
    floor: FloorConstraint | None = None,
    mei_act: float | None = None,
) -> Callable[[torch.Tensor], Watched]:
    """``-(mean activation + lambda * diversity + beta * prior log-likelihood)`` of a set of images;
    in floor mode ``-diversity / D_0`` plus the floor's augmented-Lagrangian penalty instead. The loop
    watches the activations relative to the MEI (``mei_act``) and the diversity (:class:`SetWatch`)."""
    group = torch.zeros(1, dtype=torch.long, device=prob.net.device)
    watch = SetWatch([mei_act], prob.net.device)

    def loss_fn(x: torch.Tensor) -> Watched:
        p, f = prob.evaluate(x, need_features=s.diversity > 0 or floor is not None)
        d = diversity_value(f, s.distance, s.tau).view(1) if f is not None else None
        if floor is not None:
            w = floor.watched(x, p.view(1, -1), d, group)
        else:
            loss = -p.mean() - s.diversity * d[0] if s.diversity > 0 else -p.mean()
            w = watch(loss.view(1), p.view(1, -1), d if s.diversity > 0 else None, group)
        if prior_model is not None:
            w = w._replace(loss=w.loss - s.prior_weight * prior_model.log_prob(x.clamp(0, 1)).sum())
        return w

    return loss_fn


def _prior_spec(prior: Any, prior_model, images: torch.Tensor, weight: float) -> dict[str, Any]:
    """The run-spec entries of a prior term: which prior, its weight and the set's bits per dimension."""
    with torch.no_grad():
        nll = prior_model.nll(images.clamp(0, 1))
    return dict(
        prior=str(prior) if isinstance(prior, (str, Path)) else ("default" if prior is None else "model"),
        prior_weight=weight,
        prior_val_bits_per_dim=prior_model.metrics.get("val_bpd"),
        prior_nll_bits_per_dim=[round(float(v), 4) for v in nll],
    )
