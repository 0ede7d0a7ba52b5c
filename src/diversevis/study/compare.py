"""Compare the invariances of two networks from their sweep stores, at receptive-field-matched layers.

The paper's claim (ii): a residual network's layers differ from VGG's at corresponding depths. Layers
of two sweeps are paired by the size of their units' receptive field (the RF-sized images the sweep
optimised), and their invariance indices are compared as distributions:

* ``di``: the calibrated diversity index of the diverse set (0 = a simple cell, 1 = a complex cell under
  the same settings; comparable across networks, unlike raw distances);
* ``f1_f0``: grating modulation ratio; a unit counts as complex-like (F1/F0 < 1) only where its best
  grating drives it (the sweep's phase label), and units gratings do not drive are counted apart;
* ``shift_min_ratio``, ``shift_mean_ratio``: shift test (texture invariance);
* ``dfv_mean_ratio``: how close the diverse set stays to the MEI.

Distances are *not* compared across networks: each network's feature space has its own scale.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diversevis.core.cache import atomic_write_bytes, atomic_write_json, atomic_write_text, output_dir
from diversevis.core.errors import DiversevisError
from diversevis.methods.phase_result import grating_verdict
from diversevis.study.store import Store

__all__ = [
    "METRICS",
    "LayerSummary",
    "NetworkComparison",
    "layer_summaries",
    "match_layers",
    "compare_stores",
]

METRICS = {
    "di": "diversity index (0 simple, 1 complex)",
    "f1_f0": "F1/F0 (grating phase modulation)",
    "shift_min_ratio": "shift test: worst crop / MEI",
    "shift_mean_ratio": "shift test: mean crop / MEI",
    "dfv_mean_ratio": "diverse set mean / MEI",
}


@dataclass
class LayerSummary:
    """The units of one layer of one sweep.

    Attributes
    ----------
    layer : str
    rf : int
        Receptive-field size in pixels (side of the optimised images).
    values : dict
        Metric -> ``(n,)`` finite values over the layer's units.
    """

    layer: str
    rf: int
    n_units: int
    values: dict[str, np.ndarray] = field(default_factory=dict)
    phase_labels: list[str] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        """Median per metric; the fractions of complex-like (among units gratings drive), not driven
        and shift-invariant units."""
        out: dict[str, Any] = {"layer": self.layer, "rf": self.rf, "units": self.n_units}
        for k, v in self.values.items():
            out[f"median_{k}"] = float(np.median(v)) if v.size else None
        out.update(_phase_fractions(self.phase_labels, self.values.get("f1_f0", np.array([]))))
        s = self.values.get("shift_min_ratio", np.array([]))
        out["frac_shift_invariant"] = float((s > 0.5).mean()) if s.size else None
        return out


def _phase_fractions(labels: list[str], f1_f0: np.ndarray) -> dict[str, float | None]:
    """Complex-like among the units gratings drive, and the fraction gratings do not drive; stores
    without phase labels (older sweeps) fall back to F1/F0 < 1 over every unit."""
    if labels:
        driven = [v for x in labels if (v := grating_verdict(x))]
        complex_like = driven.count("complex-like")
        return {
            "frac_complex_like": complex_like / len(driven) if driven else None,
            "frac_not_driven": 1 - len(driven) / len(labels),
        }
    return {"frac_complex_like": float((f1_f0 < 1).mean()) if f1_f0.size else None, "frac_not_driven": None}


def layer_summaries(store: Store) -> list[LayerSummary]:
    """One :class:`LayerSummary` per layer of a store, ordered by receptive-field size.

    Parameters
    ----------
    store : Store
        An open sweep store.

    Returns
    -------
    list of LayerSummary
        Layers whose units record no image size (hence no receptive field) are left out.
    """
    out = []
    for layer in store.layers():
        rows = store.rows(layer)
        rf = None
        for r in rows:
            spec = r["spec"].get("mei") or r["spec"].get("diverse") or {}
            if spec.get("image_size"):
                rf = int(spec["image_size"])
                break
        if rf is None:
            continue
        values = {}
        for k in METRICS:
            v = np.array([r["metrics"].get(k) for r in rows if r["metrics"].get(k) is not None], dtype=float)
            values[k] = v[np.isfinite(v)]
        labels = [str(r["metrics"]["phase_label"]) for r in rows if r["metrics"].get("phase_label")]
        out.append(LayerSummary(layer, rf, len(rows), values, labels))
    return sorted(out, key=lambda s: s.rf)


def match_layers(
    a: list[LayerSummary], b: list[LayerSummary], max_ratio: float = 1.5
) -> list[tuple[LayerSummary, LayerSummary]]:
    """Pair each layer of ``a`` with the layer of ``b`` whose RF size is closest (within ``max_ratio``).

    Parameters
    ----------
    a, b : list of LayerSummary
    max_ratio : float
        Largest ratio of the two receptive-field sizes for a pair.

    Returns
    -------
    list of (LayerSummary, LayerSummary)
        One pair per layer of ``a`` that has a match, in the order of ``a``.
    """
    pairs = []
    for la in a:
        best = min(b, key=lambda lb: abs(math.log(lb.rf / la.rf)), default=None)
        if best is not None and max(best.rf, la.rf) / min(best.rf, la.rf) <= max_ratio:
            pairs.append((la, best))
    return pairs


@dataclass
class NetworkComparison:
    """Two sweeps compared at RF-matched layers."""

    name_a: str
    name_b: str
    pairs: list[tuple[LayerSummary, LayerSummary]]

    def rows(self) -> list[dict[str, Any]]:
        """One row per matched pair: the two layers' statistics side by side."""
        out = []
        for la, lb in self.pairs:
            sa, sb = la.stats(), lb.stats()
            out.append({"a": sa, "b": sb})
        return out

    def markdown(self) -> str:
        """The comparison as a Markdown table."""
        head = (
            f"| RF | {self.name_a} layer | {self.name_b} layer | units | median DI | complex-like (F1/F0<1, "
            "driven units) | gratings do not drive | shift-invariant (min>0.5) | median F1/F0 | "
            "median shift min | median DFV/MEI |\n|" + "---|" * 11 + "\n"
        )
        lines = []
        for r in self.rows():
            a, b = r["a"], r["b"]
            lines.append(
                f"| {a['rf']} / {b['rf']} | {a['layer']} | {b['layer']} | {a['units']} / {b['units']} | "
                f"{_num(a.get('median_di'))} / {_num(b.get('median_di'))} | "
                f"{_pct(a['frac_complex_like'])} / {_pct(b['frac_complex_like'])} | "
                f"{_pct(a['frac_not_driven'])} / {_pct(b['frac_not_driven'])} | "
                f"{_pct(a['frac_shift_invariant'])} / {_pct(b['frac_shift_invariant'])} | "
                f"{_num(a.get('median_f1_f0'))} / {_num(b.get('median_f1_f0'))} | "
                f"{_num(a.get('median_shift_min_ratio'))} / {_num(b.get('median_shift_min_ratio'))} | "
                f"{_num(a.get('median_dfv_mean_ratio'))} / {_num(b.get('median_dfv_mean_ratio'))} |"
            )
        return (
            f"# {self.name_a} vs {self.name_b}\n\nLayers matched by receptive-field size; each cell is "
            f"{self.name_a} / {self.name_b}.\n\n" + head + "\n".join(lines) + "\n"
        )

    def figure(self) -> bytes:
        """PNG: per matched pair, overlaid histograms of each metric both sweeps have."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        metrics = [
            k
            for k in METRICS
            if any(
                la.values.get(k, np.array([])).size and lb.values.get(k, np.array([])).size
                for la, lb in self.pairs
            )
        ]
        n_rows, n_cols = max(1, len(self.pairs)), max(1, len(metrics))
        fig = Figure(figsize=(3.4 * n_cols, 2.6 * n_rows), dpi=100)
        FigureCanvasAgg(fig)
        for i, (la, lb) in enumerate(self.pairs):
            for j, k in enumerate(metrics):
                ax = fig.add_subplot(n_rows, n_cols, i * n_cols + j + 1)
                va, vb = la.values.get(k, np.array([])), lb.values.get(k, np.array([]))
                both = np.concatenate([va, vb])
                if both.size:
                    bins = np.linspace(float(both.min()), float(both.max()) + 1e-9, 16)
                    ax.hist(va, bins=bins, alpha=0.55, density=True, label=f"{self.name_a} {la.layer}")
                    ax.hist(vb, bins=bins, alpha=0.55, density=True, label=f"{self.name_b} {lb.layer}")
                if k == "f1_f0":
                    ax.axvline(1.0, color="k", ls="--", lw=1)
                ax.set_title(f"RF {la.rf}/{lb.rf}: {METRICS[k]}", fontsize=8)
                ax.tick_params(labelsize=7)
                if j == 0:
                    ax.legend(fontsize=6)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def save(self, directory: str | Path) -> Path:
        """Write ``compare.png``, ``compare.md`` and ``compare.json`` (last)."""
        out = output_dir(directory)
        atomic_write_bytes(out / "compare.png", self.figure())
        atomic_write_text(out / "compare.md", self.markdown())
        atomic_write_json(out / "compare.json", {"a": self.name_a, "b": self.name_b, "pairs": self.rows()})
        return out


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f} %"


def _num(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def compare_stores(dir_a: str | Path, dir_b: str | Path, *, max_ratio: float = 1.5) -> NetworkComparison:
    """Compare two sweep stores at RF-matched layers.

    Parameters
    ----------
    dir_a, dir_b : str or Path
        Sweep stores (``diversevis sweep --out DIR``).
    max_ratio : float
        Largest ratio of receptive-field sizes of a matched pair (see :func:`match_layers`).

    Returns
    -------
    NetworkComparison

    Raises
    ------
    DiversevisError
        If a directory is not a store, has no finished units, or no layers match.
    """
    stores = [Store(dir_a), Store(dir_b)]
    names, summaries = [], []
    for d, st in zip((dir_a, dir_b), stores):
        s = layer_summaries(st)
        if not s:
            raise DiversevisError(f"{str(d)!r} holds no finished units yet")
        settings = st.get_meta("settings") or {}
        names.append(str(settings.get("model") or Path(d).name))
        summaries.append(s)
        st.close()
    if names[0] == names[1]:
        names = [f"{names[0]} ({Path(dir_a).name})", f"{names[1]} ({Path(dir_b).name})"]
    pairs = match_layers(summaries[0], summaries[1], max_ratio)
    if not pairs:
        rfs = [[f"{s.layer}:{s.rf}" for s in ss] for ss in summaries]
        raise DiversevisError(
            f"no layers with matching receptive fields (within x{max_ratio}): {rfs[0]} vs {rfs[1]}"
        )
    return NetworkComparison(names[0], names[1], pairs)
