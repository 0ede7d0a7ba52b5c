"""Do reduced-precision forward passes change the result? fp32 vs tf32 vs bf16 on the reference problem.

Runs ``dv.diverse(vgg16-paper, conv3_1, 21, n_images=6, diversity=0.01, distance_layer="conv2_2")``
once per precision (same seed; the MEI in fp32 for all, so the ratios share one denominator) and prints
the wall time, the iterations, the activations (always evaluated in fp32), the ratios to the MEI, the
smallest conv2_2 distance, and the change of each against fp32.

    python benchmarks/check_precision.py                 # CPU: fp32 and bf16 (TF32 is a GPU feature)
    python benchmarks/check_precision.py --device cuda   # GPU: fp32, tf32 and bf16

"Not materially changed" is judged by the reader; as a guide, the fp32 run's own spread between
images is printed too. No assertions.
"""

from __future__ import annotations

import argparse
import time

import torch

import diversevis as dv


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layer", default="conv3_1")
    ap.add_argument("--unit", type=int, default=21)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    net = dv.load_model("vgg16-paper", device=dev)
    precisions = ["fp32", "bf16"] if dev.type == "cpu" else ["fp32", "tf32", "bf16"]
    mei = dv.mei(net, args.layer, args.unit, seed=0)
    kw = dict(n_images=6, diversity=0.01, distance_layer="conv2_2", seed=0, mei=mei)
    dv.diverse(net, args.layer, args.unit, max_iter=3, **kw)  # warm-up
    print(
        f"# vgg16-paper {args.layer} unit {args.unit}, 6 images, lambda 0.01, torch {torch.__version__}, {dev}"
    )
    print("| precision | seconds | iterations | mean act | min ratio | mean ratio | min conv2_2 dist |")
    print("|---|---|---|---|---|---|---|")
    ref = None
    for p in precisions:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = dv.diverse(net, args.layer, args.unit, precision=p, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        sec = time.perf_counter() - t0
        row = (float(r.activations.mean()), float(r.ratios.min()), float(r.ratios.mean()), r.min_distance)
        ref = ref or row
        print(
            f"| {p} | {sec:.2f} | {r.spec['n_iter']} | {row[0]:.2f} | {row[1]:.3f} | {row[2]:.3f} | {row[3]:.3f} |"
        )
        if p != "fp32":
            print(
                f"  vs fp32: mean act {100 * (row[0] / ref[0] - 1):+.2f}%, min ratio {row[1] - ref[1]:+.3f}, "
                f"min dist {100 * (row[3] / ref[3] - 1):+.1f}%"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
