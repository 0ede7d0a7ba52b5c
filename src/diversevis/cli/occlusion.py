"""``diversevis occlusion``: occlusion sensitivity of a unit or a class (Zeiler & Fergus 2014, Fig. 7).

A grey square of ``--size`` pixels slides over the image with step ``--stride``; the map is the drop of
the target (unit read-out or class logit) for each position. Writes ``occlusion.png`` (image, heatmap,
overlay), ``occlusion.npz`` and ``occlusion.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diversevis.cli.common import add_model_args, add_out_args, load, nonneg_int, out_dir, positive_int
from diversevis.core.errors import DiversevisError

__all__ = ["COMMANDS", "add_parser", "run", "parse_fill"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``occlusion`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "occlusion",
        help="occlusion sensitivity: slide a grey square over an image, map the unit's or class's drop",
        description="Slide a square occluder over an image and record, per position, how much the target "
        "drops: a unit (channel of a layer; truncated forward pass) or a class logit (full model). "
        "Writes occlusion.png, occlusion.npz and occlusion.json.",
        epilog="Examples: diversevis occlusion -m vgg16 -l conv5_3 -u 21 --image chelsea;  "
        "diversevis occlusion -m efficientnet-lite0 --class-index 285 --image chelsea",
    )
    add_model_args(p)
    p.add_argument("--layer", "-l", default=None, help="layer of the unit (alias or dot path)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--unit", "-u", type=nonneg_int, help="channel index of the unit (needs --layer)")
    g.add_argument(
        "--class-index", type=nonneg_int, help="target the model's output logit of this class (no --layer)"
    )
    p.add_argument(
        "--image",
        metavar="PATH|NAME",
        default="chelsea",
        help="an image file or a bundled photo: astronaut, chelsea, coffee, ... (default: chelsea)",
    )
    p.add_argument(
        "--image-size",
        type=positive_int,
        default=224,
        help="resize the short side to this and crop the centre square (default: 224)",
    )
    p.add_argument("--size", type=positive_int, default=32, help="occluder side in pixels (default: 32)")
    p.add_argument("--stride", type=positive_int, default=16, help="occluder step in pixels (default: 16)")
    p.add_argument(
        "--fill", default="grey", help="occluder colour: grey (0.5), mean (natural-image mean), V or R,G,B"
    )
    p.add_argument(
        "--readout",
        choices=["sum", "center", "max"],
        default="sum",
        help="unit read-out: sum of the rectified map, centre position, or the unoccluded argmax (default: sum)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=32, help="occluded images per forward pass (default: 32)"
    )
    add_out_args(p)
    return p


def parse_fill(text: str) -> str | float | list[float]:
    """``grey``, ``mean``, ``V`` or ``R,G,B`` -> the ``fill`` argument of :func:`occlusion`."""
    t = text.strip().lower()
    if t in ("grey", "gray", "mean"):
        return t
    try:
        values = [float(v) for v in t.split(",")]
    except ValueError:
        raise DiversevisError(f"--fill must be grey, mean, a number or R,G,B, got {text!r}") from None
    return values[0] if len(values) == 1 else values


def run(args: argparse.Namespace) -> int:
    """Handler of ``diversevis occlusion``; returns the exit status."""
    from diversevis.methods.classic.occlusion import occlusion

    if args.unit is not None and args.layer is None:
        raise DiversevisError("--unit needs --layer (e.g. --layer conv5_3 --unit 21)")
    if args.class_index is not None and args.layer is not None:
        raise DiversevisError("--class-index targets the model's output; drop --layer (or use --unit)")
    fill = parse_fill(args.fill)
    net = load(args)
    res = occlusion(
        net,
        args.image,
        args.layer,
        args.unit,
        class_index=args.class_index,
        size=args.size,
        stride=args.stride,
        fill=fill,
        readout=args.readout,
        batch_size=args.batch_size,
        image_size=args.image_size,
        progress=not args.quiet,
    )
    if args.class_index is not None and not args.out:
        name = net.name.replace(":", "-").replace("/", "-")
        directory = Path("runs") / f"{name}_class{args.class_index}_occlusion"
    else:
        directory = out_dir(args, net)
    out = res.save(directory)
    s, m = res.spec, res.metrics()
    ny, nx = m["grid"]
    print(
        f"{s['model']} {res.describe_target()} on {s['image']['source']} ({s['image']['height']}x"
        f"{s['image']['width']} px): {ny}x{nx} occluder positions ({s['size']} px, stride {s['stride']}), "
        f"{s['forward_passes']} forward passes in {s['seconds']:.1f}s"
    )
    t, left, b, r = m["peak_box"]
    frac = f" ({m['max_drop_fraction']:.0%} of it)" if m["max_drop_fraction"] is not None else ""
    print(
        f"  baseline {m['baseline']:.4g}; largest drop {m['max_drop']:.4g}{frac} with the occluder at rows "
        f"{t}-{b - 1}, cols {left}-{r - 1} (grid {tuple(m['peak'])}); smallest {m['min_drop']:.4g}"
    )
    print(f"  wrote {out / 'occlusion.png'}, {out / 'occlusion.npz'}, {out / 'occlusion.json'}")
    return 0


#: ``(add_parser, run)`` of this module's subcommand.
COMMANDS = ((add_parser, run),)
