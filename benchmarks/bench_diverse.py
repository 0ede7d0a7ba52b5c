"""Benchmark of the diverse-feature-visualisation step: time, FLOPs, achieved GFLOP/s vs. matmul peak.

Reference problem: ``vgg16-paper`` conv3_1 unit 21, 6 images, lambda = 0.01, distance layer conv2_2
(24 x 24 input = the receptive field of conv3_1, VALID convolutions).

Run from the repository root::

    python benchmarks/bench_diverse.py [--device cpu] [--repeats 3] [--json out.json] [--no-profile]

Everything is measured side by side in one run (timings on a shared machine are noisy; compare the
numbers of one run with each other, not with another run's). Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

import diversevis as dv
from diversevis.core.objectives import diversity_value
from diversevis.core.optimize import optimize
from diversevis.core.params import PixelImage
from diversevis.core.precision import precision_context
from diversevis.methods.dfv import Problem

MODEL = "vgg16-paper"
LAYER = "conv3_1"
UNIT = 21
N_IMAGES = 6
LAMBDA = 0.01
DIST_LAYER = "conv2_2"
SEED = 0
BIG_BATCHES = (64, 256, 1536)

BWD_ASSUMPTION = (
    "backward FLOPs = forward FLOPs: only the input gradient is computed (weights are frozen, no "
    "weight gradients); every conv needs it, down to the image. Bias adds, ReLU, max-pool, the "
    "preconditioner FFT, the diversity term and Adam are not counted (each < 1% of the conv FLOPs)."
)


# ------------------------------------------------------------------------------------------ helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_info() -> dict[str, str]:
    info = {"model": platform.processor() or "unknown", "isa": ""}
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name"):
            info["model"] = line.split(":", 1)[1].strip()
            break
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
            info["isa"] = " ".join(f for f in wanted if f in flags)
            break
    return info


def matmul_gflops(n: int, reps: int, device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """Best-of-``reps`` ``torch.mm`` throughput on ``n x n`` matrices, GFLOP/s (2 n^3 per product)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    torch.mm(a, b)  # warm-up
    sync(device)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def conv3x3_gflops(reps: int, device: torch.device) -> float:
    """Best-of-``reps`` throughput of a large 3x3 convolution (256 -> 256 channels, 16 x 30 x 30), GFLOP/s.

    Counted as a direct convolution (``2 C_in 9 C_out H_out W_out`` per image), like the step FLOPs: the
    best this machine's convolution library does on the kind of layer the truncated network runs. It
    can beat the matmul peak when the library uses a fast (Winograd-type) algorithm for 3x3 kernels.
    """
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 256, 3, 3, generator=g).to(device)
    x = torch.randn(16, 256, 30, 30, generator=g).to(device)
    torch.nn.functional.conv2d(x, w)  # warm-up
    sync(device)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.nn.functional.conv2d(x, w)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * 256 * 9 * 256 * 28 * 28 * 16 / best / 1e9


