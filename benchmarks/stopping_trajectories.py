"""Per-iteration trajectories of DFV runs, and the stopping rule they suggest (issue 17, item 5).

``record`` runs the reference problem (``vgg16-paper`` conv3_1 unit 21, 6 images, distance layer
conv2_2; lambda 0.01 and floor 0.85, several seeds) and batched sweep units (``diverse_units`` on
conv2_1 and conv3_1 units, floor 0.85 as the sweep runs them, and lambda 0.01) for the full
``max_iter`` without early stopping, and saves per iteration and group: the loss, the values the
plateau rule watches (mean and min ratio to the MEI, diversity relative to the start) and the min
pairwise pixel distance. The MEI runs are saved the same way (mean and best restart activation).

``choose`` replays both stopping rules on the saved trajectories (exactly: each rule's result is the
iterate the library returns when it stops there: the lowest loss, or in floor mode the most diverse
feasible one) for a grid of ``window`` and ``rtol``, and prints per rule the iterations and the
largest relative differences from the EMA rule's result (mean/min ratio, min feature and pixel
distance; the MEI's activation for MEI runs).

    python benchmarks/stopping_trajectories.py record --out /tmp/traj   # about 10 min on 2 cores
    python benchmarks/stopping_trajectories.py choose --out /tmp/traj

No timing assertions: the script prints what it measured.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

import diversevis as dv
import diversevis.methods.dfv as dfv_mod
import diversevis.methods.dfv_units as units_mod
from diversevis.core.objectives import pairwise_rms_matrix

MODEL, LAYER, UNIT, DIST = "vgg16-paper", "conv3_1", 21, "conv2_2"
SWEEP = {"conv2_1": ("conv1_2", list(range(0, 128, 8))), "conv3_1": ("conv2_2", list(range(0, 256, 16)))}
FULL = dict(stop="ema", patience=0, max_iter=1000, calibrate=False)


def _pixel_min(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(groups,)`` the min pairwise RMS pixel distance (around grey) of each group's images."""
    z = (x.detach() - 0.5).reshape(groups, -1, x[0].numel())
    out = []
    for g in range(groups):
        d = pairwise_rms_matrix(z[g].double())
        out.append(d[~torch.eye(len(d), dtype=torch.bool)].min() if len(d) > 1 else d.new_zeros(()))
    return torch.stack(out).float()


class Recorder:
    """Wraps the loop the DFV modules call, keeping every run's result and per-step pixel distances."""

    def __init__(self) -> None:
        self.runs: list[dict] = []
        self._single, self._groups = dfv_mod.optimize, units_mod.optimize_groups

    def __enter__(self) -> Recorder:
        def single(param, loss_fn, **kw):
            pix = []

            def wrapped(x):
                pix.append(_pixel_min(x, 1))
                return loss_fn(x)

            res = self._single(param, wrapped, **kw)
            self._keep([res], pix, kw.get("desc", ""))
            return res

        def grouped(param, loss_fn, **kw):
            pix = []

            def wrapped(x, groups):
                pix.append(_pixel_min(x, len(groups)))
                return loss_fn(x, groups)

            res = self._groups(param, wrapped, **kw)
            self._keep(res, pix, kw.get("desc", ""))
            return res

        dfv_mod.optimize, units_mod.optimize_groups = single, grouped
        return self

    def __exit__(self, *exc) -> None:
        dfv_mod.optimize, units_mod.optimize_groups = self._single, self._groups

    def _keep(self, res, pix, desc: str) -> None:
        self.runs.append(
            {
                "desc": desc,
                "loss": np.stack([r.history for r in res], 1),
                "watched": np.stack([r.watched for r in res], 1),
                "pixel_min": torch.stack(pix).numpy(),
            }
        )


def _save(out: Path, name: str, run: dict, **meta) -> None:
    np.savez(out / f"{name}.npz", **run, **meta)
    print(f"saved {name}: {run['loss'].shape[0]} steps x {run['loss'].shape[1]} groups", flush=True)


def record(out: Path, seeds: int) -> None:
    """Full-length runs (MEI once per seed or layer, then the lambda- and floor-mode sets)."""
    out.mkdir(parents=True, exist_ok=True)
    net = dv.load_model(MODEL)
    loop = {k: v for k, v in FULL.items() if k != "calibrate"}
    modes = {"lambda": dict(diversity=0.01), "floor": dict(floor=0.85)}
    for seed in range(seeds):
        with Recorder() as rec:
            mei = dv.mei(net, LAYER, UNIT, seed=seed, **loop)
        _save(out, f"ref_s{seed}_mei", rec.runs[0], floor=np.nan)
        for mode, kw in modes.items():
            with Recorder() as rec:
                dv.diverse(
                    net, LAYER, UNIT, n_images=6, distance_layer=DIST, seed=seed, mei=mei, **kw, **FULL
                )
            _save(out, f"ref_{mode}_s{seed}", rec.runs[0], floor=kw.get("floor", np.nan))
    for layer, (dl, units) in SWEEP.items():
        with Recorder() as rec:
            meis = dv.mei_units(net, layer, units, seed=0, **loop)
        _save(out, f"{layer}_mei", rec.runs[0], floor=np.nan)
        for mode, kw in modes.items():
            with Recorder() as rec:
                dv.diverse_units(
                    net, layer, units, n_images=6, distance_layer=dl, seed=0, mei=meis, **kw, **FULL
                )
            _save(out, f"{layer}_{mode}", rec.runs[0], floor=kw.get("floor", np.nan))


