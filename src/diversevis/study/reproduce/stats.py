"""The reproduction study's measures and statistics: pixel diversity, unit classes, tests, Holm's correction."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from diversevis.methods.phase_result import grating_verdict
from diversevis.study.reproduce.config import (
    COMPLEX_F1F0,
    DEFORMATION_PIXEL_DISTANCE,
    DI_INVARIANT,
    PHASE_INVARIANT_F1F0,
    STRONG_RATIO,
)


def _pixel_min_distance(images: np.ndarray) -> float:
    """Smallest pairwise RMS pixel distance of a set ``(N, C, H, W)``, relative to its mean RMS contrast."""
    x = images.reshape(len(images), -1).astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    rms = float(np.sqrt((x**2).mean()))
    d = np.sqrt(((x[:, None] - x[None]) ** 2).mean(-1))
    iu = np.triu_indices(len(x), 1)
    return float(d[iu].min() / rms) if rms > 0 else 0.0


def _finite(rows: list[dict], key: str, layer: str | None = None) -> np.ndarray:
    v = [r.get(key) for r in rows if layer is None or r["layer"] == layer]
    a = np.array([x for x in v if x is not None], dtype=float)
    return a[np.isfinite(a)]


def classify_unit(m: dict[str, Any]) -> str:
    """The unit's invariance class from a sweep row's metrics (thresholds: :mod:`.config`).

    Floor-mode rows (with a calibrated diversity index ``di``): ``phase-invariant`` when gratings drive
    the unit, it is complex-like with F1/F0 < ``PHASE_INVARIANT_F1F0`` and its set reaches DI >=
    ``DI_INVARIANT``; ``deformation-invariant`` when gratings drive it phase-selectively (F1/F0 >=
    ``COMPLEX_F1F0``) and its set still reaches that DI; ``invariant, no grating verdict`` when gratings
    do not drive it but its DI does; ``below the floor`` when its set missed the floor; else
    ``selective``. Lambda-mode rows (no ``di``) use :func:`classify_unit_lambda`.
    """
    if m.get("di") is None:
        return classify_unit_lambda(m)
    if m.get("floor_holds") is False:
        return "below the floor"
    invariant = m["di"] >= DI_INVARIANT
    label = str(m.get("phase_label") or "")
    f = m.get("f1_f0")
    if grating_verdict(label) is None or f is None or not np.isfinite(f):
        return "invariant, no grating verdict" if invariant else "selective"
    if f < PHASE_INVARIANT_F1F0 and invariant:
        return "phase-invariant"
    if f >= COMPLEX_F1F0 and invariant:
        return "deformation-invariant"
    return "selective"


def classify_unit_lambda(m: dict[str, Any]) -> str:
    """``phase-invariant``, ``deformation-invariant`` or ``selective`` from a lambda-mode sweep row.

    Parameters
    ----------
    m : dict
        A sweep row's metrics (``f1_f0``, ``dfv_min_ratio``, ``dfv_pixel_min_distance``).

    Returns
    -------
    str
        The unit's class (thresholds: :mod:`diversevis.study.reproduce.config`).
    """
    f = m.get("f1_f0")
    ratio = m.get("dfv_min_ratio")
    pix = m.get("dfv_pixel_min_distance")
    if f is None or ratio is None or not np.isfinite(f):
        return "selective"
    if f < PHASE_INVARIANT_F1F0 and ratio >= STRONG_RATIO:
        return "phase-invariant"
    if f >= COMPLEX_F1F0 and ratio >= STRONG_RATIO and pix is not None and pix >= DEFORMATION_PIXEL_DISTANCE:
        return "deformation-invariant"
    return "selective"


def holm_rejections(pvals: Sequence[float], alpha: float = 0.05) -> int:
    """How many of ``pvals`` Holm's step-down procedure rejects at family-wise error rate ``alpha``.

    Sorted ascending, ``p_(i)`` (0-based) is rejected while ``p_(i) < alpha / (m - i)``; the first
    that is not stops the procedure.

    Parameters
    ----------
    pvals : sequence of float
        The family's p-values.
    alpha : float
        Family-wise error rate.

    Returns
    -------
    int
        The number of rejected hypotheses.
    """
    m = len(pvals)
    for i, p in enumerate(sorted(pvals)):
        if not p < alpha / (m - i):
            return i
    return m


def _verdict(ok: bool, partly: bool) -> str:
    return "reproduced" if ok else ("partly reproduced" if partly else "not reproduced")


def _network_tests(
    vgg: list[dict], eff: list[dict], pairs: dict[tuple[str, str], tuple[int, int]]
) -> tuple[list[list[Any]], int, int, list[float]]:
    """Mann-Whitney U tests of the per-unit invariance indices of RF-matched layer pairs.

    ``pairs`` maps ``(vgg16-paper layer, efficientnet-lite0 layer)`` to their receptive-field sizes.
    Returns the table rows (one per pair: layers, RF sizes, medians and p of ``di``, ``f1_f0`` and
    ``shift_min_ratio``), how many tests differ at p < 0.05, how many tests count (those that could
    reach p < 0.05 at their sample sizes), and the p-values of the tests that count.
    """
    from scipy.stats import mannwhitneyu

    table, differ, tested, pvals = [], 0, 0, []
    for (la, lb), (rf_a, rf_b) in pairs.items():
        row = [f"{la} / {lb}", f"{rf_a} / {rf_b}"]
        for key in ("di", "f1_f0", "shift_min_ratio"):
            a, b = _finite(vgg, key, la), _finite(eff, key, lb)
            pval = None
            if a.size >= 2 and b.size >= 2:
                pval = float(mannwhitneyu(a, b).pvalue)
                # only a test that could reach p < 0.05 at these sample sizes counts (3 vs 3 cannot: 0.1)
                if 2 / math.comb(a.size + b.size, a.size) < 0.05:
                    tested += 1
                    differ += pval < 0.05
                    pvals.append(pval)
            row += [
                f"{np.median(a):.2f} / {np.median(b):.2f}" if a.size and b.size else "-",
                pval,
            ]
        table.append(row)
    return table, differ, tested, pvals
