"""The fast optimiser of the shift test: a few crops per step, every crop at each refresh.

The shift test's objective is a blend of the mean and the worst of ``n`` crop activations
(``-(1 - w) mean - w min``); the reference evaluates all ``n = (rf - 1)^2`` crops at every step. Here a
step sees ``k`` crops: the ``k // 2`` worst crops of the latest full evaluation (where the ``min`` lives)
and ``k - k // 2`` drawn uniformly without replacement from the others, whose sum, scaled by
``(n - k_worst) / k_random``, makes the mean an unbiased (stratified) estimate. Every ``refresh`` steps a
full forward pass over every crop (no gradient) gives the exact objective: the best texture is chosen
on it, the worst crops are refreshed from it, and the run stops once the exact mean and worst crop
ratios have plateaued (:mod:`diversevis.core.plateau`). The optimisation itself is the shared loop.

Cost per step on conv3_1 (529 crops of 24 px): ``k = 64`` with a refresh every 10 steps is about 1/9
of the reference's; the equivalence of the results is measured in ``benchmarks/shift_equivalence.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from diversevis.core.optimize import Interrupted, OptimizeResult, StepInfo, optimize
from diversevis.core.plateau import plateaued
from diversevis.core.precision import precision_context

__all__ = ["shift_objective", "CropSampler", "subset_optimize"]

#: Plateau rule on the full evaluations: the mean and worst crop ratios drift by at most this much (as a
#: fraction of the MEI's activation) from one half-window to the next.
PLATEAU_ATOL = 0.002


def shift_objective(values: torch.Tensor, weight_min: float) -> torch.Tensor:
    """``-(1 - w) mean(values) - w min(values)``: the shift test's loss over a set of crop activations."""
    return -(1 - weight_min) * values.mean() - weight_min * values.min()


