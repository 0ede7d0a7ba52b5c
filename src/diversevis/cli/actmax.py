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
    settings_from_args,
)
from diversevis.core.errors import DiversevisError
from diversevis.methods.classic.actmax import ActmaxSettings

#: The defaults of the flags (the method's own).
_D = ActmaxSettings


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
    _add_image_args(p)
    _add_transform_args(p)
    _add_loss_and_optim_args(p)
    add_out_args(p)
    return p


def _add_image_args(p: argparse.ArgumentParser) -> None:
    """The images: count, size, objective, parametrisation, colour and contrast constraint."""
    p.add_argument(
        "--images",
        "-n",
        type=positive_int,
        default=_D.n_images,
        help=f"number of images (default: {_D.n_images})",
    )
    p.add_argument(
        "--size", type=positive_int, default=_D.size, help=f"image side in pixels (default: {_D.size})"
    )
    p.add_argument(
        "--objective",
        choices=["center", "channel"],
        default=_D.objective,
        help=f"conv layers: the centre unit, or the channel mean over positions (default: {_D.objective})",
    )
    p.add_argument("--pixels", action="store_true", help="pixel parametrisation instead of FFT")
    p.add_argument(
        "--decay-power",
        type=nonneg_float,
        default=_D.decay_power,
        help=f"FFT spectrum fall-off 1/f^d (default: {_D.decay_power:g})",
    )
    p.add_argument("--no-decorrelate", action="store_true", help="no colour decorrelation")
    p.add_argument(
        "--constraint",
        choices=["sigmoid", "norm"],
        default=_D.constraint,
        help=f"map to [0, 1] by a sigmoid, or by the paper's fixed L2 contrast (default: {_D.constraint})",
    )
    p.add_argument(
        "--contrast",
        type=positive_float,
        default=_D.contrast,
        help=f"--constraint norm: fraction of the mean natural-patch norm (default: {_D.contrast})",
    )
    p.add_argument("--norm", type=positive_float, default=_D.norm, help="--constraint norm: absolute L2 norm")


def _add_loss_and_optim_args(p: argparse.ArgumentParser) -> None:
    """The regularisers, redirected ReLU, and Adam with early stopping."""
    p.add_argument(
        "--l1",
        type=nonneg_float,
        default=_D.l1,
        help=f"weight of the L1 distance from grey (default: {_D.l1:g})",
    )
    p.add_argument(
        "--tv", type=nonneg_float, default=_D.tv, help=f"weight of the total variation (default: {_D.tv:g})"
    )
    p.add_argument(
        "--redirect-relu",
        type=nonneg_int,
        default=_D.redirect_relu,
        metavar="K",
        help="redirected ReLU gradients for the first K steps "
        f"(for units that stay grey; default: {_D.redirect_relu} = off)",
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=_D.lr,
        help=f"Adam learning rate, about the pixel change per step (default: {_D.lr})",
    )
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
    p.add_argument("--seed", type=int, default=_D.seed, help=f"random seed (default: {_D.seed})")


def _add_transform_args(p: argparse.ArgumentParser) -> None:
    """Add the random transforms' arguments (``--no-transforms`` to ``--rotate``) to ``p``."""
    p.add_argument("--no-transforms", action="store_true", help="no random pad/jitter/scale/rotate")
    p.add_argument(
        "--pad", type=nonneg_int, default=_D.pad, help=f"grey padding in pixels (default: {_D.pad})"
    )
    p.add_argument(
        "--jitter", type=nonneg_int, default=_D.jitter, help=f"maximum shift in pixels (default: {_D.jitter})"
    )
    lo, hi = _D.scale
    p.add_argument(
        "--scale", type=_scale_range, default=_D.scale, help=f"scale range LO,HI (default: {lo},{hi})"
    )
    p.add_argument(
        "--rotate",
        type=nonneg_float,
        default=_D.rotate,
        help=f"maximum rotation in degrees (default: {_D.rotate:g})",
    )


def run(args) -> int:
    """Handle ``diversevis actmax``."""
    from diversevis.methods.classic.actmax import run_actmax

    net = load(args)
    if args.norm is not None and args.constraint != "norm":
        raise DiversevisError("--norm applies to --constraint norm only")
    settings = settings_from_args(
        ActmaxSettings,
        args,
        fft=not args.pixels,
        decorrelate=not args.no_decorrelate,
        transforms=not args.no_transforms,
    )
    res = run_actmax(net, args.layer, args.unit, settings, progress=not args.quiet)
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
