"""EMA early stopping vs the plateau rule, side by side in one run (issue 17, item 5).

Every case runs twice, once per rule, everything else at the library defaults:

* **reference problem**: ``dv.diverse(net, "conv3_1", 21, n_images=6, diversity=0.01,
  distance_layer="conv2_2", seed=s)`` on ``vgg16-paper`` (MEI with 4 restarts included), and the
  same in floor mode (``floor=0.85``), seeds ``0 .. --seeds - 1``;
* **sweep units**: ``dv.diverse_units`` on 16 units of conv2_1 (distance layer conv1_2) and 16 of
  conv3_1 (conv2_2), batched as a sweep runs them (MEIs with ``mei_units`` first), in floor mode
  (0.85, the sweep's default) and lambda mode (0.01).

Every call passes ``calibrate=False``: the diversity index's reference cells are optimised once per
setting and then read from a cache, so with them the first call of each case would time the
calibration and the others a cache lookup.

Per case: wall seconds of the whole call, iterations (MEI + set, summed over units), the MEI
activation, the mean and min ratio to the MEI (each run's own MEI), the min pairwise distance in the
distance layer and in pixels (around grey); for sweep units the means over units, and the largest
per-unit relative differences. The rules alternate (EMA, plateau, EMA, plateau, ...) after one
warm-up call of each, so load from other work hits both alike.

    python benchmarks/bench_stopping.py                  # about 15 min on 2 CPU cores
    python benchmarks/bench_stopping.py --quick          # reference problem only, one seed

No timing assertions: the script prints what it measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

import diversevis as dv
from diversevis.core.objectives import pairwise_rms_matrix

MODEL = "vgg16-paper"
REF = dict(layer="conv3_1", unit=21, n_images=6, distance_layer="conv2_2")
SWEEP = {"conv2_1": ("conv1_2", list(range(0, 128, 8))), "conv3_1": ("conv2_2", list(range(0, 256, 16)))}
MODES = {"lambda 0.01": dict(diversity=0.01), "floor 0.85": dict(floor=0.85)}
RULES = ("ema", "plateau")
METRICS = ("mei", "mean_ratio", "min_ratio", "min_dist", "pixel_dist")


def pixel_min(images: torch.Tensor) -> float:
    """Min pairwise RMS distance of a set's images around grey."""
    d = pairwise_rms_matrix((images - 0.5).flatten(1).double())
    return float(d[~torch.eye(len(d), dtype=torch.bool)].min())


def quality(res) -> dict[str, float]:
    """The numbers compared between the rules, for one diverse-set result."""
    return {
        "mei": float(res.mei_activation),
        "mean_ratio": float(res.ratios.mean()),
        "min_ratio": float(res.ratios.min()),
        "min_dist": float(res.min_distance),
        "pixel_dist": pixel_min(res.images),
        "iters": int(res.spec["mei_n_iter"] or 0) + int(res.spec["n_iter"]),
        "mei_iters": int(res.spec["mei_n_iter"] or 0),
        "set_iters": int(res.spec["n_iter"]),
    }


def run_reference(net, mode: dict, seed: int, stop: str) -> dict:
    t0 = time.perf_counter()
    res = dv.diverse(net, REF["layer"], REF["unit"], n_images=REF["n_images"],
                     distance_layer=REF["distance_layer"], seed=seed, stop=stop, calibrate=False, **mode)  # fmt: skip
    return {"seconds": time.perf_counter() - t0, "units": [quality(res)]}


def run_sweep(net, layer: str, mode: dict, stop: str) -> dict:
    dl, units = SWEEP[layer]
    t0 = time.perf_counter()
    res = dv.diverse_units(net, layer, units, n_images=6, distance_layer=dl, seed=0, stop=stop,
                           calibrate=False, **mode)  # fmt: skip
    return {"seconds": time.perf_counter() - t0, "units": [quality(r) for r in res]}


def rel(b: float, a: float) -> float:
    return (b - a) / abs(a) if a else float("nan")


def row(case: str, rule: str, run: dict) -> str:
    u = run["units"]
    mean = {k: statistics.fmean(x[k] for x in u) for k in (*METRICS, "mei_iters", "set_iters")}
    return (
        f"| {case} | {rule} | {run['seconds']:.1f} | {sum(x['mei_iters'] for x in u)} | "
        f"{sum(x['set_iters'] for x in u)} | {mean['mei']:.4g} | {mean['mean_ratio']:.4f} | "
        f"{mean['min_ratio']:.4f} | {mean['min_dist']:.4g} | {mean['pixel_dist']:.4g} |"
    )


