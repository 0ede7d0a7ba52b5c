"""The ``diversevis`` command.

Subcommands: ``models``, ``layers``, ``diverse``, ``mei``, ``shift-test``, ``phase-test``, ``analyze``,
``sweep``, ``report``, ``compare``, and the classic methods ``actmax``, ``deconv``, ``occlusion``,
``multifaceted``, ``invert``, ``dissect`` (their parsers and handlers live in ``classic/cli_<method>.py``).
User errors (unknown model or layer, unit out of range, bad values) print one line
``diversevis: error: ...`` and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from diversevis.core.errors import DiversevisError

EXIT_USAGE = 2

#: Modules ``diversevis.cli.<name>`` that each define ``add_parser(sub)`` (returning the new
#: subparser) and ``run(args) -> int``.
CLASSIC_COMMANDS = ("actmax", "deconv", "occlusion", "multifaceted", "invert", "dissect")


def _classic_modules():
    return [importlib.import_module(f"diversevis.cli.{name}") for name in CLASSIC_COMMANDS]


def _number(kind: type, check, rule: str):
    """An argparse ``type=`` that parses ``kind`` and enforces ``check`` (described by ``rule``)."""
    noun = "an integer" if kind is int else "a number"

    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {s!r}") from None
        if not check(v):
            raise argparse.ArgumentTypeError(f"expected {noun} {rule}, got {s}")
        return v

    return parse


_positive_int = _number(int, lambda v: v >= 1, ">= 1")
_nonneg_int = _number(int, lambda v: v >= 0, ">= 0")
_positive_float = _number(float, lambda v: v > 0, "> 0")
_nonneg_float = _number(float, lambda v: v >= 0, ">= 0")
_unit_float = _number(float, lambda v: 0 <= v <= 1, "in [0, 1]")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        "-m",
        required=True,
        help="model spec: vgg16, vgg16-paper, efficientnet-lite0, cell:complex, file:PATH, torchvision:NAME[@PATH] "
        "(see `diversevis models`)",
    )
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow file: models that are pickled Python objects (runs code from the file; "
        "only for files you trust)",
    )
    p.add_argument(
        "--naturals",
        metavar="DIR",
        default=None,
        help="folder of natural images for contrast statistics (default: bundled photos)",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="NHWC memory format for the network (faster convolutions on CPUs; see docs/performance.md)",
    )


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", "-l", required=True, help="layer alias (conv3_1) or dot path (features.10)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--unit", "-u", type=_nonneg_int, help="channel index of the unit")
    g.add_argument(
        "--direction",
        metavar="FILE|v1,v2,...",
        help="target direction in channel space: a .npy file or comma-separated values",
    )
    p.add_argument(
        "--metric", choices=["max", "cos", "mse"], default="max", help="target metric (default: max)"
    )


def _add_contrast_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--contrast",
        type=_positive_float,
        default=0.5,
        help="image L2 norm as a fraction of the mean natural-patch norm (default: 0.5, as the paper)",
    )
    p.add_argument(
        "--norm", type=_positive_float, default=None, help="absolute image L2 norm (overrides --contrast)"
    )


def _add_out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", "-o", default=None, help="output directory (default: runs/<model>_<layer>_u<unit>_<command>)"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _add_optim_args(p: argparse.ArgumentParser, lr: float = 1.0, max_iter: int = 1000) -> None:
    _add_contrast_args(p)
    p.add_argument("--lr", type=_positive_float, default=lr, help=f"Adam learning rate (default: {lr})")
    p.add_argument(
        "--max-iter", type=_positive_int, default=max_iter, help=f"maximum iterations (default: {max_iter})"
    )
    p.add_argument(
        "--patience",
        type=_nonneg_int,
        default=100,
        help="early stopping: iterations without EMA-loss improvement (default: 100; 0 disables)",
    )
    p.add_argument(
        "--no-precondition", action="store_true", help="disable the 1/sqrt(f) gradient preconditioner"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    _add_out_args(p)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``diversevis`` command."""
    from diversevis import __version__

    parser = argparse.ArgumentParser(
        prog="diversevis",
        description="Diverse feature visualization (Cadena et al. 2018): the set of images that strongly "
        "drive one CNN unit, and what the unit is invariant to.",
        epilog="Example: diversevis diverse --model vgg16-paper --layer conv3_1 --unit 21 --images 6 "
        "--diversity 0.01 --distance-layer conv2_2 --out runs/u21",
    )
    parser.add_argument("--version", action="version", version=f"diversevis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sub.add_parser("models", help="list the model specs that load offline")

    p = sub.add_parser("layers", help="list a model's layers with output shapes and receptive fields")
    _add_model_args(p)
    p.add_argument(
        "--size", type=_positive_int, default=None, help="input side for the shapes (default: 224)"
    )

    p = sub.add_parser(
        "diverse",
        help="diverse feature visualization of one unit (PNG grid + JSON)",
        description="Optimise N images of the unit's receptive-field size that all drive the unit "
        "strongly while being as different as possible (min pairwise RMS distance).",
    )
    _add_model_args(p)
    _add_target_args(p)
    p.add_argument("--images", "-n", type=_positive_int, default=6, help="number of images N (default: 6)")
    p.add_argument(
        "--diversity",
        type=_nonneg_float,
        default=0.01,
        help="weight lambda of the diversity term (default: 0.01)",
    )
    p.add_argument(
        "--distance-layer", default=None, help="layer whose features measure distances (default: pixel space)"
    )
    p.add_argument(
        "--distance",
        choices=["min", "softmin", "gram"],
        default="min",
        help="diversity term: min pairwise RMS distance (paper), softmin, or Lucid's gram (default: min)",
    )
    p.add_argument("--tau", type=_positive_float, default=0.1, help="softmin temperature (default: 0.1)")
    p.add_argument(
        "--mei-restarts",
        type=_positive_int,
        default=4,
        help="restarts of the MEI used for the activation ratios (default: 4)",
    )
    p.add_argument("--no-mei", action="store_true", help="skip the MEI (no ratios)")
    _add_optim_args(p)
    p.add_argument(
        "--precision",
        choices=("fp32", "tf32", "bf16"),
        default="fp32",
        help="forward-pass precision: tf32 on Ampere+ GPUs, bf16 autocast anywhere (default: fp32)",
    )

    p = sub.add_parser("mei", help="most exciting input: best single image over restarts (PNG + JSON)")
    _add_model_args(p)
    _add_target_args(p)
    p.add_argument("--restarts", type=_positive_int, default=4, help="independent starts (default: 4)")
    _add_optim_args(p)
    p.add_argument(
        "--precision",
        choices=("fp32", "tf32", "bf16"),
        default="fp32",
        help="forward-pass precision: tf32 on Ampere+ GPUs, bf16 autocast anywhere (default: fp32)",
    )

    p = sub.add_parser(
        "shift-test",
        help="shift-invariance (texture) test: can one texture drive the unit at every shift?",
        description="Optimise one texture of side 2*rf-1 so that every windowed rf-sized crop drives the "
        "unit; report crop activations relative to the MEI (texture.png, mask.png, shift_map.png, shift.json).",
    )
    _add_model_args(p)
    _add_target_args(p)
    p.add_argument(
        "--weight-min",
        type=_unit_float,
        default=0.5,
        help="loss blend between the mean crop (0) and the worst crop (1) (default: 0.5)",
    )
    p.add_argument(
        "--learn-mask", action="store_true", help="learn the window's p, q, sigma with the texture"
    )
    p.add_argument(
        "--stride", type=_positive_int, default=1, help="offset step between crops (default: 1 = every shift)"
    )
    p.add_argument("--mei-restarts", type=_positive_int, default=4, help="restarts of the MEI (default: 4)")
    _add_optim_args(p, lr=0.1, max_iter=700)

    p = sub.add_parser(
        "phase-test",
        help="grating phase test: preferred orientation and frequency, F1/F0 ratio",
        description="Sinusoidal gratings at the DFV contrast: find the preferred orientation and spatial "
        "frequency, sweep phase, report F1/F0 (< 1 complex-like, > 1 simple-like) with tuning curves.",
    )
    _add_model_args(p)
    _add_target_args(p)
    _add_contrast_args(p)
    p.add_argument(
        "--orientations", type=_positive_int, default=16, help="orientations in [0, pi) (default: 16)"
    )
    p.add_argument("--frequencies", type=_positive_int, default=12, help="spatial frequencies (default: 12)")
    p.add_argument("--phases", type=_positive_int, default=8, help="phases of the coarse search (default: 8)")
    p.add_argument(
        "--fine-phases", type=_positive_int, default=32, help="phases of the final sweep (default: 32)"
    )
    _add_out_args(p)

    p = sub.add_parser(
        "analyze",
        help="DFV vs random restarts vs Gram diversity vs natural exemplars (table + figure)",
        description="Run DFV and three baselines at matched settings and compare their diversity in the same "
        "distance space (comparison.png, comparison.md, comparison.json).",
    )
    _add_model_args(p)
    p.add_argument("--layer", "-l", required=True, help="layer alias (conv3_1) or dot path (features.10)")
    p.add_argument("--unit", "-u", type=_nonneg_int, required=True, help="channel index of the unit")
    p.add_argument("--images", "-n", type=_positive_int, default=6, help="number of images N (default: 6)")
    p.add_argument("--diversity", type=_nonneg_float, default=0.01, help="DFV lambda (default: 0.01)")
    p.add_argument(
        "--distance-layer", default=None, help="layer whose features measure distances (default: pixels)"
    )
    p.add_argument("--no-gram", action="store_true", help="skip the Gram-cosine baseline")
    p.add_argument("--no-natural", action="store_true", help="skip the natural-exemplar baseline")
    p.add_argument(
        "--candidates", type=_positive_int, default=8192, help="natural patches sampled (default: 8192)"
    )
    p.add_argument(
        "--top-k", type=_positive_int, default=64, help="pool of top natural patches (default: 64)"
    )
    _add_contrast_args(p)
    p.add_argument("--max-iter", type=_positive_int, default=1000, help="maximum iterations (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    _add_out_args(p)

    p = sub.add_parser(
        "sweep",
        help="DFV, MEI and phase test (optionally shift test) for many units; resumable",
        description="Characterise all (or some) units of several layers. Units are optimised in batches "
        "(chunks of --batch-units); each finished unit is recorded in DIR/index.sqlite, so a rerun resumes "
        "where a killed one stopped (with either backend). --backend ray runs the chunks in parallel on Ray "
        "workers (pip install 'diversevis[ray]'): a local Ray instance with --workers CPUs, or the cluster at "
        "--ray-address (DIR must then be on a file system shared by all nodes). Each worker loads the model "
        "once and writes its units' folders; only this process writes the index. Results equal the local "
        "backend's for the same --seed (bit for bit when the local run uses as many torch threads as "
        "--worker-threads, e.g. OMP_NUM_THREADS=1).",
    )
    _add_model_args(p)
    p.add_argument("--layers", required=True, help="comma-separated layers, e.g. conv1_1,conv2_1")
    p.add_argument(
        "--units", default="all", help="all, a range 0-63, a list 1,5,9, or sample:32 (default: all)"
    )
    p.add_argument(
        "--images", "-n", type=_positive_int, default=6, help="images per diverse set (default: 6)"
    )
    p.add_argument("--diversity", type=_nonneg_float, default=0.01, help="DFV lambda (default: 0.01)")
    p.add_argument(
        "--distance-layer",
        default="auto",
        help="auto (previous block's last conv, as the paper), a layer, or pixels (default: auto)",
    )
    p.add_argument(
        "--tests", default="dfv,phase", help="analyses per unit: dfv, phase, shift (default: dfv,phase)"
    )
    p.add_argument(
        "--shift-stride", type=_positive_int, default=1, help="shift-test crop stride (default: 1)"
    )
    p.add_argument(
        "--batch-units",
        type=_positive_int,
        default=32,
        help="units per batched run: one chunk, one Ray task with --backend ray (default: 32)",
    )
    _add_contrast_args(p)
    p.add_argument("--max-iter", type=_positive_int, default=1000, help="maximum iterations (default: 1000)")
    p.add_argument("--mei-restarts", type=_positive_int, default=4, help="restarts of each MEI (default: 4)")
    p.add_argument(
        "--precision",
        choices=("fp32", "tf32", "bf16"),
        default="fp32",
        help="forward-pass precision: tf32 on Ampere+ GPUs, bf16 autocast anywhere (default: fp32)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--force", action="store_true", help="recompute units that are already done")
    p.add_argument("--out", "-o", required=True, help="results directory (created, or resumed)")
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: chunks one after the other in this process; ray: in parallel on Ray workers "
        "(default: local)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="ray: workers (chunks in flight) (default: the CPUs Ray sees)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="ray: join this running cluster (e.g. auto or ray://head:10001) instead of starting Ray here",
    )
    p.add_argument(
        "--worker-threads",
        type=_positive_int,
        default=1,
        metavar="N",
        help="ray: torch threads per worker (default: 1)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "report",
        help="static HTML report of a sweep: galleries, sortable metrics, histograms, unit pages",
        description="Write a self-contained HTML report of a sweep's results directory (no server needed: "
        "open index.html from disk). Images are referenced by relative paths into DIR, not copied.",
    )
    p.add_argument("dir", metavar="DIR", help="results directory of `diversevis sweep --out DIR`")
    p.add_argument(
        "--out", "-o", metavar="OUTDIR", default=None, help="report directory (default: DIR/report)"
    )

    p = sub.add_parser(
        "compare",
        help="compare two sweeps (two networks) at receptive-field-matched layers",
        description="Pair the layers of two sweep stores by receptive-field size and compare their invariance "
        "indices (F1/F0, shift test, DFV ratio): compare.md, compare.png, compare.json.",
    )
    p.add_argument("dir_a", metavar="DIR_A", help="first sweep store")
    p.add_argument("dir_b", metavar="DIR_B", help="second sweep store")
    p.add_argument(
        "--max-ratio",
        type=_positive_float,
        default=1.5,
        help="largest RF size ratio for a layer pair (default: 1.5)",
    )
    p.add_argument("--out", "-o", default=None, help="output directory (default: DIR_A/compare-<DIR_B name>)")

    p = sub.add_parser(
        "reproduce",
        help="reproduction study of the paper's claims on real networks (Markdown + HTML report)",
        description="Run the paper's experiments on vgg16-paper and efficientnet-lite0 (reference notebook "
        "run, synthetic cells, lambda trade-off, layer sweeps with phase and shift tests, DFV vs baselines, "
        "natural-image prior) and write DIR/report.md and DIR/report.html with a verdict per claim. Each "
        "finished step is stored in DIR, so a rerun resumes.",
    )
    p.add_argument("--out", "-o", required=True, help="study directory (created, or resumed)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--quick", action="store_true", help="preset quick: a few units, ~10 min on a CPU (default)"
    )
    g.add_argument(
        "--preset",
        choices=["quick", "standard", "full"],
        default=None,
        help="quick (3 units/layer), standard (16), full (64 units/layer: a GPU job)",
    )
    p.add_argument(
        "--units",
        type=_positive_int,
        default=None,
        help="override the preset's units per layer (e.g. --quick --units 8: enough for the network test)",
    )
    p.add_argument(
        "--baseline-units",
        type=_positive_int,
        default=None,
        help="override the preset's units per layer in the baseline comparison",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--prior-beta", type=_nonneg_float, default=1e-4, help="weight of the prior NLL (default: 1e-4)"
    )
    p.add_argument("--device", default=None, help="where the networks run, e.g. cuda (default: cpu)")
    p.add_argument(
        "--publish",
        metavar="MD",
        default=None,
        help="also copy report.md and its figures to MD and MD's folder (e.g. docs/reproduction.md)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")

    parser.set_defaults(handler=None)
    for mod in _classic_modules():
        mod.add_parser(sub).set_defaults(handler=mod.run)
    return parser


def _direction(arg: str | None):
    if arg is None:
        return None
    import numpy as np

    if arg.endswith(".npy"):
        path = Path(arg)
        if not path.is_file():
            raise DiversevisError(f"direction file {arg!r} does not exist")
        return np.load(path).astype("float32").ravel().tolist()
    try:
        return [float(v) for v in arg.split(",")]
    except ValueError:
        raise DiversevisError(
            f"--direction must be a .npy file or comma-separated numbers, got {arg!r}"
        ) from None


def _out_dir(args, net) -> Path:
    if args.out:
        return Path(args.out)
    unit = f"u{args.unit}" if getattr(args, "unit", None) is not None else "dir"
    name = net.name.replace(":", "-").replace("/", "-")
    return Path("runs") / f"{name}_{net.display_name(args.layer)}_{unit}_{args.command}"


def _cmd_models(args) -> int:
    from diversevis.models.zoo import list_models

    for spec, desc in list_models().items():
        print(f"{spec:26s} {desc}")
    return 0


def _cmd_layers(args) -> int:

    net = _load(args)
    rows = net.list_layers(args.size)
    print(f"{'layer':22s} {'alias':10s} {'type':14s} {'output (C,H,W)':18s} {'RF':>5s} {'stride':>6s}")
    for r in rows:
        shape = "x".join(str(s) for s in r.shape) if r.shape else "-"
        print(
            f"{r.name:22s} {r.alias or '':10s} {r.type:14s} {shape:18s} "
            f"{r.rf if r.rf is not None else '-':>5} {r.stride if r.stride is not None else '-':>6}"
        )
    if any(r.rf is None for r in rows):
        print(
            "(RF '-': not a conv/pool chain here; diversevis measures it with a gradient probe when needed)"
        )
    return 0


def _cmd_run(args) -> int:
    from diversevis.methods import dfv

    net = _load(args)
    common = dict(
        direction=_direction(args.direction),
        metric=args.metric,
        contrast=args.contrast,
        norm=args.norm,
        precondition=not args.no_precondition,
        lr=args.lr,
        max_iter=args.max_iter,
        patience=args.patience,
        seed=args.seed,
        images=args.naturals,
        progress=not args.quiet,
        precision=args.precision,
    )
    if args.command == "diverse":
        if args.images < 2:
            raise DiversevisError(
                "--images must be >= 2 for a diverse set (use `diversevis mei` for one image)"
            )
        res = dfv.diverse(
            net,
            args.layer,
            args.unit,
            n_images=args.images,
            diversity=args.diversity,
            distance_layer=args.distance_layer,
            distance=args.distance,
            tau=args.tau,
            mei=not args.no_mei,
            mei_restarts=args.mei_restarts,
            **common,
        )
    else:
        res = dfv.mei(net, args.layer, args.unit, restarts=args.restarts, **common)
    out = res.save(_out_dir(args, net))
    m = res.metrics()
    spec = res.spec
    print(
        f"{spec['model']} {spec['layer']} unit {spec['unit']}: {len(res.activations)} image(s) of "
        f"{spec['image_size']}px, {spec['n_iter']} iterations in {spec['seconds']:.1f}s"
        + (f" (+ MEI {spec['mei_seconds']:.1f}s)" if spec.get("mei_seconds") else "")
    )
    acts = ", ".join(f"{a:.3g}" for a in m["activations"])
    print(
        f"  activations: {acts}  (MEI {m['mei_activation']:.4g})"
        if m["mei_activation"] is not None
        else f"  activations: {acts}"
    )
    if m["ratios"] is not None and args.command == "diverse":
        print(f"  ratio to MEI: min {m['min_ratio']:.3f}, mean {m['mean_ratio']:.3f}")
    if m["min_distance"] is not None:
        where = spec.get("distance_layer") or "pixels"
        print(
            f"  min pairwise RMS distance ({where}): {m['min_distance']:.4g}, mean {m['mean_distance']:.4g}"
        )
    print(f"  wrote {out / 'grid.png'}, {out / 'images.npz'}, {out / 'result.json'}")
    return 0


def _load(args):
    from diversevis.models.zoo import load_model

    net = load_model(args.model, device=args.device, allow_pickle=args.allow_pickle, images=args.naturals)
    return net.use_channels_last() if getattr(args, "channels_last", False) else net


def _cmd_shift(args) -> int:
    from diversevis.methods.shift import shift_test

    net = _load(args)
    res = shift_test(
        net,
        args.layer,
        args.unit,
        direction=_direction(args.direction),
        metric=args.metric,
        weight_min=args.weight_min,
        learn_mask=args.learn_mask,
        stride=args.stride,
        contrast=args.contrast,
        norm=args.norm,
        precondition_grad=not args.no_precondition,
        lr=args.lr,
        max_iter=args.max_iter,
        patience=args.patience,
        seed=args.seed,
        mei_restarts=args.mei_restarts,
        images=args.naturals,
        progress=not args.quiet,
    )
    out = res.save(_out_dir(args, net))
    s = res.spec
    print(
        f"{s['model']} {s['layer']} unit {s['unit']}: shift test, {s['n_crops']} crops of "
        f"{s['image_size']}px from a {s['texture_size']}px texture, {s['n_iter']} iterations in {s['seconds']:.1f}s"
    )
    print(
        f"  crop activation / MEI: mean {res.mean_ratio:.3f}, min {res.min_ratio:.3f} "
        f"(MEI {res.mei_activation:.4g})"
    )
    print(f"  wrote {out / 'texture.png'}, {out / 'shift_map.png'}, {out / 'shift.json'}")
    return 0


def _cmd_phase(args) -> int:
    from diversevis.methods.phase import phase_test

    net = _load(args)
    res = phase_test(
        net,
        args.layer,
        args.unit,
        direction=_direction(args.direction),
        metric=args.metric,
        contrast=args.contrast,
        norm=args.norm,
        orientations=args.orientations,
        frequencies=args.frequencies,
        phases=args.phases,
        fine_phases=args.fine_phases,
        images=args.naturals,
    )
    out = res.save(_out_dir(args, net))
    kind = "complex-like" if res.f1_f0 < 1 else "simple-like"
    print(
        f"{res.spec['model']} {res.spec['layer']} unit {res.spec['unit']}: preferred orientation "
        f"{math.degrees(res.orientation):.1f} deg, frequency {res.frequency:.3f} cycles/px"
    )
    print(f"  F1/F0 = {res.f1_f0:.3f} ({kind})")
    print(f"  wrote {out / 'phase.png'}, {out / 'phase.json'}")
    return 0


def _cmd_analyze(args) -> int:
    from diversevis.methods.baselines import compare_baselines

    net = _load(args)
    if args.images < 2:
        raise DiversevisError("--images must be >= 2 to compare diverse sets")
    cmp = compare_baselines(
        net,
        args.layer,
        args.unit,
        n_images=args.images,
        diversity=args.diversity,
        distance_layer=args.distance_layer,
        contrast=args.contrast,
        norm=args.norm,
        seed=args.seed,
        max_iter=args.max_iter,
        natural=not args.no_natural,
        gram=not args.no_gram,
        exemplar_candidates=args.candidates,
        exemplar_k=args.top_k,
        images=args.naturals,
        progress=not args.quiet,
    )
    out = cmp.save(_out_dir(args, net))
    print(cmp.markdown())
    gaps = ", ".join(f"{k} x{v:.2f}" for k, v in cmp.gaps().items() if v is not None)
    print(f"DFV min distance relative to the baselines: {gaps}")
    print(f"wrote {out / 'comparison.png'}, {out / 'comparison.md'}, {out / 'comparison.json'}")
    return 0


def _cmd_sweep(args) -> int:
    from diversevis.study.sweep import _import_ray, sweep

    if args.backend == "ray":
        _import_ray()  # before loading the model
    elif args.workers is not None or args.ray_address is not None:
        raise DiversevisError("--workers and --ray-address need --backend ray")
    net = _load(args)
    dl = None if args.distance_layer in ("pixels", "none") else args.distance_layer
    t0 = time.perf_counter()
    store = sweep(
        net,
        [x for x in args.layers.split(",") if x],
        args.units,
        out=args.out,
        n_images=args.images,
        diversity=args.diversity,
        distance_layer=dl,
        tests=[t for t in args.tests.split(",") if t],
        shift_stride=args.shift_stride,
        batch_units=args.batch_units,
        contrast=args.contrast,
        max_iter=args.max_iter,
        mei_restarts=args.mei_restarts,
        seed=args.seed,
        force=args.force,
        images=args.naturals,
        progress=not args.quiet,
        backend=args.backend,
        workers=args.workers,
        ray_address=args.ray_address,
        worker_threads=args.worker_threads,
        precision=args.precision,
    )
    rows = store.rows()
    print(f"{len(rows)} units done in {args.out} ({time.perf_counter() - t0:.1f}s this run)")
    for layer in store.layers():
        rs = [r for r in rows if r["layer"] == layer]
        print(f"  {layer}: {len(rs)} units")
    store.close()
    return 0


def _cmd_report(args) -> int:
    from diversevis.study.report import write_report

    print(write_report(args.dir, args.out))
    return 0


def _cmd_compare(args) -> int:
    from diversevis.study.compare import compare_stores

    cmp = compare_stores(args.dir_a, args.dir_b, max_ratio=args.max_ratio)
    out = cmp.save(args.out or Path(args.dir_a) / f"compare-{Path(args.dir_b).resolve().name}")
    print(cmp.markdown())
    print(f"wrote {out / 'compare.png'}, {out / 'compare.md'}, {out / 'compare.json'}")
    return 0


def _cmd_reproduce(args) -> int:
    from dataclasses import replace

    from diversevis.study.reproduce import PRESETS, publish, reproduce

    preset = args.preset or "quick"
    over = {
        k: v for k, v in (("units", args.units), ("baseline_units", args.baseline_units)) if v is not None
    }
    if over:
        preset = replace(PRESETS[preset], **over)
    md = reproduce(
        args.out,
        preset=preset,
        seed=args.seed,
        prior_beta=args.prior_beta,
        progress=not args.quiet,
        device=args.device,
    )
    print(f"wrote {md} and {md.with_suffix('.html')}")
    if args.publish:
        print(f"published {publish(md.parent, args.publish)} with its figures")
    print((md.parent / "verdicts.json").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diversevis`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "models": _cmd_models,
        "layers": _cmd_layers,
        "diverse": _cmd_run,
        "mei": _cmd_run,
        "shift-test": _cmd_shift,
        "phase-test": _cmd_phase,
        "analyze": _cmd_analyze,
        "sweep": _cmd_sweep,
        "report": _cmd_report,
        "compare": _cmd_compare,
        "reproduce": _cmd_reproduce,
    }
    handler = args.handler or handlers[args.command]
    try:
        return handler(args)
    except DiversevisError as e:
        print(f"diversevis: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("diversevis: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
