"""``diversevis deconv``: DeconvNet projections of one unit (Zeiler & Fergus 2014).

For a photo (``--image chelsea`` or a file) the unit's strongest activation (or ``--position Y,X`` /
``all``) is projected back to pixels; with ``--top K`` the unit's K most activating natural patches are
shown next to their projections (the paper's Fig. 2). Writes ``deconv.png``, ``deconv.npz`` and
``deconv.json``.
"""

from __future__ import annotations

import argparse

from diversevis.cli.common import add_model_args, add_out_args, load, nonneg_int, out_dir, positive_int
from diversevis.core.errors import DiversevisError

__all__ = ["COMMANDS", "add_parser", "run", "parse_position"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``deconv`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "deconv",
        help="DeconvNet projection of a unit (Zeiler & Fergus) for a photo or its top natural patches",
        description="Project one unit's activation back to pixels through unpooling with the max-pool "
        "switches, rectification and transposed convolutions (VGG-style conv/ReLU/max-pool chains). "
        "Writes deconv.png (image | projection), deconv.npz and deconv.json.",
        epilog="Examples: diversevis deconv -m vgg16 -l conv3_1 -u 21 --image chelsea;  "
        "diversevis deconv -m vgg16 -l conv3_1 -u 21 --top 9",
    )
    add_model_args(p)
    p.add_argument("--layer", "-l", required=True, help="layer alias (conv3_1) or dot path (features.10)")
    p.add_argument("--unit", "-u", type=nonneg_int, required=True, help="channel index of the unit")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--image",
        metavar="PATH|NAME",
        help="an image file or a bundled photo: astronaut, chelsea, coffee, rocket, ... (see the error "
        "message of an unknown name for the full list)",
    )
    g.add_argument(
        "--top",
        metavar="K",
        type=positive_int,
        help="project the unit's K most activating natural patches instead (the paper shows 9)",
    )
    p.add_argument(
        "--image-size",
        type=positive_int,
        default=224,
        help="--image: resize the short side to this and crop the centre square (default: 224)",
    )
    p.add_argument(
        "--position",
        default="max",
        help="--image: project the strongest activation (max), the whole channel map (all) or map "
        "position Y,X (default: max)",
    )
    p.add_argument(
        "--candidates",
        type=positive_int,
        default=2048,
        help="--top: natural patches searched (default: 2048)",
    )
    p.add_argument("--seed", type=int, default=0, help="--top: seed of the patch pool (default: 0)")
    add_out_args(p)
    return p


def parse_position(text: str) -> str | tuple[int, int]:
    """``"max"``, ``"all"`` or ``"Y,X"`` -> the ``position`` argument of :func:`deconvnet`."""
    t = text.strip().lower()
    if t in ("max", "all"):
        return t
    parts = t.split(",")
    try:
        if len(parts) == 2:
            y, x = (int(v) for v in parts)
            if y >= 0 and x >= 0:
                return (y, x)
    except ValueError:
        pass
    raise DiversevisError(f"--position must be max, all or Y,X (two integers >= 0), got {text!r}")


def run(args: argparse.Namespace) -> int:
    """Handler of ``diversevis deconv``; returns the exit status."""
    from diversevis.methods.classic.deconvnet import deconv_top_patches, deconvnet

    position = parse_position(args.position)
    net = load(args)
    if args.top is not None:
        if position != "max":
            raise DiversevisError(
                "--position applies to --image only (--top projects the unit over each patch)"
            )
        res = deconv_top_patches(
            net,
            args.layer,
            args.unit,
            k=args.top,
            candidates=args.candidates,
            seed=args.seed,
            images=args.naturals,
        )
        what = f"its top {args.top} of {args.candidates} natural patches ({res.images.shape[-1]} px)"
    else:
        res = deconvnet(net, args.layer, args.unit, args.image, position=position, size=args.image_size)
        h, w = res.images.shape[-2:]
        what = f"{res.spec['source']['image']} ({h}x{w} px), position {args.position}"
    directory = out_dir(args, net)
    if args.top is not None and not args.out:  # keep photo runs and top-patch runs apart
        directory = directory.with_name(f"{directory.name}_top{args.top}")
    out = res.save(directory)
    s = res.spec
    print(
        f"{s['model']} {s['layer']} unit {s['unit']}: DeconvNet projection of {what} in {s['seconds']:.2f}s"
    )
    energy = res.energy_fraction
    for i in range(min(len(res), 9)):
        y, x = (int(v) for v in res.positions[i])
        t, left, b, r = (int(v) for v in res.rf_boxes[i])
        print(
            f"  {i + 1}: activation {float(res.activations[i]):.4g} at map ({y}, {x}); receptive field rows "
            f"{t}-{b - 1}, cols {left}-{r - 1}; {float(energy[i]):.1%} of the projection's energy inside"
        )
    print(f"  wrote {out / 'deconv.png'}, {out / 'deconv.npz'}, {out / 'deconv.json'}")
    return 0


#: ``(add_parser, run)`` of this module's subcommand.
COMMANDS = ((add_parser, run),)
