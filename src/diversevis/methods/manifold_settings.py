"""The settings of an invariance manifold (:func:`diversevis.manifold`), declared once.

Defaults: LAMINR's activity requirements (every latent at >= 0.85 of the MEI, the mean at >= 0.9), a
SimCLR-style spread term at temperature 0.3 over a periodic latent grid (16 latents on a loop, 8 x 8 on
a torus), a small sine-activated generator (:class:`~diversevis.core.cppn.ImplicitGenerator`) trained
with Adam at ``lr=3e-3``, and the plateau stopping rule over 200 steps, as floor-mode DFV.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from diversevis.core.checks import check_fields, check_loop
from diversevis.core.errors import DiversevisError
from diversevis.core.settings import Settings

__all__ = ["ManifoldSettings", "DIMS", "DEFAULT_PER_DIM"]

#: Latent dimensions a manifold may have (a loop or a torus).
DIMS = (1, 2)
#: Grid latents per latent dimension when ``per_dim`` is not given.
DEFAULT_PER_DIM = {1: 16, 2: 8}


@dataclasses.dataclass(frozen=True)
class ManifoldSettings(Settings):
    """Hyperparameters of :func:`diversevis.manifold` (see its docstring for each one).

    ``per_dim=None`` resolves to :data:`DEFAULT_PER_DIM`; ``mean_floor=None`` drops the mean floor;
    ``feature_layer=None`` measures the spread in pixels. The plateau rule watches the grid's mean and
    min ratio to the MEI (``plateau_rtol``) and the spread term relative to its start
    (``plateau_rtol_spread``); ``plateau_atol`` is an absolute tolerance on all three (the spread term
    can approach 0, where a relative tolerance alone would never be met).
    """

    dim: int = 1
    per_dim: int | None = None
    floor: float = 0.85
    mean_floor: float | None = 0.9
    feature_layer: str | None = None
    temperature: float = 0.3
    jitter: bool = True
    warmup: int = 200
    contrast: float = 0.5
    norm: float | None = None
    images: str | Path | None = None
    hidden: int = 64
    depth: int = 3
    w0: float = 8.0
    harmonics: int = 1
    seed: int = 0
    lr: float = 3e-3
    max_iter: int = 2000
    patience: int = 200
    ema: float = 0.9
    stop: str = "plateau"
    plateau_window: int = 200
    plateau_rtol: float = 0.005
    plateau_rtol_spread: float = 0.01
    plateau_atol: float = 0.002
    precision: str = "fp32"
    mei_restarts: int = 4
    calibrate: bool = True

    def check(self) -> None:
        if isinstance(self.dim, bool) or self.dim not in DIMS:
            raise DiversevisError(f"dim must be 1 (a loop) or 2 (a torus), got {self.dim!r}")
        if self.per_dim is None:
            object.__setattr__(self, "per_dim", DEFAULT_PER_DIM[self.dim])
        check_fields(
            self,
            ints=[
                ("per_dim", 3, 256),
                ("warmup", 0),
                ("hidden", 1),
                ("depth", 1),
                ("harmonics", 1),
                ("mei_restarts", 1),
            ],
            floats=[
                ("floor", 0.0, 1.0, True),
                ("mean_floor", 0.0, 1.0, True),
                ("temperature", 0.0, math.inf, True),
                ("w0", 0.0, math.inf, True),
                ("contrast", 0.0, math.inf, True),
                ("norm", 0.0, math.inf, True),
                ("plateau_rtol_spread", 0.0),
                ("plateau_atol", 0.0),
            ],
            optional=["mean_floor", "norm"],
        )
        if self.mean_floor is not None and self.mean_floor < self.floor:
            raise DiversevisError(
                f"mean_floor ({self.mean_floor:g}) must be at or above floor ({self.floor:g}); e.g. "
                "floor=0.85, mean_floor=0.9"
            )
        if self.feature_layer in ("", "pixel", "pixels", "none"):
            object.__setattr__(self, "feature_layer", None)
        check_loop(self)

    @property
    def n_latents(self) -> int:
        """Latents of the grid ``P = per_dim ** dim``."""
        return int(self.per_dim) ** self.dim

    def loop(self) -> dict[str, Any]:
        """The shared loop's keywords: one tolerance per watched quantity (mean ratio, min ratio, spread)."""
        out = super().loop()
        out["rtol"] = (self.plateau_rtol, self.plateau_rtol, self.plateau_rtol_spread)
        out["atol"] = self.plateau_atol
        return out

    def spec(self) -> dict[str, Any]:
        """The run-spec entries of these settings (the feature layer is in the geometry part)."""
        out = self.as_dict()
        out["feature_layer"] = self.feature_layer
        out["n_latents"] = self.n_latents
        out["images"] = None if self.images is None else str(self.images)
        return out
