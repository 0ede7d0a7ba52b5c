"""The reproduction report's figures (matplotlib, Agg), each written under ``DIR/figures/``."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diversevis.core.cache import atomic_write_bytes
from diversevis.study.reproduce.config import COMPLEX_F1F0, DI_INVARIANT, FLOOR, SHIFT_INVARIANT
from diversevis.study.reproduce.stats import _finite


def _fig_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _layer_distributions(out: Path, rows: list[dict], layers: Sequence[str]) -> str:
    plt = _mpl()
    fig, axes = plt.subplots(1, 3, figsize=(16, 3.6))
    for ax, key, label, line in (
        (axes[0], "di", "diversity index (pixels)", DI_INVARIANT),
        (axes[1], "shift_min_ratio", "shift test min_ratio", SHIFT_INVARIANT),
        (axes[2], "f1_f0", "F1/F0", COMPLEX_F1F0),
    ):
        data = [_finite(rows, key, layer) for layer in layers]
        rng = np.random.default_rng(0)
        for i, d in enumerate(data):
            if d.size:
                ax.scatter(i + rng.uniform(-0.15, 0.15, d.size), d, s=12, alpha=0.7)
                ax.hlines(np.median(d), i - 0.3, i + 0.3, color="k")
        ax.axhline(line, ls="--", color="grey", lw=1)
        ax.set_xticks(range(len(layers)), layers, rotation=30)
        ax.set_ylabel(label)
    axes[0].set_title(f"DI at floor {FLOOR} (0 simple, 1 complex cell)")
    axes[1].set_title("shift invariance per layer (line: median)")
    axes[2].set_title("phase modulation per layer (< 1: complex-like)")
    atomic_write_bytes(out / "figures" / "layers.png", _fig_bytes(fig))
    return "figures/layers.png"


def _tradeoff_figure(out: Path, rows: list[dict]) -> str:
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    lam = [max(r["lambda"], 1e-4) for r in rows]
    ax.plot(lam, [r["mean_ratio"] for r in rows], "o-", label="mean ratio to MEI")
    ax.plot(lam, [r["min_ratio"] for r in rows], "s--", label="min ratio to MEI")
    ax.set_xscale("log")
    ax.set_xlabel("lambda (0 drawn at 1e-4)")
    ax.set_ylabel("activation / MEI")
    ax2 = ax.twinx()
    ax2.plot(lam, [r["min_distance"] for r in rows], "^-", color="C3", label="min conv2_2 distance")
    ax2.set_ylabel("min conv2_2 RMS distance", color="C3")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("vgg16-paper conv3_1 u21: diversity vs activation")
    atomic_write_bytes(out / "figures" / "tradeoff.png", _fig_bytes(fig))
    return "figures/tradeoff.png"


def _baseline_figure(out: Path, rows: list[dict]) -> str:
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k, marker in (("restarts", "o"), ("gram", "s"), ("natural", "^"), ("ppgn", "D")):
        pts = [(r.get(f"{k}_min_distance"), r.get("dfv_min_distance")) for r in rows]
        pts = [(a, b) for a, b in pts if a and b]
        if pts:
            a, b = zip(*pts)
            ax.scatter(a, b, marker=marker, label=k)
    lim = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("baseline min distance")
    ax.set_ylabel("DFV min distance")
    ax.set_title("above the diagonal: DFV more diverse")
    ax.legend(fontsize=8)
    atomic_write_bytes(out / "figures" / "baselines.png", _fig_bytes(fig))
    return "figures/baselines.png"


def _compare_figure(out: Path, vgg: list[dict], eff: list[dict], pairs: list[tuple[str, str]]) -> str:
    plt = _mpl()
    fig, axes = plt.subplots(1, 3, figsize=(16, 3.6))
    for ax, key in zip(axes, ("di", "f1_f0", "shift_min_ratio")):
        for i, (a, b) in enumerate(pairs):
            for rows, layer, off, c in ((vgg, a, -0.18, "C0"), (eff, b, 0.18, "C1")):
                d = _finite(rows, key, layer)
                if d.size:
                    ax.scatter(np.full(d.size, i + off), d, s=10, color=c, alpha=0.7)
        ax.set_xticks(range(len(pairs)), [f"{a}\n{b}" for a, b in pairs], fontsize=8)
        ax.set_ylabel(key)
    axes[0].scatter([], [], color="C0", label="vgg16-paper")
    axes[0].scatter([], [], color="C1", label="efficientnet-lite0")
    axes[0].legend(fontsize=8)
    atomic_write_bytes(out / "figures" / "networks.png", _fig_bytes(fig))
    return "figures/networks.png"