def diff_row(case: str, ema: dict, pl: dict) -> tuple[str, dict]:
    """The relative-difference row (of the means over units) and the per-unit differences."""
    ue, up = ema["units"], pl["units"]
    mean_rel = {
        k: rel(statistics.fmean(x[k] for x in up), statistics.fmean(x[k] for x in ue)) for k in METRICS
    }
    per_unit = {k: [rel(b[k], a[k]) for a, b in zip(ue, up)] for k in METRICS}
    speed = ema["seconds"] / pl["seconds"]
    its = sum(x["iters"] for x in ue) / sum(x["iters"] for x in up)
    line = (
        f"| {case} | plateau / EMA | **x{speed:.2f}** | x{its:.2f} iterations | | "
        + " | ".join(f"{100 * mean_rel[k]:+.2f} %" for k in METRICS)
        + " |"
    )
    return line, {"speed": speed, "iters": its, "mean_rel": mean_rel, "per_unit": per_unit}


def measure(net, cases: list[tuple[str, object]]) -> list[tuple[str, dict, dict]]:
    """Run every case with both rules, alternating, after a warm-up of each rule on the first case."""
    for stop in RULES:  # warm-up: caches (natural-patch norms, DI calibration), allocator
        cases[0][1](stop)
    out = []
    for name, fn in cases:
        runs = {}
        for stop in RULES:
            runs[stop] = fn(stop)
            print(f"  {name} [{stop}]: {runs[stop]['seconds']:.1f}s", flush=True)
        out.append((name, runs["ema"], runs["plateau"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the reference problem (default 3)")
    ap.add_argument("--quick", action="store_true", help="the reference problem only, seed 0")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    net = dv.load_model(MODEL)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    seeds = 1 if args.quick else args.seeds
    cases = []
    for mname, mode in MODES.items():
        for seed in range(seeds):
            cases.append(
                (f"ref {mname} seed {seed}", lambda stop, m=mode, s=seed: run_reference(net, m, s, stop))
            )
    if not args.quick:
        for layer in SWEEP:
            for mname, mode in MODES.items():
                cases.append(
                    (f"{layer} x16 {mname}", lambda stop, L=layer, m=mode: run_sweep(net, L, m, stop))
                )
    results = measure(net, cases)
    print(f"\nload at the end {os.getloadavg()[0]:.2f}\n")
    print(
        "| case | rule | seconds | MEI its | set its | MEI act | mean ratio | min ratio | min dist (layer) | min dist (pixel) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    summaries = []
    for name, ema, pl in results:
        print(row(name, "EMA", ema))
        print(row(name, "plateau", pl))
        line, s = diff_row(name, ema, pl)
        print(line)
        summaries.append((name, s))
    summarise(summaries)


def summarise(summaries: list[tuple[str, dict]]) -> None:
    speeds = [s["speed"] for _, s in summaries]
    print(f"\nmedian speed-up (wall time) {statistics.median(speeds):.2f}x "
          f"(min {min(speeds):.2f}x, max {max(speeds):.2f}x)")  # fmt: skip
    print("\n| case | speed-up | " + " | ".join(f"max per-unit abs rel diff {k}" for k in METRICS) + " |")
    print("|---|---:|" + "---:|" * len(METRICS))
    for name, s in summaries:
        cells = " | ".join(f"{100 * max(abs(v) for v in s['per_unit'][k]):.2f} %" for k in METRICS)
        print(f"| {name} | x{s['speed']:.2f} | {cells} |")
    for k in METRICS:
        m = max(abs(s["mean_rel"][k]) for _, s in summaries)
        u = [abs(v) for _, s in summaries for v in s["per_unit"][k]]
        print(f"{k}: max |rel diff| of the case means {100 * m:.2f} %; per unit: median {100 * np.median(u):.2f} %, "
              f"max {100 * max(u):.2f} %, within 1 %: {np.mean(np.array(u) <= 0.01):.0%} of {len(u)}")  # fmt: skip


if __name__ == "__main__":
    main()
