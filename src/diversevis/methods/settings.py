"""The settings of the DFV family, declared once: the MEI, the diverse set and the shift test.

Each class holds a method's hyperparameters with their defaults (the reference values of ``method.md``)
and validation. :func:`diversevis.diverse` and friends build one from their keyword arguments, the sweep
stores one per test and compares them on resume, and :meth:`spec` gives the run-spec entries.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from diversevis.core.checks import IMAGES_MAX, check_fields, check_loop
from diversevis.core.errors import DiversevisError
from diversevis.core.objectives import DIVERSITIES
from diversevis.core.precision import check_precision
from diversevis.core.settings import Settings

__all__ = ["MEISettings", "DiverseSettings", "ShiftSettings", "CROPS", "PLATEAU"]

#: The plateau stopping rule's defaults per kind of run: ``(window, rtol of the activations, rtol of
#: the diversity)``. Chosen by replaying both rules on full 1000-step trajectories
#: (``benchmarks/stopping_trajectories.py``) of vgg16-paper conv3_1 unit 21 (seeds 0-2) and of 16
#: conv2_1 + 16 conv3_1 units (batched), against the EMA rule's result (patience 100):
#:
#: * MEI and lambda-mode runs settle in their activations to ~0.1 % per half-window of 25 steps, while
#:   a lambda-mode set's min distance is a noisy statistic (a few % from step to step), hence its
#:   looser tolerance. Window 50 is the shortest that does not stop seed 1 of the reference problem
#:   on its metastable stretch (steps 100-180, min ratio 0.95 before a jump to 0.98); seed 2 has such
#:   a jump at step 230, after every rule >= 2x faster than the EMA rule stops (its set then keeps 29 %
#:   more diversity at a 0.8 % lower min ratio). Replayed: reference seed 0 2.0x fewer time-weighted
#:   steps with the EMA rule's result; sweep units 2.6x (sets) and 2.9x (MEIs), per-unit ratios
#:   within 1.5 % (MEI activation 0.5 %), mean distances over units within 0.2 %.
#: * Floor-mode runs circle the floor (augmented-Lagrangian cycles of ~40 steps) while their diversity
#:   still grows by ~1 % per 100-200 steps, so any earlier stop costs diversity: a window of 200 with
#:   tight tolerances keeps the mean distances within 0.3 % (1.2-1.3x fewer steps); window 50 would be
#:   2x faster at 6 % less diversity.
PLATEAU = {"mei": (50, 0.0015, None), "lambda": (50, 0.0015, 0.02), "floor": (200, 0.005, 0.005)}


def _check_common(s: Settings) -> None:
    """Checks every DFV-family setting shares: the loop's (lr, counts, ema, seed), contrast and norm."""
    check_fields(
        s, floats=[("contrast", 0.0, math.inf, True), ("norm", 0.0, math.inf, True)], optional=["norm"]
    )
    check_loop(s)


@dataclasses.dataclass(frozen=True)
class MEISettings(Settings):
    """The single most exciting image: the best of ``restarts`` starts (:func:`diversevis.mei`).

    ``contrast`` is the image L2 norm as a fraction of the natural-patch norm (``norm`` overrides it in
    display units), ``images`` the natural-image folder for that statistic (``None``: bundled photos);
    ``lr`` and ``max_iter`` drive Adam, ``precision`` the network's forward pass, ``precondition`` the
    1/sqrt(f) gradient whitening, ``seed`` the start. ``stop`` is the early-stopping rule
    (:mod:`diversevis.core.optimize`): ``"plateau"`` (default) ends a run once every restart's mean and
    the best restart's activation have drifted by at most ``plateau_rtol`` (relative) between the two
    halves of the last ``plateau_window`` steps (:data:`PLATEAU`); ``"ema"`` is the reference code's
    rule, ``patience`` steps without a new minimum of the loss's EMA with coefficient ``ema``.
    ``display_range`` keeps the image in ``[0, 1]`` while optimising (clipped after the norm step,
    straight-through gradient), so the activation is that of what the PNG shows.
    """

    contrast: float = 0.5
    norm: float | None = None
    images: str | Path | None = None
    seed: int = 0
    restarts: int = 4
    precondition: bool = True
    lr: float = 1.0
    max_iter: int = 1000
    patience: int = 100
    ema: float = 0.9
    stop: str = "plateau"
    plateau_window: int = PLATEAU["mei"][0]
    plateau_rtol: float = PLATEAU["mei"][1]
    precision: str = "fp32"
    display_range: bool = False

    def check(self) -> None:
        check_fields(self, ints=[("restarts", 1)])
        for name, default in zip(("plateau_window", "plateau_rtol"), PLATEAU["mei"]):
            if getattr(self, name) is None:  # None (e.g. a flag left out): the default
                object.__setattr__(self, name, default)
        _check_common(self)

    def spec(self) -> dict[str, Any]:
        """The run-spec entries of these settings."""
        return self.as_dict()


