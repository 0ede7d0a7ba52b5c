"""Invariance manifolds on CPU: seconds per unit, iterations, ratios and DI; and whether batching units pays.

    python benchmarks/bench_manifold.py                                   # conv2_1 and conv3_1, 2 units, dim 1
    python benchmarks/bench_manifold.py --layers conv3_1 --units 21,40 --dims 1,2
    python benchmarks/bench_manifold.py --probe-only                      # the batching probe alone

Each row is one ``dv.manifold(net, layer, unit, dim=...)`` with the library's defaults (floor 0.85, mean
floor 0.9, 16 latents on a loop or 8 x 8 on a torus, plateau stopping): the seconds of the generator's
loop, of the MEI and of the whole call (the DI calibration of a new grid size and image size is paid
by the first unit of a layer and cached), the iterations, seconds per iteration, min / mean ratio to
the MEI, whether the floor holds, and the grid's DI.

Batching probe. ``manifold_units`` would train several units' generators in one batch: each unit
needs its own images (its own generator), so a batch of ``G`` units pushes ``G x P`` images through the
network instead of ``P``, sharing no computation; it pays only if the per-image cost of a forward +
backward pass falls with the batch size. The probe times one forward + backward pass of ``B`` images
(``B = P, 2P, 4P``) to the target layer and prints the cost per image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import diversevis as dv
from diversevis.methods.problem import Problem


def run_unit(net: dv.Network, layer: str, unit: int, dim: int, max_iter: int | None) -> dict:
    kw = {} if max_iter is None else {"max_iter": max_iter}
    t0 = time.perf_counter()
    m = dv.manifold(net, layer, unit, dim=dim, seed=0, **kw)
    total = time.perf_counter() - t0
    s = m.spec
    return {
        "layer": layer,
        "unit": unit,
        "dim": dim,
        "latents": len(m.latents),
        "n_iter": s["n_iter"],
        "loop_s": s["seconds"],
        "s_per_iter": s["seconds"] / max(1, s["n_iter"]),
        "mei_s": s.get("mei_seconds"),
        "total_s": round(total, 2),
        "min_ratio": round(m.min_ratio, 4),
        "mean_ratio": round(m.mean_ratio, 4),
        "floor_holds": m.floor_holds,
        "di": None if m.di is None else round(m.di, 3),
    }


def probe(net: dv.Network, layer: str, latents: int, repeats: int = 3) -> list[dict]:
    """Forward + backward cost per image for batches of ``latents x (1, 2, 4)`` images."""
    prob = Problem.build(net, layer, 0, None, "max", contrast=0.5, norm=None, distance_layer=None,
                         images_folder=None)  # fmt: skip
    size = prob.placement.image_size
    rows = []
    for groups in (1, 2, 4):
        x = torch.rand(groups * latents, net.in_channels, size, size, requires_grad=True)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a = prob.read(x, need_features=False)[0]
            a.sum().backward()
            best = min(best, time.perf_counter() - t0)
        rows.append({"layer": layer, "units_batched": groups, "images": len(x), "s_per_unit": best / groups,
                     "ms_per_image": 1000 * best / len(x)})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="conv2_1,conv3_1")
    p.add_argument("--units", default="21,40", help="units of each layer (comma-separated)")
    p.add_argument("--dims", default="1")
    p.add_argument("--max-iter", type=int, default=None, help="cap the loop (default: the library's)")
    p.add_argument("--probe-only", action="store_true")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    net = dv.load_model("vgg16-paper")
    layers = args.layers.split(",")
    rows: dict[str, list] = {"probe": [], "units": []}
    for layer in layers:
        for latents in (16, 64):
            for r in probe(net, layer, latents):
                rows["probe"].append(r)
                print(f"probe {layer} P={latents}: {r['units_batched']} unit(s) = {r['images']} images, "
                      f"{r['s_per_unit']:.3f} s per unit per step, {r['ms_per_image']:.2f} ms per image",
                      flush=True)  # fmt: skip
    if not args.probe_only:
        for dim in (int(d) for d in args.dims.split(",")):
            for layer in layers:
                for unit in (int(u) for u in args.units.split(",")):
                    r = run_unit(net, layer, unit, dim, args.max_iter)
                    rows["units"].append(r)
                    print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
