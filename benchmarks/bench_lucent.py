"""diversevis vs Lucent: time to a diverse set of one VGG-16 unit, and the quality of both sets.

Side by side in one run, on the same network (``vgg16``: the ImageNet VGG-16 conv base that
diversevis loads offline) and the same target (``conv3_1`` unit 21, 6 images):

* **diversevis**: ``dv.diverse(net, "conv3_1", 21, n_images=6, diversity=LAMBDA,
  distance_layer="conv2_2", seed=0)`` with the library defaults, including the 4-restart MEI that
  the activation ratios need. Time = the whole call (MEI + diverse set), model already loaded.
* **Lucent** (``torch-lucent`` 0.1.8): its documented diversity recipe,
  ``objectives.channel("features_10", 21) - 1e2 * objectives.diversity("features_10")`` with
  ``param.image(128, batch=6)`` (FFT + colour decorrelation + sigmoid), its standard transforms, the
  upsampling to 224 px it applies to smaller images, Adam 5e-2 and its default 512 steps. Lucent always
  runs the whole model it is given; it gets the conv base only (no classifier), its cheapest option.
  Lucent's ImageNet normalisation is switched off (``preprocess=False``) and the model gets
  diversevis's own input normalisation of this network instead, so both optimise the same function.

Quality, measured the same way for both sets with diversevis's evaluation (``Problem``):

* ``act``: the activation of the centre unit (conv3_1 unit 21 at the middle position), each image as
  produced (ours: the RF-sized image in a grey canvas; Lucent: its 224 px image).
* ``ratio``: the activation of the image's centre receptive field (24 x 24 px crop at the scale the
  network sees), mean-subtracted and rescaled to the DFV contrast (half the mean natural-patch norm),
  relative to the MEI at that contrast. This is the quality measure of the paper (ratios >= 0.9).
* ``min dist``: the smallest pairwise RMS distance of the same crops' conv2_2 features (ReLU), the
  paper's diversity measure.

Run (Lucent needs torchvision and an old kornia, hence its own virtual environment; see README.md):

    .venv-lucent/bin/python benchmarks/bench_lucent.py             # about 35 min on 2 CPU cores
    .venv-lucent/bin/python benchmarks/bench_lucent.py --lucent-steps 32   # extrapolates Lucent's time

No timing assertions: the script prints what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import diversevis as dv
from diversevis.core.objectives import pairwise_rms
from diversevis.methods.dfv import Problem

LAYER, UNIT, N_IMAGES, DIST_LAYER = "conv3_1", 21, 6, "conv2_2"
LUCENT_LAYER = "features_10"  # conv3_1 in torchvision's VGG-16 layout


class _Normalised(nn.Module):
    """The conv base behind diversevis's input normalisation, with torchvision's ``features`` names."""

    def __init__(self, net: dv.Network) -> None:
        super().__init__()
        self.net = net
        self.features = net.module.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.net.normalize(x))


def centre_crops(prob: Problem, images: torch.Tensor) -> torch.Tensor:
    """The receptive-field window of the centre unit of ``LAYER`` in full-size images ``(B, 3, S, S)``."""
    rf = prob.net.receptive_field(LAYER)
    side = images.shape[-1]
    n_out = prob.net.output_shape(LAYER, side)[-1]
    c = n_out // 2
    top = int(round(rf.center(c) - (rf.size - 1) / 2))  # pixel centres are integer coordinates
    return images[..., top : top + rf.size, top : top + rf.size]


def centre_activation(net: dv.Network, images: torch.Tensor) -> torch.Tensor:
    """Unit ``UNIT`` of ``LAYER`` at the middle position of full-size images."""
    with torch.no_grad():
        a = net.activations(images, [LAYER])[LAYER]
    c = a.shape[-1] // 2
    return a[:, UNIT, c, c]


def matched_quality(prob: Problem, crops: torch.Tensor, mei_act: float) -> dict:
    """Ratios to the MEI and min conv2_2 distance of RF-sized crops rescaled to the DFV contrast."""
    x = crops - crops.mean(dim=(1, 2, 3), keepdim=True)
    norms = x.flatten(1).norm(dim=1).clamp_min(1e-12)
    x = 0.5 + x * (prob.norm / norms).view(-1, 1, 1, 1)
    with torch.no_grad():
        act, feats = prob.evaluate(x)
    d = pairwise_rms(feats.flatten(1))
    ratios = (act / mei_act).tolist()
    return {
        "ratios": [round(r, 4) for r in ratios],
        "min_ratio": round(min(ratios), 4),
        "mean_ratio": round(float(np.mean(ratios)), 4),
        "min_dist": round(float(d.min()), 4),
        "mean_dist": round(float(d.mean()), 4),
        "crop_contrast_before": [round(float(v), 3) for v in norms],
    }


def run_ours(net: dv.Network, diversity: float, seed: int, every: int = 10) -> dict:
    """The whole ``dv.diverse`` call, plus the set every ``every`` iterations with its time stamp.

    The snapshots (a copy of 6 small images, a few microseconds) let the time to a set of a given
    quality be read off afterwards: MEI seconds + the optimisation's elapsed time at the first snapshot
    that meets it.
    """
    snaps: list[tuple[float, torch.Tensor]] = []

    def snap(info) -> None:  # called on every step of the diverse optimisation (not the MEI's)
        if info.step % every == every - 1:
            snaps.append((time.perf_counter(), info.images.detach().clone()))

    t0 = time.perf_counter()
    res = dv.diverse(
        net,
        LAYER,
        UNIT,
        n_images=N_IMAGES,
        diversity=diversity,
        distance_layer=DIST_LAYER,
        seed=seed,
        callbacks=[snap],
    )
    seconds = time.perf_counter() - t0
    return {"result": res, "seconds": seconds, "snapshots": [(t - t0, x) for t, x in snaps]}


def time_to(prob: Problem, snapshots, mei_act: float, ok) -> tuple[float | None, dict | None]:
    """Seconds from the start of ``dv.diverse`` (MEI included) to the first snapshot whose quality
    (:func:`matched_quality`) satisfies ``ok``; ``(None, None)`` if none does."""
    for t, x in snapshots:
        q = matched_quality(prob, x, mei_act)
        if ok(q):
            return t, q
    return None, None


def run_lucent(net: dv.Network, steps: int, seed: int) -> dict:
    from lucent.optvis import objectives, param, render

    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (Lucent's transforms draw from the legacy global generator)
    if net.channels_last:  # Lucent gets the network as its users have it: default memory format
        import copy

        net = copy.deepcopy(net).use_channels_last(False)
    model = _Normalised(net).eval()
    obj = objectives.channel(LUCENT_LAYER, UNIT) - 1e2 * objectives.diversity(LUCENT_LAYER)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imgs = render.render_vis(
            model,
            obj,
            lambda: param.image(128, batch=N_IMAGES),
            thresholds=(steps,),
            preprocess=False,
            progress=True,
            show_image=False,
        )
    seconds = time.perf_counter() - t0
    x = torch.from_numpy(np.ascontiguousarray(imgs[-1])).permute(0, 3, 1, 2).float()
    x224 = F.interpolate(x, size=224, mode="bilinear", align_corners=True)  # what the network saw
    return {"images": x224, "seconds": seconds, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--diversity", type=float, default=0.01, help="our lambda (default: 0.01, the paper's)")
    ap.add_argument("--lucent-steps", type=int, default=512, help="Lucent steps (default: 512, its default)")
    ap.add_argument("--no-lucent", action="store_true", help="only run diversevis")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    ap.add_argument("--save-images", default=None, help="write both sets as a PNG to this path")
    ap.add_argument(
        "--dominate-lambdas",
        default="3,10,30",
        help="our lambdas tried for a set at least as good as Lucent's on every measure (default: 3,10,30)",
    )
    ap.add_argument(
        "--no-channels-last", action="store_true", help="run diversevis without Network.use_channels_last()"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"# diversevis {dv.__version__} vs Lucent on vgg16 {LAYER} unit {UNIT}, {N_IMAGES} images")
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}"
    )
    net = dv.load_model("vgg16")
    if not args.no_channels_last:
        net.use_channels_last()
    print(f"diversevis network memory format: {'channels_last' if net.channels_last else 'contiguous'}")
    prob = Problem.build(
        net, LAYER, UNIT, None, "max", contrast=0.5, norm=None, distance_layer=DIST_LAYER, images_folder=None
    )

    # warm-up: one-off costs per process (natural-image statistics for the contrast, oneDNN kernel
    # selection); Lucent's own first steps, which carry its one-off costs, stay in its time
    t0 = time.perf_counter()
    dv.diverse(net, LAYER, UNIT, n_images=N_IMAGES, distance_layer=DIST_LAYER, max_iter=3, mei_restarts=1)
    print(f"diversevis warm-up (3 iterations, not counted): {time.perf_counter() - t0:.2f} s")
    ours = run_ours(net, args.diversity, args.seed)
    res = ours["result"]
    mei_act = float(res.mei_activation)
    with torch.no_grad():
        our_act = prob.evaluate(res.images)[0]
    ours_q = matched_quality(prob, res.images, mei_act)
    rows = {
        "diversevis": {
            "seconds": round(ours["seconds"], 2),
            "iterations": res.spec["n_iter"],
            "mei_seconds": res.spec.get("mei_seconds"),
            "image_px": res.images.shape[-1],
            "act": [round(float(a), 3) for a in our_act],
            **ours_q,
        }
    }
    print(
        f"diversevis: {ours['seconds']:.1f} s (MEI {res.spec.get('mei_seconds', 0):.1f} s + "
        f"{res.spec['n_iter']} iterations), MEI activation {mei_act:.2f}"
    )

    if not args.no_lucent:
        try:
            import lucent  # noqa: F401
        except ImportError:
            print(
                "Lucent is not installed here; see benchmarks/README.md for its environment", file=sys.stderr
            )
            return 2
        luc = run_lucent(net, args.lucent_steps, args.seed)
        per_step = luc["seconds"] / luc["steps"]
        act = centre_activation(net, luc["images"])
        crops = centre_crops(prob, luc["images"])
        rows["lucent"] = {
            "seconds": round(luc["seconds"], 2),
            "steps": luc["steps"],
            "seconds_per_step": round(per_step, 3),
            "seconds_512_steps": round(per_step * 512, 1),
            "image_px": 224,
            "act": [round(float(a), 3) for a in act],
            **matched_quality(prob, crops, mei_act),
        }
        print(f"Lucent: {luc['seconds']:.1f} s for {luc['steps']} steps ({per_step:.2f} s/step)")

    print()
    print(
        "| tool | seconds | centre act (as made) | ratio to MEI (min / mean, DFV contrast) | min conv2_2 dist |"
    )
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        acts = f"{min(r['act']):.1f}-{max(r['act']):.1f}"
        secs = r["seconds"] if name == "diversevis" else r["seconds_512_steps"]
        name = f"diversevis (lambda {args.diversity:g})" if name == "diversevis" else name
        print(
            f"| {name} | {secs:.1f} | {acts} | {r['min_ratio']:.3f} / {r['mean_ratio']:.3f} | {r['min_dist']:.3f} |"
        )
    if "lucent" in rows:
        speedup = rows["lucent"]["seconds_512_steps"] / rows["diversevis"]["seconds"]
        rows["speedup_vs_lucent_512"] = round(speedup, 1)
        note = (
            ""
            if rows["lucent"]["steps"] == 512
            else f" (Lucent time extrapolated from {rows['lucent']['steps']} steps)"
        )
        print(f"\ntime-to-result ratio (Lucent 512 steps / diversevis full run): x{speedup:.0f}{note}")
        luc_q = rows["lucent"]
        # (a) time to the result: a set with every image at >= 0.9 of the MEI and its final diversity
        # (90 % of the final min distance), i.e. without the early-stopping patience tail
        final = rows["diversevis"]["min_dist"]
        t_a, q_a = time_to(
            prob,
            ours["snapshots"],
            mei_act,
            lambda q: q["min_ratio"] >= 0.9 and q["min_dist"] >= 0.9 * final,
        )
        if t_a is not None:
            rows["diversevis"]["seconds_to_result"] = round(t_a, 2)
            rows["speedup_to_result"] = round(luc_q["seconds_512_steps"] / t_a, 1)
            print(
                f"time to a set at >= 0.9 of the MEI with 90% of its final diversity: {t_a:.2f} s (MEI "
                f"included; min ratio {q_a['min_ratio']:.3f}, min dist {q_a['min_dist']:.1f}) -> "
                f"x{rows['speedup_to_result']:.0f} vs Lucent's 512 steps"
            )
        # (b) a set at least as good as Lucent's on every measure (larger lambdas trade activation for
        # diversity; Lucent's set is very diverse but some of its images do not drive the unit)
        dom = []
        for lam in [float(v) for v in args.dominate_lambdas.split(",") if v]:
            run = run_ours(net, lam, args.seed)
            t_b, q_b = time_to(
                prob,
                run["snapshots"],
                mei_act,
                lambda q: (
                    q["min_ratio"] >= luc_q["min_ratio"]
                    and q["mean_ratio"] >= luc_q["mean_ratio"]
                    and q["min_dist"] >= luc_q["min_dist"]
                ),
            )
            fq = matched_quality(prob, run["result"].images, mei_act)
            dom.append(
                {
                    "lambda": lam,
                    "seconds": round(run["seconds"], 2),
                    "final": fq,
                    "seconds_to_dominate": None if t_b is None else round(t_b, 2),
                    "quality_when_dominating": q_b,
                }
            )
            print(
                f"diversevis lambda={lam:g}: full run {run['seconds']:.2f} s, min/mean ratio "
                f"{fq['min_ratio']:.3f}/{fq['mean_ratio']:.3f}, min dist {fq['min_dist']:.1f}; "
                + (
                    f"beats Lucent on every measure after {t_b:.2f} s"
                    if t_b
                    else "never beats Lucent on every measure"
                )
            )
        rows["dominating_runs"] = dom
        best = [d["seconds_to_dominate"] for d in dom if d["seconds_to_dominate"] is not None]
        if best:
            rows["speedup_to_dominating_set"] = round(luc_q["seconds_512_steps"] / min(best), 1)
            print(
                f"time to a set at least as good as Lucent's on every measure: {min(best):.2f} s -> "
                f"x{rows['speedup_to_dominating_set']:.0f}"
            )
        q_ok = (
            rows["diversevis"]["min_ratio"] >= rows["lucent"]["min_ratio"]
            and rows["diversevis"]["min_dist"] >= rows["lucent"]["min_dist"]
        )
        print(
            f"quality (lambda {args.diversity:g} set vs Lucent's): diversevis "
            f"{'matches or beats' if q_ok else 'does not beat'} Lucent on both min ratio and min distance"
        )
    print(f"load at the end {os.getloadavg()[0]:.2f}")

    if args.save_images:
        from diversevis.core.result import image_grid

        sets = [res.images]
        if "lucent" in rows:
            sets.append(F.interpolate(centre_crops(prob, luc["images"]), size=res.images.shape[-1]))
        with open(args.save_images, "wb") as f:
            f.write(
                image_grid(
                    torch.cat(sets),
                    columns=N_IMAGES,
                    title="top: diversevis; bottom: Lucent (centre RF crops)",
                )
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": platform.platform(),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    **rows,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
