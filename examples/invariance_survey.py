"""Invariance survey of a few units per layer: shift test, grating phase test and DFV vs baselines.

    python examples/invariance_survey.py --model vgg16-paper --layers conv1_1,conv2_1,conv3_1 --units 0,3,21 \
        --out runs/survey

Prints a Markdown table (one row per unit) and writes each unit's figures under ``--out``. On 2 CPU cores a
conv3_1 unit takes one to two minutes (use ``--stride`` to subsample the shift test's crops).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import diversevis as dv

DISTANCE_LAYER = {
    "conv1_1": None,
    "conv1_2": None,
    "conv2_1": "conv1_2",
    "conv2_2": "conv1_2",
    "conv3_1": "conv2_2",
    "conv3_2": "conv2_2",
    "conv3_3": "conv2_2",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vgg16-paper")
    ap.add_argument("--layers", default="conv1_1,conv2_1,conv3_1")
    ap.add_argument(
        "--units", default="0,3,21", help="comma-separated unit indices (taken modulo the layer size)"
    )
    ap.add_argument("--diversity", type=float, default=1.0, help="DFV lambda (default 1.0, see the README)")
    ap.add_argument("--stride", default="conv3_1:3", help="shift-test crop stride per layer, e.g. conv3_1:3")
    ap.add_argument("--candidates", type=int, default=4096)
    ap.add_argument("--out", default="runs/survey")
    args = ap.parse_args()

    net = dv.load_model(args.model)
    strides = dict(kv.split(":") for kv in args.stride.split(",") if kv)
    rows = []
    for layer in args.layers.split(","):
        channels = net.channels(layer)
        for u in dict.fromkeys(int(x) % channels for x in args.units.split(",")):
            t0 = time.perf_counter()
            out = Path(args.out) / f"{layer}_u{u}"
            cmp = dv.compare_baselines(
                net,
                layer,
                u,
                diversity=args.diversity,
                distance_layer=DISTANCE_LAYER.get(layer),
                exemplar_candidates=args.candidates,
                gram=DISTANCE_LAYER.get(layer) is not None,
            )
            cmp.save(out / "analyze")
            t1 = time.perf_counter()
            st = dv.shift_test(net, layer, u, mei=cmp.mei_activation, stride=int(strides.get(layer, 1)))
            st.save(out / "shift")
            t2 = time.perf_counter()
            ph = dv.phase_test(net, layer, u, mei=cmp.mei_activation)
            ph.save(out / "phase")
            t3 = time.perf_counter()
            g = cmp.gaps()
            dfv = cmp.row("dfv")
            rows.append(
                {
                    "layer": layer,
                    "unit": u,
                    "mei": cmp.mei_activation,
                    "shift_min": st.min_ratio,
                    "shift_mean": st.mean_ratio,
                    "crops": st.activations.numel(),
                    "f1_f0": ph.f1_f0,
                    "dfv_ratio": dfv["mean_ratio"],
                    "dfv_min_dist": dfv["min_distance"],
                    "dfv_pr": dfv["participation_ratio"],
                    "vs_restarts": g.get("restarts"),
                    "vs_gram": g.get("gram"),
                    "vs_natural": g.get("natural"),
                    "t_analyze": t1 - t0,
                    "t_shift": t2 - t1,
                    "t_phase": t3 - t2,
                }
            )
            print(_table(rows[-1:], header=not rows[:-1]), flush=True)
    print()
    print(_table(rows))


def _fmt(v, d=2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{d}f}"


def _table(rows, header=True) -> str:
    cols = [
        "layer",
        "unit",
        "MEI",
        "shift min",
        "shift mean",
        "crops",
        "F1/F0",
        "DFV ratio",
        "DFV min dist",
        "DFV PR",
        "x restarts",
        "x gram",
        "x natural",
        "s analyze",
        "s shift",
        "s phase",
    ]
    lines = []
    if header:
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [
            r["layer"],
            str(r["unit"]),
            _fmt(r["mei"], 1),
            _fmt(r["shift_min"]),
            _fmt(r["shift_mean"]),
            str(r["crops"]),
            _fmt(r["f1_f0"]),
            _fmt(r["dfv_ratio"]),
            _fmt(r["dfv_min_dist"], 3),
            _fmt(r["dfv_pr"]),
            _fmt(r["vs_restarts"], 1),
            _fmt(r["vs_gram"], 1),
            _fmt(r["vs_natural"], 1),
            _fmt(r["t_analyze"], 0),
            _fmt(r["t_shift"], 0),
            _fmt(r["t_phase"], 1),
        ]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