@dataclasses.dataclass(frozen=True)
class DiverseSettings(Settings):
    """A diverse set of ``n_images`` images (:func:`diversevis.diverse`); fields as :class:`MEISettings`.

    ``diversity`` is the weight lambda of the diversity term ``distance`` (``min``, ``softmin`` with
    temperature ``tau``, ``gram``) measured in ``distance_layer`` (``None``: pixel space);
    ``prior_weight`` the weight beta of a natural-image prior; ``mei_restarts`` the restarts of the MEI
    computed for the ratios; ``crop`` sizes the images by the unit's ``nominal`` receptive field (or
    the whole input of a readout) or by its ``effective`` field (the box holding 95 % of the gradient
    energy at the MEI; see :meth:`~diversevis.methods.problem.Problem.windowed`). ``display_range``
    keeps every image (and the MEI) in ``[0, 1]`` while optimising, so the floor, the ratios and the
    diversity index describe what the saved PNGs show.

    ``stop="plateau"`` (default) ends a set's run once its mean and min activation (relative to the
    MEI) and its diversity (relative to the start) have each drifted by at most ``plateau_rtol``
    (activations) and ``plateau_rtol_diversity`` between the two halves of the last
    ``plateau_window`` steps; in floor mode only once some iterate has met the floor. ``None`` takes
    the mode's default (:data:`PLATEAU`: lambda mode 50 steps, 0.0015, 0.02; floor mode 200 steps,
    0.005, 0.005); the MEI gets the same window and activation tolerance when they are given, else
    its own default. ``stop="ema"`` is the reference rule (``patience``, ``ema``).
    """

    n_images: int = 6
    diversity: float = 0.01
    distance_layer: str | None = None
    distance: str = "min"
    tau: float = 0.1
    contrast: float = 0.5
    norm: float | None = None
    images: str | Path | None = None
    seed: int = 0
    precondition: bool = True
    lr: float = 1.0
    max_iter: int = 1000
    patience: int = 100
    ema: float = 0.9
    stop: str = "plateau"
    plateau_window: int | None = None
    plateau_rtol: float | None = None
    plateau_rtol_diversity: float | None = None
    precision: str = "fp32"
    mei_restarts: int = 4
    prior_weight: float = 0.0
    crop: str = "nominal"
    floor: float | None = None
    mean_floor: float | None = None
    calibrate: bool = True
    display_range: bool = False

    def check(self) -> None:
        check_fields(self, ints=[("n_images", 2, IMAGES_MAX)])  # a set: at least two images
        if self.distance not in DIVERSITIES:
            raise DiversevisError(
                f"unknown distance {self.distance!r}; choose one of {', '.join(DIVERSITIES)}"
            )
        _check_crop(self.crop)
        _check_floor(self)
        check_fields(
            self,
            ints=[("mei_restarts", 1)],
            floats=[("diversity", 0.0), ("prior_weight", 0.0), ("tau", 0.0, math.inf, True)],
        )
        _check_common(self)

    @property
    def mode(self) -> str:
        """``"floor"`` (an activation floor) or ``"lambda"`` (a diversity weight)."""
        return "lambda" if self.floor is None else "floor"

    def mei_settings(self, norm: float | None = None) -> MEISettings:
        """The settings of the MEI this set is compared with (same contrast, loop and seed; the MEI's
        own plateau defaults where these leave them ``None``)."""
        shared = {k: getattr(self, k) for k in MEISettings.names() if k in self.names()}
        shared = {k: v for k, v in shared.items() if not (k.startswith("plateau_") and v is None)}
        return MEISettings(
            **{**shared, "restarts": self.mei_restarts, "norm": self.norm if norm is None else norm}
        )

    def plateau(self, mode: str | None = None) -> dict[str, Any]:
        """The plateau rule's resolved ``plateau_window``, ``plateau_rtol`` and
        ``plateau_rtol_diversity`` for ``mode`` (default: this set's own mode)."""
        window, rtol, rtol_div = PLATEAU[mode or self.mode]
        pick = lambda v, d: d if v is None else v  # noqa: E731
        return {
            "plateau_window": pick(self.plateau_window, window),
            "plateau_rtol": pick(self.plateau_rtol, rtol),
            "plateau_rtol_diversity": pick(self.plateau_rtol_diversity, rtol_div),
        }

    def loop(self, mode: str | None = None) -> dict[str, Any]:
        """The loop's keywords, with the plateau rule resolved for ``mode`` (default: this set's own):
        one relative tolerance per watched quantity (mean ratio, min ratio, diversity)."""
        p = self.plateau(mode)
        rtol = (p["plateau_rtol"], p["plateau_rtol"], p["plateau_rtol_diversity"])
        return {**super().loop(), "window": p["plateau_window"], "rtol": rtol}

    def spec(self, *, mei_computed: bool) -> dict[str, Any]:
        """The run-spec entries (the distance layer is in the geometry part; the prior's are added
        only when it is used)."""
        out = self.as_dict()
        del out["distance_layer"], out["prior_weight"]
        out["tau"] = self.tau if self.distance == "softmin" else None
        out["mei_restarts"] = self.mei_restarts if mei_computed else None
        out["mode"] = self.mode
        out.update(self.plateau())
        if self.floor is None:
            del out["floor"], out["mean_floor"]
        else:
            out["diversity"] = None  # lambda is not used in floor mode
        return out


