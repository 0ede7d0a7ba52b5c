"""Batched multi-unit optimisation vs one unit at a time, side by side in one run.

``dv.diverse_units(net, layer, units)`` optimises all units' diverse sets in one batch (per-unit
diversity terms and early stopping; finished units leave the batch); the alternative is a Python
loop of ``dv.diverse`` calls. Both give bit-identical images for the same seed (checked here), so
the only difference is wall time. MEIs are skipped (``mei=False``) to time the diverse sets alone.

    python benchmarks/bench_batched.py                          # conv2_1 x 16 and conv3_1 x 8 units
    python benchmarks/bench_batched.py --layer conv3_1 --units 32

Prints seconds per unit for both paths, the ratio and the iteration counts, and the batched path once
more with the network in channels_last memory format (``Network.use_channels_last()``). No timing
assertions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import diversevis as dv
from diversevis.methods.dfv import diverse_units
from diversevis.study.sweep import auto_distance_layer


def compare(net: dv.Network, net_cl: dv.Network, layer: str, n_units: int, repeats: int) -> dict:
    units = list(range(n_units))
    kw = dict(n_images=6, diversity=0.01, distance_layer=auto_distance_layer(net, layer), seed=0, mei=False)
    tb, ts, tc = [], [], []
    for _ in range(repeats):  # alternate, so load from other work hits every path alike
        t0 = time.perf_counter()
        batched = diverse_units(net, layer, units, **kw)
        tb.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        single = [dv.diverse(net, layer, u, **kw) for u in units]
        ts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cl = diverse_units(net_cl, layer, units, **kw)
        tc.append(time.perf_counter() - t0)
    same = all(torch.equal(b.images, s.images) for b, s in zip(batched, single))
    cl_ratio = min(float(r.activations.mean() / b.activations.mean()) for r, b in zip(cl, batched))
    iters = [r.spec["n_iter"] for r in batched]
    return {
        "layer": layer,
        "units": n_units,
        "batched_s_per_unit": min(tb) / n_units,
        "single_s_per_unit": min(ts) / n_units,
        "speedup": min(ts) / min(tb),
        "batched_channels_last_s_per_unit": min(tc) / n_units,
        "channels_last_worst_activation_ratio": cl_ratio,
        "identical": same,
        "iterations": (min(iters), max(iters)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vgg16-paper")
    ap.add_argument("--layer", action="append", help="layer (repeatable; default conv2_1 and conv3_1)")
    ap.add_argument("--units", type=int, default=None, help="units per layer (default 16 conv2_1, 8 conv3_1)")
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats per path; the best is kept")
    args = ap.parse_args(argv)
    layers = args.layer or ["conv2_1", "conv3_1"]
    net = dv.load_model(args.model)
    net_cl = dv.load_model(args.model).use_channels_last()
    print(f"# batched vs one by one: {args.model}, 6 images per unit, lambda 0.01, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(
        "| layer | units | batched s/unit | one by one s/unit | speed-up | identical | iterations "
        "| batched + channels_last s/unit | speed-up vs one by one |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for layer in layers:
        n = args.units or (16 if layer.startswith(("conv1", "conv2")) else 8)
        r = compare(net, net_cl, layer, n, args.repeats)
        print(
            f"| {layer} | {n} | {r['batched_s_per_unit']:.2f} | {r['single_s_per_unit']:.2f} | "
            f"x{r['speedup']:.2f} | {r['identical']} | {r['iterations'][0]}-{r['iterations'][1]} | "
            f"{r['batched_channels_last_s_per_unit']:.2f} | "
            f"x{r['single_s_per_unit'] / r['batched_channels_last_s_per_unit']:.2f} |"
        )
        print(
            f"  channels_last sets reach >= {100 * r['channels_last_worst_activation_ratio']:.1f}% of the "
            "default format's mean activation (float rounding differs, so the trajectories do)"
        )
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