# ------------------------------------------------------------------------------------ replaying rules
def ema_stop(loss: np.ndarray, patience: int = 100, alpha: float = 0.9) -> int:
    """Iterations the EMA rule runs on a ``(T,)`` loss trajectory (the loop's recursion)."""
    ema, best, bad = loss[0], np.inf, 0
    for t, v in enumerate(loss):
        ema = v if t == 0 else alpha * ema + (1 - alpha) * v
        bad = 0 if ema < best else bad + 1
        best = min(best, ema)
        if bad > patience:
            return t + 1
    return len(loss)


def plateau_stop(watched: np.ndarray, ready: np.ndarray, window: int, rtol: float, atol: float = 0.0) -> int:
    """Iterations the plateau rule runs on ``(T, K)`` watched values (``ready``: ``(T,)`` bool)."""
    half = window // 2
    T = len(watched)
    if T < window:
        return T
    c = np.concatenate([np.zeros((1, watched.shape[1])), np.cumsum(watched, 0)])
    for t in range(window - 1, T):
        recent = (c[t + 1] - c[t + 1 - half]) / half
        before = (c[t + 1 - half] - c[t + 1 - 2 * half]) / half
        if ready[t] and np.all(np.abs(recent - before) <= rtol * np.abs(recent) + atol):
            return t + 1
    return T


def result_at(run: dict, g: int, n: int) -> dict:
    """The quality of the iterate the library returns after ``n`` steps of group ``g``."""
    w, loss, pix = run["watched"][:n, g], run["loss"][:n, g], run["pixel_min"][:n, g]
    floor = float(run["floor"])
    if run["kind"] == "mei":
        t = int(np.argmin(loss))
        return {"mei": w[t, 1]}
    if np.isfinite(floor):
        ok = np.flatnonzero(w[:, 1] >= floor)
        t = int(ok[np.argmax(w[ok, 2])]) if len(ok) else n - 1
    else:
        t = int(np.argmin(loss))
    return {"mean": w[t, 0], "min": w[t, 1], "dist": w[t, 2], "pixel": pix[t]}


def _ready(run: dict, g: int) -> np.ndarray:
    w, floor = run["watched"][:, g], float(run["floor"])
    if run["kind"] == "mei" or not np.isfinite(floor):
        return np.ones(len(w), dtype=bool)
    return np.maximum.accumulate(w[:, 1] >= floor)


def load(out: Path) -> dict[str, dict]:
    runs = {}
    for f in sorted(out.glob("*.npz")):
        d = dict(np.load(f))
        d["kind"] = "mei" if f.stem.endswith("_mei") else "set"
        runs[f.stem] = d
    return runs


def replay(runs: dict[str, dict], window: int, rtol: float, atol: float) -> dict[str, list]:
    """Per run name, per group: (EMA iterations, plateau iterations, max |rel diff| of the result)."""
    rows = {}
    for name, run in runs.items():
        per = []
        for g in range(run["loss"].shape[1]):
            n_ema = ema_stop(run["loss"][:, g])
            n_pl = plateau_stop(run["watched"][:, g], _ready(run, g), window, rtol, atol)
            a, b = result_at(run, g, n_ema), result_at(run, g, n_pl)
            rel = {k: abs(b[k] - a[k]) / max(abs(a[k]), 1e-12) for k in a}
            per.append((n_ema, n_pl, rel))
        rows[name] = per
    return rows


def choose(out: Path, windows: list[int], rtols: list[float], atol: float) -> None:
    runs = load(out)
    print(f"{len(runs)} runs: " + ", ".join(f"{k} ({v['loss'].shape[1]})" for k, v in runs.items()))
    print(
        "\n| kind | window | rtol | EMA its (sum) | plateau its (sum) | its ratio | max rel diff | p95 rel diff | worst |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for kind in ("set", "mei"):
        for window, rtol in itertools.product(windows, rtols):
            rows = replay({k: v for k, v in runs.items() if v["kind"] == kind}, window, rtol, atol)
            n_e = sum(r[0] for v in rows.values() for r in v)
            n_p = sum(r[1] for v in rows.values() for r in v)
            diffs = [(max(r[2].values()), name, g, max(r[2], key=r[2].get)) for name, v in rows.items()
                     for g, r in enumerate(v)]  # fmt: skip
            worst = max(diffs)
            p95 = float(np.percentile([d[0] for d in diffs], 95))
            print(
                f"| {kind} | {window} | {rtol:g} | {n_e} | {n_p} | {n_e / n_p:.2f} | {worst[0]:.4f} | "
                f"{p95:.4f} | {worst[1]} g{worst[2]} {worst[3]} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("record", "choose"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/stopping_trajectories"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--windows", default="40,60,80,100,150")
    ap.add_argument("--rtols", default="0.001,0.002,0.005,0.01")
    ap.add_argument("--atol", type=float, default=0.0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "record":
        record(args.out, args.seeds)
    else:
        choose(
            args.out,
            [int(w) for w in args.windows.split(",")],
            [float(r) for r in args.rtols.split(",")],
            args.atol,
        )


if __name__ == "__main__":
    main()