@dataclasses.dataclass(frozen=True)
class ShiftSettings(Settings):
    """The shift test (:func:`diversevis.shift_test`): one texture, every windowed crop.

    ``weight_min`` blends the loss between the mean (0) and the worst crop (1); ``learn_mask`` learns the
    window's shape; ``stride`` is the offset step between crops; ``precondition_grad`` whitens the crops'
    gradient; ``crop="effective"`` sizes the crops by the unit's effective receptive field (a square
    about the box holding 95 % of the MEI's gradient energy) instead of the nominal one; the rest as
    :class:`MEISettings` (reference loop: lr 0.1, 700 iterations).

    ``crops_per_step`` selects the optimiser: ``None`` evaluates every crop at every step (the reference);
    a number ``k`` evaluates about ``k`` crops per step, half of them the worst crops of the latest full
    evaluation and half an evenly spaced lattice of the others at a random phase (an unbiased estimate of
    the mean), with a full evaluation of every crop each ``refresh`` steps that picks the best texture,
    refreshes the worst crops and stops the run once the mean and worst crop ratios plateau over
    ``patience`` steps (:mod:`~diversevis.methods.shift_subset`). The reported ratios always come from a
    full evaluation of every crop. ``precision`` is the forward pass's (``fp32``, ``bf16``); the final
    evaluation is always fp32.
    """

    weight_min: float = 0.5
    learn_mask: bool = False
    stride: int = 1
    contrast: float = 0.5
    norm: float | None = None
    precondition_grad: bool = True
    lr: float = 0.1
    max_iter: int = 700
    patience: int = 100
    ema: float = 0.9
    seed: int = 0
    mei_restarts: int = 4
    images: str | Path | None = None
    crop: str = "nominal"
    crops_per_step: int | None = 64
    refresh: int = 10
    precision: str = "fp32"

    def check(self) -> None:
        _check_crop(self.crop)
        check_fields(
            self,
            ints=[("stride", 1), ("mei_restarts", 1), ("crops_per_step", 2), ("refresh", 1)],
            floats=[("weight_min", 0.0, 1.0)],
            optional=["crops_per_step"],
        )
        check_precision(self.precision)
        _check_common(self)

    def mei_settings(self, norm: float | None = None) -> MEISettings:
        """The MEI the crops are compared with (its own default loop, this test's restarts and seed)."""
        return MEISettings(
            restarts=self.mei_restarts,
            norm=self.norm if norm is None else norm,
            precondition=self.precondition_grad,
            seed=self.seed,
        )


#: How images are sized: the unit's nominal receptive field, or its effective one.
CROPS = ("nominal", "effective")


def _check_floor(s: DiverseSettings) -> None:
    """``floor`` in (0, 1] (or ``None``); ``mean_floor`` in [floor, 1] and only with a floor."""
    check_fields(
        s,
        floats=[("floor", 0.0, 1.0, True), ("mean_floor", 0.0, 1.0, True)],
        optional=["floor", "mean_floor"],
    )
    if s.mean_floor is not None and (s.floor is None or s.mean_floor < s.floor):
        raise DiversevisError(
            f"mean_floor ({s.mean_floor:g}) needs a floor at or below it (got floor={s.floor}); e.g. "
            "floor=0.85, mean_floor=0.9"
        )


def _check_crop(crop: str) -> None:
    if crop not in CROPS:
        raise DiversevisError(f"unknown crop {crop!r}; choose one of {', '.join(CROPS)}")
