"""How fast is the stride-1 shift test? Every-crop (reference) vs subset optimiser, fp32 vs bf16.

For ``vgg16-paper`` conv2_1 and conv3_1 (one unit each, the same MEI for every run) the script runs the
shift test at stride 1 four ways, side by side in one process: the reference optimiser (every crop at
every step) and the fast one (``crops_per_step`` crops per step plus a full evaluation every
``refresh`` steps), each in fp32 and bf16 autocast. It prints seconds per unit, iterations, the min
and mean crop ratios (always from a full fp32 evaluation), the speed-up over the fp32 reference, and
the GFLOP/s each run reaches against the machine's measured fp32 and bf16 matmul peaks.

It also prints the cost per crop of one optimisation step (forward + input gradient) at several batch
sizes: whether batching the shift tests of many units into one forward pass would pay on this device.

    python benchmarks/bench_shift.py                    # CPU, about 10 minutes on 2 cores
    python benchmarks/bench_shift.py --device cuda      # on a GPU
    python benchmarks/bench_shift.py --units conv2_1:3 --skip-reference   # fast runs only

FLOPs are counted from the network's conv shapes (``bench_diverse.conv_flops``): a step costs
``2 F`` per crop seen (forward plus input gradient, weights frozen), a full evaluation ``F`` per crop.
No assertions; compare numbers within one run.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_diverse import conv_flops, cpu_info, matmul_gflops, sync

import diversevis as dv
from diversevis.core.params import precondition
from diversevis.core.precision import precision_context
from diversevis.methods.problem import Problem
from diversevis.methods.settings import ShiftSettings
from diversevis.methods.shift import crop_batch


def crop_flops(net: dv.Network, layer: str, rf: int) -> int:
    """Forward FLOPs of one ``rf x rf`` crop through the network truncated at ``layer``."""
    x = torch.full((1, net.in_channels, rf, rf), 0.5, device=net.device)
    return sum(r["fwd_flops"] for r in conv_flops(net, x, [layer]))


def run_flops(spec: dict, n_crops: int, flops: int) -> float:
    """FLOPs a shift test spent: steps at ``2 F`` per crop seen, full evaluations at ``F`` per crop."""
    steps = spec["n_iter"]
    if spec.get("optimizer") == "subset":
        per_step = spec["crops_per_step"]
        return steps * per_step * 2 * flops + (spec["full_evaluations"] + 1) * n_crops * flops
    return steps * n_crops * 2 * flops + n_crops * flops


def step_cost(net: dv.Network, layer: str, unit: int, batches: list[int], precision: str) -> list[tuple]:
    """ms per crop of one optimisation step at each batch size (median of a few steps)."""
    prob = Problem.build(net, layer, unit, None, "max", contrast=0.5, norm=None, distance_layer=None,
                         images_folder=None)
    rf = prob.placement.image_size
    out = []
    for b in batches:
        side = 2 * rf - 1
        tex = torch.randn(1, net.in_channels, side, side, device=net.device, requires_grad=True)
        reps = max(1, b // (rf * rf) + 1)
        crops_all = torch.cat([crop_batch(tex, rf)] * reps)[:b]
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            with precision_context(net.device, precision):
                v = prob.evaluate(0.5 + 0.1 * precondition(crops_all), need_features=False)[0]
            v.float().sum().backward(retain_graph=True)
            sync(net.device)
            times.append(time.perf_counter() - t0)
        out.append((b, sorted(times)[2] * 1000 / b))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--units", default="conv2_1:3;conv3_1:21", help="layer:unit;layer:unit")
    ap.add_argument("--crops-per-step", type=int, default=ShiftSettings.crops_per_step)
    ap.add_argument("--skip-reference", action="store_true", help="only the fast optimiser")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    net = dv.load_model("vgg16-paper", device=dev)
    info = cpu_info()
    peak32 = matmul_gflops(2048, 5, dev)
    peak16 = matmul_gflops(2048, 5, dev, torch.bfloat16)
    print(f"# torch {torch.__version__}, {dev}, {torch.get_num_threads()} threads, {info['model']} ({info['isa']})")
    print(f"# matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    print("| unit | optimiser | precision | seconds | iterations | min ratio | mean ratio | speed-up | GFLOP/s | % of peak |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for part in args.units.split(";"):
        layer, unit = part.split(":")
        unit = int(unit)
        mei = dv.mei(net, layer, unit, seed=0)
        runs = [("subset", p) for p in ("fp32", "bf16")]
        if not args.skip_reference:
            runs = [("all crops", p) for p in ("fp32", "bf16")] + runs
        ref_s = None
        for opt_name, prec in runs:
            per_step = None if opt_name == "all crops" else args.crops_per_step
            dv.shift_test(net, layer, unit, mei=mei, max_iter=3, crops_per_step=per_step, precision=prec)
            t0 = time.perf_counter()
            res = dv.shift_test(net, layer, unit, mei=mei, crops_per_step=per_step, precision=prec)
            sync(dev)
            sec = time.perf_counter() - t0
            ref_s = sec if ref_s is None else ref_s
            n = int(res.activations.numel())
            gf = run_flops(res.spec, n, crop_flops(net, layer, res.spec["image_size"])) / sec / 1e9
            peak = peak32 if prec == "fp32" else peak16
            print(
                f"| {layer} u{unit} ({n} crops) | {opt_name} | {prec} | {sec:.1f} | {res.spec['n_iter']} | "
                f"{res.min_ratio:.3f} | {res.mean_ratio:.3f} | x{ref_s / sec:.1f} | {gf:.0f} | {100 * gf / peak:.0f} % |",
                flush=True,
            )
    print("\n# ms per crop of one step (forward + input gradient) by batch size: does batching units pay?")
    for part in args.units.split(";"):
        layer, unit = part.split(":")
        for prec in ("fp32", "bf16"):
            costs = step_cost(net, layer, int(unit), [16, 64, 256, 1024], prec)
            print(f"{layer} {prec}: " + ", ".join(f"batch {b}: {ms:.2f}" for b, ms in costs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
