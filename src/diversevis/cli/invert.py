"""``diversevis invert``: reconstruct an image from one layer's representation (Mahendran & Vedaldi)."""

from __future__ import annotations

import argparse
from pathlib import Path

from diversevis.cli.common import (
    add_model_args,
    add_out_args,
    load,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    settings_from_args,
)
from diversevis.methods.classic.inversion import InversionSettings

#: The defaults of the flags (the method's own, except ``--size``).
_D = InversionSettings


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``invert`` subcommand to ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser(
        "invert",
        help="network inversion: reconstruct an image from a layer's representation",
        description="Find the image whose representation at --layer matches the target image's "
        "(relative feature error + alpha-norm and total-variation priors; Mahendran & Vedaldi 2015). "
        "Writes grid.png (reconstruction, target), images.npz and result.json.",
    )
    add_model_args(p)
    p.add_argument("--layer", "-l", required=True, help="layer alias (conv3_1) or dot path (features.10)")
    p.add_argument(
        "--image",
        "-i",
        required=True,
        metavar="PATH|NAME",
        help="target image: a file, or a bundled photo (astronaut, chelsea, coffee, rocket, china, ...)",
    )
    p.add_argument(
        "--size",
        type=nonneg_int,
        default=128,
        help="resize the shorter side and crop the centre square (default: 128; 0 keeps the image as is)",
    )
    p.add_argument(
        "--alpha",
        type=positive_float,
        default=_D.alpha,
        help=f"exponent of the range prior (default: {_D.alpha:g})",
    )
    p.add_argument(
        "--beta",
        type=positive_float,
        default=_D.beta,
        help=f"exponent of the TV prior (default: {_D.beta:g})",
    )
    # the help writes the prior weights as 1e-5 and 1e-3 (Python's str gives 1e-05 and 0.001)
    p.add_argument(
        "--lambda-alpha",
        type=nonneg_float,
        default=_D.lambda_alpha,
        help="weight of the range prior (default: 1e-5)",
    )
    p.add_argument(
        "--lambda-tv",
        type=nonneg_float,
        default=_D.lambda_tv,
        help="weight of the TV prior (default: 1e-3; deeper layers need more)",
    )
    p.add_argument("--lr", type=positive_float, default=_D.lr, help=f"Adam learning rate (default: {_D.lr})")
    p.add_argument(
        "--max-iter",
        type=positive_int,
        default=_D.max_iter,
        help=f"maximum iterations (default: {_D.max_iter})",
    )
    p.add_argument(
        "--patience",
        type=nonneg_int,
        default=_D.patience,
        help=f"early stopping: iterations without EMA-loss improvement (default: {_D.patience}; 0 disables)",
    )
    p.add_argument(
        "--no-precondition", action="store_true", help="disable the 1/sqrt(f) gradient preconditioner"
    )
    p.add_argument("--seed", type=int, default=_D.seed, help=f"random seed (default: {_D.seed})")
    add_out_args(p)
    return p


def _default_out(args, net) -> Path:
    if args.out:
        return Path(args.out)
    name = net.name.replace(":", "-").replace("/", "-")
    image = Path(args.image).stem.replace(":", "-") or "image"
    return Path("runs") / f"{name}_{net.display_name(args.layer)}_{image}_invert"


def run(args) -> int:
    """Handle ``diversevis invert``."""
    from diversevis.methods.classic.inversion import run_invert

    net = load(args)
    settings = settings_from_args(InversionSettings, args, size=args.size or None)
    res = run_invert(net, args.layer, args.image, settings, progress=not args.quiet)
    out = res.save(_default_out(args, net))
    s = res.spec
    h, w = s["image_size"]
    print(
        f"{s['model']} {s['layer']}: inverted a {h}x{w} image ({s['image']}), "
        f"{s['n_iter']} iterations in {s['seconds']:.1f}s"
    )
    print(
        f"  feature error ||Phi(x)-Phi0||^2/||Phi0||^2 = {s['feature_error']:.4g}; image RMS error "
        f"{s['image_rms_error']:.4g} (relative {s['image_relative_error']:.3f})"
    )
    print(f"  wrote {out / 'grid.png'}, {out / 'images.npz'}, {out / 'result.json'}")
    return 0


#: ``(add_parser, run)`` of this module's subcommand.
COMMANDS = ((add_parser, run),)
