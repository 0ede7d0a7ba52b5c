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

__all__ = ["MEISettings", "DiverseSettings", "ShiftSettings", "CROPS"]


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
    ``lr``, ``max_iter``, ``patience``, ``ema`` drive Adam and the early stopping, ``precision`` the
    network's forward pass, ``precondition`` the 1/sqrt(f) gradient whitening, ``seed`` the start.
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
    precision: str = "fp32"

    def check(self) -> None:
        check_fields(self, ints=[("restarts", 1)])
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
    energy at the MEI; see :meth:`~diversevis.methods.problem.Problem.windowed`).
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
    precision: str = "fp32"
    mei_restarts: int = 4
    prior_weight: float = 0.0
    crop: str = "nominal"
    floor: float | None = None
    mean_floor: float | None = None
    calibrate: bool = True

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
        """The settings of the MEI this set is compared with (same contrast, loop and seed)."""
        shared = {k: getattr(self, k) for k in MEISettings.names() if k in self.names()}
        return MEISettings(
            **{**shared, "restarts": self.mei_restarts, "norm": self.norm if norm is None else norm}
        )

    def spec(self, *, mei_computed: bool) -> dict[str, Any]:
        """The run-spec entries (the distance layer is in the geometry part; the prior's are added
        only when it is used)."""
        out = self.as_dict()
        del out["distance_layer"], out["prior_weight"]
        out["tau"] = self.tau if self.distance == "softmin" else None
        out["mei_restarts"] = self.mei_restarts if mei_computed else None
        out["mode"] = self.mode
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
