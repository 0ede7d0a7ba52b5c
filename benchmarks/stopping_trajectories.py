"""Per-iteration trajectories of DFV runs, and the stopping rule they suggest (issue 17, item 5).

``record`` runs the reference problem (``vgg16-paper`` conv3_1 unit 21, 6 images, distance layer
conv2_2; lambda 0.01 and floor 0.85, several seeds) and batched sweep units (``diverse_units`` on
conv2_1 and conv3_1 units, floor 0.85 as the sweep runs them, and lambda 0.01) for the full
``max_iter`` without early stopping, and saves per iteration and group: the loss, the values the
plateau rule watches (mean and min ratio to the MEI, diversity relative to the start) and the min
pairwise pixel distance. The MEI runs are saved the same way (mean and best restart activation).

``choose`` replays both stopping rules on the saved trajectories (exactly: each rule's result is the
iterate the library returns when it stops there: the lowest loss, or in floor mode the most diverse
feasible one) for a grid of windows and tolerances (activations, diversity), and prints per case how
many times fewer iterations the plateau rule takes, the largest per-group relative difference of the
ratios (the MEI activation for MEI runs) from the EMA rule's result, and the relative difference of
the mean min distances (feature layer and pixels) over the groups.

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


def plateau_stop(watched: np.ndarray, ready: np.ndarray, window: int, rtol) -> int:
    """Iterations the plateau rule runs on ``(T, K)`` watched values (``ready``: ``(T,)`` bool;
    ``rtol``: a number or one per quantity), as :func:`diversevis.core.plateau.plateaued` decides."""
    half, T = window // 2, len(watched)
    c = np.concatenate([np.zeros((1, watched.shape[1])), np.cumsum(watched, 0)])
    for t in range(window - 1, T):
        recent = (c[t + 1] - c[t + 1 - half]) / half
        before = (c[t + 1 - half] - c[t + 1 - 2 * half]) / half
        if ready[t] and np.all(np.abs(recent - before) <= np.asarray(rtol) * np.abs(recent)):
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


def replay_group(run: dict, g: int, window: int, rtol: float, rtol_div: float) -> tuple[int, int, dict, dict]:
    """Group ``g`` of a run: EMA iterations, plateau iterations, and the two results."""
    rt = rtol if run["kind"] == "mei" else np.array([rtol, rtol, rtol_div])
    n_ema = ema_stop(run["loss"][:, g])
    n_pl = plateau_stop(run["watched"][:, g], _ready(run, g), window, rt)
    return n_ema, n_pl, result_at(run, g, n_ema), result_at(run, g, n_pl)


def summary(runs: dict[str, dict], names: list[str], window: int, rtol: float, rtol_div: float) -> str:
    """One line: fewer iterations (sum over groups), the largest per-group |rel diff| of the ratios
    (or MEI activation), and the relative difference of the mean distances over groups."""
    rows = [
        replay_group(runs[n], g, window, rtol, rtol_div)
        for n in names
        for g in range(runs[n]["loss"].shape[1])
    ]
    x = sum(r[0] for r in rows) / sum(r[1] for r in rows)
    keys = [k for k in ("mean", "min", "mei") if k in rows[0][2]]
    worst = max(abs(r[3][k] / r[2][k] - 1) for r in rows for k in keys)
    out = f"x{x:.2f} ratios {100 * worst:.2f} %"
    if "dist" in rows[0][2]:
        for k in ("dist", "pixel"):
            rel = np.mean([r[3][k] for r in rows]) / np.mean([r[2][k] for r in rows]) - 1
            out += f" {k} {100 * rel:+.2f} %"
    return out


def choose(out: Path, windows: list[int], rtols: list[float], rtols_div: list[float]) -> None:
    """Print, per (window, rtol, rtol of the diversity), the replayed rule against the EMA rule."""
    runs = load(out)
    seeds = sorted({n.rsplit("_s", 1)[1] for n in runs if n.startswith("ref_lambda_s")})
    cases = {f"ref s{s}": [f"ref_lambda_s{s}"] for s in seeds}
    cases.update(
        {
            "ref floor": [n for n in runs if n.startswith("ref_floor")],
            "sweep lambda": [n for n in runs if n.endswith("_lambda") and not n.startswith("ref")],
            "sweep floor": [n for n in runs if n.endswith("_floor") and not n.startswith("ref")],
            "sweep MEI": [n for n in runs if n.endswith("_mei") and not n.startswith("ref")],
        }
    )
    print("| window | rtol | rtol diversity | " + " | ".join(cases) + " |")
    print("|---:|---:|---:|" + "---|" * len(cases))
    for window, rtol, rtol_div in itertools.product(windows, rtols, rtols_div):
        cells = []
        for name, names in cases.items():
            if name.startswith("ref s"):  # with its MEI: time-weighted as measured (MEI step 0.7 x a set's)
                s = name[5:]
                m = replay_group(runs[f"ref_s{s}_mei"], 0, window, rtol, rtol_div)
                d = replay_group(runs[names[0]], 0, window, rtol, rtol_div)
                x = (0.7 * m[0] + d[0]) / (0.7 * m[1] + d[1])
                worst = max(abs(d[3][k] / d[2][k] - 1) for k in d[2])
                cells.append(f"x{x:.2f} (MEI {m[1]}, set {d[1]} its), max diff {100 * worst:.1f} %")
            else:
                cells.append(summary(runs, names, window, rtol, rtol_div))
        print(f"| {window} | {rtol:g} | {rtol_div:g} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("record", "choose"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/stopping_trajectories"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--windows", default="40,50,60,200")
    ap.add_argument("--rtols", default="0.001,0.0015,0.005", help="activations' relative tolerances")
    ap.add_argument("--rtols-diversity", default="0.005,0.02", help="the diversity's")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "record":
        record(args.out, args.seeds)
    else:
        floats = lambda text: [float(v) for v in text.split(",")]  # noqa: E731
        windows = [int(w) for w in args.windows.split(",")]
        choose(args.out, windows, floats(args.rtols), floats(args.rtols_diversity))


if __name__ == "__main__":
    main()
