"""The reproduction study: the paper's experiments on real networks, in one command, with verdicts.

``reproduce(out)`` (``diversevis reproduce --out DIR``) runs, on the offline networks:

1. the reference notebook's experiment (``vgg16-paper`` conv3_1 unit 21, N = 6, lambda = 0.01,
   conv2_2 distance) next to the numbers the notebook printed (method.md B.2);
2. the synthetic-cell checks (method.md B.4.1): a phase-invariant energy-model cell keeps its maximum
   over a diverse set, a simple cell cannot;
3. the diversity / activation trade-off of the reference unit over lambda (B.4.3);
4. layer sweeps of ``vgg16-paper`` conv1_1..conv3_3 (DFV, MEI, phase test, shift test) and of the
   receptive-field-matched layers of ``efficientnet-lite0``;
5. DFV against random restarts, Gram-cosine diversity and natural exemplars (B.4.4) over units of
   conv2_1 and conv3_1;
6. diverse sets with and without the natural-image prior (PixelCNN-style), when ``prior.py`` is there;

and writes ``report.md`` and ``report.html`` with figures, and a verdict per claim of the paper
(method.md B.1): (i) phase-invariant and deformation-invariant units, (ii) a second (residual)
network differs at matching layers, (iii) initialisation- and sampling-based diversity underestimates
DFV's. Every step is stored under ``DIR`` as it finishes, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import contextvars
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diversevis.core.cache import atomic_write_bytes, atomic_write_json, atomic_write_text, json_default
from diversevis.core.errors import DiversevisError
from diversevis.methods.dfv import diverse, mei
from diversevis.models.zoo import load_model

__all__ = ["Preset", "PRESETS", "reproduce", "publish", "PAPER_REFERENCE"]

#: The official notebook's printed numbers (method.md B.2): VGG-19 (Gatys-normalised) conv3_1 unit 21.
PAPER_REFERENCE = {
    "network": "VGG-19, Gatys-normalised",
    "mean_activation": 55.28,
    "activations": [55.67, 58.88, 57.55, 51.52, 53.84, 54.23],
    "min_over_max": 0.875,
    "min_distance": 5.0,
    "n_iter": 774,
}

VGG_LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3")
EFF_CANDIDATES = ("stem", "stage1", "block1", "block2", "block3", "block4", "block5", "block6", "block7")

#: Thresholds behind the verdicts (stated in the report).
PHASE_INVARIANT_F1F0 = 0.3  # "near-perfectly phase invariant": modulation below 30 % of the mean rate
COMPLEX_F1F0 = 1.0  # the classic simple / complex boundary
STRONG_RATIO = 0.9  # every image of the diverse set at >= 90 % of the MEI
DEFORMATION_PIXEL_DISTANCE = 0.5  # min pixel distance between set images, relative to their RMS contrast
SHIFT_INVARIANT = 0.5  # shift test: every crop at >= 50 % of the MEI


@dataclass(frozen=True)
class Preset:
    """How much of the study to run.

    Attributes
    ----------
    units : int
        Units sampled per ``vgg16-paper`` layer (and per matched EfficientNet layer).
    baseline_units : int
        Units per layer in the baseline comparison (claim iii).
    baseline_layers : tuple of str
    shift_stride : int
        Shift-test crop stride (sweeps cap it per layer so at least two offsets remain).
    lambdas : tuple of float
        Diversity weights of the trade-off curve.
    candidates : int
        Natural patches sampled for the natural-exemplar baseline.
    max_iter : int
    prior_steps : int, optional
        Training steps of the natural-image prior when the default prior is not cached yet (``None``:
        train the full default prior, about 5 minutes on a CPU, and cache it).
    """

    units: int
    baseline_units: int
    baseline_layers: tuple[str, ...]
    shift_stride: int
    lambdas: tuple[float, ...]
    candidates: int
    max_iter: int = 1000
    prior_steps: int | None = None


PRESETS = {
    "quick": Preset(3, 2, ("conv2_1", "conv3_1"), 12, (0.0, 0.01, 0.1, 1.0), 2048, prior_steps=400),
    "standard": Preset(16, 8, ("conv2_1", "conv3_1"), 3, (0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0), 4096),
    "full": Preset(
        64, 32, ("conv2_1", "conv3_1"), 1, (0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0), 8192
    ),
}


@dataclass
class Section:
    """One part of the report: text, tables and figures, rendered to Markdown and HTML alike."""

    title: str
    verdict: str | None = None
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[Any]]]] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (relative path, caption)


class _Steps:
    """Results of finished steps, one JSON file each, so a rerun skips them."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        self.root = root / "steps"
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = json.loads(json.dumps(config, default=json_default))  # as it reads back (tuples: lists)

    def run(self, name: str, fn: Callable[[], dict[str, Any]], log: Callable[[str], None]) -> dict[str, Any]:
        path = self.root / f"{name}.json"
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
                if saved.get("config") == self.config:
                    log(f"[{name}] done before, reusing {path}")
                    return saved["result"]
            except (json.JSONDecodeError, KeyError):
                pass  # half-written by a killed run? atomic writes make that unlikely: recompute
        t0 = time.perf_counter()
        log(f"[{name}] running")
        result = fn()
        result["seconds"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(path, {"config": self.config, "result": result})
        log(f"[{name}] {result['seconds']:.0f} s")
        return json.loads(json.dumps(result, default=json_default))


_DEVICE: contextvars.ContextVar[str | None] = contextvars.ContextVar("reproduce_device", default=None)


def _load(name: str):
    """A zoo network on the study's device (``reproduce(device=...)``)."""
    return load_model(name, device=_DEVICE.get())


def _pixel_min_distance(images: np.ndarray) -> float:
    """Smallest pairwise RMS pixel distance of a set ``(N, C, H, W)``, relative to its mean RMS contrast."""
    x = images.reshape(len(images), -1).astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    rms = float(np.sqrt((x**2).mean()))
    d = np.sqrt(((x[:, None] - x[None]) ** 2).mean(-1))
    iu = np.triu_indices(len(x), 1)
    return float(d[iu].min() / rms) if rms > 0 else 0.0


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


# ----------------------------------------------------------------------------------------------- steps


def _reference(out: Path, seed: int, max_iter: int) -> dict[str, Any]:
    net = _load("vgg16-paper")
    res = diverse(
        net, "conv3_1", 21, n_images=6, diversity=0.01, distance_layer="conv2_2", seed=seed, max_iter=max_iter
    )
    res.save(out / "reference")
    acts = [float(a) for a in res.activations]
    return {
        "mean_activation": float(np.mean(acts)),
        "activations": acts,
        "mei_activation": float(res.mei_activation),
        "min_over_max": min(acts) / max(acts),
        "min_ratio": float(res.ratios.min()),
        "min_distance": float(res.min_distance),
        "n_iter": int(res.spec["n_iter"]),
        "grid": "reference/grid.png",
    }


def _cells(out: Path, seed: int) -> dict[str, Any]:
    from diversevis.models.synthetic import cell_network

    rows = []
    for kind in ("complex", "simple"):
        net = cell_network(kind, size=16)
        for lam in (0.0, 1.0):
            res = diverse(net, "response", 0, n_images=6, diversity=lam, norm=1.0, seed=seed)
            imgs = res.images.numpy()
            rows.append(
                {
                    "cell": kind,
                    "lambda": lam,
                    "min_ratio": float(res.ratios.min()),
                    "pixel_min_distance": _pixel_min_distance(imgs),
                }
            )
            if lam > 0:
                res.save(out / "cells" / kind)
    return {"rows": rows}


def _tradeoff(out: Path, lambdas: Sequence[float], seed: int, max_iter: int) -> dict[str, Any]:
    net = _load("vgg16-paper")
    m = mei(net, "conv3_1", 21, seed=seed, max_iter=max_iter)
    rows = []
    for lam in lambdas:
        res = diverse(
            net, "conv3_1", 21, n_images=6, diversity=lam, distance_layer="conv2_2", seed=seed, mei=m,
            max_iter=max_iter,
        )  # fmt: skip
        rows.append(
            {
                "lambda": lam,
                "mean_ratio": float(res.ratios.mean()),
                "min_ratio": float(res.ratios.min()),
                "min_distance": float(res.min_distance),
                "pixel_min_distance": _pixel_min_distance(res.images.numpy()),
            }
        )
    return {"rows": rows}


def _matched_eff_layers(layers: Sequence[str]) -> list[str]:
    """EfficientNet-Lite0 layers whose receptive fields best match the given vgg16-paper layers."""
    vgg = _load("vgg16-paper")
    eff = _load("efficientnet-lite0")
    eff_rf = {a: eff.receptive_field(a).size for a in EFF_CANDIDATES}
    chosen: list[str] = []
    for layer in layers:
        rf = vgg.receptive_field(layer).size
        best = min(eff_rf, key=lambda a: abs(math.log(eff_rf[a] / rf)))
        name = eff.display_name(best)  # as the sweep stores it (block2 is stored as stage2)
        if name not in chosen:
            chosen.append(name)
    return chosen


def _sweep(out: Path, model: str, layers: Sequence[str], preset: Preset, seed: int, progress: bool) -> dict:
    from diversevis.study.sweep import sweep

    store = sweep(
        model,
        list(layers),
        f"sample:{preset.units}",
        out=out / "sweeps" / model,
        tests=("dfv", "phase", "shift"),
        shift_stride=preset.shift_stride,
        max_iter=preset.max_iter,
        seed=seed,
        progress=progress,
        device=_DEVICE.get(),
    )
    rows = store.rows()
    store.close()
    for r in rows:  # pixel-space diversity of each DFV set, relative to its contrast
        npz = out / "sweeps" / model / r["path"] / "diverse" / "images.npz"
        r["metrics"]["dfv_pixel_min_distance"] = (
            _pixel_min_distance(np.load(npz)["images"]) if npz.is_file() else None
        )
    return {
        "rows": [
            {"layer": r["layer"], "unit": r["unit"], "path": f"sweeps/{model}/{r['path']}", **r["metrics"]}
            for r in rows
        ]
    }


def _baselines(out: Path, preset: Preset, sweep_rows: list[dict], seed: int) -> dict[str, Any]:
    from diversevis.methods.baselines import compare_baselines
    from diversevis.study.sweep import auto_distance_layer

    net = _load("vgg16-paper")
    rows = []
    for layer in preset.baseline_layers:
        units = sorted({r["unit"] for r in sweep_rows if r["layer"] == layer})[: preset.baseline_units]
        dl = auto_distance_layer(net, layer)
        for u in units:
            unit_file = out / "baselines" / f"{layer}_u{u}" / "comparison.json"
            if unit_file.is_file():  # finished in an earlier (killed) run
                rows.append(json.loads(unit_file.read_text())["summary"])
                continue
            cmp = compare_baselines(
                net, layer, u, diversity=0.01, distance_layer=dl, seed=seed, max_iter=preset.max_iter,
                exemplar_candidates=preset.candidates,
            )  # fmt: skip
            d = cmp.save(out / "baselines" / f"{layer}_u{u}")
            summary = {
                "layer": layer,
                "unit": u,
                "dfv_mean_ratio": cmp.row("dfv")["mean_ratio"],
                **{f"{k}_min_distance": r["min_distance"] for k, r in ((r["method"], r) for r in cmp.rows)},
                **{f"{k}_mean_ratio": r["mean_ratio"] for k, r in ((r["method"], r) for r in cmp.rows)},
                "gaps": cmp.gaps(),
                "figure": str((d / "comparison.png").relative_to(out)),
            }
            saved = json.loads(unit_file.read_text()) if unit_file.is_file() else {}
            atomic_write_json(unit_file, {**saved, "summary": summary})
            rows.append(summary)
    return {"rows": rows}


def _prior(out: Path, seed: int, max_iter: int, beta: float, steps: int | None) -> dict[str, Any]:
    from diversevis.images.prior import load_prior, prior_cache_path, save_prior, train_prior

    net = _load("vgg16-paper")
    note = "the cached default prior"
    if prior_cache_path("default").is_file() or steps is None:
        prior = load_prior("default")
    else:  # quick mode: a shorter training run, kept with the study rather than in the shared cache
        path = out / "prior" / f"prior-{steps}steps.pt"
        if path.is_file():
            prior = load_prior(path)
        else:
            prior = train_prior("default", steps=steps, progress=False)
            save_prior(prior, path)
            prior = load_prior(path)
        note = f"the default prior trained for {steps} steps only (quick mode)"
    rows = []
    m = mei(net, "conv3_1", 21, seed=seed, max_iter=max_iter)
    for b in (0.0, beta):
        res = diverse(
            net, "conv3_1", 21, n_images=6, diversity=0.01, distance_layer="conv2_2", seed=seed, mei=m,
            max_iter=max_iter, prior=prior, prior_weight=b,
        )  # fmt: skip
        res.save(out / "prior" / f"beta{b:g}")
        with torch.no_grad():
            nll = prior.nll(res.images.clamp(0, 1))
        rows.append(
            {
                "beta": b,
                "mean_ratio": float(res.ratios.mean()),
                "min_distance": float(res.min_distance),
                "nll_bits_per_dim": float(nll.mean()),
                "grid": f"prior/beta{b:g}/grid.png",
            }
        )
    return {"rows": rows, "prior": note, "val_bpd": prior.metrics.get("val_bpd")}


# -------------------------------------------------------------------------------------------- verdicts


def _finite(rows: list[dict], key: str, layer: str | None = None) -> np.ndarray:
    v = [r.get(key) for r in rows if layer is None or r["layer"] == layer]
    a = np.array([x for x in v if x is not None], dtype=float)
    return a[np.isfinite(a)]


def classify_unit(m: dict[str, Any]) -> str:
    """``phase-invariant``, ``deformation-invariant`` or ``selective`` from a sweep row's metrics."""
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
    """
    m = len(pvals)
    for i, p in enumerate(sorted(pvals)):
        if not p < alpha / (m - i):
            return i
    return m


def _verdict(ok: bool, partly: bool) -> str:
    return "reproduced" if ok else ("partly reproduced" if partly else "not reproduced")


# --------------------------------------------------------------------------------------------- figures


def _layer_distributions(out: Path, rows: list[dict], layers: Sequence[str]) -> str:
    plt = _mpl()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, key, label, line in (
        (axes[0], "shift_min_ratio", "shift test min_ratio", SHIFT_INVARIANT),
        (axes[1], "f1_f0", "F1/F0", COMPLEX_F1F0),
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
    axes[0].set_title("shift invariance per layer (line: median)")
    axes[1].set_title("phase modulation per layer (< 1: complex-like)")
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
    for k, marker in (("restarts", "o"), ("gram", "s"), ("natural", "^")):
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
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, key in zip(axes, ("f1_f0", "shift_min_ratio")):
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


# ---------------------------------------------------------------------------------------------- report


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:.{digits}g}"
    return str(v)


def render_markdown(title: str, intro: list[str], sections: list[Section]) -> str:
    """The report as Markdown (figures as relative image links)."""
    lines = [f"# {title}", ""]
    for p in intro:
        lines += [p, ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.verdict:
            lines += [f"**Verdict: {s.verdict}.**", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        for head, body in s.tables:
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            for row in body:
                lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
            lines.append("")
        for path, caption in s.figures:
            lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def md_inline(text: str) -> Any:
    """HTML for the inline Markdown the report's paragraphs use (``**bold**``, ``*italic*``, ```code```)."""
    import re

    from markupsafe import Markup, escape

    h = str(escape(text))
    h = re.sub(r"`([^`]+)`", r"<code>\1</code>", h)
    h = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", h)
    h = re.sub(r"\*([^*]+)\*", r"<i>\1</i>", h)
    return Markup(h)


def render_html(title: str, intro: list[str], sections: list[Section]) -> str:
    """The report as one static HTML page (Jinja2 template ``reproduction.html.j2``)."""
    from diversevis.study.report.build import _environment

    env = _environment()
    env.filters["md_inline"] = md_inline
    secs = [
        {**asdict(s), "tables": [(h, [[_fmt(v) for v in row] for row in body]) for h, body in s.tables]}
        for s in sections
    ]
    return env.get_template("reproduction.html.j2").render(title=title, intro=intro, sections=secs)


def _machine() -> str:
    """``torch 2.13.0, 2 CPU threads`` or ``torch 2.13.0, CUDA: NVIDIA H100``: where the study ran."""
    where = (
        f"CUDA: {torch.cuda.get_device_name()}"
        if torch.cuda.is_available()
        else f"{torch.get_num_threads()} CPU threads"
    )
    return f"torch {torch.__version__}, {where}"


def _preset_name(p: Preset) -> str:
    """``quick`` for a named preset, else the nearest named one and what differs: ``quick (units=8)``."""
    from dataclasses import fields

    names = [f.name for f in fields(Preset)]

    def diff(q: Preset) -> list[str]:
        return [n for n in names if getattr(q, n) != getattr(p, n)]

    best = min(PRESETS, key=lambda k: len(diff(PRESETS[k])))
    changed = diff(PRESETS[best])
    if not changed:
        return best
    return f"{best} ({', '.join(f'{n}={getattr(p, n)}' for n in changed)})"


def reproduce(
    out: str | Path,
    *,
    preset: str | Preset = "quick",
    seed: int = 0,
    prior_beta: float = 1e-4,
    progress: bool = True,
    log: Callable[[str], None] = print,
    device: str | None = None,
) -> Path:
    """Run the reproduction study and write ``report.md`` / ``report.html`` under ``out``.

    Parameters
    ----------
    out : str or Path
        Study directory (created; a rerun with the same preset and seed resumes it).
    preset : str or Preset
        ``quick`` (a few units, minutes on a CPU), ``standard`` or ``full`` (64 units per layer: a GPU
        job), or a :class:`Preset`.
    seed : int
    prior_beta : float
        Weight of the natural-image prior's NLL in the prior comparison.
    progress : bool
        Progress bars for the sweeps.
    log : callable
        Receives one line per step.
    device : str, optional
        Where the networks run (``"cuda"`` for the ``full`` preset); default: the CPU. The synthetic
        cells and the prior's training stay on the CPU.

    Returns
    -------
    Path
        The report's Markdown file.
    """
    token = _DEVICE.set(device)
    try:
        return _reproduce(out, preset, seed, prior_beta, progress, log)
    finally:
        _DEVICE.reset(token)


def _reproduce(out, preset, seed, prior_beta, progress, log) -> Path:
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise DiversevisError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        name, p = preset, PRESETS[preset]
    else:
        name, p = _preset_name(preset), preset
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = _Steps(out, {"preset": asdict(p), "seed": seed, "prior_beta": prior_beta})
    t_start = time.perf_counter()

    ref = steps.run("reference", lambda: _reference(out, seed, max(p.max_iter, 2000)), log)
    cells = steps.run("cells", lambda: _cells(out, seed), log)
    trade = steps.run("tradeoff", lambda: _tradeoff(out, p.lambdas, seed, p.max_iter), log)
    vgg = steps.run(
        "sweep_vgg16-paper", lambda: _sweep(out, "vgg16-paper", VGG_LAYERS, p, seed, progress), log
    )
    eff_layers = steps.run("eff_layers", lambda: {"layers": _matched_eff_layers(VGG_LAYERS)}, log)["layers"]
    eff = steps.run(
        "sweep_efficientnet-lite0",
        lambda: _sweep(out, "efficientnet-lite0", eff_layers, p, seed, progress),
        log,
    )
    base = steps.run("baselines", lambda: _baselines(out, p, vgg["rows"], seed), log)
    prior = steps.run("prior", lambda: _prior(out, seed, p.max_iter, prior_beta, p.prior_steps), log)

    sections = _sections(out, ref, cells, trade, vgg["rows"], eff["rows"], eff_layers, base["rows"], prior)
    total = time.perf_counter() - t_start
    compute = sum(float(r.get("seconds") or 0) for r in (ref, cells, trade, vgg, eff, base, prior))
    intro = [
        "Reproduction of Cadena et al., *Diverse feature visualizations reveal invariances in early layers of "
        "deep neural networks* (ECCV 2018) with diversevis. The paper used a Gatys-normalised VGG-19 and "
        "ResNet-50, whose weights are not available offline here; this study uses `vgg16-paper` "
        "(ImageNet VGG-16, VALID padding, Gatys-normalised on the bundled photos) and `efficientnet-lite0` "
        "(an ImageNet residual network) instead, so it compares shapes and directions, not digits.",
        f"Preset `{name}`: {p.units} units per layer, {p.baseline_units} units per layer in the baseline "
        f"comparison, shift-test stride {p.shift_stride}, seed {seed}. The steps took {compute / 60:.1f} min "
        f"of computation in all ({_machine()}); this invocation {total / 60:.1f} min (it reuses finished steps).",
        *(
            []
            if name == "full"
            else [
                "This is not the `full` preset (64 units per layer, 32 in the baseline comparison, shift-test "
                "stride 1), which is a GPU job (`diversevis reproduce --preset full --device cuda`): fewer units "
                "make the per-layer fractions coarse, and a coarser shift-test stride tests fewer crop offsets, "
                "so its worst-crop ratios are upper bounds."
            ]
        ),
        "Verdicts: " + "; ".join(f"{s.title}: **{s.verdict}**" for s in sections if s.verdict) + ".",
    ]
    title = "diversevis reproduction study"
    md = render_markdown(title, intro, sections)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", render_html(title, intro, sections))
    atomic_write_json(
        out / "verdicts.json",
        {s.title: s.verdict for s in sections if s.verdict} | {"preset": name, "seed": seed},
    )
    return out / "report.md"


def _sections(
    out: Path,
    ref: dict,
    cells: dict,
    trade: dict,
    vgg: list[dict],
    eff: list[dict],
    eff_layers: list[str],
    base: list[dict],
    prior_step: dict,
) -> list[Section]:
    secs: list[Section] = []

    # --- the reference experiment
    s = Section("Reference experiment (notebook, method.md B.2)")
    pr = PAPER_REFERENCE
    s.tables.append(
        (
            ["quantity", "paper notebook (VGG-19)", "diversevis (VGG-16)"],
            [
                ["mean activation", pr["mean_activation"], ref["mean_activation"]],
                [
                    "activations",
                    ", ".join(f"{a:.1f}" for a in pr["activations"]),
                    ", ".join(f"{a:.1f}" for a in ref["activations"]),
                ],
                ["min / max activation", pr["min_over_max"], ref["min_over_max"]],
                ["min ratio to the MEI", "-", ref["min_ratio"]],
                ["min conv2_2 RMS distance", f"about {pr['min_distance']}", ref["min_distance"]],
                ["iterations to the early stop", pr["n_iter"], ref["n_iter"]],
            ],
        )  # fmt: skip
    )
    shape_ok = ref["min_over_max"] >= 0.8 and 100 <= ref["n_iter"] <= 2000
    s.verdict = "reproduced (shape)" if shape_ok else "not reproduced"
    s.paragraphs.append(
        "Activations of a Gatys-normalised network are in units of the layer's mean activation over natural "
        "images, so their scale is comparable, but the networks differ (VGG-16 vs VGG-19, other "
        "normalisation images): compare the shape: all six images near the maximum (min/max >= 0.8), "
        "a finite diverse set, an early stop within a few hundred to ~2000 iterations."
    )
    s.figures.append((ref["grid"], "The reference diverse set (vgg16-paper conv3_1 unit 21, lambda 0.01)."))
    secs.append(s)

    # --- synthetic cells
    s = Section("Method check: synthetic cells (method.md B.4.1)")
    rows = cells["rows"]
    get = {(r["cell"], r["lambda"]): r for r in rows}
    cx, sx = get[("complex", 1.0)], get[("simple", 1.0)]
    complex_ok = cx["min_ratio"] >= 0.95 and cx["pixel_min_distance"] > 0.5
    # a simple cell has one maximum: it cannot be both at its maximum and diverse
    simple_ok = not (sx["min_ratio"] >= 0.95 and sx["pixel_min_distance"] > 0.5)
    s.verdict = _verdict(complex_ok and simple_ok, complex_ok or simple_ok)
    s.tables.append(
        (
            ["cell", "lambda", "min ratio to MEI", "min pixel distance / RMS contrast"],
            [[r["cell"], r["lambda"], r["min_ratio"], r["pixel_min_distance"]] for r in rows],
        )
    )
    s.paragraphs.append(
        "An energy-model complex cell (phase invariant by construction) keeps every image of a diverse set "
        "at its maximum while the images differ in phase (min ratio >= 0.95, min pixel distance > 0.5 of the "
        "contrast); a simple cell has a single maximum, so it cannot be both at its maximum and diverse: its "
        "set either stays near one image or loses activation."
    )
    s.figures += [
        ("cells/complex/grid.png", "Complex cell, lambda 1."),
        ("cells/simple/grid.png", "Simple cell, lambda 1."),
    ]
    secs.append(s)

    # --- trade-off
    s = Section("Diversity vs activation over lambda (method.md B.4.3)")
    tr = trade["rows"]
    dist = [r["min_distance"] for r in tr]
    ratio = [r["mean_ratio"] for r in tr]
    ok = dist[-1] > dist[0] and ratio[-1] <= ratio[0] + 1e-3
    s.verdict = _verdict(ok, dist[-1] > dist[0])
    s.tables.append(
        (
            ["lambda", "mean ratio", "min ratio", "min conv2_2 distance", "min pixel distance / contrast"],
            [
                [r["lambda"], r["mean_ratio"], r["min_ratio"], r["min_distance"], r["pixel_min_distance"]]
                for r in tr
            ],
        )
    )
    s.figures.append((_tradeoff_figure(out, tr), "Min distance rises and activation falls as lambda grows."))
    secs.append(s)

    # --- claim (i)
    s = Section("Claim (i): phase-invariant and deformation-invariant units")
    layers = [la for la in VGG_LAYERS if any(r["layer"] == la for r in vgg)]
    table = []
    for la in layers:
        lr = [r for r in vgg if r["layer"] == la]
        kinds = [classify_unit(r) for r in lr]
        f = _finite(lr, "f1_f0")
        sh = _finite(lr, "shift_min_ratio")
        table.append(
            [
                la,
                len(lr),
                f"{(f < COMPLEX_F1F0).mean():.0%}" if f.size else "-",
                f"{(f < PHASE_INVARIANT_F1F0).mean():.0%}" if f.size else "-",
                f"{(sh >= SHIFT_INVARIANT).mean():.0%}" if sh.size else "-",
                kinds.count("phase-invariant"),
                kinds.count("deformation-invariant"),
                float(np.median(f)) if f.size else None,
                float(np.median(sh)) if sh.size else None,
            ]
        )
    s.tables.append(
        (
            [
                "layer",
                "units",
                "F1/F0 < 1",
                f"F1/F0 < {PHASE_INVARIANT_F1F0}",
                f"shift min >= {SHIFT_INVARIANT}",
                "phase-invariant",
                "deformation-invariant",
                "median F1/F0",
                "median shift min",
            ],
            table,
        )  # fmt: skip
    )
    deep = [r for r in vgg if r["layer"] in ("conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3")]
    kinds = {r["layer"] + f" u{r['unit']}": classify_unit(r) for r in deep}
    n_phase = sum(k == "phase-invariant" for k in kinds.values())
    n_def = sum(k == "deformation-invariant" for k in kinds.values())
    s.verdict = _verdict(n_phase > 0 and n_def > 0, n_phase > 0 or n_def > 0)
    s.paragraphs.append(
        f"A unit is *phase-invariant* when its grating response barely changes with phase (F1/F0 < "
        f"{PHASE_INVARIANT_F1F0}) and its diverse set stays at >= {STRONG_RATIO:.0%} of the MEI; "
        f"*deformation-invariant* when it is phase-selective (F1/F0 >= {COMPLEX_F1F0}) yet DFV finds images at "
        f">= {STRONG_RATIO:.0%} of the MEI whose smallest pairwise pixel distance is >= "
        f"{DEFORMATION_PIXEL_DISTANCE} of their RMS contrast (two independent images: sqrt 2). In conv2_x-conv3_x: "
        f"{n_phase} phase-invariant and {n_def} deformation-invariant of {len(deep)} units sampled."
    )
    s.figures.append((_layer_distributions(out, vgg, layers), "Shift-test min_ratio and F1/F0 per layer."))
    order = sorted(deep, key=lambda r: (["phase-invariant", "deformation-invariant", "selective"].index(
        classify_unit(r)), r.get("f1_f0") if r.get("f1_f0") is not None else 9))  # fmt: skip
    for r in order[:24]:
        grid = f"{r['path']}/diverse/grid.png"
        if (out / grid).is_file():
            s.figures.append(
                (grid, f"{r['layer']} u{r['unit']}: {classify_unit(r)}, F1/F0 {_fmt(r.get('f1_f0'))}, "
                 f"DFV min ratio {_fmt(r.get('dfv_min_ratio'))}, shift min {_fmt(r.get('shift_min_ratio'))}")
            )  # fmt: skip
    secs.append(s)

    # --- claim (ii)
    s = Section("Claim (ii): a residual network's matching layers differ")
    from scipy.stats import mannwhitneyu

    pairs = []
    vnet, enet = _load("vgg16-paper"), _load("efficientnet-lite0")
    erf = {la: enet.receptive_field(la).size for la in eff_layers}
    for la in layers:
        rf = vnet.receptive_field(la).size
        lb = min(erf, key=lambda b: abs(math.log(erf[b] / rf)))
        if max(erf[lb], rf) / min(erf[lb], rf) <= 1.5:
            pairs.append((la, lb))
    table, differ, tested, pvals = [], 0, 0, []
    for la, lb in pairs:
        row = [f"{la} / {lb}", f"{vnet.receptive_field(la).size} / {erf[lb]}"]
        for key in ("f1_f0", "shift_min_ratio"):
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
    s.tables.append(
        (
            [
                "layers (vgg16-paper / efficientnet-lite0)",
                "RF px",
                "median F1/F0",
                "p (Mann-Whitney)",
                "median shift min",
                "p (Mann-Whitney)",
            ],
            table,
        )  # fmt: skip
    )
    holm = holm_rejections(pvals, 0.05)
    s.verdict = _verdict(holm > 0 and tested >= 4, differ > 0)
    if tested < 4:
        s.verdict = "not enough units for a verdict"
        s.paragraphs.append(
            f"Only {tested} layer pairs have enough units for a Mann-Whitney test to reach p < 0.05 (3 units a "
            "side cannot: its smallest two-sided p is 0.1); run the `standard` or `full` preset for a verdict."
        )
    s.paragraphs.append(
        "ResNet-50 weights are not available offline; EfficientNet-Lite0 (a residual MBConv ImageNet network) "
        "stands in. Layers are paired by receptive-field size (within a factor 1.5); a pair differs when a "
        f"Mann-Whitney U test on the per-unit invariance indices gives p < 0.05. {differ} of {tested} tests differ "
        f"at p < 0.05, {holm} after Holm's correction for the {tested} tests (the verdict needs at least one)."
    )
    s.figures.append(
        (_compare_figure(out, vgg, eff, pairs), "Per-unit invariance indices at RF-matched layers.")
    )
    secs.append(s)

    # --- claim (iii)
    s = Section("Claim (iii): initialisation- and sampling-based diversity underestimates DFV's")
    table = []
    wins: dict[str, list[bool]] = {"restarts": [], "gram": [], "natural": []}
    for r in base:
        g = r.get("gaps") or {}
        for k in ("restarts", "gram"):
            if g.get(k) is not None:
                wins[k].append(g[k] > 1)
        if g.get("natural") is not None:
            # sampling can only show the diversity of the images it finds; it underestimates the unit's
            # invariances when its set is less diverse, or when it never reaches the activations DFV holds
            weak = (r.get("natural_mean_ratio") or 0) < 0.5 * r["dfv_mean_ratio"]
            wins["natural"].append(g["natural"] > 1 or weak)
        table.append([f"{r['layer']} u{r['unit']}", r["dfv_mean_ratio"], r.get("dfv_min_distance"),
                      g.get("restarts"), g.get("gram"), g.get("natural"), r.get("natural_mean_ratio")])  # fmt: skip
    s.tables.append(
        (
            [
                "unit",
                "DFV mean ratio",
                "DFV min distance",
                "x restarts",
                "x gram",
                "x natural",
                "natural mean ratio",
            ],
            table,
        )  # fmt: skip
    )
    frac = {k: (float(np.mean(v)) if v else None) for k, v in wins.items()}
    beats_init = frac["restarts"] is not None and frac["restarts"] >= 0.8
    beats_sampling = frac["natural"] is not None and frac["natural"] >= 0.8
    s.verdict = _verdict(beats_init and beats_sampling, beats_init or beats_sampling)
    s.paragraphs.append(
        "Each baseline set is compared with DFV in the same distance space (the previous block's last conv): "
        "random restarts and Gram-cosine diversity at matched mean activation, natural exemplars (greedy "
        "max-min over the most activating natural patches) at matched contrast. 'x baseline' = DFV min "
        "distance / baseline min distance (> 1: DFV finds the more diverse set). Natural exemplars count as "
        "underestimating when they are less diverse than DFV's set or reach less than half of DFV's "
        "activation (they then show what the unit tolerates at low activation only). DFV wins against "
        + ", ".join(f"{k} in {v:.0%} of units" for k, v in frac.items() if v is not None)
        + f" of {len(base)} (verdict threshold: 80 % for restarts and for natural exemplars)."
    )
    if base:
        s.figures.append((_baseline_figure(out, base), "DFV vs baseline min distances per unit."))
        s.figures += [(r["figure"], f"{r['layer']} u{r['unit']}") for r in base[:4]]
    secs.append(s)

    # --- prior
    s = Section("Natural-image prior (PixelCNN-style, method.md A)")
    prior = prior_step["rows"]
    s.tables.append(
        (
            ["beta", "mean ratio", "min conv2_2 distance", "prior NLL (bits/dim)"],
            [[r["beta"], r["mean_ratio"], r["min_distance"], r["nll_bits_per_dim"]] for r in prior],
        )
    )
    s.figures += [(r["grid"], f"beta = {r['beta']:g}") for r in prior]
    s.paragraphs.append(
        f"Prior: {prior_step['prior']} (validation {_fmt(prior_step.get('val_bpd'))} bits/dim on held-out "
        "natural patches; uniform noise would be 8). With the prior's negative log-likelihood in the "
        "objective the images become more natural (lower NLL) at a small cost in activation or diversity."
    )
    secs.append(s)
    return secs


def publish(study: str | Path, dest: str | Path) -> Path:
    """Copy a study's Markdown report and the figures it links into a documentation folder.

    ``dest`` is the Markdown file to write (``docs/reproduction.md``); the figures go to the folder of the
    same name without the suffix (``docs/reproduction/``), keeping their paths inside the study, and the
    links are rewritten to point there. Existing figures of an earlier publication are replaced.

    Parameters
    ----------
    study : str or Path
        A study directory holding ``report.md`` (see :func:`reproduce`).
    dest : str or Path
        The Markdown file to write.

    Returns
    -------
    Path
        ``dest``.
    """
    import re
    import shutil

    study, dest = Path(study), Path(dest)
    md_path = study / "report.md"
    if not md_path.is_file():
        raise DiversevisError(f"{study} holds no report.md; run `diversevis reproduce --out {study}` first")
    md = md_path.read_text()
    fig_dir = dest.with_suffix("")
    links = sorted(set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)))
    missing = [link for link in links if not (study / link).is_file()]
    if missing:
        raise DiversevisError(f"the report links figures that are missing: {', '.join(missing[:5])}")
    if fig_dir.exists():
        shutil.rmtree(fig_dir)
    for link in links:
        target = fig_dir / link
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(study / link, target)
    md = re.sub(r"(!\[[^\]]*\]\()([^)]+)\)", lambda m: f"{m.group(1)}{fig_dir.name}/{m.group(2)})", md)
    atomic_write_text(dest, md)
    return dest
