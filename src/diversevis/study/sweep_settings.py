"""What a sweep computes for every unit, declared once: :class:`SweepSettings`.

A sweep stores its settings (:meth:`SweepSettings.stored`) and a resumed sweep must match them; every
chunk derives the per-method settings from them (:meth:`~SweepSettings.mei_settings`,
:meth:`~SweepSettings.diverse_settings`, :meth:`~SweepSettings.shift_settings`), so the MEI, the diverse
set and the tests of every unit run with the same contrast, seed and loop
(:meth:`~SweepSettings.retention_arguments` for the held-out ``retention`` test).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from diversevis.core.errors import DiversevisError
from diversevis.core.precision import check_precision
from diversevis.core.settings import Settings
from diversevis.methods.settings import DiverseSettings, MEISettings, ShiftSettings

__all__ = ["SweepSettings", "TESTS"]

TESTS = ("dfv", "phase", "shift", "retention")
#: The ``retention`` test's top natural patches per unit and the pool they are the top of (method.md E.3).
RETENTION_K, RETENTION_CANDIDATES = 32, 2048


@dataclasses.dataclass(frozen=True)
class SweepSettings(Settings):
    """The per-unit work of a sweep.

    ``tests`` are the analyses besides the MEI (``dfv``, ``phase``, ``shift``, ``retention``: the held-out
    check of :func:`~diversevis.methods.retention.response_retention`); ``n_images``, ``floor``
    (default 0.85: floor mode, every image at >= 0.85 x the MEI; ``None``: lambda mode with weight
    ``diversity``) and ``mean_floor`` the DFV set, which also gets the calibrated diversity index; ``distance_layer`` ``"auto"`` (the previous block's last conv), a layer
    or ``None`` (pixels); ``shift_stride`` the shift test's crop step (capped per layer so that at least
    two crops remain); ``display_range`` keeps the MEIs and sets in ``[0, 1]``; the rest as
    :class:`~diversevis.methods.settings.DiverseSettings`.
    """

    tests: tuple[str, ...] = ("dfv", "phase")
    n_images: int = 6
    diversity: float = 0.01
    floor: float | None = 0.85
    mean_floor: float | None = None
    distance_layer: str | None = "auto"
    contrast: float = 0.5
    max_iter: int = 1000
    mei_restarts: int = 4
    seed: int = 0
    shift_stride: int = 1
    images: str | Path | None = None
    precision: str = "fp32"
    display_range: bool = False

    def check(self) -> None:
        unknown = [t for t in self.tests if t not in TESTS]
        if unknown:
            raise DiversevisError(f"unknown tests {unknown}; choose from {', '.join(TESTS)}")
        check_precision(self.precision)
        self.diverse_settings(None)  # the DFV settings' own checks (floor, mean floor, counts)

    def stored(self, model: str, load_args: dict[str, Any] | None = None) -> dict[str, Any]:
        """The settings a sweep stores and a resumed sweep must match (``store.get_meta("settings")``).

        The tests and the natural-image folder are not part of it (a sweep may add a test later);
        ``precision`` is absent for fp32, ``display_range`` when off, ``floor``/``mean_floor`` in lambda mode, and ``model_load_args`` (the normalisation, channels and input
        size of a user's model spec) when empty, so that stores written before them still resume.
        """
        settings = {
            "model": model,
            "n_images": self.n_images,
            "diversity": self.diversity,
            "distance_layer": self.distance_layer,
            "contrast": self.contrast,
            "max_iter": self.max_iter,
            "seed": self.seed,
            "mei_restarts": self.mei_restarts,
            "shift_stride": self.shift_stride,
        }
        if check_precision(self.precision) != "fp32":
            settings["precision"] = self.precision
        if self.floor is not None:
            settings.update(floor=self.floor, mean_floor=self.mean_floor)
        if self.display_range:
            settings["display_range"] = True
        if load_args:
            settings["model_load_args"] = load_args
        return settings

    def mei_settings(self) -> MEISettings:
        """Every unit's MEI."""
        return MEISettings(
            restarts=self.mei_restarts,
            contrast=self.contrast,
            max_iter=self.max_iter,
            seed=self.seed,
            images=self.images,
            precision=self.precision,
            display_range=self.display_range,
        )

    def diverse_settings(self, distance_layer: str | None) -> DiverseSettings:
        """Every unit's diverse set, with the layer's resolved ``distance_layer``."""
        return DiverseSettings(
            n_images=self.n_images,
            diversity=self.diversity,
            floor=self.floor,
            mean_floor=self.mean_floor,
            distance_layer=distance_layer,
            contrast=self.contrast,
            max_iter=self.max_iter,
            seed=self.seed,
            images=self.images,
            precision=self.precision,
            display_range=self.display_range,
        )

    def retention_arguments(self) -> dict[str, Any]:
        """Keywords of every unit's :func:`~diversevis.methods.retention.response_retention`: the top
        :data:`RETENTION_K` of :data:`RETENTION_CANDIDATES` natural patches at the sweep's contrast, seed
        and images."""
        return {
            "k": RETENTION_K,
            "candidates": RETENTION_CANDIDATES,
            "contrast": self.contrast,
            "seed": self.seed,
            "images": self.images,
        }

    def shift_settings(self, stride: int) -> ShiftSettings:
        """A unit's shift test at ``stride`` (the sweep's stride capped for the unit's field), with the
        fast optimiser (:class:`~diversevis.methods.settings.ShiftSettings` defaults) at the sweep's
        precision; the reported ratios come from a full fp32 evaluation of every crop."""
        return ShiftSettings(
            contrast=self.contrast,
            stride=stride,
            seed=self.seed,
            images=self.images,
            precision=self.precision,
        )
