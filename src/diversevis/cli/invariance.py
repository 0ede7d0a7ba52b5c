"""``diversevis shift-test``, ``phase-test`` and ``analyze``: what a unit is invariant to, DFV vs baselines."""

from __future__ import annotations

import argparse
import math

from diversevis.cli.common import (
    add_contrast_args,
    add_crop_arg,
    add_model_args,
    add_optim_args,
    add_out_args,
    add_precision_arg,
    add_target_args,
    direction,
    fraction,
    load,
    nonneg_float,
    nonneg_int,
    out_dir,
    positive_int,
    save_interrupted,
    settings_from_args,
    unit_float,
)
from diversevis.core.errors import DiversevisError
from diversevis.core.optimize import Interrupted
from diversevis.methods.phase_result import DRIVE_THRESHOLD
from diversevis.methods.settings import MEISettings, ShiftSettings

__all__ = [
    "COMMANDS",
    "add_shift_parser",
    "run_shift",
    "add_phase_parser",
    "run_phase",
    "add_analyze_parser",
    "run_analyze",
]


def add_shift_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``shift-test`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "shift-test",
        help="shift-invariance (texture) test: can one texture drive the unit at every shift?",
        description="Optimise one texture of side 2*rf-1 so that every windowed rf-sized crop drives the "
        "unit; report crop activations relative to the MEI (texture.png, mask.png, shift_map.png, shift.json).",
    )
    add_model_args(p)
    add_target_args(p)
    p.add_argument(
        "--weight-min",
        type=unit_float,
        default=ShiftSettings.weight_min,
        help=f"loss blend between the mean crop (0) and the worst crop (1) (default: {ShiftSettings.weight_min})",
    )
    p.add_argument(
        "--learn-mask", action="store_true", help="learn the window's p, q, sigma with the texture"
    )
    p.add_argument(
        "--stride", type=positive_int, default=1, help="offset step between crops (default: 1 = every shift)"
    )
    p.add_argument(
        "--mei-restarts",
        type=positive_int,
        default=ShiftSettings.mei_restarts,
        help=f"restarts of the MEI (default: {ShiftSettings.mei_restarts})",
    )
    add_crop_arg(p, "crops")
    p.add_argument(
        "--crops-per-step",
        type=_crops_per_step,
        default=ShiftSettings.crops_per_step,
        metavar="K|all",
        help="crops the optimiser sees per step: the worst crops of the latest full evaluation plus an "
        "even lattice of the others, every crop each --refresh steps; 'all' = every crop at every step, "
        f"the reference, several times slower (default: {ShiftSettings.crops_per_step})",
    )
    p.add_argument(
        "--refresh",
        type=positive_int,
        default=ShiftSettings.refresh,
        help=f"steps between full evaluations of every crop (default: {ShiftSettings.refresh})",
    )
    add_precision_arg(p)
    add_optim_args(p, lr=ShiftSettings.lr, max_iter=ShiftSettings.max_iter)
    return p


def _crops_per_step(text: str) -> int | None:
    """``all`` -> ``None`` (every crop at every step); else an integer >= 2."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2 or 'all', got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2 or 'all', got {value}")
    return value


def run_shift(args: argparse.Namespace) -> int:
    """Handler of ``diversevis shift-test``; returns the exit status."""
    from diversevis.methods.shift import ShiftResult, run_shift_test

    net = load(args)
    try:
        res = run_shift_test(
            net,
            args.layer,
            args.unit,
            direction(args.direction),
            args.metric,
            settings_from_args(ShiftSettings, args),
            progress=not args.quiet,
        )
    except Interrupted as stop:  # Ctrl-C: keep the best texture found so far
        return save_interrupted(stop, ShiftResult, args, net, _print_shift)
    _print_shift(res, res.save(out_dir(args, net)))
    return 0


def _print_shift(res, out) -> None:
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


def add_phase_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``phase-test`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "phase-test",
        help="grating phase test: preferred orientation and frequency, F1/F0 ratio",
        description="Sinusoidal gratings at the DFV contrast: find the preferred orientation and spatial "
        "frequency, sweep phase, report F1/F0 (< 1 complex-like, > 1 simple-like) with tuning curves.",
    )
    add_model_args(p)
    add_target_args(p)
    add_contrast_args(p)
    p.add_argument(
        "--orientations", type=positive_int, default=16, help="orientations in [0, pi) (default: 16)"
    )
    p.add_argument("--frequencies", type=positive_int, default=12, help="spatial frequencies (default: 12)")
    p.add_argument("--phases", type=positive_int, default=8, help="phases of the coarse search (default: 8)")
    p.add_argument(
        "--fine-phases", type=positive_int, default=32, help="phases of the final sweep (default: 32)"
    )
    p.add_argument(
        "--drive-threshold",
        type=unit_float,
        default=DRIVE_THRESHOLD,
        help="fraction of the MEI the best grating must reach for a simple-/complex-like label "
        f"(default: {DRIVE_THRESHOLD})",
    )
    p.add_argument(
        "--mei-restarts",
        type=positive_int,
        default=MEISettings.restarts,
        help=f"restarts of the MEI the best grating is compared with (default: {MEISettings.restarts})",
    )
    add_out_args(p)
    return p