class CropSampler:
    """Which crops a step sees, and the unbiased shift loss over them.

    A step sees the worst crops of the latest full evaluation (where the ``min`` lives) and a
    *lattice* of the others: every ``s``-th offset along each axis from a random phase ``(i0, j0)``, so
    the sample covers the texture evenly (low variance) and each crop is in it with probability
    ``1 / s^2``, which weights it ``s^2`` in the Horvitz-Thompson estimate of the mean (unbiased).
    ``s`` is the smallest step whose lattice has at most ``per_step - per_step // 2`` crops.

    Parameters
    ----------
    offsets : int
        Crop offsets per axis (``n = offsets^2`` crops, row-major).
    per_step : int
        Crops per step (about): ``per_step // 2`` worst plus one lattice; ``2 <= per_step < n``.
    weight_min : float
        The loss's weight on the worst crop.
    generator : torch.Generator
        Source of the lattice phases (seeded: a run is reproducible).
    """

    def __init__(self, offsets: int, per_step: int, weight_min: float, generator: torch.Generator) -> None:
        self.m, self.n = offsets, offsets * offsets
        if not 2 <= per_step < self.n:
            raise ValueError(f"per_step must be in [2, {self.n}), got {per_step}")
        self.weight_min, self.generator = weight_min, generator
        self.k_worst = per_step // 2
        self.step = lattice_step(offsets, per_step - self.k_worst)
        self.update(torch.zeros(self.n))  # until the first full evaluation: the first crops

    def update(self, values: torch.Tensor) -> None:
        """Take the worst crops from a full evaluation ``values`` ``(n,)``."""
        values = values.detach().float().cpu()
        self.worst = torch.topk(values, self.k_worst, largest=False).indices
        self.is_worst = torch.zeros(self.n, dtype=torch.bool)
        self.is_worst[self.worst] = True

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop indices (the worst crops first, then the lattice's others) and their weights in the mean."""
        s = self.step
        i0, j0 = torch.randint(0, s, (2,), generator=self.generator).tolist()
        lattice = (
            torch.arange(i0, self.m, s)[:, None] * self.m + torch.arange(j0, self.m, s)[None]
        ).flatten()
        lattice = lattice[~self.is_worst[lattice]]
        idx = torch.cat([self.worst, lattice])
        weights = torch.cat([torch.ones(self.k_worst), torch.full((len(lattice),), float(s * s))])
        return idx, weights

    def loss(self, values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The shift loss estimated from the activations of the crops :meth:`draw` gave."""
        mean = (weights.to(values) * values).sum() / self.n
        return -(1 - self.weight_min) * mean - self.weight_min * values.min()


def lattice_step(offsets: int, budget: int) -> int:
    """The smallest step ``s`` whose lattice (``ceil(offsets / s)^2`` crops) fits in ``budget``."""
    s = 1
    while math.ceil(offsets / s) ** 2 > max(budget, 1):
        s += 1
    return s


@dataclass
class _FullEvaluations:
    """The callback of :func:`subset_optimize`: full evaluations, the best texture, the plateau stop."""

    values: Callable[[torch.Tensor], torch.Tensor]
    sampler: CropSampler
    weight_min: float
    mei_activation: float
    refresh: int
    window: int
    max_iter: int
    precision: str
    best_loss: float = float("inf")
    best_images: torch.Tensor | None = None
    best_step: int = 0
    rows: list[torch.Tensor] = field(default_factory=list)
    plateau_step: int | None = None

    def adopt(self, opt: OptimizeResult) -> None:
        """Make ``opt``'s result the best fully evaluated texture (if there was a full evaluation)."""
        if self.best_images is not None:
            opt.images, opt.best_loss, opt.best_step = self.best_images, self.best_loss, self.best_step

    def __call__(self, info: StepInfo) -> bool:
        last = info.step == self.max_iter - 1
        if info.step % self.refresh and not last:
            return False
        with torch.no_grad(), precision_context(info.images.device, self.precision):
            v = self.values(info.images).float()
        loss = float(shift_objective(v, self.weight_min))
        if loss < self.best_loss:
            self.best_loss, self.best_images, self.best_step = loss, info.images.clone(), info.step
        self.sampler.update(v)
        self.rows.append(torch.stack([v.mean(), v.min()]).cpu() / self.mei_activation)
        if plateaued(torch.stack(self.rows)[:, None], self.window, atol=PLATEAU_ATOL).item():
            self.plateau_step = info.step
            return True
        return False


def subset_optimize(
    param: nn.Module,
    crop_values: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    n_crops: int,
    *,
    per_step: int,
    refresh: int,
    weight_min: float,
    mei_activation: float,
    seed: int,
    loop: dict[str, Any],
    progress: bool = False,
    desc: str = "shift",
    callbacks: Iterable[Callable[[StepInfo], bool | None]] = (),
) -> tuple[OptimizeResult, dict[str, Any]]:
    """Optimise the texture on ``per_step`` crops per step; return the best fully evaluated texture.

    Parameters
    ----------
    param : nn.Module
        The texture parametrisation (``param()`` -> ``(1, C, L, L)``).
    crop_values : callable
        ``(texture, indices or None) -> (k,)`` activations of the crops with these indices (all if
        ``None``), in the order given.
    n_crops : int
        Crops of the full test.
    per_step, refresh, weight_min : int, int, float
        See :class:`~diversevis.methods.settings.ShiftSettings`.
    mei_activation : float
        The MEI's activation (> 0): the plateau rule watches ratios to it.
    seed : int
        Seed of the crop draws.
    loop : dict
        The shared loop's keywords (``lr``, ``max_iter``, ``patience``, ``ema``, ``precision``);
        ``patience`` sets the plateau window (``patience // refresh`` full evaluations, at least 2), and
        the loop's own EMA rule is off.

    Returns
    -------
    OptimizeResult, dict
        The run, its ``images`` the best texture by the exact objective, and the spec entries of the
        optimiser (crops per step, refresh, full evaluations, plateau step).
    """
    offsets = math.isqrt(n_crops)
    sampler = CropSampler(offsets, per_step, weight_min, torch.Generator().manual_seed(seed))
    loop = dict(loop)
    window = max(2, loop.pop("patience") // refresh)
    full = _FullEvaluations(
        values=lambda x: crop_values(x, None),
        sampler=sampler,
        weight_min=weight_min,
        mei_activation=mei_activation,
        refresh=refresh,
        window=window,
        max_iter=loop["max_iter"],
        precision=loop.get("precision", "fp32"),
    )

    def loss_fn(texture: torch.Tensor) -> torch.Tensor:
        idx, weights = sampler.draw()
        return sampler.loss(crop_values(texture, idx.to(texture.device)), weights)

    try:
        opt = optimize(
            param, loss_fn, **loop, patience=0, progress=progress, desc=desc, callbacks=[full, *callbacks]
        )
    except Interrupted as stop:  # Ctrl-C: keep the best fully evaluated texture so far
        if stop.results:
            full.adopt(stop.results[0])
        raise
    full.adopt(opt)
    info = {
        "optimizer": "subset",
        "crops_per_step": per_step,
        "refresh": refresh,
        "full_evaluations": len(full.rows),
        "plateau_window": window * refresh,
        "plateau_atol": PLATEAU_ATOL,
        "plateau_step": full.plateau_step,
    }
    return opt, info
