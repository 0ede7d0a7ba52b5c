"""``diversevis actmax``: activation maximisation of one unit or class logit (FFT + colour + transforms)."""

from __future__ import annotations

import argparse

from diversevis.cli.common import (
    add_model_args,
    add_out_args,
    load,
    nonneg_float,
    nonneg_int,
    out_dir,
    positive_float,
    positive_int,
)
from diversevis.core.errors import DiversevisError


def _scale_range(s: str) -> tuple[float, float]:
    try:
        parts = [float(v) for v in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0.9,1.1), got {s!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 0 < parts[0] <= parts[1]:
        raise argparse.ArgumentTypeError(f"expected LO,HI with 0 < LO <= HI, got {s!r}")
    return parts[0], parts[1]


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``actmax`` subcommand to ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser(
        "actmax",
        help="activation maximisation of a unit or class logit (Lucid-style: FFT, colour, transforms)",
        description="Optimise images that maximise one unit (the centre position of a conv channel, or a "
        "class logit) in a Fourier parametrisation with natural-colour decorrelation and random "
        "pad/jitter/scale/rotate transforms (grid.png, images.npz, result.json).",
    )
    add_model_args(p)
    p.add_argument("--layer", "-l", required=True, help="layer alias (conv5_1) or dot path (features.24)")
    p.add_argument(
        "--unit",
        "-u",
        type=nonneg_int,
        default=None,
        help="channel or class index (may be omitted for 1-unit layers)",
    )
    p.add_argument("--images", "-n", type=positive_int, default=1, help="number of images (default: 1)")
    p.add_argument("--size", type=positive_int, default=128, help="image side in pixels (default: 128)")
    p.add_argument(
        "--objective",
        choices=["center", "channel"],
        default="center",
        help="conv layers: the centre unit, or the channel mean over positions (default: center)",
    )
    p.add_argument("--pixels", action="store_true", help="pixel parametrisation instead of FFT")
    p.add_argument(
        "--decay-power", type=nonneg_float, default=1.0, help="FFT spectrum fall-off 1/f^d (default: 1)"
    )
    p.add_argument("--no-decorrelate", action="store_true", help="no colour decorrelation")
    p.add_argument(
        "--constraint",
        choices=["sigmoid", "norm"],
        default="sigmoid",
        help="map to [0, 1] by a sigmoid, or by the paper's fixed L2 contrast (default: sigmoid)",
    )
    p.add_argument(
        "--contrast",
        type=positive_float,
        default=0.5,
        help="--constraint norm: fraction of the mean natural-patch norm (default: 0.5)",
    )
    p.add_argument("--norm", type=positive_float, default=None, help="--constraint norm: absolute L2 norm")
    _add_transform_args(p)
    p.add_argument(
        "--l1", type=nonneg_float, default=0.0, help="weight of the L1 distance from grey (default: 0)"
    )
    p.add_argument("--tv", type=nonneg_float, default=0.0, help="weight of the total variation (default: 0)")
    p.add_argument(
        "--redirect-relu",
        type=nonneg_int,
        default=0,
        metavar="K",
        help="redirected ReLU gradients for the first K steps (for units that stay grey; default: 0 = off)",
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=0.1,
        help="Adam learning rate, about the pixel change per step (default: 0.1)",
    )
    p.add_argument("--max-iter", type=positive_int, default=512, help="maximum iterations (default: 512)")
    p.add_argument(
        "--patience",
        type=nonneg_int,
        default=100,
        help="early stopping: iterations without EMA-loss improvement (default: 100; 0 disables)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_out_args(p)
    return p


def _add_transform_args(p: argparse.ArgumentParser) -> None:
    """Add the random transforms' arguments (``--no-transforms`` to ``--rotate``) to ``p``."""
    p.add_argument("--no-transforms", action="store_true", help="no random pad/jitter/scale/rotate")
    p.add_argument("--pad", type=nonneg_int, default=12, help="grey padding in pixels (default: 12)")
    p.add_argument("--jitter", type=nonneg_int, default=8, help="maximum shift in pixels (default: 8)")
    p.add_argument(
        "--scale", type=_scale_range, default=(0.9, 1.1), help="scale range LO,HI (default: 0.9,1.1)"
    )
    p.add_argument(
        "--rotate", type=nonneg_float, default=10.0, help="maximum rotation in degrees (default: 10)"
    )


def run(args) -> int:
    """Handle ``diversevis actmax``."""
    from diversevis.methods.classic.actmax import actmax

    net = load(args)
    if args.norm is not None and args.constraint != "norm":
        raise DiversevisError("--norm applies to --constraint norm only")
    res = actmax(
        net,
        args.layer,
        args.unit,
        n_images=args.images,
        size=args.size,
        objective=args.objective,
        fft=not args.pixels,
        decay_power=args.decay_power,
        decorrelate=not args.no_decorrelate,
        constraint=args.constraint,
        contrast=args.contrast,
        norm=args.norm,
        transforms=not args.no_transforms,
        pad=args.pad,
        jitter=args.jitter,
        scale=args.scale,
        rotate=args.rotate,
        l1=args.l1,
        tv=args.tv,
        redirect_relu=args.redirect_relu,
        lr=args.lr,
        max_iter=args.max_iter,
        patience=args.patience,
        seed=args.seed,
        images=args.naturals,
        progress=not args.quiet,
    )
    if args.unit is None:
        args.unit = res.spec["unit"]
    out = res.save(out_dir(args, net))
    s = res.spec
    acts = ", ".join(f"{a:.4g}" for a in res.activations.tolist())
    print(
        f"{s['model']} {s['layer']} unit {s['unit']}: {len(res.activations)} image(s) of {s['image_size']}px, "
        f"{s['n_iter']} iterations in {s['seconds']:.1f}s"
    )
    print(f"  activation: {acts}  (grey image: {s['grey_activation']:.4g})")
    print(f"  wrote {out / 'grid.png'}, {out / 'images.npz'}, {out / 'result.json'}")
    return 0


#: ``(add_parser, run)`` of this module's subcommand.
COMMANDS = ((add_parser, run),)
