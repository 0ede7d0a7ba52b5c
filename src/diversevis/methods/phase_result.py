"""``PhaseResult``: the outcome of a grating phase test, its verdict, and how it is saved and shown.

The verdict (:attr:`PhaseResult.label`) needs two things. The modulation ratio ``F1 / F0`` says
simple-like (``> 1``) or complex-like (``< 1``), but it only means something if gratings drive the unit:
the best grating must reach :data:`DRIVE_THRESHOLD` (default 0.3) of the unit's MEI activation at the same
contrast. Otherwise the ratio describes a weak side response, and the label is "gratings do not drive this
unit" (``F1 / F0`` is still reported, flagged). method.md A.11(c) gives the index, not a threshold: 0.3 is
ours. On the synthetic cells at the default grids the best grating reaches 0.46 (energy-model complex
cell), 0.56 (texture cell) and 0.67 (Gabor simple cell) of the MEI.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from diversevis.core.cache import atomic_write_bytes, atomic_write_json, output_dir
from diversevis.core.errors import DiversevisError
from diversevis.core.result import png_html
from diversevis.methods.phase_plot import plot_phase

__all__ = ["DRIVE_THRESHOLD", "NOT_DRIVEN", "PhaseResult", "grating_verdict"]

#: Fraction of the MEI activation the best grating must reach for a simple-/complex-like label.
DRIVE_THRESHOLD = 0.3

#: The label of a unit whose best grating stays below ``drive_threshold`` of its MEI.
NOT_DRIVEN = "gratings do not drive this unit"


def grating_verdict(label: Any) -> str | None:
    """``"complex-like"`` or ``"simple-like"`` when a stored phase label is a verdict (gratings drive the
    unit), else ``None`` (not driven, undefined, or no label); "(not checked against the MEI)" counts."""
    text = str(label or "")
    for kind in ("complex-like", "simple-like"):
        if text.startswith(kind):
            return kind
    return None


@dataclass
class PhaseResult:
    """Output of :func:`diversevis.phase_test`.

    Attributes
    ----------
    orientation : float
        Preferred orientation in radians, ``[0, pi)`` (wave-vector direction, as in :func:`grating`).
    frequency : float
        Preferred spatial frequency in cycles/pixel.
    f1_f0 : float
        Modulation ratio ``F1 / F0`` of the rectified fine phase curve (``nan`` if the unit never fires:
        ``F0 == 0``). ``> 1``: simple-like; ``< 1``: complex-like (see :attr:`label`).
    f0, f1 : float
        Mean rate and first-harmonic amplitude (units of the target value).
    orientations : ndarray
        ``(T,)`` orientations of the coarse search (radians).
    frequencies : ndarray
        ``(F,)`` spatial frequencies of the coarse search (cycles/pixel).
    orientation_curve : ndarray
        ``(T,)`` best response over phase at the preferred frequency (pre-ReLU).
    frequency_curve : ndarray
        ``(F,)`` best response over phase at the preferred orientation (pre-ReLU).
    phases : ndarray
        ``(K,)`` phases of the fine sweep (radians, evenly spaced over ``[0, 2 pi)``).
    phase_curve : ndarray
        ``(K,)`` raw (pre-ReLU) responses of the fine sweep; the rate is ``relu(phase_curve)``.
    spec : dict
        Run spec (model, layer, unit, norm, sizes, grids, drive threshold, versions, creation time, timing).
    best_grating : Tensor
        ``(C, H, W)`` display-space image (grey 0.5) of the grating at the preferred orientation,
        frequency and phase.
    mei_activation : float or None
        MEI activation at the same norm (``None``: not given, so the drive is not checked).
    grey_response : float
        Response to the blank grey image (the "spontaneous" level; not subtracted from the rates).
    coarse_phases : ndarray
        ``(P,)`` phases of the coarse search.
    coarse_responses : ndarray
        ``(T, F, P)`` all coarse responses (pre-ReLU).
    drive_threshold : float
        Fraction of ``mei_activation`` the best grating must reach for a simple-/complex-like label.
    """

    orientation: float
    frequency: float
    f1_f0: float
    f0: float
    f1: float
    orientations: np.ndarray
    frequencies: np.ndarray
    orientation_curve: np.ndarray
    frequency_curve: np.ndarray
    phases: np.ndarray
    phase_curve: np.ndarray
    spec: dict[str, Any]
    best_grating: Tensor
    mei_activation: float | None = None
    grey_response: float = math.nan
    coarse_phases: np.ndarray = field(default_factory=lambda: np.zeros(0))
    coarse_responses: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    drive_threshold: float = DRIVE_THRESHOLD

    # --------------------------------------------------------------- numbers
    @property
    def rates(self) -> np.ndarray:
        """``(K,)`` firing rate ``relu(phase_curve)`` of the fine sweep."""
        return np.maximum(self.phase_curve, 0.0)

    @property
    def best_phase(self) -> float:
        """Phase (radians) of the largest fine-sweep response."""
        return float(self.phases[int(np.argmax(self.phase_curve))])

    @property
    def max_response(self) -> float:
        """Largest response over the fine sweep (pre-ReLU)."""
        return float(np.max(self.phase_curve))

    @property
    def grating_ratio(self) -> float | None:
        """Best grating's response over the MEI activation (``None`` without a positive MEI)."""
        mei = self.mei_activation
        return None if mei is None or not mei > 0 else self.max_response / mei

    @property
    def drives(self) -> bool | None:
        """Whether the best grating reaches ``drive_threshold`` of the MEI (``None``: no MEI to check)."""
        r = self.grating_ratio
        return None if r is None else r >= self.drive_threshold

    # --------------------------------------------------------------- verdict
    @property
    def kind(self) -> str | None:
        """``"simple-like"`` (F1/F0 > 1) or ``"complex-like"`` (< 1); ``None`` when :attr:`label` is neither.

        ``None`` if F1/F0 is undefined (the unit never fires over the sweep) or gratings do not drive the
        unit (the best grating is below ``drive_threshold`` of the MEI).
        """
        if not math.isfinite(self.f1_f0) or self.drives is False:
            return None
        return "simple-like" if self.f1_f0 > 1 else "complex-like"

    @property
    def label(self) -> str:
        """The verdict in words: simple-like, complex-like, "gratings do not drive this unit", or why
        F1/F0 is undefined; "(not checked against the MEI)" is appended when no MEI was given."""
        if self.drives is False:
            return NOT_DRIVEN
        if not math.isfinite(self.f1_f0):
            return "undefined: the unit never fires over the phase sweep"
        return self.kind + (" (not checked against the MEI)" if self.drives is None else "")

    def nan_cause(self) -> str | None:
        """Why F1/F0 is undefined, in a sentence (``None`` when it is a number)."""
        if math.isfinite(self.f1_f0):
            return None
        return (
            f"F1/F0 is undefined: the unit never fires at its best grating (largest response over the "
            f"phase sweep {self.max_response:.4g} <= 0, so F0 = 0; response to grey {self.grey_response:.4g}); "
            "the phase test needs a target that gratings drive above zero (metric 'max' on a responsive unit)"
        )

    def flag(self) -> str | None:
        """A note on F1/F0 when it does not give the label (gratings do not drive the unit), else ``None``."""
        if self.drives is not False:
            return None
        return (
            f"{NOT_DRIVEN}: the best grating reaches {self.grating_ratio:.1%} of the MEI "
            f"(< {self.drive_threshold:.0%}), so F1/F0 describes a weak side response"
        )

    def metrics(self) -> dict[str, Any]:
        """The headline numbers as plain Python values (``nan`` becomes ``None``)."""
        return {
            "f1_f0": _finite_or_none(self.f1_f0),
            "kind": self.kind,
            "label": self.label,
            "flag": self.flag(),
            "f0": self.f0,
            "f1": self.f1,
            "orientation": self.orientation,
            "orientation_deg": math.degrees(self.orientation),
            "frequency": self.frequency,
            "wavelength": 1.0 / self.frequency,
            "best_phase": self.best_phase,
            "max_response": self.max_response,
            "grey_response": _finite_or_none(self.grey_response),
            "mei_activation": self.mei_activation,
            "grating_ratio": self.grating_ratio,
            "drive_threshold": self.drive_threshold,
            "drives": self.drives,
            "seconds": self.spec.get("seconds"),
        }

    def __repr__(self) -> str:
        s = self.spec
        ratio = "nan" if not math.isfinite(self.f1_f0) else f"{self.f1_f0:.3f}"
        g = self.grating_ratio
        mei = "" if g is None else f", best grating {g:.0%} of MEI"
        return (
            f"PhaseResult({s.get('model')} {s.get('layer')} unit={s.get('unit')}: F1/F0={ratio} "
            f"({self.label}), orientation={math.degrees(self.orientation):.1f}deg, "
            f"frequency={self.frequency:.4g} c/px, max_response={self.max_response:.4g}{mei})"
        )

    # ------------------------------------------------------------------ I/O
    def save(self, directory: str | Path) -> Path:
        """Write ``phase.png`` (tuning curves, phase curve, best grating) and ``phase.json`` (last).

        Both are written atomically; ``phase.json`` holds ``spec``, ``metrics`` and ``curves`` and is
        written last, so a directory with a ``phase.json`` holds a complete result. Needs matplotlib.
        """
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise DiversevisError("phase plots need matplotlib: pip install matplotlib") from None
        out = output_dir(directory)
        atomic_write_bytes(out / "phase.png", self.plot())
        curves = {
            "orientations": self.orientations,
            "frequencies": self.frequencies,
            "orientation_curve": self.orientation_curve,
            "frequency_curve": self.frequency_curve,
            "phases": self.phases,
            "phase_curve": self.phase_curve,
        }
        atomic_write_json(
            out / "phase.json",
            {
                "spec": self.spec,
                "metrics": self.metrics(),
                "curves": {k: _floats(v) for k, v in curves.items()},
            },
        )
        return out

    def plot(self) -> bytes:
        """Render the four panels as PNG bytes (matplotlib, Agg, no global pyplot state).

        See :func:`diversevis.methods.phase_plot.plot_phase`.
        """
        return plot_phase(self)

    def _repr_png_(self) -> bytes | None:
        """Jupyter: the result shows itself as its four-panel figure (``None`` without matplotlib)."""
        try:
            return self.plot()
        except ImportError:
            return None

    def _repr_html_(self) -> str:
        """Jupyter: the summary line above the figure (inline PNG; the text alone without matplotlib)."""
        png = self._repr_png_()
        if png is None:
            return f"<div><pre>{html.escape(repr(self))}</pre></div>"
        return png_html(png, repr(self))

    def _harmonic_phase(self) -> float:
        r = self.rates
        return math.atan2(float((r * np.sin(self.phases)).mean()), float((r * np.cos(self.phases)).mean()))


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _floats(a: np.ndarray) -> list[float | None]:
    return [_finite_or_none(float(v)) for v in np.asarray(a, dtype=np.float64).ravel()]
