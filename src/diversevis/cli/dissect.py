"""``diversevis dissect``: network dissection of a layer (Bau et al. 2017).

Thresholds every unit at its top ``--quantile`` activation, computes the dataset-wide IoU of the
upsampled masks with every concept and labels each unit with its best concept (a detector if
IoU > ``--iou-threshold``). Concepts come from a Broden-format directory (``--dataset``) or, by default,
from the colour probe on the bundled natural photos. Writes ``dissection.json``, ``dissection.md``,
``detectors.png`` and ``iou.npz``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diversevis.cli.common import add_model_args, add_out_args, load, positive_int
from diversevis.core.errors import DiversevisError

__all__ = ["COMMANDS", "add_parser", "run"]


def _fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {s}")
    return v


def _unit_interval(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {s}")
    return v


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``dissect`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "dissect",
        help="network dissection: label each unit of a layer with the concept its top activations segment",
        description="Threshold each unit at its top-quantile activation over a dataset, upsample its maps "
        "bilinearly, and compute the dataset-wide IoU with every concept's masks; the best concept labels the "
        "unit, a detector if IoU > --iou-threshold. Writes dissection.json, dissection.md, detectors.png and "
        "iou.npz.",
        epilog="Examples: diversevis dissect -m vgg16 -l conv1_2 --size 112;  "
        "diversevis dissect -m vgg16 -l conv5_3 --dataset ~/broden1_224 --categories object,part",
    )
    add_model_args(p)
    p.add_argument("--layer", "-l", required=True, help="layer alias (conv3_3) or dot path (features.14)")
    p.add_argument(
        "--units", default="all", help="all, a range 0-63, a list 1,5,9, or sample:32 (default: all)"
    )
    p.add_argument(
        "--dataset",
        metavar="BRODEN_DIR",
        default=None,
        help="Broden-format directory (index.csv, label.csv, images/); default: the colour probe on the "
        "bundled natural photos (or --naturals DIR)",
    )
    p.add_argument(
        "--categories", default=None, help="Broden categories to use, comma-separated (default: all)"
    )
    p.add_argument(
        "--size", type=positive_int, default=224, help="colour-probe image side in pixels (default: 224)"
    )
    p.add_argument("--max-images", type=positive_int, default=None, help="use only the first N images")
    p.add_argument(
        "--quantile",
        type=_fraction,
        default=0.005,
        help="fraction of activations above each unit's threshold (default: 0.005, as the paper)",
    )
    p.add_argument(
        "--iou-threshold",
        type=_unit_interval,
        default=0.04,
        help="a unit is a detector if its best IoU exceeds this (default: 0.04)",
    )
    p.add_argument(
        "--quantile-method",
        choices=["auto", "exact", "histogram"],
        default="auto",
        help="exact top-k quantiles, a streaming histogram, or exact when it fits in memory (default: auto)",
    )
    p.add_argument("--batch", type=positive_int, default=8, help="images per forward pass (default: 8)")
    add_out_args(p)
    for action in p._actions:
        if action.dest == "out":
            action.help = "output directory (default: runs/<model>_<layer>_dissect)"
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``diversevis dissect``; returns the exit status."""
    from diversevis.methods.classic.dissection import dissect

    categories = None
    if args.categories:
        if args.dataset is None:
            raise DiversevisError("--categories selects Broden categories; it needs --dataset BRODEN_DIR")
        categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    net = load(args)
    res = dissect(
        net,
        args.layer,
        args.dataset,
        units=args.units,
        quantile=args.quantile,
        iou_threshold=args.iou_threshold,
        quantile_method=args.quantile_method,
        batch=args.batch,
        size=args.size,
        categories=categories,
        max_images=args.max_images,
        images=args.naturals,
        progress=not args.quiet,
    )
    if args.out:
        directory = Path(args.out)
    else:
        name = net.name.replace(":", "-").replace("/", "-")
        directory = Path("runs") / f"{name}_{net.display_name(args.layer)}_dissect"
    out = res.save(directory)
    s = res.spec
    print(
        f"{s['model']} {s['layer']}: {len(res.units)} units on {s['dataset']['name']} ({s['n_images']} images, "
        f"{len(res.concepts)} concepts) in {s['seconds']:.1f}s; {s['quantile_method']} top-{s['quantile']} thresholds"
    )
    top = ", ".join(f"{name} {n}" for name, n in res.top_labels(8)) or "none"
    print(
        f"  {res.n_detectors} detectors (IoU > {res.iou_threshold}), {res.unique_detectors} unique concepts: {top}"
    )
    print(
        f"  wrote {out / 'dissection.json'}, {out / 'dissection.md'}, {out / 'detectors.png'}, {out / 'iou.npz'}"
    )
    return 0


#: ``(add_parser, run)`` of this module's subcommand.
COMMANDS = ((add_parser, run),)
