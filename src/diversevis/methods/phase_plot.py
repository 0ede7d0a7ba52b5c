"""The four-panel figure of a grating phase test (:meth:`diversevis.methods.phase.PhaseResult.plot`).

Orientation tuning, spatial-frequency tuning, the fine phase curve with its ``F0 + F1 cos`` fit, and the
best grating, rendered with matplotlib's Agg canvas (no global pyplot state). matplotlib is imported only
when a figure is drawn, so the phase test itself does not need it.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from diversevis.methods.phase_result import PhaseResult

__all__ = ["plot_phase"]


def plot_phase(result: PhaseResult) -> bytes:
    """Render the four panels of a phase test as PNG bytes.

    Parameters
    ----------
    result : PhaseResult
        Output of :func:`diversevis.methods.phase.phase_test`.

    Returns
    -------
    bytes
        The PNG file (15 x 4.3 inches at 100 dpi).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.3), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1.2, 0.75]})
    ax_o, ax_f, ax_p, ax_g = axes
    ratio = "undefined (never fires)" if not math.isfinite(result.f1_f0) else f"{result.f1_f0:.3f}"
    if result.flag():
        ratio += " (flagged)"
    _suptitle(fig, result, ratio)
    _orientation_panel(ax_o, result)
    _frequency_panel(ax_f, result)
    _phase_panel(ax_p, result)
    for ax in (ax_o, ax_f, ax_p):
        _grey_line_and_grid(ax, result.grey_response, legend=ax is ax_p)
    _finish_phase_panel(ax_p, result, ratio)
    _grating_panel(ax_g, result)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _suptitle(fig: Any, result: PhaseResult, ratio: str) -> None:
    """Model, layer, target, grating norm and size, and the verdict (with the best grating vs the MEI)."""
    s = result.spec
    unit = s.get("unit")
    what = f"unit {unit}" if unit is not None else "direction"
    g = result.grating_ratio
    vs_mei = "" if g is None else f", best grating {g:.0%} of MEI (needs {result.drive_threshold:.0%})"
    fig.suptitle(
        f"{s.get('model', '')}  {s.get('layer', '')}  {what}  -  gratings at L2 norm "
        f"{s.get('norm', float('nan')):.3g} on {s.get('image_size')}px  -  F1/F0 = {ratio}\n"
        f"{result.label}{vs_mei}",
        fontsize=11,
    )


def _orientation_panel(ax: Any, result: PhaseResult) -> None:
    """Best response over phase against orientation (0 deg repeated at 180 deg)."""
    deg, oc = np.degrees(result.orientations), result.orientation_curve
    order = np.argsort(deg)
    deg, oc = deg[order], oc[order]
    if len(deg) > 1 and np.isclose(deg[0], 0.0):  # orientation is periodic: repeat 0 deg at 180 deg
        deg, oc = np.append(deg, 180.0), np.append(oc, oc[0])
    ax.plot(deg, oc, "o-", color="C0", ms=4)
    ax.axvline(math.degrees(result.orientation), color="C3", lw=1, ls="--")
    ax.set_xlim(-5, 185)
    ax.set_xticks([0, 45, 90, 135, 180])
    ax.set_xlabel("orientation (deg)")
    ax.set_ylabel("max response over phase")
    ax.set_title(f"orientation tuning at f = {result.frequency:.3g} c/px", fontsize=10)


def _frequency_panel(ax: Any, result: PhaseResult) -> None:
    """Best response over phase against spatial frequency (log axis, plain tick labels)."""
    from matplotlib.ticker import NullFormatter

    order = np.argsort(result.frequencies)
    ax.semilogx(result.frequencies[order], result.frequency_curve[order], "o-", color="C0", ms=4)
    ax.axvline(result.frequency, color="C3", lw=1, ls="--")
    lo, hi = float(result.frequencies.min()), float(result.frequencies.max())
    ticks = [t for t in (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5) if lo / 1.05 <= t <= hi * 1.05]
    if len(ticks) < 2:
        ticks = sorted({lo, hi})
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:.3g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("spatial frequency (cycles/pixel)")
    ax.set_title(f"SF tuning at {math.degrees(result.orientation):.1f} deg", fontsize=10)


def _phase_panel(ax: Any, result: PhaseResult) -> None:
    """The fine phase curve (closed at 360 deg), its rectified rate and the ``F0 + F1 cos`` harmonic."""
    ph, pc = np.degrees(result.phases), result.phase_curve
    order = np.argsort(ph)
    ph, pc = ph[order], pc[order]
    if len(ph) > 1 and np.isclose(ph[0], 0.0):  # close the cycle: 360 deg repeats 0 deg
        ph, pc = np.append(ph, 360.0), np.append(pc, pc[0])
    ax.plot(ph, pc, "o-", color="C0", ms=3, label="response (pre-ReLU)")
    ax.fill_between(ph, 0, np.maximum(pc, 0.0), color="C1", alpha=0.35, label="rate = relu(response)")
    if math.isfinite(result.f1_f0):
        p1 = result._harmonic_phase()
        fine = np.linspace(0, 2 * math.pi, 361)
        ax.plot(
            np.degrees(fine),
            result.f0 + result.f1 * np.cos(fine - p1),
            color="C2",
            lw=1.2,
            ls="--",
            label="F0 + F1 cos",
        )
    ax.axhline(result.f0, color="C2", lw=0.8)
    ax.axhline(0, color="k", lw=0.6)


def _grey_line_and_grid(ax: Any, grey: float, legend: bool) -> None:
    """The response to the blank grey image (if finite) as a dotted line, and a light grid."""
    if math.isfinite(grey):
        ax.axhline(grey, color="0.5", lw=0.8, ls=":", label="grey image" if legend else None)
    ax.grid(alpha=0.3)


def _finish_phase_panel(ax: Any, result: PhaseResult, ratio: str) -> None:
    """Axis limits, ticks, labels, title and legend of the phase panel (after all its lines are drawn)."""
    ax.set_xlim(0, 360)
    ax.set_xticks([0, 90, 180, 270, 360])
    ax.set_xlabel("grating phase (deg)")
    ax.set_title(f"F1/F0 = {ratio}   (F0 = {result.f0:.3g}, F1 = {result.f1:.3g})", fontsize=10)
    ax.legend(fontsize=7, loc="best")


def _grating_panel(ax: Any, result: PhaseResult) -> None:
    """The best grating as an image, titled with its orientation, frequency and phase."""
    img = result.best_grating.detach().cpu().float().clamp(0, 1).numpy()
    img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(
        f"best grating: {math.degrees(result.orientation):.1f} deg,\n"
        f"{result.frequency:.3g} c/px, phase {math.degrees(result.best_phase):.0f} deg",
        fontsize=9,
    )