def run_phase(args: argparse.Namespace) -> int:
    """Handler of ``diversevis phase-test``; returns the exit status."""
    from diversevis.methods.phase import phase_test

    net = load(args)
    res = phase_test(
        net,
        args.layer,
        args.unit,
        direction=direction(args.direction),
        metric=args.metric,
        contrast=args.contrast,
        norm=args.norm,
        orientations=args.orientations,
        frequencies=args.frequencies,
        phases=args.phases,
        fine_phases=args.fine_phases,
        images=args.naturals,
        mei_restarts=args.mei_restarts,
        drive_threshold=args.drive_threshold,
    )
    if res.nan_cause():
        raise DiversevisError(res.nan_cause())
    out = res.save(out_dir(args, net))
    _print_phase(res, out)
    return 0


def _print_phase(res, out) -> None:
    """The preferred grating, how well it drives the unit, F1/F0 with its label (or flag), the files."""
    print(
        f"{res.spec['model']} {res.spec['layer']} unit {res.spec['unit']}: preferred orientation "
        f"{math.degrees(res.orientation):.1f} deg, frequency {res.frequency:.3f} cycles/px"
    )
    g = res.grating_ratio
    if g is not None:
        print(
            f"  best grating: {res.max_response:.4g} = {g:.1%} of the MEI ({res.mei_activation:.4g}); "
            f"a label needs {res.drive_threshold:.0%}"
        )
    flag = res.flag()
    print(f"  F1/F0 = {res.f1_f0:.3f} ({'flagged: ' + flag if flag else res.label})")
    print(f"  wrote {out / 'phase.png'}, {out / 'phase.json'}")


def add_analyze_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``analyze`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "analyze",
        help="DFV vs random restarts vs Gram diversity vs natural exemplars (table + figure)",
        description="Run DFV and three baselines (four with --ppgn: samples of Plug & Play Generative Networks "
        "at DFV's min ratio) at matched settings and compare their diversity in the same "
        "distance space (comparison.png, comparison.md, comparison.json).",
    )
    add_model_args(p)
    p.add_argument("--layer", "-l", required=True, help="layer alias (conv3_1) or dot path (features.10)")
    p.add_argument("--unit", "-u", type=nonneg_int, required=True, help="channel index of the unit")
    p.add_argument("--images", "-n", type=positive_int, default=6, help="number of images N (default: 6)")
    p.add_argument("--diversity", type=nonneg_float, default=0.01, help="DFV lambda (default: 0.01)")
    p.add_argument(
        "--distance-layer", default=None, help="layer whose features measure distances (default: pixels)"
    )
    p.add_argument(
        "--floor",
        type=fraction,
        default=None,
        help="run DFV in floor mode: every image at >= FLOOR x the MEI (e.g. 0.85) instead of --diversity",
    )
    p.add_argument("--no-gram", action="store_true", help="skip the Gram-cosine baseline")
    p.add_argument("--no-natural", action="store_true", help="skip the natural-exemplar baseline")
    p.add_argument(
        "--ppgn",
        nargs="?",
        const="default",
        default=None,
        metavar="GENERATOR",
        help="add the PPGN sampling baseline through a trained generator (a cached preset name or a .pt "
        "file; default when given without a value: default; see `diversevis train-generator`)",
    )
    p.add_argument(
        "--candidates", type=positive_int, default=8192, help="natural patches sampled (default: 8192)"
    )
    p.add_argument("--top-k", type=positive_int, default=64, help="pool of top natural patches (default: 64)")
    add_contrast_args(p)
    p.add_argument("--max-iter", type=positive_int, default=1000, help="maximum iterations (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_out_args(p)
    return p


def run_analyze(args: argparse.Namespace) -> int:
    """Handler of ``diversevis analyze``; returns the exit status."""
    from diversevis.methods.baselines import compare_baselines

    net = load(args)
    if args.images < 2:
        raise DiversevisError("--images must be >= 2 to compare diverse sets")
    cmp = compare_baselines(
        net,
        args.layer,
        args.unit,
        n_images=args.images,
        diversity=args.diversity,
        floor=args.floor,
        distance_layer=args.distance_layer,
        contrast=args.contrast,
        norm=args.norm,
        seed=args.seed,
        max_iter=args.max_iter,
        natural=not args.no_natural,
        gram=not args.no_gram,
        exemplar_candidates=args.candidates,
        exemplar_k=args.top_k,
        ppgn=args.ppgn,
        images=args.naturals,
        progress=not args.quiet,
    )
    out = cmp.save(out_dir(args, net))
    print(cmp.markdown())
    gaps = ", ".join(f"{k} x{v:.2f}" for k, v in cmp.gaps().items() if v is not None)
    print(f"DFV min distance relative to the baselines: {gaps}")
    print(f"wrote {out / 'comparison.png'}, {out / 'comparison.md'}, {out / 'comparison.json'}")
    return 0


#: ``(add_parser, run)`` of each subcommand of this module, in ``diversevis --help`` order.
COMMANDS = (
    (add_shift_parser, run_shift),
    (add_phase_parser, run_phase),
    (add_analyze_parser, run_analyze),
)
