"""``diversevis manifold``: the invariance manifold of one unit (generator, frames, contact sheet, GIF, page)."""

from __future__ import annotations

import argparse
import sys

from diversevis.cli.common import (
    add_contrast_args,
    add_model_args,
    add_out_args,
    add_precision_arg,
    fraction,
    load,
    nonneg_float,
    nonneg_int,
    out_dir,
    positive_float,
    positive_int,
    px,
    save_interrupted,
    settings_from_args,
)
from diversevis.core.optimize import Interrupted
from diversevis.methods.manifold_result import ManifoldResult
from diversevis.methods.manifold_settings import DEFAULT_PER_DIM, ManifoldSettings

__all__ = ["COMMANDS", "add_manifold_parser", "run"]

_S = ManifoldSettings


def add_manifold_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``manifold`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "manifold",
        help="invariance manifold of one unit: a generator whose every latent drives the unit (frames, GIF, page)",
        description="Train an implicit image generator (pixel coordinates + a periodic latent -> image at the "
        "unit's contrast) so that every latent of a grid drives the unit to >= FLOOR x the MEI (mean >= "
        "MEAN_FLOOR) while a contrastive term keeps the images of distant latents apart (Baroni et al. 2023; "
        "LAMINR). Writes manifold.json, generator.pt, images.npz, frames/, contact_sheet.png, loop.gif and "
        "the viewer page index.html.",
        epilog="Example: diversevis manifold --model vgg16-paper --layer conv3_1 --unit 21 --dim 1 "
        "--out runs/manifold_u21_d1",
    )
    add_model_args(p)
    p.add_argument("--layer", "-l", required=True, help="layer alias (conv3_1) or dot path (features.10)")
    p.add_argument("--unit", "-u", type=nonneg_int, required=True, help="channel index of the unit")
    p.add_argument(
        "--dim",
        type=int,
        choices=(1, 2),
        default=1,
        help="latent dimension: 1 a loop, 2 a torus (default: 1)",
    )
    p.add_argument("--floor", type=fraction, default=_S.floor,
                   help=f"every grid latent at >= FLOOR x the MEI's activation (default: {_S.floor})")  # fmt: skip
    p.add_argument("--mean-floor", type=_mean_floor, default=_S.mean_floor,
                   help=f"the grid's mean at >= MEAN_FLOOR x the MEI, or 'none' (default: {_S.mean_floor})")  # fmt: skip
    p.add_argument("--per-dim", type=positive_int, default=None,
                   help=f"grid latents per latent dimension, >= 3 (default: {DEFAULT_PER_DIM[1]} for --dim 1, "
                   f"{DEFAULT_PER_DIM[2]} for --dim 2)")  # fmt: skip
    p.add_argument("--feature-layer", default=None,
                   help="layer whose features measure similarity in the spread term (default: pixels)")  # fmt: skip
    p.add_argument("--temperature", type=positive_float, default=_S.temperature,
                   help=f"temperature of the contrastive spread term (default: {_S.temperature})")  # fmt: skip
    p.add_argument("--warmup", type=nonneg_int, default=_S.warmup,
                   help=f"steps of soft start (spread vs mean activation) before the floors (default: {_S.warmup})")  # fmt: skip
    p.add_argument(
        "--no-jitter", action="store_true", help="train on the grid latents only (no random offset)"
    )
    p.add_argument(
        "--hidden", type=positive_int, default=_S.hidden, help=f"generator width (default: {_S.hidden})"
    )
    p.add_argument(
        "--depth", type=positive_int, default=_S.depth, help=f"generator sine layers (default: {_S.depth})"
    )
    add_contrast_args(p)
    p.add_argument("--lr", type=positive_float, default=_S.lr, help=f"Adam learning rate (default: {_S.lr})")
    p.add_argument(
        "--max-iter", type=positive_int, default=_S.max_iter, help=f"most steps (default: {_S.max_iter})"
    )
    p.add_argument("--plateau-window", type=nonneg_int, default=_S.plateau_window,
                   help=f"plateau stopping: steps compared, two halves (0 disables; default: {_S.plateau_window})")  # fmt: skip
    p.add_argument("--plateau-rtol", type=nonneg_float, default=_S.plateau_rtol,
                   help=f"plateau stopping: largest relative drift of the ratios per window (default: {_S.plateau_rtol})")  # fmt: skip
    p.add_argument("--mei-restarts", type=positive_int, default=_S.mei_restarts,
                   help=f"restarts of the MEI the floors refer to (default: {_S.mei_restarts})")  # fmt: skip
    p.add_argument("--no-calibrate", action="store_true", help="skip the calibrated diversity index")
    p.add_argument("--no-page", action="store_true", help="do not write the viewer page index.html")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_precision_arg(p)
    add_out_args(p)
    return p


def _mean_floor(s: str) -> float | None:
    return None if s.strip().lower() in ("none", "off") else fraction(s)


def run(args: argparse.Namespace) -> int:
    """Handler of ``diversevis manifold``; returns the exit status."""
    from diversevis.methods.manifold import run_manifold

    settings = settings_from_args(
        ManifoldSettings, args, jitter=not args.no_jitter, calibrate=not args.no_calibrate
    )  # before loading the model: bad values fail fast
    net = load(args)
    try:
        res = run_manifold(net, args.layer, args.unit, settings, progress=not args.quiet)
    except Interrupted as stop:  # Ctrl-C: keep the manifold as it was
        return save_interrupted(stop, ManifoldResult, args, net, lambda r, out: _summary(r, out))
    out = res.save(out_dir(args, net))
    page = None if args.no_page else _write_page(out)
    _summary(res, out, page)
    return 0


def _write_page(out):
    """The viewer page of the manifold folder (``None`` when the report package is not installed)."""
    try:
        from diversevis.study.report.manifold import write_manifold_page
    except ImportError:  # pragma: no cover (the viewer ships with the package)
        return None
    return write_manifold_page(out)


def _summary(res: ManifoldResult, out, page=None) -> None:
    s = res.spec
    P = len(res.latents)
    print(
        f"{s['model']} {s['layer']} unit {s['unit']}: manifold dim {res.dim}, {P} grid latents of "
        f"{px(s['image_size'])}, {s['n_iter']} iterations in {s['seconds']:.1f}s"
        + (f" (+ MEI {s['mei_seconds']:.1f}s)" if s.get("mei_seconds") else "")
        + f", {res.seconds:.1f}s in all"
    )
    print(f"  ratio to MEI ({res.mei_activation:.4g}): min {res.min_ratio:.3f}, mean {res.mean_ratio:.3f}")
    if res.floor_holds:
        mean = f", mean floor {res.mean_floor:g}" if res.mean_floor is not None else ""
        print(f"  floor {res.floor:g}{mean}: holds for every grid latent")
    else:
        print(f"diversevis: warning: floor not met: {s.get('floor_failure')}", file=sys.stderr)
    if res.di is not None:
        print(f"  diversity index of the grid (pixels; 0 simple, 1 complex): {res.di:.2f}")
    files = "manifold.json, generator.pt, images.npz, frames/, contact_sheet.png, loop.gif"
    print(f"  wrote {out}/ ({files}" + (", index.html)" if page else ")"))


#: ``(add_parser, run)`` of each subcommand of this module, in ``diversevis --help`` order.
COMMANDS = ((add_manifold_parser, run),)
