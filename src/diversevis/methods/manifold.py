"""Invariance manifolds (Baroni et al. 2023; LAMINR, Bashiri, Baroni et al. 2025): everything that drives a unit.

A diverse set holds ``N`` samples of a unit's invariance set; a manifold learns the set itself. An
implicit generator (:class:`~diversevis.core.cppn.ImplicitGenerator`: pixel coordinates + a periodic
latent ``z`` in ``[0, 1)^dim`` -> image at the unit's contrast) is trained so that

* every latent drives the unit: ``a(z) >= floor * a_MEI`` for each latent of a grid and the grid's
  mean ``>= mean_floor * a_MEI``, held by the augmented Lagrangian of floor-mode DFV
  (:class:`~diversevis.methods.floor.FloorConstraint`, one multiplier per grid latent);
* the images spread out along the latent: a SimCLR/InfoNCE term over the grid (cosine similarity of
  the images' features, in pixels or a lower ``feature_layer``, at ``temperature``), whose positives are
  each latent's grid neighbours (periodic) and whose negatives are all the other latents, so that
  nearby latents give similar images and distant latents different ones.

Each step moves the whole grid by one random offset (within a grid cell), so the generator is trained
on the continuum between grid points, not on the grid alone. The loop is the shared one
(:func:`~diversevis.core.optimize.optimize`, the generator is its parametrisation); the returned
generator is the one with the lowest spread loss among the steps at which every latent met the floor
(or the last one, reported as failing: never silently).

Written from the papers' descriptions (the reference code is CC BY-NC and was not used).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diversevis.core.cppn import ImplicitGenerator, latent_grid
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.optimize import PartialRun, StepInfo, Watched, optimize
from diversevis.core.result import Result
from diversevis.methods.dfv import run_mei
from diversevis.methods.floor import FloorConstraint, floor_report
from diversevis.methods.manifold_result import ManifoldResult
from diversevis.methods.manifold_settings import ManifoldSettings
from diversevis.methods.problem import Problem, _prepare, resolve_mei
from diversevis.methods.settings import DiverseSettings, MEISettings

__all__ = ["manifold", "run_manifold", "grid_neighbours", "contrastive_spread", "ManifoldSettings"]

Callback = Callable[[StepInfo], bool | None]


def manifold(
    model: Network | nn.Module | str,
    layer: str,
    unit: int,
    *,
    dim: int = 1,
    floor: float = ManifoldSettings.floor,
    mean_floor: float | None = ManifoldSettings.mean_floor,
    per_dim: int | None = None,
    feature_layer: str | None = None,
    temperature: float = ManifoldSettings.temperature,
    jitter: bool = True,
    warmup: int = ManifoldSettings.warmup,
    contrast: float = ManifoldSettings.contrast,
    norm: float | None = None,
    images: str | Path | None = None,
    hidden: int = ManifoldSettings.hidden,
    depth: int = ManifoldSettings.depth,
    w0: float = ManifoldSettings.w0,
    harmonics: int = ManifoldSettings.harmonics,
    lr: float = ManifoldSettings.lr,
    max_iter: int = ManifoldSettings.max_iter,
    stop: str = ManifoldSettings.stop,
    plateau_window: int = ManifoldSettings.plateau_window,
    plateau_rtol: float = ManifoldSettings.plateau_rtol,
    plateau_rtol_spread: float = ManifoldSettings.plateau_rtol_spread,
    plateau_atol: float = ManifoldSettings.plateau_atol,
    patience: int = ManifoldSettings.patience,
    ema: float = ManifoldSettings.ema,
    precision: str = ManifoldSettings.precision,
    seed: int = 0,
    device: str | torch.device | None = None,
    mei: bool | float | Result = True,
    mei_restarts: int = ManifoldSettings.mei_restarts,
    calibrate: bool = True,
    progress: bool = False,
    callbacks: Iterable[Callback] = (),
) -> ManifoldResult:
    """The invariance manifold of one unit: a generator whose every latent drives the unit.

    Parameters
    ----------
    model : Network, nn.Module or str
        The network (a zoo name is loaded); left unchanged.
    layer : str
        Target layer (alias or dot path), read before any following ReLU.
    unit : int
        Channel index of the unit.
    dim : {1, 2}
        Latent dimension: a loop (1) or a torus (2).
    floor : float
        Every grid latent's activation must be ``>= floor * a_MEI`` (in (0, 1]; LAMINR: 0.85).
    mean_floor : float, optional
        The grid's mean activation must be ``>= mean_floor * a_MEI`` (LAMINR: 0.9); ``None``: no mean floor.
    per_dim : int, optional
        Grid latents per latent dimension (``>= 3``; default 16 for ``dim=1``, 8 for ``dim=2``), so
        ``P = per_dim ** dim`` latents.
    feature_layer : str, optional
        Layer whose rectified features measure similarity in the spread term (as DFV's
        ``distance_layer``); ``None``: pixels.
    temperature : float
        Temperature of the contrastive term (LAMINR: 0.3).
    jitter : bool
        Move the grid by a random offset within one grid cell at every step.
    warmup : int
        Steps of a soft start before the floors are imposed: the spread term against the grid's mean
        activation ratio, with no floor. Why: a loop of images that drives an energy unit winds
        around the origin of its quadrature plane, and once every latent is held above a floor the
        winding number cannot change (it would have to pass through zero response); the soft start
        lets the loop settle into the phase circle rather than a folded arc.
    contrast, norm, images
        The images' L2 norm: ``contrast`` x the mean natural-patch norm (from ``images``, default the
        bundled photos), or ``norm`` in display units; as :func:`diversevis.diverse`.
    hidden, depth, w0, harmonics
        The generator's width, sine layers, first-layer frequency and latent harmonics
        (:class:`~diversevis.core.cppn.ImplicitGenerator`).
    lr, max_iter : float, int
        Adam's learning rate and the most steps.
    stop, plateau_window, plateau_rtol, plateau_rtol_spread, plateau_atol, patience, ema
        Early stopping (:func:`~diversevis.core.optimize.optimize`): ``"plateau"`` watches the grid's
        mean and min ratio to the MEI and the spread term relative to its start, and stops only after
        a step at which the floor held; ``"ema"`` the reference rule.
    precision : {"fp32", "tf32", "bf16"}
        The network's forward pass.
    seed : int
        Seed of the generator's weights, the grid's jitter and the MEI.
    device : str, optional
        Move the network there.
    mei : bool, float or Result
        ``True`` computes the MEI (``mei_restarts`` starts); a float or a :class:`Result` supplies it.
    calibrate : bool
        Report the grid's calibrated diversity index (pixels; :mod:`diversevis.methods.diversity_index`).
    progress : bool
        Progress bars.
    callbacks : iterable of callables
        Called with a :class:`~diversevis.core.optimize.StepInfo` (the grid's images); ``True`` stops.

    Returns
    -------
    ManifoldResult
        The generator, the grid latents ``(P, dim)``, images ``(P, C, H, W)``, activations, ratios,
        whether the floor holds, the DI and the run spec; ``.save(dir)`` writes the files.
    """
    settings = ManifoldSettings.from_arguments(locals())
    net = _prepare(model, device)
    return run_manifold(net, layer, unit, settings, mei=mei, progress=progress, callbacks=callbacks)


def run_manifold(
    net: Network,
    layer: str,
    unit: int,
    s: ManifoldSettings,
    *,
    mei: bool | float | Result = True,
    progress: bool = False,
    callbacks: Iterable[Callback] = (),
) -> ManifoldResult:
    """:func:`manifold` on a prepared network with validated settings."""
    t0 = time.perf_counter()
    prob = Problem.build(net, layer, unit, None, "max", contrast=s.contrast, norm=s.norm,
                         distance_layer=s.feature_layer, images_folder=s.images)  # fmt: skip
    mei_settings = MEISettings(contrast=s.contrast, norm=prob.norm, images=s.images, seed=s.seed,
                               restarts=s.mei_restarts, precision=s.precision)  # fmt: skip
    mei_res, mei_act = resolve_mei(
        mei, lambda: run_mei(net, layer, unit, None, "max", mei_settings, progress=progress)
    )
    if mei_act is None:
        raise DiversevisError("a manifold holds every latent at a fraction of the MEI's activation: give mei=True, "
                              "an MEI Result or its activation")  # fmt: skip
    if not float(mei_act) > 0:
        raise DiversevisError(
            f"{net.display_name(layer)} unit {unit}: the MEI's activation is {float(mei_act):.4g} <= 0, so no image "
            "drives the unit and there is no floor to hold; choose another unit (or a pre-activation layer)"
        )
    gen = ImplicitGenerator(net.in_channels, prob.placement.image_size, s.dim, prob.norm, hidden=s.hidden,
                            depth=s.depth, w0=s.w0, harmonics=s.harmonics, seed=s.seed).to(net.device)  # fmt: skip
    grid = latent_grid(s.dim, s.per_dim, device=net.device)
    fc = FloorConstraint(s.floor, torch.tensor([float(mei_act)], device=net.device), s.n_latents,
                         mean_floor=s.mean_floor)  # fmt: skip
    best = _BestState(gen)
    param = _JitteredGrid(gen, grid, s.per_dim, s.seed if s.jitter else None)
    loss_fn = _manifold_loss(prob, s, fc, best)
    with PartialRun() as stop:
        opt = optimize(param, loss_fn, **s.loop(), progress=progress, callbacks=callbacks,
                       desc=f"manifold {net.display_name(layer)}:{unit}")  # fmt: skip
    opt = stop.opt or opt
    res = _finish(prob, s, gen, grid, best, fc, float(mei_act), opt, progress)
    res.mei_image = None if mei_res is None else mei_res.mei_image
    res.spec.update(stop.spec)
    if mei_res is not None:
        res.spec.update(mei_seconds=mei_res.spec.get("seconds"), mei_n_iter=mei_res.spec.get("n_iter"))
    res.seconds = res.spec["seconds_total"] = round(time.perf_counter() - t0, 3)
    return stop.finish(res)


class _JitteredGrid(nn.Module):
    """The loop's parametrisation: the generator rendering the grid moved by a fresh random offset.

    ``forward()`` returns ``(P, C, H, W)``; the offset (uniform in one grid cell, the same for every
    latent, so that grid neighbours stay neighbours) comes from a generator seeded with ``seed``
    (``None``: no jitter).
    """

    def __init__(self, gen: ImplicitGenerator, grid: torch.Tensor, per_dim: int, seed: int | None) -> None:
        super().__init__()
        self.gen, self.grid, self.per_dim = gen, grid, per_dim
        self.rng = None if seed is None else torch.Generator().manual_seed(int(seed) + 1)

    def forward(self) -> torch.Tensor:
        z = self.grid
        if self.rng is not None:
            shift = torch.rand(z.shape[1], generator=self.rng).to(z.device) / self.per_dim
            z = (z + shift) % 1.0
        return self.gen.render(z)


class _BestState:
    """The generator's weights at the best feasible step, kept on the device without host syncs."""

    def __init__(self, gen: ImplicitGenerator) -> None:
        self.gen = gen
        self.params = [p for p in gen.parameters()]
        self.saved = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def keep_if(self, better: torch.Tensor) -> None:
        """Copy the current weights where the 0-d bool ``better`` is true."""
        for s, p in zip(self.saved, self.params):
            s.copy_(torch.where(better, p.detach(), s))

    @torch.no_grad()
    def load(self) -> None:
        for s, p in zip(self.saved, self.params):
            p.copy_(s)


def grid_neighbours(dim: int, per_dim: int, device=None) -> torch.Tensor:
    """``(P, P)`` bool: the periodic grid neighbours (+-1 along each latent axis) of each latent.

    The grid is :func:`~diversevis.core.cppn.latent_grid`'s (row-major, last axis fastest); ``per_dim >= 3``.
    """
    idx = torch.arange(per_dim**dim, device=device)
    coords = torch.stack([(idx // per_dim ** (dim - 1 - k)) % per_dim for k in range(dim)], 1)  # (P, dim)
    diff = (coords[:, None, :] - coords[None, :, :]) % per_dim
    step = torch.minimum(diff, per_dim - diff)  # periodic distance per axis
    return step.sum(2) == 1


def contrastive_spread(feats: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR/InfoNCE loss of a latent grid: neighbours similar, all other latents dissimilar.

    Parameters
    ----------
    feats : torch.Tensor
        ``(P, ...)`` features of the grid's images (flattened; compared by cosine similarity).
    positives : torch.Tensor
        ``(P, P)`` bool, each latent's positives (its grid neighbours; never itself).
    temperature : float
        Softmax temperature.

    Returns
    -------
    torch.Tensor
        Scalar: ``-mean_i mean_{j in pos(i)} log softmax_{k != i}(cos(f_i, f_k) / T)_j``.
    """
    f = F.normalize(feats.flatten(1).float(), dim=1, eps=1e-12)
    logits = f @ f.T / temperature
    eye = torch.eye(len(f), dtype=torch.bool, device=f.device)
    logits = logits.masked_fill(eye, float("-inf"))
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = positives.to(logp.dtype)
    return -((logp.masked_fill(eye, 0.0) * pos).sum(1) / pos.sum(1)).mean()


def _manifold_loss(
    prob: Problem, s: ManifoldSettings, fc: FloorConstraint, best: _BestState
) -> Callable[[torch.Tensor], Watched]:
    """The loop's loss: for the first ``s.warmup`` steps the spread term (relative to its start)
    minus the grid's mean ratio to the MEI, with no floor and no stopping; then the floors' augmented
    Lagrangian with ``-spread`` as the term maximised (:class:`FloorConstraint`, one multiplier per grid
    latent). Keeps the generator's weights at the best feasible step (lowest spread loss)."""
    positives = grid_neighbours(s.dim, s.per_dim, prob.net.device)
    group = torch.zeros(1, dtype=torch.long, device=prob.net.device)

    step, start = [0], [None]
    mei = fc.mei[0]

    def loss_fn(x: torch.Tensor) -> Watched:
        a, f = prob.evaluate(x)
        spread = contrastive_spread(f, positives, s.temperature)
        if step[0] < s.warmup:  # soft: the spread against the mean activation, no floor yet
            step[0] += 1
            start[0] = spread.detach().abs().clamp_min(1e-12) if start[0] is None else start[0]
            r = a / mei
            loss = spread / start[0] - r.mean()
            values = torch.stack([r.mean(), r.min(), -spread.detach() / start[0]]).view(1, 3)
            return Watched(loss.view(1), values, torch.zeros(1, dtype=torch.bool, device=x.device))
        before = fc.best_d[0].clone()
        w = fc.watched(x, a.view(1, -1), -spread.view(1), group)
        best.keep_if(fc.best_d[0] != before)
        return w

    return loss_fn


@torch.no_grad()
def _grid_values(
    prob: Problem, gen: ImplicitGenerator, grid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid's images ``(P, C, H, W)`` and activations ``(P,)`` (fp32)."""
    x = gen.render(grid)
    return x, prob.evaluate(x, need_features=False)[0]


def _finish(
    prob: Problem, s: ManifoldSettings, gen: ImplicitGenerator, grid: torch.Tensor, best: _BestState,
    fc: FloorConstraint, mei_act: float, opt, progress: bool,
) -> ManifoldResult:  # fmt: skip
    """Pick the returned generator (best feasible step, unless only the last one holds the floor on
    the exact grid), measure the grid, and build the result with its spec and DI."""
    found = bool(torch.isfinite(fc.best_d[0]))
    last = [p.detach().clone() for p in best.params]
    x, a = _grid_values(prob, gen, grid)
    if found:
        best.load()
        xb, ab = _grid_values(prob, gen, grid)
        if _holds(ab / mei_act, s) or not _holds(a / mei_act, s):
            x, a = xb, ab
        else:  # the last weights hold the floor on the exact grid, the best feasible step's do not
            with torch.no_grad():
                for p, v in zip(best.params, last):
                    p.copy_(v)
    ratios = a / mei_act
    report = floor_report(ratios.cpu(), s.floor, s.mean_floor, found=found)
    if not report["floor_holds"]:
        unit = prob.target.unit
        warnings.warn(f"{prob.net.display_name(prob.target.layer)} unit {unit}: manifold {report['floor_failure']}",
                      RuntimeWarning, stacklevel=4)  # fmt: skip
    spec = prob.run_spec("manifold", opt=opt, **s.spec())
    spec.update(report, mei_activation=mei_act, spread_loss=_spread_of(prob, s, x))
    di = _index(prob, s, x, ratios, progress)
    spec.update(di)
    index = di.get("diversity_index") or {}
    return ManifoldResult(
        generator=gen.cpu().eval(), latents=grid.cpu(), images=x.cpu(), activations=a.cpu(),
        ratios=ratios.cpu(), mei_activation=mei_act, floor=s.floor, mean_floor=s.mean_floor,
        floor_holds=bool(report["floor_holds"]), di=index.get("di"), spec=spec, dim=s.dim,
        per_dim=int(s.per_dim), loss_history=opt.history, seconds=float(opt.seconds),
    )  # fmt: skip


def _holds(ratios: torch.Tensor, s: ManifoldSettings) -> bool:
    return bool(floor_report(ratios.cpu(), s.floor, s.mean_floor, found=True)["floor_holds"])


@torch.no_grad()
def _spread_of(prob: Problem, s: ManifoldSettings, x: torch.Tensor) -> float:
    """The spread term (InfoNCE loss) of the exact grid's images."""
    f = prob.features(x)
    return float(contrastive_spread(f, grid_neighbours(s.dim, s.per_dim, x.device), s.temperature))


def _index(prob: Problem, s: ManifoldSettings, x: torch.Tensor, ratios: torch.Tensor, progress: bool) -> dict:
    """The grid's calibrated diversity index in pixels (reference cells with ``P`` images at the floor)."""
    from dataclasses import replace

    from diversevis.methods.diversity_index import index_spec

    if not s.calibrate:
        return {}
    pixel = replace(prob, distance_layer=None, distance_slice=None)
    ds = DiverseSettings(n_images=s.n_latents, floor=s.floor, mean_floor=s.mean_floor, contrast=s.contrast,
                         norm=s.norm, images=s.images, seed=s.seed, precision=s.precision)  # fmt: skip
    return index_spec(pixel, ds, x, None, ratios, progress=progress)
