"""The reproduction study's experiments, one function per step, and the store that lets a rerun skip them.

Every step returns a JSON-able dict; :class:`_Steps` saves it under ``DIR/steps/<name>.json`` with the
study's configuration, so a rerun with the same configuration reuses it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diversevis.core.cache import atomic_write_json, json_default
from diversevis.methods.dfv import diverse, mei
from diversevis.study.reproduce.config import _DEVICE, EFF_CANDIDATES, FLOOR, Preset, _load, _preset_name
from diversevis.study.reproduce.stats import _pixel_min_distance

#: Where the study's sweeps go: floor-mode sweeps, apart from the lambda-mode ones of earlier versions.
SWEEPS = f"sweeps-floor{FLOOR:g}"


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


#: The lambda-mode notebook replication (reference, trade-off, prior) stops as the reference code does
#: (method.md A.8: EMA-loss patience), so that its iterations compare with the notebook's.
NOTEBOOK_STOP = "ema"


def _reference(out: Path, seed: int, max_iter: int) -> dict[str, Any]:
    net = _load("vgg16-paper")
    res = diverse(
        net, "conv3_1", 21, n_images=6, diversity=0.01, distance_layer="conv2_2", seed=seed, max_iter=max_iter,
        stop=NOTEBOOK_STOP,
    )  # fmt: skip
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
    m = mei(net, "conv3_1", 21, seed=seed, max_iter=max_iter, stop=NOTEBOOK_STOP)
    rows = []
    for lam in lambdas:
        res = diverse(
            net, "conv3_1", 21, n_images=6, diversity=lam, distance_layer="conv2_2", seed=seed, mei=m,
            max_iter=max_iter, stop=NOTEBOOK_STOP,
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
        out=out / SWEEPS / model,
        tests=("dfv", "phase", "shift"),
        floor=FLOOR,
        shift_stride=preset.shift_stride,
        max_iter=preset.max_iter,
        seed=seed,
        progress=progress,
        device=_DEVICE.get(),
    )
    rows = store.rows()
    store.close()
    for r in rows:  # pixel-space diversity of each DFV set, relative to its contrast
        npz = out / SWEEPS / model / r["path"] / "diverse" / "images.npz"
        r["metrics"]["dfv_pixel_min_distance"] = (
            _pixel_min_distance(np.load(npz)["images"]) if npz.is_file() else None
        )
    return {
        "rows": [
            {"layer": r["layer"], "unit": r["unit"], "path": f"{SWEEPS}/{model}/{r['path']}", **r["metrics"]}
            for r in rows
        ],
        # every unit's own time, whichever (resumed) invocation computed it: the step's wall time counts
        # only this invocation's part
        "compute_seconds": sum(float(r["seconds"] or 0) for r in rows),
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
            t0 = time.perf_counter()
            cmp = compare_baselines(
                net, layer, u, floor=FLOOR, distance_layer=dl, seed=seed, max_iter=preset.max_iter,
                exemplar_candidates=preset.candidates, ppgn=_generator(preset),
            )  # fmt: skip
            d = cmp.save(out / "baselines" / f"{layer}_u{u}")
            summary = _baseline_summary(cmp, layer, u, str((d / "comparison.png").relative_to(out)))
            summary["seconds"] = round(time.perf_counter() - t0, 1)
            saved = json.loads(unit_file.read_text()) if unit_file.is_file() else {}
            atomic_write_json(unit_file, {**saved, "summary": summary})
            rows.append(summary)
    timed = [r["seconds"] for r in rows if r.get("seconds") is not None]
    return {"rows": rows, "compute_seconds": sum(timed), "untimed_units": len(rows) - len(timed)}


def _baseline_summary(cmp, layer: str, unit: int, figure: str) -> dict[str, Any]:
    """One unit's row of the baseline comparison: DFV's and each baseline's min distance and mean ratio."""
    return {
        "layer": layer,
        "unit": unit,
        "dfv_mean_ratio": cmp.row("dfv")["mean_ratio"],
        **{f"{k}_min_distance": r["min_distance"] for k, r in ((r["method"], r) for r in cmp.rows)},
        **{f"{k}_mean_ratio": r["mean_ratio"] for k, r in ((r["method"], r) for r in cmp.rows)},
        **{f"{k}_di": r.get("di") for k, r in ((r["method"], r) for r in cmp.rows)},
        **{f"{k}_di_feature": r.get("di_feature") for k, r in ((r["method"], r) for r in cmp.rows)},
        "ppgn_matched": cmp.extra.get("ppgn_matched"),
        "gaps": cmp.gaps(),
        "figure": figure,
    }


def _generator(preset: Preset):
    """The PPGN baseline's generator: the cached ``default`` one, trained and cached when missing (about
    25 minutes on a CPU); the quick preset uses the ``tiny`` one (a minute), which only shows the wiring."""
    from diversevis.methods.generator import load_generator

    name = "tiny" if _preset_name(preset).startswith("quick") else "default"
    return load_generator(name, train=True, progress=False)


def _prior_model(out: Path, steps: int | None):
    """The natural-image prior to use and how to name it in the report.

    The cached default prior when there is one (or when ``steps`` is ``None``: then it is trained and
    cached); otherwise (quick mode) a prior trained for ``steps`` steps, kept with the study.
    """
    from diversevis.images.prior import load_prior, prior_cache_path, save_prior, train_prior

    if prior_cache_path("default").is_file() or steps is None:
        return load_prior("default"), "the cached default prior"
    path = out / "prior" / f"prior-{steps}steps.pt"
    if path.is_file():
        prior = load_prior(path)
    else:
        prior = train_prior("default", steps=steps, progress=False)
        save_prior(prior, path)
        prior = load_prior(path)
    return prior, f"the default prior trained for {steps} steps only (quick mode)"


def _prior(out: Path, seed: int, max_iter: int, beta: float, steps: int | None) -> dict[str, Any]:
    net = _load("vgg16-paper")
    prior, note = _prior_model(out, steps)
    rows = []
    m = mei(net, "conv3_1", 21, seed=seed, max_iter=max_iter, stop=NOTEBOOK_STOP)
    for b in (0.0, beta):
        res = diverse(
            net, "conv3_1", 21, n_images=6, diversity=0.01, distance_layer="conv2_2", seed=seed, mei=m,
            max_iter=max_iter, prior=prior, prior_weight=b, stop=NOTEBOOK_STOP,
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
