"""Many units of one layer at once: :func:`mei_units` and :func:`diverse_units`.

Every unit's images form a group of one batched optimisation (:func:`diversevis.core.optimize.
optimize_groups`) with its own loss terms and early stopping, starting from the same images as the
one-unit run with the same seed, so a sweep is a few large batched runs with the results of the
one-unit path (bit for bit on CPU).

What the loop's plateau rule watches (:class:`SetWatch`): for an MEI run each group's mean and best
restart activation; for a diverse set its mean and min activation relative to the unit's MEI (raw
when there is none) and its diversity relative to the group's first step (0 without a diversity
term; floor mode: :meth:`~diversevis.methods.floor.FloorConstraint.watched`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.objectives import diversity_value
from diversevis.core.optimize import OptimizeResult, Watched, optimize_groups
from diversevis.core.params import PixelImage
from diversevis.core.result import Result
from diversevis.methods.dead_starts import alive_starts, dead_images, starts_spec
from diversevis.methods.diversity_index import index_spec
from diversevis.methods.floor import floor_constraint, floor_spec
from diversevis.methods.problem import (
    Problem,
    _check_units,
    _diverse_result,
    _mei_result,
    _prepare,
    _seeded_images,
    mei_value,
    resolve_mei,
)
from diversevis.methods.settings import DiverseSettings, MEISettings

__all__ = ["mei_units", "diverse_units", "SetWatch"]


class SetWatch:
    """The values a lambda-mode set (or an MEI run) reports to the loop's plateau rule.

    Parameters
    ----------
    scale : sequence of float or None
        Per group, the unit's MEI activation the activations are divided by (``None`` or ``<= 0``:
        1, the raw activation).
    device : torch.device
        Where the groups' tensors live.
    """

    def __init__(self, scale: Sequence[float | None], device: torch.device) -> None:
        self.scale = torch.tensor(
            [float(m) if m is not None and float(m) > 0 else 1.0 for m in scale], device=device
        )
        self.d0 = torch.full((len(scale),), float("nan"), device=device)

    @torch.no_grad()
    def values(self, a: torch.Tensor, d: torch.Tensor | None, groups: torch.Tensor) -> torch.Tensor:
        """``(B, 3)``: mean and min of ``a / scale`` ``(B, N)``, and ``d / d_0`` (0 without ``d``)."""
        r = a.detach() / self.scale[groups, None]
        if d is None:
            return torch.stack([r.mean(1), r.min(1).values, torch.zeros_like(r[:, 0])], 1)
        d = d.detach()
        fresh = torch.isnan(self.d0[groups])
        self.d0[groups] = torch.where(fresh, d.abs().clamp_min(1e-12), self.d0[groups])
        return torch.stack([r.mean(1), r.min(1).values, d / self.d0[groups]], 1)

    def __call__(self, loss: torch.Tensor, a: torch.Tensor, d: torch.Tensor | None, groups) -> Watched:
        """``loss`` with the values of activations ``a`` ``(B, N)`` and diversities ``d`` ``(B,)``."""
        return Watched(loss, self.values(a, d, groups))


def mei_watch(loss: torch.Tensor, a: torch.Tensor) -> Watched:
    """An MEI run's ``loss`` with each group's mean and best activation over its restarts ``a`` ``(B, R)``."""
    a = a.detach()
    return Watched(loss, torch.stack([a.mean(1), a.max(1).values], 1))


def mei_units(
    model: Network | nn.Module | str,
    layer: str,
    units: Sequence[int],
    *,
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
) -> list[Result]:
    """:func:`~diversevis.mei` of many units of one layer, optimised together in one batch.

    Each unit's restarts form a group with its own early stopping and the same initial images as
    ``mei(model, layer, unit, seed=seed)``, so the results match the one-unit path.

    Returns
    -------
    list of Result
        One per unit, in the order given.
    """
    settings = MEISettings.from_arguments(locals())
    return run_mei_units(_prepare(model, device), layer, units, settings, progress=progress)


def run_mei_units(
    net: Network, layer: str, units: Sequence[int], s: MEISettings, *, progress: bool = False
) -> list[Result]:
    """:func:`mei_units` on a prepared network with validated settings."""
    units = _check_units(net, layer, units)
    prob = _unit_problem(net, layer, units[0], s.contrast, s.norm, None, s.images)
    R = s.restarts

    def loss_fn(x: torch.Tensor, groups: torch.Tensor, unit_t: torch.Tensor) -> torch.Tensor:
        a, _ = prob.read(x, need_features=False)
        uidx = unit_t[groups].repeat_interleave(R)
        a = a[torch.arange(len(x), device=x.device), uidx].view(-1, R)
        return mei_watch(-a.mean(1), a)

    runs, starts = _optimize_units(prob, units, R, s, loss_fn, f"MEI {net.display_name(layer)}", progress)
    out = []
    for u, opt, st in zip(units, runs, starts):
        with torch.no_grad():
            a, _ = prob.read(opt.images, need_features=False)
        out.append(_mei_result(prob, opt, a[:, u], s.spec(), unit=u, batched_units=len(units), **st))
    return out


def diverse_units(
    model: Network | nn.Module | str,
    layer: str,
    units: Sequence[int],
    *,
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
    mei: bool | Sequence[Result] | Sequence[float] = True,
    mei_restarts: int = DiverseSettings.mei_restarts,
    images: str | Path | None = DiverseSettings.images,
    floor: float | None = DiverseSettings.floor,
    mean_floor: float | None = DiverseSettings.mean_floor,
    calibrate: bool = DiverseSettings.calibrate,
    progress: bool = False,
) -> list[Result]:
    """:func:`~diversevis.diverse` for many units of one layer, optimised together in one batch.

    Every unit's ``n_images`` images form a group with its own diversity term and early stopping, and
    start from the same images as ``diverse(model, layer, unit, seed=seed)``: a sweep is a few large
    batched runs instead of a Python loop of small ones, with the same results as the one-unit path.
    Parameters are those of :func:`~diversevis.diverse` (:class:`~diversevis.methods.settings.
    DiverseSettings`); ``mei`` is ``True`` (computed with :func:`mei_units`), ``False``, or one MEI
    :class:`Result` or activation per unit.

    Returns
    -------
    list of Result
        One per unit, in the order given.
    """
    settings = DiverseSettings.from_arguments(locals())
    return run_diverse_units(_prepare(model, device), layer, units, settings, mei=mei, progress=progress)


def run_diverse_units(
    net: Network,
    layer: str,
    units: Sequence[int],
    s: DiverseSettings,
    *,
    mei: bool | Sequence[Result] | Sequence[float] = True,
    progress: bool = False,
) -> list[Result]:
    """:func:`diverse_units` on a prepared network with validated settings."""
    if s.crop != "nominal":
        raise DiversevisError("crop='effective' is sized per unit: run diverse() for each unit")
    units = _check_units(net, layer, units)
    prob = _unit_problem(net, layer, units[0], s.contrast, s.norm, s.distance_layer, s.images)
    prob.check_distance(s.distance)
    meis = _unit_meis(net, layer, units, s, prob.norm, mei, progress)
    mei_acts = [resolve_mei(m, lambda: None)[1] for m in meis]
    floor = floor_constraint(s, mei_acts, net.device)
    N = s.n_images
    need_features = s.diversity > 0 or floor is not None
    watch = SetWatch(mei_acts, net.device)

    def loss_fn(x: torch.Tensor, groups: torch.Tensor, unit_t: torch.Tensor) -> Watched:
        a, f = prob.read(x, need_features=need_features)
        uidx = unit_t[groups].repeat_interleave(N)
        a = a[torch.arange(len(x), device=x.device), uidx].view(-1, N)
        d = diversity_value(f.reshape(-1, N, *f.shape[1:]), s.distance, s.tau) if need_features else None
        if floor is not None:
            return floor.watched(x, a, d, groups)
        return watch(-a.mean(1) - s.diversity * d if s.diversity > 0 else -a.mean(1), a, d, groups)

    runs, starts = _optimize_units(prob, units, N, s, loss_fn, f"diverse {net.display_name(layer)}", progress)
    spec = s.spec(mei_computed=mei is True)
    out = []
    for g, (u, opt, m, st) in enumerate(zip(units, runs, meis, starts)):
        mei_res, mei_act = resolve_mei(m, lambda: None)
        found = None
        if floor is not None:
            images, found = floor.images(g)
            opt = dataclasses.replace(opt, images=images)
        with torch.no_grad():
            a, feats = prob.read(opt.images)
        extra = {**st, **dead_images(a[:, u]), "unit": u, "batched_units": len(units)}
        if floor is not None:
            extra.update(floor_spec(s, a[:, u], mei_act, found, layer, u, floor.why_not_found(g)))
        ratios = a[:, u] / mei_act if mei_act is not None and mei_act > 0 else None
        extra.update(index_spec(prob, s, opt.images, feats, ratios, progress=progress))
        out.append(_diverse_result(prob, opt, a[:, u], feats, mei_res, mei_act, spec, **extra))
    return out


def _unit_problem(
    net: Network,
    layer: str,
    unit: int,
    contrast: float,
    norm: float | None,
    distance_layer: str | None,
    images: str | Path | None,
) -> Problem:
    """The geometry shared by all units of ``layer`` (built for the first unit, read for each)."""
    return Problem.build(
        net,
        layer,
        unit,
        None,
        "max",
        contrast=contrast,
        norm=norm,
        distance_layer=distance_layer,
        images_folder=images,
    )


def _unit_meis(
    net: Network,
    layer: str,
    units: list[int],
    s: DiverseSettings,
    norm: float,
    mei: bool | Sequence[Result] | Sequence[float],
    progress: bool,
) -> list:
    """One MEI (a Result, an activation or ``None``) per unit: computed, skipped, or given."""
    if mei is True:
        return run_mei_units(net, layer, units, s.mei_settings(norm), progress=progress)
    if mei is False or mei is None:
        return [None] * len(units)
    meis = list(mei)
    if len(meis) != len(units):
        raise DiversevisError(f"give one MEI per unit ({len(units)}), got {len(meis)}")
    return [m if isinstance(m, Result) or m is None else mei_value(m) for m in meis]


def _optimize_units(
    prob: Problem,
    units: list[int],
    n: int,
    s: MEISettings | DiverseSettings,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Watched],
    desc: str,
    progress: bool,
) -> tuple[list[OptimizeResult], list[dict]]:
    """Optimise ``n`` images per unit, one group per unit, from the one-unit run's seeded start.

    Returns the runs and, per unit, the run-spec entries of the dead-start handling (:func:`starts_spec`).
    """
    net, G, size = prob.net, len(units), prob.placement.image_size
    param = PixelImage(
        G * n, net.in_channels, size, prob.norm, precondition=s.precondition, device=net.device,
        clip=s.display_range,
    )  # fmt: skip
    with torch.no_grad():
        param.raw.copy_(_seeded_images(G, n, net.in_channels, size, s.seed))
    unit_t = torch.tensor(units, device=net.device)
    per_image = unit_t.repeat_interleave(n)

    def values(x: torch.Tensor) -> torch.Tensor:
        return prob.read(x, need_features=False)[0][torch.arange(len(x), device=x.device), per_image]

    context, redraws, redirected = alive_starts(param, values, s.seed, n, net.module)
    with context:
        runs = optimize_groups(
            param,
            lambda x, groups: loss_fn(x, groups, unit_t),
            groups=G,
            **s.loop(),
            progress=progress,
            desc=f"{desc} x{G}",
            compact=True,
        )
    return runs, [starts_spec(r, redirected) for r in redraws.view(G, n)]
