"""Activation-floor DFV: maximise diversity subject to every image driving the unit to a floor x MEI.

Lambda-mode DFV trades activation against diversity with a weight whose scale depends on the network
and layer; floor mode (Ding, ..., Cadena, Ecker, Tolias; LAMINR's activity requirements) fixes the
activation instead: every image ``i`` of a group must reach ``a_i >= floor * a_MEI`` (optionally the
group's mean ``>= mean_floor * a_MEI``) and the diversity term ``D`` is maximised under that.

It is solved with an augmented Lagrangian (Powell-Hestenes-Rockafellar form for inequalities), one
multiplier ``mu_i`` per image and one ``nu`` per group for the mean, inside the shared loop:

    g_i  = (floor + margin) - a_i / a_MEI                        (violation, > 0 when below the floor)
    loss = -D / D_0 + sum_i (max(0, mu_i + rho g_i)^2 - mu_i^2) / (2 rho)  [+ the same for the mean]
    mu_i <- max(0, mu_i + eta g_i)                                (after every step, no gradient)

The loop follows the gradient of ``loss`` but sees the value of a fixed merit,
``-D / D_0 + w sum_i max(0, g_i)^2``, so that its early stopping waits until both the diversity and the
violations have stopped improving (the moving multipliers would otherwise make successive values
incomparable and stop runs before they reach the floor).

``D_0`` is the diversity of the starting images (so the objective is scale-free), ``margin`` keeps
the iterates slightly above the floor. For the loop's plateau rule, :meth:`FloorConstraint.watched`
reports each group's mean and min ratio and ``D / D_0``, and lets a group stop only once it has had a
feasible iterate (or its unit drives nothing, so that there is no floor to reach). The loop's best-loss iterate is meaningless while the
multipliers move, so :class:`FloorConstraint` also keeps each group's *most diverse feasible* iterate
(every image at ``>= floor``, mean at ``>= mean_floor``); a group that never becomes feasible keeps
its last iterate and is reported as failing the floor, never silently.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diversevis.core.errors import DiversevisError
from diversevis.core.plateau import Watched
from diversevis.methods.settings import DiverseSettings

__all__ = ["FloorConstraint", "floor_report", "floor_constraint", "floor_spec", "FLOOR_TOLERANCE"]

#: How far below the floor a reported image may be and the floor still count as held.
FLOOR_TOLERANCE = 0.005
#: A set's best min ratio must rise by more than this to count as still rising ...
RISE_TOLERANCE = 0.002
#: ... within the last quarter of the run, and at least this many steps, or it has stalled.
STALL_STEPS = 50


@dataclass
class FloorConstraint:
    """Multipliers, penalty and best feasible iterate of ``G`` groups of ``N`` images.

    Parameters
    ----------
    floor : float
        Every image's activation must be ``>= floor * mei`` (a fraction, e.g. 0.85).
    mei : torch.Tensor
        ``(G,)`` the MEI activation of each group's unit (> 0).
    n_images : int
        Images per group ``N``.
    mean_floor : float, optional
        The group's mean activation must be ``>= mean_floor * mei``.
    rho, eta : float
        Penalty parameter and multiplier step.
    merit_weight : float
        Weight of the squared violations in the value the loop sees (its early stopping and best-loss
        bookkeeping compare values across steps; the gradient is the Lagrangian's).
    margin : float
        The optimisation aims at ``floor + margin`` so that the result is above ``floor``.
    live : torch.Tensor, optional
        ``(G,)`` bool, whether each group's unit is driven at all (its MEI is a stand-in otherwise):
        a group that is not may stop without ever reaching the floor (default: all are).
    """

    floor: float
    mei: torch.Tensor
    n_images: int
    mean_floor: float | None = None
    rho: float = 10.0
    eta: float = 5.0
    margin: float = 0.01
    merit_weight: float = 100.0
    live: torch.Tensor | None = None
    mu: torch.Tensor = field(init=False)
    nu: torch.Tensor = field(init=False)
    d0: torch.Tensor = field(init=False)
    best_d: torch.Tensor = field(init=False)
    best_images: torch.Tensor | None = field(init=False, default=None)
    last_images: torch.Tensor | None = field(init=False, default=None)
    best_ratio: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        if not bool((self.mei > 0).all()) or not bool(torch.isfinite(self.mei).all()):
            raise DiversevisError(
                "floor mode needs a positive, finite MEI activation for every unit (an MEI at or below 0 "
                "means no image drives the unit); use lambda mode (floor=None) or target the pre-activation"
            )
        G, N = len(self.mei), self.n_images
        kw = {"device": self.mei.device, "dtype": self.mei.dtype}
        self.mu = torch.zeros(G, N, **kw)
        self.nu = torch.zeros(G, **kw)
        self.d0 = torch.full((G,), math.nan, **kw)
        self.best_d = torch.full((G,), -math.inf, **kw)
        self.best_ratio = torch.full((G,), -math.inf, **kw)
        self.steps = torch.zeros(G, dtype=torch.long, device=self.mei.device)
        self.rose_at = torch.zeros(G, dtype=torch.long, device=self.mei.device)
        self.rise_ref = torch.full((G,), -math.inf, **kw)  # the best min ratio at step rose_at
        if self.live is None:
            self.live = torch.ones(G, dtype=torch.bool, device=self.mei.device)

    def loss(self, x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """The groups' losses ``(B,)``; also steps the multipliers and keeps the best feasible iterate.

        Parameters
        ----------
        x : torch.Tensor
            ``(B * N, C, H, W)`` the images of the groups in the batch.
        a : torch.Tensor
            ``(B, N)`` their activations.
        d : torch.Tensor
            ``(B,)`` each group's diversity (the term being maximised).
        groups : torch.Tensor
            ``(B,)`` long, the original group indices.
        """
        with torch.no_grad():
            fresh = torch.isnan(self.d0[groups])
            self.d0[groups] = torch.where(fresh, d.detach().abs().clamp_min(1e-12), self.d0[groups])
        r = a / self.mei[groups, None]
        lagrangian = self.lagrangian(r, d, groups)
        merit = self.merit(r, d, groups)
        self._step(x, r.detach(), d.detach(), groups, (self.floor + self.margin) - r.detach())
        # the loop sees the merit's value (its early stopping compares values across steps, which the
        # moving multipliers would make meaningless) and follows the Lagrangian's gradient
        return merit.detach() + (lagrangian - lagrangian.detach())

    def watched(self, x: torch.Tensor, a: torch.Tensor, d: torch.Tensor, groups: torch.Tensor) -> Watched:
        """:meth:`loss` with what the loop's plateau rule watches: per group the mean and min ratio to
        the MEI and ``D / D_0``; a group is ready to stop once it has had a feasible iterate (or its
        unit is not driven)."""
        loss = self.loss(x, a, d, groups)
        with torch.no_grad():
            r = a.detach() / self.mei[groups, None]
            values = torch.stack([r.mean(1), r.min(1).values, d.detach() / self.d0[groups]], 1)
            ready = torch.isfinite(self.best_d[groups]) | ~self.live[groups]
        return Watched(loss, values, ready)

    def _violations(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``g`` ``(B, N)`` of the images and ``g_mean`` ``(B,)`` of the set (``None`` without a mean floor)."""
        g = (self.floor + self.margin) - r
        gm = None if self.mean_floor is None else (self.mean_floor + self.margin) - r.mean(1)
        return g, gm

    def lagrangian(self, r: torch.Tensor, d: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """The augmented Lagrangian ``(B,)`` at ratios ``r`` ``(B, N)`` and diversities ``d`` (no side effects)."""
        g, gm = self._violations(r)
        mu, nu = self.mu[groups], self.nu[groups]
        pen = ((mu + self.rho * g).clamp_min(0) ** 2 - mu**2).sum(1) / (2 * self.rho)
        if gm is not None:
            pen = pen + ((nu + self.rho * gm).clamp_min(0) ** 2 - nu**2) / (2 * self.rho)
        return -d / self.d0[groups] + pen

    def merit(self, r: torch.Tensor, d: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """``-D / D_0 + merit_weight * sum max(0, g)^2`` ``(B,)``: comparable across multiplier steps."""
        g, gm = self._violations(r)
        out = -d / self.d0[groups] + self.merit_weight * (g.clamp_min(0) ** 2).sum(1)
        return out if gm is None else out + self.merit_weight * gm.clamp_min(0) ** 2

    @torch.no_grad()
    def _step(self, x: torch.Tensor, r: torch.Tensor, d: torch.Tensor, groups: torch.Tensor, g) -> None:
        """Multiplier step and the bookkeeping of the most diverse feasible iterate."""
        self.mu[groups] = (self.mu[groups] + self.eta * g).clamp_min(0)
        if self.mean_floor is not None:
            gm = (self.mean_floor + self.margin) - r.mean(1)
            self.nu[groups] = (self.nu[groups] + self.eta * gm).clamp_min(0)
        grouped = x.detach().reshape(len(groups), self.n_images, *x.shape[1:])
        if self.best_images is None:
            self.best_images = torch.zeros(len(self.mei), *grouped.shape[1:], device=x.device, dtype=x.dtype)
            self.last_images = torch.zeros_like(self.best_images)
        self.last_images[groups] = grouped
        ok = self.feasible(r)
        better = ok & (d > self.best_d[groups])
        self.best_d[groups] = torch.where(better, d, self.best_d[groups])
        self.best_images[groups] = torch.where(better.view(-1, 1, 1, 1, 1), grouped, self.best_images[groups])
        self.steps[groups] += 1
        rose = r.min(1).values > self.rise_ref[groups] + RISE_TOLERANCE  # slow steady rises count too
        self.rose_at[groups] = torch.where(rose, self.steps[groups], self.rose_at[groups])
        self.rise_ref[groups] = torch.where(rose, r.min(1).values, self.rise_ref[groups])
        self.best_ratio[groups] = torch.maximum(self.best_ratio[groups], r.min(1).values)

    def why_not_found(self, group: int) -> str:
        """Why group ``group`` never had every image at the floor: its worst image was still rising at
        the last step (more iterations may do), or it stalled (a weaker local maximum: they will not)."""
        steps, rose_at = int(self.steps[group]), int(self.rose_at[group])
        best = float(self.best_ratio[group])
        if steps - rose_at >= max(STALL_STEPS, steps // 4):
            return (
                f"no iterate had every image at the floor, and the worst image stalled: the set's best min "
                f"ratio, {best:.3f}, last rose at step {rose_at} of {steps} (an image stuck at a weaker local "
                "maximum; more iterations will not help: try another seed or a lower floor)"
            )
        return (
            f"no iterate had every image at the floor; the worst image was still rising at step {steps} "
            "(raise max_iter or lower the floor)"
        )

    def feasible(self, r: torch.Tensor) -> torch.Tensor:
        """``(B,)`` whether every image's ratio (``(B, N)``) is at the floor (and the mean at its floor)."""
        ok = (r >= self.floor).all(1)
        if self.mean_floor is not None:
            ok = ok & (r.mean(1) >= self.mean_floor)
        return ok

    def images(self, group: int) -> tuple[torch.Tensor, bool]:
        """Group ``group``'s result: its most diverse feasible images, or its last ones; and whether feasible."""
        found = bool(torch.isfinite(self.best_d[group]))
        source = self.best_images if found else self.last_images
        return source[group].clone(), found


def floor_report(
    ratios: torch.Tensor, floor: float, mean_floor: float | None, *, found: bool, why: str | None = None
) -> dict[str, object]:
    """Run-spec entries saying whether the floor holds for a set's reported ratios ``(N,)``.

    ``floor_holds`` is true when every ratio is ``>= floor - FLOOR_TOLERANCE`` (and the mean
    ``>= mean_floor - FLOOR_TOLERANCE``); otherwise ``floor_failure`` says by how much and why
    (``why``, e.g. :meth:`FloorConstraint.why_not_found`, replaces the generic reason when no feasible
    iterate was ``found``; it is ignored otherwise).
    """
    rmin, rmean = float(ratios.min()), float(ratios.mean())
    holds = rmin >= floor - FLOOR_TOLERANCE and (mean_floor is None or rmean >= mean_floor - FLOOR_TOLERANCE)
    out: dict[str, object] = {"floor_holds": bool(holds), "floor_tolerance": FLOOR_TOLERANCE}
    if not holds:
        why = (
            (why or "no iterate had every image at the floor; raise max_iter or lower the floor")
            if not found
            else "the images measured again fell below the floor"
        )
        out["floor_failure"] = (
            f"min ratio {rmin:.3f} (mean {rmean:.3f}) is below the floor {floor:g}"
            + (f" / mean floor {mean_floor:g}" if mean_floor is not None else "")
            + f": {why}"
        )
    return out


def floor_constraint(s: DiverseSettings, meis: Sequence[float | None], device) -> FloorConstraint | None:
    """The activity floor of floor mode (``None`` in lambda mode); it needs every unit's MEI."""
    if s.floor is None:
        return None
    if any(m is None for m in meis):
        raise DiversevisError(
            "floor mode holds every image at a fraction of the MEI's activation, so it needs the MEI: "
            "pass mei=True (CLI: drop --no-mei), an MEI Result or its activation"
        )
    # a unit no image drives (MEI <= 0) has no floor: it runs against a stand-in and is reported failing
    live = torch.tensor([_drives(m) for m in meis], device=device)
    mei_t = torch.tensor([float(m) if _drives(m) else 1.0 for m in meis], device=device)
    return FloorConstraint(s.floor, mei_t, s.n_images, mean_floor=s.mean_floor, live=live)


def _drives(mei: float) -> bool:
    return math.isfinite(float(mei)) and float(mei) > 0


def floor_spec(
    s: DiverseSettings, acts: torch.Tensor, mei: float, found: bool, layer: str, unit, why: str | None = None
) -> dict[str, Any]:
    """Whether the floor holds for the reported set (activations ``(N,)``, its unit's MEI activation);
    a loud warning when it does not (``why``: see :func:`floor_report`)."""
    if _drives(mei):
        out = floor_report(acts / mei, s.floor, s.mean_floor, found=found, why=why)
    else:
        out = {
            "floor_holds": False,
            "floor_tolerance": FLOOR_TOLERANCE,
            "floor_failure": f"the MEI activation is {float(mei):.4g} <= 0 (no image drives the unit): "
            "there is no floor to hold",
        }
    if not out["floor_holds"]:
        warnings.warn(f"{layer} unit {unit}: {out['floor_failure']}", RuntimeWarning, stacklevel=5)
    return out