def conv_flops(net: dv.Network, x: torch.Tensor, layers: list[str]) -> list[dict]:
    """Forward FLOPs of every Conv2d that runs in the truncated forward to ``layers`` (one image)."""
    rows: list[dict] = []
    names = {m: n for n, m in net.module.named_modules()}

    def hook(mod: nn.Conv2d, inputs, output):
        c_out, h, w = output.shape[1:]
        kh, kw = mod.kernel_size
        fl = 2 * mod.in_channels * kh * kw * c_out * h * w // mod.groups
        name = names[mod]
        rows.append(
            {
                "layer": net.display_name(name),
                "in": tuple(inputs[0].shape[1:]),
                "out": (c_out, h, w),
                "fwd_flops": int(fl),
            }
        )

    handles = [m.register_forward_hook(hook) for m in net.module.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            net.activations(x[:1], layers)
    finally:
        for h in handles:
            h.remove()
    return rows


class Bench:
    """One optimisation step of the reference problem at batch ``batch``.

    ``diversity=True`` is exactly the loss of :func:`diversevis.diverse` (``-mean p + lambda * min
    pairwise conv2_2 distance``); ``False`` is the inner loop ``-mean p`` (the conv2_2 features are
    still captured, so the convolutions run are the same). Both include the norm constraint, the FFT
    preconditioner (backward) and an Adam step on the raw variable.
    """

    def __init__(
        self,
        prob: Problem,
        batch: int,
        diversity: bool,
        device: torch.device,
        channels_last: bool = False,
        precision: str = "fp32",
    ) -> None:
        self.prob = prob
        self.precision = precision
        self.diversity = diversity
        self.channels_last = channels_last
        gen = torch.Generator().manual_seed(SEED)
        size = prob.placement.image_size
        self.param = PixelImage(batch, 3, size, prob.norm, precondition=True, generator=gen, device=device)
        self.opt = torch.optim.Adam(self.param.parameters(), lr=1.0, betas=(0.9, 0.999), eps=1e-8)
        self.device = device

    def loss_fn(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        p, f = self.prob.evaluate(x, need_features=True)
        loss = -p.mean()
        if self.diversity:
            loss = loss - LAMBDA * diversity_value(f, "min")
        return loss

    def step(self) -> None:
        x = self.param()
        with precision_context(self.device, self.precision):
            loss = self.loss_fn(x).float()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def warm(self, n: int) -> None:
        for _ in range(n):
            self.step()
        sync(self.device)

    def time_block(self, n_steps: int, max_seconds: float) -> list[float]:
        """Per-step seconds of up to ``n_steps`` steps (at least 3), stopping early after ``max_seconds``."""
        per_step: list[float] = []
        t_block = time.perf_counter()
        while len(per_step) < n_steps:
            t0 = time.perf_counter()
            self.step()
            sync(self.device)
            per_step.append(time.perf_counter() - t0)
            if len(per_step) >= 3 and time.perf_counter() - t_block > max_seconds:
                break
        return per_step


# --------------------------------------------------------------------------------- profile helpers
class _Labelled(nn.Module):
    """Wraps the parametrisation so its forward shows up as one labelled range in the profile."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self) -> torch.Tensor:
        with torch.profiler.record_function("bench::param_forward"):
            return self.inner()


_CATEGORIES: list[tuple[str, Callable[[str], bool]]] = [
    ("Adam step", lambda s: s.startswith("Optimizer.step") or "_single_tensor_adam" in s),
    ("FFT preconditioner (bwd)", lambda s: "Precondition" in s or "fft" in s),
    ("conv backward (input grad)", lambda s: "ConvolutionBackward" in s or "convolution_backward" in s),
    ("conv forward", lambda s: s in ("aten::conv2d", "aten::convolution", "aten::_convolution")),
    ("max-pool fwd+bwd", lambda s: "max_pool" in s or "MaxPool" in s),
    ("ReLU fwd+bwd", lambda s: "relu" in s.lower() or "threshold_backward" in s),
    ("other backward (norm, read-out, diversity)", lambda s: s.startswith("autograd::engine")),
    ("param forward ops (norm constraint)", lambda s: s == "bench::param_forward"),
    ("loss forward ops (normalise, read-out, diversity)", lambda s: s == "bench::loss_fn"),
]


def _category(ev) -> str:
    if ev.name.startswith("bench::"):  # self time of a labelled range = Python run inside it
        return "Python in loss_fn/param() (hooks, _StopForward, modules)"
    chain = []
    e = ev
    while e is not None:
        chain.append(e.name)
        e = e.cpu_parent
    for label, match in _CATEGORIES:
        if any(match(s) for s in chain):
            return label
    return "optimize() bookkeeping (history, EMA, best-iterate)"


def profile_loop(prob: Problem, batch: int, diversity: bool, n_steps: int, device: torch.device) -> dict:
    """Profile ``n_steps`` of the library loop :func:`diversevis.core.optimize.optimize` and split host time."""
    bench = Bench(prob, batch, diversity, device)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        with torch.profiler.record_function("bench::loss_fn"):
            return bench.loss_fn(x)

    param = _Labelled(bench.param)
    optimize(param, loss_fn, max_iter=3, patience=0)  # warm-up (allocator, oneDNN primitive caches)
    acts = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=acts) as prof:
        t0 = time.perf_counter()
        optimize(param, loss_fn, max_iter=n_steps, patience=0)
        sync(device)
        wall = time.perf_counter() - t0
    totals: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        totals[_category(ev)] += ev.self_cpu_time_total / 1e6
    ops = sum(totals.values())
    totals["Python elsewhere (loop, autograd glue: wall - op time)"] = max(0.0, wall - ops)
    per_step = {k: v / n_steps for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    top = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return {
        "batch": batch,
        "diversity": diversity,
        "n_steps": n_steps,
        "wall_per_step_s": wall / n_steps,
        "per_step_s": per_step,
        "top_ops": top,
    }


# --------------------------------------------------------------------------------------------- main
def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "n/a"


def _stop_after(seconds: float) -> Callable:
    t0 = time.perf_counter()

    def cb(info) -> bool:
        return info.step >= 2 and time.perf_counter() - t0 > seconds

    return cb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    ap.add_argument("--repeats", type=int, default=3, help="timed blocks per measurement (default: 3)")
    ap.add_argument("--steps", type=int, default=50, help="steps per timed block at batch 6 (default: 50)")
    ap.add_argument(
        "--max-block-s",
        type=float,
        default=3.0,
        help="cut a timed block after this many seconds (at least 3 steps; default: 3)",
    )
    ap.add_argument(
        "--threads",
        default=None,
        help="comma-separated torch thread counts to compare, interleaved (default: 1 and "
        "torch's default, on CPU)",
    )
    ap.add_argument(
        "--full-threads",
        type=int,
        default=None,
        help="threads for the full run (default: the fastest for the batch-6 step)",
    )
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--no-full", action="store_true", help="skip the full dv.diverse run to convergence")
    ap.add_argument("--no-profile", action="store_true", help="skip the torch.profiler breakdown")
    ap.add_argument("--top-ops", action="store_true", help="print the profiler's top-ops tables too")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    default_threads = torch.get_num_threads()
    if args.threads:
        threads = [int(t) for t in args.threads.split(",")]
    elif device.type == "cpu":
        threads = sorted({1, default_threads})
    else:
        threads = [default_threads]
    t_start = time.perf_counter()
    cpu = cpu_info()
    out: dict = {
        "problem": {
            "model": MODEL,
            "layer": LAYER,
            "unit": UNIT,
            "n_images": N_IMAGES,
            "lambda": LAMBDA,
            "distance_layer": DIST_LAYER,
            "seed": SEED,
        },
        "env": {
            "torch": torch.__version__,
            "diversevis": dv.__version__,
            "python": sys.version.split()[0],
            "device": str(device),
            "default_threads": default_threads,
            "threads_compared": threads,
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu["model"],
            "cpu_isa": cpu["isa"],
            "mkldnn": torch.backends.mkldnn.is_available(),
            "mkl": torch.backends.mkl.is_available(),
            "loadavg_start": _loadavg(),
        },
    }
    if device.type == "cuda":
        out["env"]["gpu"] = torch.cuda.get_device_name(device)
    env = out["env"]
    print("diversevis step benchmark")
    print(
        f"  torch {env['torch']}  python {env['python']}  device {env['device']}"
        + (f" ({env['gpu']})" if "gpu" in env else "")
    )
    print(
        f"  CPU: {env['cpu_model']}  [{env['cpu_isa']}]  os.cpu_count={env['cpu_count']}  "
        f"torch default threads={default_threads}  mkldnn={env['mkldnn']} mkl={env['mkl']}"
    )
    print(f"  threads compared (interleaved): {threads}   load average at start: {env['loadavg_start']}")
    print(
        f"  problem: {MODEL} {LAYER} unit {UNIT}, {N_IMAGES} images, lambda={LAMBDA}, "
        f"distance layer {DIST_LAYER}"
    )

    # ---- matmul peak per thread count (measured again at the end; the best is used)
    peak: dict[int, dict[str, float]] = {}
    for th in threads:
        torch.set_num_threads(th)
        peak[th] = {"mm2048": matmul_gflops(2048, 5, device), "mm4096": matmul_gflops(4096, 2, device)}
        peak[th]["conv3x3"] = conv3x3_gflops(3, device)

    # ---- problem and FLOPs
    torch.set_num_threads(default_threads)
    net = dv.load_model(MODEL).to(device)
    prob = Problem.build(
        net, LAYER, UNIT, None, "max", contrast=0.5, norm=None, distance_layer=DIST_LAYER, images_folder=None
    )
    size = prob.placement.image_size
    x0 = torch.full((1, 3, size, size), 0.5, device=device)
    rows = conv_flops(net, x0, [LAYER, DIST_LAYER])
    fwd = sum(r["fwd_flops"] for r in rows)
    bwd = fwd
    per_image = fwd + bwd
    out["geometry"] = {"image_size": size, "canvas_size": prob.placement.canvas_size, "norm": prob.norm}
    out["flops"] = {"convs": rows, "fwd_per_image": fwd, "bwd_per_image": bwd, "assumption": BWD_ASSUMPTION}
    print(f"\nFLOPs of the truncated forward ({size}x{size} input, VALID), per image:")
    print(f"  {'conv':<9}{'in (C,H,W)':>16}{'out (C,H,W)':>16}{'fwd MFLOP':>12}")
    for r in rows:
        print(f"  {r['layer']:<9}{str(r['in']):>16}{str(r['out']):>16}{r['fwd_flops'] / 1e6:>12.2f}")
    print(f"  {'total':<9}{'':>32}{fwd / 1e6:>12.2f}   fwd+bwd {per_image / 1e6:.2f} MFLOP/image")
    print(f"  assumption: {BWD_ASSUMPTION}")

    # ---- step timings: every case at every thread count, blocks interleaved across thread counts
    cases = [
        ("diverse step (full loss)", N_IMAGES, True, args.steps),
        ("inner loop (-p.mean())", N_IMAGES, False, args.steps),
    ]
    for b in BIG_BATCHES:  # about the same number of images per block (>= 3 steps)
        cases.append(("inner loop (-p.mean())", b, False, max(3, args.steps * N_IMAGES // b)))
    # the same inner loop in channels_last memory format (weights and activations), batch 64
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    prob_cl = Problem.build(
        net_cl,
        LAYER,
        UNIT,
        None,
        "max",
        contrast=0.5,
        norm=prob.norm,
        distance_layer=DIST_LAYER,
        images_folder=None,
    )
    cases.append(("inner loop, channels_last", 64, False, max(3, args.steps * N_IMAGES // 64)))
    # bf16 autocast of the forward (diversevis precision="bf16"); eff. still against the fp32 peak
    cases.append(("inner loop, bf16 autocast", 256, False, max(3, args.steps * N_IMAGES // 256)))
    steps_res = []
    for label, batch, div, n in cases:
        benches = {}
        for th in threads:
            torch.set_num_threads(th)
            cl = "channels_last" in label
            prec = "bf16" if "bf16" in label else "fp32"
            benches[th] = Bench(prob_cl if cl else prob, batch, div, device, channels_last=cl, precision=prec)
            benches[th].warm(5 if batch <= 64 else 2)
        per_step: dict[int, list[float]] = {th: [] for th in threads}
        blocks: dict[int, list[float]] = {th: [] for th in threads}
        for _ in range(args.repeats):
            for th in threads:
                torch.set_num_threads(th)
                ts = benches[th].time_block(n, args.max_block_s)
                per_step[th] += ts
                blocks[th].append(sum(ts) / len(ts))
        for th in threads:
            med = statistics.median(per_step[th])
            steps_res.append(
                {
                    "label": label,
                    "batch": batch,
                    "diversity": div,
                    "threads": th,
                    "median_s": med,
                    "min_s": min(per_step[th]),
                    "block_means_s": blocks[th],
                    "n_steps": len(per_step[th]),
                    "flops_per_step": batch * per_image,
                }
            )

    # ---- the library loop itself: dv.diverse(mei=False, max_iter=K, no early stop), seconds / n_iter
    lib: dict[int, list[float]] = {th: [] for th in threads}
    lib_n: dict[int, int] = dict.fromkeys(threads, 0)
    kw = dict(
        n_images=N_IMAGES, diversity=LAMBDA, distance_layer=DIST_LAYER, seed=SEED, mei=False, plateau_window=0
    )
    for th in threads:
        torch.set_num_threads(th)
        dv.diverse(net, LAYER, UNIT, max_iter=5, **kw)  # warm-up
    for _ in range(args.repeats):
        for th in threads:
            torch.set_num_threads(th)
            stop = _stop_after(args.max_block_s)
            r = dv.diverse(net, LAYER, UNIT, max_iter=args.steps, callbacks=[stop], **kw)
            lib[th].append(r.spec["seconds"] / r.spec["n_iter"])
            lib_n[th] += r.spec["n_iter"]
    for th in threads:
        med = statistics.median(lib[th])
        steps_res.append(
            {
                "label": "dv.diverse loop (optimize())",
                "batch": N_IMAGES,
                "diversity": True,
                "threads": th,
                "median_s": med,
                "min_s": min(lib[th]),
                "block_means_s": lib[th],
                "n_steps": lib_n[th],
                "flops_per_step": N_IMAGES * per_image,
            }
        )

    b6 = {t["threads"]: t["median_s"] for t in steps_res if t["label"].startswith("diverse step")}
    best_b6 = min(b6, key=b6.get)

    # ---- full run to convergence
    full = None
    if not args.no_full:
        full_th = args.full_threads or best_b6
        torch.set_num_threads(full_th)
        t0 = time.perf_counter()
        res = dv.diverse(
            net, LAYER, UNIT, n_images=N_IMAGES, diversity=LAMBDA, distance_layer=DIST_LAYER, seed=SEED
        )
        wall = time.perf_counter() - t0
        s = res.spec
        full = {
            "threads": full_th,
            "wall_s": wall,
            "optimise_s": s["seconds"],
            "n_iter": s["n_iter"],
            "stopped_early": s["stopped_early"],
            "mei_s": s["mei_seconds"],
            "mei_n_iter": s["mei_n_iter"],
            "s_per_iter": s["seconds"] / s["n_iter"],
            "mei_s_per_iter": s["mei_seconds"] / s["mei_n_iter"],
            "min_ratio": float(res.ratios.min()),
            "mean_ratio": float(res.ratios.mean()),
            "min_distance": res.min_distance,
            "mei_activation": res.mei_activation,
        }

    # ---- matmul peak, second pass
    for th in threads:
        torch.set_num_threads(th)
        peak[th]["mm2048_end"] = matmul_gflops(2048, 5, device)
        peak[th]["best"] = max(v for k_, v in peak[th].items() if k_.startswith("mm"))
        peak[th]["bf16_mm2048"] = matmul_gflops(2048, 5, device, torch.bfloat16)
        peak[th]["conv3x3"] = max(peak[th]["conv3x3"], conv3x3_gflops(3, device))
    torch.set_num_threads(default_threads)
    for t in steps_res:
        t["gflops"] = t["flops_per_step"] / t["median_s"] / 1e9
        t["ms_per_image"] = 1e3 * t["median_s"] / t["batch"]
        t["efficiency"] = t["gflops"] / peak[t["threads"]]["best"]
        t["efficiency_conv3x3"] = t["gflops"] / peak[t["threads"]]["conv3x3"]
    out["matmul_peak_gflops"] = {str(th): v for th, v in peak.items()}
    out["steps"] = steps_res
    out["full_run"] = full
    out["env"]["loadavg_end"] = _loadavg()

    print("\nfp32 matmul peak (torch.mm n x n, best of several; GFLOP/s = 2 n^3 / t):")
    for th, v in peak.items():
        print(
            f"  {th} thread(s): "
            + "  ".join(f"{k_}={v[k_]:.1f}" for k_ in ("mm2048", "mm4096", "mm2048_end"))
            + f"  -> peak {v['best']:.1f} GFLOP/s (bf16 mm2048: {v['bf16_mm2048']:.1f}; "
            f"3x3 conv 256ch: {v['conv3x3']:.1f})"
        )
    print(
        "\nOne optimisation step (forward to conv3_1 + conv2_2 features, loss, backward to the image, "
        "FFT preconditioner, Adam):"
    )
    hdr = (
        f"  {'what':<30}{'batch':>6}{'thr':>4}{'steps':>6}{'median ms':>11}{'min ms':>9}{'ms/img':>8}"
        f"{'GFLOP/step':>12}{'GFLOP/s':>9}{'eff.':>7}{'vs conv':>8}"
    )
    print(hdr)
    print("  " + "-" * (len(hdr) - 2))
    for t in steps_res:
        print(
            f"  {t['label']:<30}{t['batch']:>6}{t['threads']:>4}{t['n_steps']:>6}"
            f"{1e3 * t['median_s']:>11.2f}"
            f"{1e3 * t['min_s']:>9.2f}{t['ms_per_image']:>8.2f}{t['flops_per_step'] / 1e9:>12.3f}"
            f"{t['gflops']:>9.1f}{100 * t['efficiency']:>6.1f}%{100 * t['efficiency_conv3x3']:>7.1f}%"
            + ("  *" if t["median_s"] > 1.5 * t["min_s"] else "")
        )
    if any(t["median_s"] > 1.5 * t["min_s"] for t in steps_res):
        print("  * median > 1.5 x min: probably hit by load from other processes; re-run to confirm.")
    print(
        "  eff. = achieved GFLOP/s (from the median) / fp32 matmul peak at the same thread count (for the "
        "bf16 row too);\n  vs conv = the same / a large 3x3 convolution's throughput (counted as a direct "
        "convolution, like the steps). The "
        "dv.diverse row is\n  optimize()'s own seconds / n_iter (incl. its bookkeeping), median over "
        "blocks; the other rows time\n  each step separately (median over all steps of all blocks)."
    )

    if full is not None:
        print(
            f"\nFull dv.diverse run to convergence ({full['threads']} thread(s); defaults: lr 1, max_iter "
            "1000, patience 100, MEI 4 restarts):"
        )
        print(
            f"  diverse optimisation: {full['optimise_s']:.2f} s, {full['n_iter']} iterations "
            f"({1e3 * full['s_per_iter']:.1f} ms/iter, stopped early: {full['stopped_early']})"
        )
        print(
            f"  MEI (4 restarts):     {full['mei_s']:.2f} s, {full['mei_n_iter']} iterations "
            f"({1e3 * full['mei_s_per_iter']:.1f} ms/iter)"
        )
        print(f"  wall incl. setup:     {full['wall_s']:.2f} s")
        print(
            f"  min ratio {full['min_ratio']:.3f}  mean ratio {full['mean_ratio']:.3f}  "
            f"min {DIST_LAYER} distance {full['min_distance']:.4f}  "
            f"MEI activation {full['mei_activation']:.3f}"
        )

    # ---- where the time goes
    if not args.no_profile:
        b256 = {
            t["threads"]: t["median_s"]
            for t in steps_res
            if t["batch"] == 256 and t["label"].startswith("inner loop (")
        }
        best_big = min(b256, key=b256.get)
        profs = []
        for batch, div, n, th in ((N_IMAGES, True, 20, best_b6), (256, False, 3, best_big)):
            torch.set_num_threads(th)
            p = profile_loop(prob, batch, div, n, device)
            p["threads"] = th
            profs.append(p)
        torch.set_num_threads(default_threads)
        out["profile"] = [{k_: v for k_, v in p.items() if k_ != "top_ops"} for p in profs]
        print(
            "\nWhere the time goes (torch.profiler, self time of the ops per step of the optimize() loop, "
            "profiler overhead included):"
        )
        for p in profs:
            what = "diverse loss" if p["diversity"] else "inner loop -p.mean()"
            print(
                f"  batch {p['batch']} ({what}), {p['threads']} thread(s), "
                f"{1e3 * p['wall_per_step_s']:.2f} ms/step profiled:"
            )
            for name, sec in p["per_step_s"].items():
                print(f"    {name:<58}{1e3 * sec:>9.3f} ms {100 * sec / p['wall_per_step_s']:>6.1f}%")
            if args.top_ops:
                print(p["top_ops"])

    out["total_bench_s"] = time.perf_counter() - t_start
    print(
        f"\nload average at end: {out['env']['loadavg_end']}   "
        f"benchmark wall time: {out['total_bench_s']:.1f} s"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2, default=str)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
