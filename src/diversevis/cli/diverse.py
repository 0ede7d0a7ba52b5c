"""``diversevis diverse`` and ``diversevis mei``: a diverse set of images for one unit, its MEI."""

from __future__ import annotations

import argparse
import sys

from diversevis.cli.common import (
    add_crop_arg,
    add_display_range_arg,
    add_floor_args,
    add_model_args,
    add_optim_args,
    add_precision_arg,
    add_stop_args,
    add_target_args,
    direction,
    load,
    nonneg_float,
    out_dir,
    positive_float,
    positive_int,
    px,
    save_interrupted,
    settings_from_args,
)
from diversevis.core.errors import DiversevisError
from diversevis.core.optimize import Interrupted
from diversevis.core.result import Result
from diversevis.methods.settings import DiverseSettings, MEISettings

__all__ = ["COMMANDS", "add_diverse_parser", "add_mei_parser", "run"]


def add_diverse_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``diverse`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "diverse",
        help="diverse feature visualization of one unit (PNG grid + JSON)",
        description="Optimise N images of the unit's receptive-field size that all drive the unit "
        "strongly while being as different as possible (min pairwise RMS distance).",
    )
    add_model_args(p)
    add_target_args(p)
    n = DiverseSettings.n_images
    p.add_argument("--images", "-n", type=positive_int, default=n, help=f"number of images N (default: {n})")
    p.add_argument(
        "--diversity",
        type=nonneg_float,
        default=DiverseSettings.diversity,
        help=f"weight lambda of the diversity term (default: {DiverseSettings.diversity})",
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
    p.add_argument(
        "--tau",
        type=positive_float,
        default=DiverseSettings.tau,
        help=f"softmin temperature (default: {DiverseSettings.tau})",
    )
    p.add_argument(
        "--mei-restarts",
        type=positive_int,
        default=DiverseSettings.mei_restarts,
        help=f"restarts of the MEI used for the activation ratios (default: {DiverseSettings.mei_restarts})",
    )
    p.add_argument("--no-mei", action="store_true", help="skip the MEI (no ratios)")
    add_floor_args(p)
    add_crop_arg(p, "images")
    add_optim_args(p)
    add_display_range_arg(p)
    add_stop_args(p)
    add_precision_arg(p)
    return p


def add_mei_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``mei`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser("mei", help="most exciting input: best single image over restarts (PNG + JSON)")
    add_model_args(p)
    add_target_args(p)
    p.add_argument(
        "--restarts",
        type=positive_int,
        default=MEISettings.restarts,
        help=f"independent starts (default: {MEISettings.restarts})",
    )
    add_optim_args(p)
    add_display_range_arg(p)
    add_stop_args(p, diversity=False)
    add_precision_arg(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``diversevis diverse`` and ``diversevis mei`` (by ``args.command``); returns the exit status."""
    from diversevis.methods import dfv

    net = load(args)
    target = (args.layer, args.unit, direction(args.direction), args.metric)
    if args.command == "diverse":
        if args.images < 2:
            raise DiversevisError(
                "--images must be >= 2 for a diverse set (use `diversevis mei` for one image)"
            )
    try:
        if args.command == "diverse":
            settings = settings_from_args(DiverseSettings, args)
            res = dfv.run_diverse(net, *target, settings, mei=not args.no_mei, progress=not args.quiet)
        else:
            res = dfv.run_mei(net, *target, settings_from_args(MEISettings, args), progress=not args.quiet)
    except Interrupted as stop:  # Ctrl-C: keep the best iterate found so far
        return save_interrupted(stop, Result, args, net, lambda r, out: _print_summary(r, args.command, out))
    out = res.save(out_dir(args, net))
    _print_summary(res, args.command, out)
    return 0


def _print_summary(res, command: str, out) -> None:
    m = res.metrics()
    spec = res.spec
    print(
        f"{spec['model']} {spec['layer']} unit {spec['unit']}: {len(res.activations)} image(s) of "
        f"{px(spec['image_size'])}, {spec['n_iter']} iterations in {spec['seconds']:.1f}s"
        + (f" (+ MEI {spec['mei_seconds']:.1f}s)" if spec.get("mei_seconds") else "")
    )
    acts = ", ".join(f"{a:.3g}" for a in m["activations"])
    print(
        f"  activations: {acts}  (MEI {m['mei_activation']:.4g})"
        if m["mei_activation"] is not None
        else f"  activations: {acts}"
    )
    if m["ratios"] is not None and command == "diverse":
        print(f"  ratio to MEI: min {m['min_ratio']:.3f}, mean {m['mean_ratio']:.3f}")
    _print_floor(spec)
    _print_shown(m)
    if m["min_distance"] is not None:
        where = spec.get("distance_layer") or "pixels"
        print(
            f"  min pairwise RMS distance ({where}): {m['min_distance']:.4g}, mean {m['mean_distance']:.4g}"
        )
    _print_index(spec)
    _print_dead(spec)
    print(f"  wrote {out / 'grid.png'}, {out / 'images.npz'}, {out / 'result.json'}")


def _print_index(spec: dict) -> None:
    """The calibrated diversity index (0: a simple cell, 1: a complex cell under the same settings)."""
    di = spec.get("diversity_index")
    if not isinstance(di, dict) or di.get("di") is None:
        return
    cal = spec.get("di_calibration") or {}
    line = f"  diversity index (0 simple, 1 complex; floor {cal.get('floor', '?')}): pixels {di['di']:.2f}"
    line += f" (min {di['di_min']:.2f})" if di.get("di_min") is not None else ""
    if di.get("di_feature") is not None:
        line += f", {spec.get('distance_layer')} {di['di_feature']:.2f}"
    print(line)
    if spec.get("mode") != "floor":
        print(
            f"  (lambda mode: the reference cells are held at this set's own min ratio, {cal.get('floor', '?')}, "
            "and made as diverse as they can be there; a lambda set is not, so its index can fall below 0. "
            "--floor 0.85 gives an index comparable across units, layers and networks.)"
        )


def _print_floor(spec: dict) -> None:
    """Floor mode: whether every image is at the floor; on stderr, loudly, when it is not."""
    if spec.get("mode") != "floor":
        return
    if spec.get("floor_holds"):
        mean = f", mean floor {spec['mean_floor']:g}" if spec.get("mean_floor") is not None else ""
        print(f"  floor {spec['floor']:g}{mean}: holds for every image")
    else:
        print(f"diversevis: warning: floor not met: {spec.get('floor_failure')}", file=sys.stderr)


def _print_dead(spec: dict) -> None:
    """Dead starts and dead images (a rectified unit at 0 with no gradient), if there were any."""
    if spec.get("dead_starts_redrawn"):
        how = "then redirected ReLU gradients" if spec.get("redirected_relu") else "alive after redraws"
        print(f"  dead starts: {spec['dead_starts_redrawn']} redraw(s), {how}")
    if spec.get("dead_images"):
        print(f"  dead images (activation 0): {spec['dead_images']}")
    if spec.get("dead_unit"):
        print(f"  {spec['dead_unit']}")


def _print_shown(m: dict) -> None:
    """The activation of the images as the PNG stores them (clipped to [0, 1], 8-bit), if measured."""
    if m.get("shown_activations") is None:
        return
    acts = ", ".join(f"{a:.3g}" for a in m["shown_activations"])
    loss = m["shown_loss"]
    vs = (
        ""
        if loss is None
        else f"mean {m['shown_mean_activation']:.4g}, {loss:.1%} below the optimised images; "
    )
    print(
        f"  activation of the saved PNG images: {acts}  ({vs}{m['clipped_fraction']:.2%} of pixel values clipped)"
    )


#: ``(add_parser, run)`` of each subcommand of this module, in ``diversevis --help`` order.
COMMANDS = ((add_diverse_parser, run), (add_mei_parser, run))
