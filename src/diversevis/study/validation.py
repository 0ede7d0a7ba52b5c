"""Does the invariance a unit shows predict what it keeps under held-out transformations? (method.md E.3)

A sweep with ``tests`` including ``retention`` stores, per unit, how much of the response to its top
natural patches survives transformations no method optimised for (``retention`` overall and
``retention_translation`` / ``_phase`` / ``_rotation`` / ``_elastic``; see
:mod:`diversevis.methods.retention`). This module rank-correlates, per layer, each invariance score with
the retention it should predict (:data:`PAIRS`), and draws the DI against overall retention. Everything
here is a pure function of the store's rows; the numbers are reported whatever they are.

>>> from diversevis.study.store import Store
>>> from diversevis.study.validation import correlations, summary
>>> with Store("sweep-out") as store:
...     rows = correlations(store)
>>> print(summary(rows))
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from diversevis.methods.phase_result import grating_verdict

__all__ = ["PAIRS", "MIN_UNITS", "Pair", "Correlation", "rank_correlation", "correlations", "summary"]
__all__ += ["skipped", "table", "scatter_png"]

#: Fewest units with both numbers for which a rank correlation is reported.
MIN_UNITS = 4
#: Conventional threshold the summary counts against (uncorrected for the number of tests).
ALPHA = 0.05
SCATTER_SIZE = (4.6, 3.4)  # inches; drawn at SCATTER_DPI, shown at 100 dpi
SCATTER_DPI = 150


@dataclass(frozen=True)
class Pair:
    """An invariance score and the held-out retention it should predict, with the expected sign."""

    score: str
    retention: str
    expected: int  # +1: higher score, more retention; -1: higher score, less retention
    why: str


PAIRS: tuple[Pair, ...] = (
    Pair("di", "retention", +1, "a more complex-like set (higher DI) should keep more of its response"),
    Pair("di", "retention_phase", +1, "DI 1 is the phase-invariant complex cell"),
    Pair("shift_min_ratio", "retention_translation", +1, "a shift-tolerant unit should keep its response"),
    Pair(
        "f1_f0",
        "retention_phase",
        -1,
        "F1/F0 indexes phase selectivity: the higher it is, the less survives a phase shift",
    ),
)


@dataclass(frozen=True)
class Correlation:
    """Spearman's rank correlation of one pair over the units of one layer.

    Attributes
    ----------
    layer : str
    score, retention : str
        The metric names (``di``, ``retention_phase``, ...).
    n : int
        Units with both numbers finite.
    rho, p : float or None
        Spearman's rho in [-1, 1] and its two-sided p-value; ``None`` when ``n < MIN_UNITS`` or one side
        is constant.
    expected : int
        The sign the score should have if it predicts the retention (+1 or -1).
    """

    layer: str
    score: str
    retention: str
    n: int
    rho: float | None
    p: float | None
    expected: int

    @property
    def as_expected(self) -> bool | None:
        """Whether rho has the expected sign (``None`` without a rho or for rho = 0)."""
        if self.rho is None or self.rho == 0:
            return None
        return (self.rho > 0) == (self.expected > 0)


def _finite(v: Any) -> float | None:
    """``v`` as a finite float, or ``None`` (missing, bool, text, nan, inf)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> tuple[int, float | None, float | None]:
    """Spearman's rank correlation of paired values.

    Parameters
    ----------
    x, y : sequence of float
        ``(n,)`` paired values, all finite.

    Returns
    -------
    n : int
    rho, p : float or None
        Spearman's rho and its two-sided p-value (``scipy.stats.spearmanr``); both ``None`` when
        ``n < MIN_UNITS`` or either side is constant (rho undefined).
    """
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be paired 1-d sequences, got shapes {x.shape} and {y.shape}")
    n = int(x.size)
    if n < MIN_UNITS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return n, None, None
    rho, p = spearmanr(x, y)
    return n, float(rho), float(p)


def _unit_rows(rows: Any) -> list[dict[str, Any]]:
    """The finished, computed units of a :class:`~diversevis.study.store.Store` or of its rows."""
    if hasattr(rows, "rows") and callable(rows.rows):
        rows = rows.rows()
    return [
        r
        for r in rows
        if r.get("status", "done") == "done"
        and isinstance(r.get("metrics"), dict)
        and "failed" not in r["metrics"]
    ]


