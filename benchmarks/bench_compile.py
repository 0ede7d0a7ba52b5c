"""Does ``torch.compile`` speed up the truncated forward + input-gradient backward? Side by side.

The DFV inner loop's network part on the reference problem (``vgg16-paper`` up to conv3_1, 24 px
inputs): eager vs ``torch.compile`` (inductor), one forward + backward to the image per step, after
warm-up. Prints the compile time and the median step time of both. No assertions.

    python benchmarks/bench_compile.py                 # CPU, batch 64
    python benchmarks/bench_compile.py --batch 256 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import diversevis as dv


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    net = dv.load_model("vgg16-paper", device=dev)
    feats = net.module.features[: int(net.resolve("conv3_1").split(".")[-1]) + 1]
    x0 = torch.rand(args.batch, 3, 24, 24, generator=torch.Generator().manual_seed(0)).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step(f) -> None:
        x = x0.clone().requires_grad_(True)
        f(net.normalize(x))[:, 21].mean().backward()
        sync()

    print(f"# vgg16-paper to conv3_1, batch {args.batch}, {dev}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    res = {}
    for name, f in [("eager", feats), ("torch.compile", torch.compile(feats))]:
        t0 = time.perf_counter()
        step(f)
        first = time.perf_counter() - t0
        for _ in range(3):
            step(f)
        ts = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step(f)
            ts.append(time.perf_counter() - t0)
        res[name] = statistics.median(ts)
        print(f"{name:>14}: first call {first:6.1f} s, then {1e3 * res[name]:7.2f} ms per step (median)")
    print(f"compiled / eager step time: {res['torch.compile'] / res['eager']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
