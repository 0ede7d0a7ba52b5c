"""Floor mode against a lambda grid: is the floor set as diverse as the best lambda set at its activation?

For each unit, one floor-mode set (every image >= FLOOR x MEI) and lambda-mode sets over a grid of
diversity weights are optimised with the same N, seed, contrast and distance layer. Among the lambda
sets whose minimum ratio to the MEI is at least the floor set's, the most diverse (largest min pairwise
distance in the distance layer) is the best a lambda search finds at that activation; the table gives
the floor set's min distance relative to it (>= 0.95 means "as diverse within 5 %"), and what the grid
cost. Prints a Markdown table.

    python benchmarks/floor_vs_lambda.py                          # vgg16-paper conv2_1 and conv3_1 units
    python benchmarks/floor_vs_lambda.py --units conv3_1:21,4 --lambdas 0.1,1,3,10
"""

from __future__ import annotations

import argparse
import time

import diversevis as dv

DISTANCE = {"conv2_1": "conv1_2", "conv2_2": "conv1_2", "conv3_1": "conv2_2", "conv3_2": "conv2_2"}


def _units(text: str) -> list[tuple[str, int]]:
    out = []
    for part in text.split(";"):
        layer, units = part.split(":")
        out += [(layer, int(u)) for u in units.split(",")]
    return out


def run_unit(net, layer: str, unit: int, floor: float, lambdas: list[float], n: int) -> dict:
    """The floor set, the lambda grid and their comparison for one unit."""
    dl = DISTANCE.get(layer)
    mei = dv.mei(net, layer, unit)
    common = dict(n_images=n, distance_layer=dl, mei=mei, calibrate=False)
    t0 = time.perf_counter()
    f = dv.diverse(net, layer, unit, floor=floor, **common)
    t_floor = time.perf_counter() - t0
    f_min = min(f.metrics()["ratios"])
    grid, t_grid = [], 0.0
    for lam in lambdas:
        t0 = time.perf_counter()
        r = dv.diverse(net, layer, unit, diversity=lam, **common)
        t_grid += time.perf_counter() - t0
        grid.append((lam, min(r.metrics()["ratios"]), float(r.min_distance)))
    eligible = [g for g in grid if g[1] >= f_min]
    best = max(eligible, key=lambda g: g[2]) if eligible else None
    return {
        "unit": f"{layer} u{unit}",
        "space": dl or "pixels",
        "floor_min_ratio": f_min,
        "floor_holds": f.spec["floor_holds"],
        "floor_distance": float(f.min_distance),
        "best_lambda": None if best is None else best[0],
        "best_distance": None if best is None else best[2],
        "ratio": None if best is None else float(f.min_distance) / best[2],
        "t_floor": t_floor,
        "t_grid": t_grid,
        "grid": grid,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg16-paper")
    p.add_argument("--units", default="conv2_1:3,5;conv3_1:21,4")
    p.add_argument("--floor", type=float, default=0.85)
    p.add_argument("--lambdas", default="0.01,0.1,0.3,1,3,10")
    p.add_argument("--images", type=int, default=6)
    args = p.parse_args()
    net = dv.load_model(args.model)
    lambdas = [float(x) for x in args.lambdas.split(",")]
    print(f"floor {args.floor}, N {args.images}, lambdas {lambdas}\n")
    print("| unit | space | floor set: min ratio | min distance | best lambda (min ratio >= floor set's) | "
          "its min distance | floor / best | floor run s | grid s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for layer, unit in _units(args.units):
        r = run_unit(net, layer, unit, args.floor, lambdas, args.images)
        best = "none reaches it" if r["best_lambda"] is None else f"{r['best_lambda']:g}"
        dist = "-" if r["best_distance"] is None else f"{r['best_distance']:.3g}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        print(
            f"| {r['unit']} | {r['space']} | {r['floor_min_ratio']:.3f} ({'holds' if r['floor_holds'] else 'FAILS'}) | "
            f"{r['floor_distance']:.3g} | {best} | {dist} | {ratio} | {r['t_floor']:.1f} | {r['t_grid']:.1f} |",
            flush=True,
        )
        grid = ", ".join(f"{lam:g}: {mr:.2f}/{d:.3g}" for lam, mr, d in r["grid"])
        print(f"|  | lambda: min ratio / min distance | {grid} | | | | | | |", flush=True)


if __name__ == "__main__":
    main()