def _paired(rows: Iterable[dict[str, Any]], score: str, retention: str) -> tuple[list[float], list[float]]:
    """The ``(score, retention)`` values of the units that have both finite (F1/F0 only where gratings
    drive the unit, when the sweep stored the phase label)."""
    xs, ys = [], []
    for r in rows:
        label = r["metrics"].get("phase_label")
        if score == "f1_f0" and label is not None and grating_verdict(label) is None:
            continue  # F1/F0 of a unit gratings do not drive is read off responses outside its range
        x, y = _finite(r["metrics"].get(score)), _finite(r["metrics"].get(retention))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def _by_layer(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by layer, in the order the layers first appear."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r["layer"]), []).append(r)
    return out


def correlations(rows: Any, pairs: Sequence[Pair] = PAIRS) -> list[Correlation]:
    """Per layer, the rank correlation of every invariance score with the retention it should predict.

    Parameters
    ----------
    rows : Store or iterable of dict
        A sweep store, or its rows (``Store.rows()``: ``layer``, ``status``, ``metrics``); units not done
        or failed are left out.
    pairs : sequence of Pair
        What to correlate (default :data:`PAIRS`: DI with overall and phase retention, the shift test's
        worst crop with translation retention, F1/F0 with phase retention, expected negative).

    Returns
    -------
    list of Correlation
        One per layer and pair that at least one unit of the layer has both numbers for (layer order,
        then ``pairs`` order); ``rho`` and ``p`` are ``None`` below :data:`MIN_UNITS` units or for a
        constant side.
    """
    out = []
    for layer, units in _by_layer(_unit_rows(rows)).items():
        for pair in pairs:
            xs, ys = _paired(units, pair.score, pair.retention)
            if not xs:
                continue
            n, rho, p = rank_correlation(xs, ys)
            out.append(Correlation(layer, pair.score, pair.retention, n, rho, p, pair.expected))
    return out


def summary(rows: Sequence[Correlation]) -> str:
    """One sentence that states the correlations as they are: how many could be computed, how many have
    the expected sign, how many reach p < 0.05 (uncorrected), and DI vs overall retention per layer."""
    if not rows:
        return "No unit has both an invariance score and a retention measure: nothing to correlate."
    done = [c for c in rows if c.rho is not None]
    if not done:
        return (
            f"No rank correlation could be computed: every layer has fewer than {MIN_UNITS} units with both "
            "numbers, or one of them is constant."
        )
    agree = [c for c in done if c.as_expected]
    strong = [c for c in agree if c.p is not None and c.p < ALPHA]
    di = [
        f"{c.layer} {c.rho:+.2f} (n = {c.n})" for c in done if (c.score, c.retention) == ("di", "retention")
    ]
    tail = f"; rho of DI vs overall retention: {', '.join(di)}" if di else ""
    return (
        f"{len(agree)} of the {len(done)} rank correlations computed have the expected sign and {len(strong)} "
        f"of those reach p < {ALPHA:g} (uncorrected for the {len(done)} tests){tail}."
    )


def skipped(rows: Any) -> list[tuple[str, int, str]]:
    """The units whose retention check ran but gave no number, as ``(layer, unit, reason)`` (e.g. none of
    the top patches drives the unit above 0; ``spec["retention"]["skipped"]`` in the store)."""
    out = []
    for r in _unit_rows(rows):
        ret = r.get("spec", {}).get("retention") if isinstance(r.get("spec"), dict) else None
        if isinstance(ret, dict) and "skipped" in ret:
            out.append((str(r["layer"]), int(r["unit"]), str(ret["skipped"])))
    return out


def _text(v: float | None) -> str:
    return "–" if v is None else f"{v:.3g}"


def table(rows: Sequence[Correlation]) -> list[dict[str, str]]:
    """The correlations as text for a table: ``layer``, ``score``, ``retention``, ``n``, ``rho``, ``p``
    (3 significant digits, ``–`` when undefined), ``expected`` (``+`` or ``−``) and ``why`` (the reason
    for that sign, from :data:`PAIRS`)."""
    why = {(p.score, p.retention): p.why for p in PAIRS}
    return [
        {
            "layer": c.layer,
            "score": c.score,
            "retention": c.retention,
            "n": str(c.n),
            "rho": _text(c.rho),
            "p": _text(c.p),
            "expected": "+" if c.expected > 0 else "−",
            "why": why.get((c.score, c.retention), ""),
        }
        for c in rows
    ]


def scatter_png(rows: Any, score: str = "di", retention: str = "retention") -> bytes | None:
    """A scatter plot of ``score`` against ``retention``, one colour per layer, rho in the legend.

    Parameters
    ----------
    rows : Store or iterable of dict
        As :func:`correlations`.
    score, retention : str
        The metrics on the x and y axes (default: DI, 0 = simple cell, 1 = complex cell; overall
        retention, the mean ratio ``p(T x) / p(x)``).

    Returns
    -------
    bytes or None
        A PNG (matplotlib Agg canvas, no pyplot state; ``SCATTER_SIZE`` inches at ``SCATTER_DPI``), or
        ``None`` if no unit has both numbers.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = {k: _paired(v, score, retention) for k, v in _by_layer(_unit_rows(rows)).items()}
    layers = {k: v for k, v in layers.items() if v[0]}
    if not layers:
        return None
    fig = Figure(figsize=SCATTER_SIZE, dpi=SCATTER_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = colormaps["tab10"]
    for i, (layer, (xs, ys)) in enumerate(layers.items()):
        n, rho, _ = rank_correlation(xs, ys)
        label = f"{layer}: ρ = {rho:+.2f}, n = {n}" if rho is not None else f"{layer}: ρ n/a, n = {n}"
        ax.scatter(xs, ys, s=18, color=colours(i % 10), alpha=0.8, edgecolors="none", label=label)
    ax.axhline(1.0, color="#999999", linestyle=":", linewidth=1)
    ax.set_title(f"{score} vs {retention} (Spearman ρ per layer)", fontsize=9)
    ax.set_xlabel(f"{score}" + (": 0 = simple cell, 1 = complex cell" if score == "di" else ""), fontsize=8)
    ax.set_ylabel(f"{retention} (1 = response kept)", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.legend(fontsize=7, frameon=False, loc="outside lower center", ncols=2)
    ax.spines[["top", "right"]].set_visible(False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
