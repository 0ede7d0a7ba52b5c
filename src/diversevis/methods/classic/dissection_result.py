"""The result of a network dissection: IoU per unit and concept, labels, detectors, table, plot, files.

See :mod:`diversevis.methods.classic.dissection` for the method.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diversevis.core.cache import atomic_write_bytes, atomic_write_json, atomic_write_text, output_dir
from diversevis.methods.classic.concepts import Concept

__all__ = ["DissectionResult"]


@dataclass
class DissectionResult:
    """IoU of every unit of a layer with every concept, thresholds, labels and detectors.

    Attributes
    ----------
    units : list of int
        Channel indices dissected.
    thresholds : torch.Tensor
        ``(U,)`` activation thresholds ``T_k``.
    iou : torch.Tensor
        ``(U, C)`` float64 dataset-wide IoU.
    concepts : list of Concept
        The ``C`` concepts (columns of ``iou``).
    iou_threshold : float
        Detector criterion ``IoU > iou_threshold``.
    spec : dict
        Run spec (model, layer, dataset, quantile, method, versions, timings).
    """

    units: list[int]
    thresholds: torch.Tensor
    iou: torch.Tensor
    concepts: list[Concept]
    iou_threshold: float = 0.04
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U,)`` best IoU and ``(U,)`` index of its concept (first on ties)."""
        if self.iou.shape[1] == 0:
            z = torch.zeros(len(self.units), dtype=torch.float64)
            return z, torch.zeros(len(self.units), dtype=torch.long)
        v, i = self.iou.max(dim=1)
        return v, i

    @property
    def detectors(self) -> torch.Tensor:
        """``(U,)`` bool: best IoU > ``iou_threshold``."""
        return self.best[0] > self.iou_threshold

    @property
    def n_detectors(self) -> int:
        """Number of detector units."""
        return int(self.detectors.sum())

    @property
    def unique_detectors(self) -> int:
        """Number of distinct concepts detected (the paper's layer interpretability)."""
        v, i = self.best
        return len({int(c) for c, d in zip(i, self.detectors) if d})

    def rows(self) -> list[dict[str, Any]]:
        """Per unit: ``unit, label, category, iou, detector, threshold`` (label ``None`` if IoU is 0)."""
        v, idx = self.best
        out = []
        for j, u in enumerate(self.units):
            c = self.concepts[int(idx[j])] if self.concepts and float(v[j]) > 0 else None
            out.append(
                {
                    "unit": int(u),
                    "label": None if c is None else c.name,
                    "category": None if c is None else c.category,
                    "iou": float(v[j]),
                    "detector": bool(float(v[j]) > self.iou_threshold),
                    "threshold": float(self.thresholds[j]),
                }
            )
        return out

    def detector_counts(self) -> dict[str, int]:
        """Detector units per concept name, most frequent first (ties: name)."""
        counts: dict[str, int] = {}
        for r in self.rows():
            if r["detector"]:
                counts[r["label"]] = counts.get(r["label"], 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def top_labels(self, n: int = 5) -> list[tuple[str, int]]:
        """The ``n`` most frequent detector labels with their counts."""
        return list(self.detector_counts().items())[:n]

    def summary(self) -> dict[str, Any]:
        """Headline numbers."""
        v, _ = self.best
        return {
            "units": len(self.units),
            "detectors": self.n_detectors,
            "unique_detectors": self.unique_detectors,
            "detector_counts": self.detector_counts(),
            "mean_best_iou": float(v.mean()) if len(v) else None,
            "max_iou": float(v.max()) if len(v) else None,
        }

    def __repr__(self) -> str:
        s = self.spec
        top = ", ".join(f"{k} {n}" for k, n in self.top_labels(3))
        return (
            f"DissectionResult({s.get('model')} {s.get('layer')}: {len(self.units)} units, "
            f"{self.n_detectors} detectors, {self.unique_detectors} unique concepts"
            + (f"; {top}" if top else "")
            + ")"
        )

    def markdown(self) -> str:
        """Markdown: a summary line and a table ``unit | label | category | IoU | detector``."""
        s = self.spec
        lines = [
            f"# Network dissection: {s.get('model')} {s.get('layer')}",
            "",
            f"Dataset {s.get('dataset', {}).get('name')} ({s.get('n_images')} images, {len(self.concepts)} concepts); "
            f"threshold: top {s.get('quantile')} quantile ({s.get('quantile_method')}); "
            f"detector: IoU > {self.iou_threshold}.",
            "",
            f"**{self.n_detectors} of {len(self.units)} units are detectors, {self.unique_detectors} unique concepts.**",
            "",
            "| unit | label | category | IoU | detector |",
            "|---:|---|---|---:|:---:|",
        ]
        for r in self.rows():
            lines.append(
                f"| {r['unit']} | {r['label'] or '-'} | {r['category'] or '-'} | {r['iou']:.4f} | "
                f"{'yes' if r['detector'] else ''} |"
            )
        return "\n".join(lines) + "\n"

    def bar_plot_png(self) -> bytes:
        """PNG bar plot of detector units per concept (colour concepts in their colour, others by category)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import is_color_like
        from matplotlib.figure import Figure

        counts = self.detector_counts()
        cat_of = {c.name: c.category for c in self.concepts}
        names = list(counts)
        fig = Figure(figsize=(max(4.0, 0.35 * len(names) + 1.5), 3.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        s = self.spec
        title = f"{s.get('model')} {s.get('layer')}: {self.n_detectors}/{len(self.units)} detectors"
        if names:
            cats = list(dict.fromkeys(cat_of.get(n, "-") for n in names))
            palette = [f"C{i % 10}" for i in range(len(cats))]
            colours = [
                n
                if cat_of.get(n) == "color" and is_color_like(n)
                else palette[cats.index(cat_of.get(n, "-"))]
                for n in names
            ]
            ax.bar(range(len(names)), [counts[n] for n in names], color=colours, edgecolor="k", linewidth=0.5)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
            ax.set_ylabel("detector units")
            from matplotlib.patches import Patch

            ax.legend(handles=[Patch(color=palette[i], label=c) for i, c in enumerate(cats)], fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no detectors (IoU > {self.iou_threshold})", ha="center", va="center")
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def save(self, directory: str | Path) -> Path:
        """Write ``detectors.png``, ``dissection.md``, ``iou.npz`` and ``dissection.json`` (last), atomically.

        ``iou.npz`` holds ``iou`` ``(U, C)``, ``units``, ``thresholds``, ``concept_ids``.
        """
        out = output_dir(directory)
        atomic_write_bytes(out / "detectors.png", self.bar_plot_png())
        atomic_write_text(out / "dissection.md", self.markdown())
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            iou=self.iou.cpu().numpy(),
            units=np.asarray(self.units, dtype=np.int64),
            thresholds=self.thresholds.double().cpu().numpy(),
            concept_ids=np.asarray([c.id for c in self.concepts], dtype=np.int64),
        )
        atomic_write_bytes(out / "iou.npz", buf.getvalue())
        atomic_write_json(
            out / "dissection.json",
            {
                "spec": self.spec,
                "summary": self.summary(),
                "concepts": [{"id": c.id, "name": c.name, "category": c.category} for c in self.concepts],
                "units": self.rows(),
            },
        )
        return out
