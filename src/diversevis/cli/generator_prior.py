"""``diversevis dgn-am`` and ``ppgn``: images of a unit through a trained generator's code."""

from __future__ import annotations

import argparse

from diversevis.cli.common import (
    add_contrast_args,
    add_model_args,
    add_out_args,
    fraction,
    load,
    nonneg_float,
    nonneg_int,
    out_dir,
    positive_float,
    positive_int,
    px,
)
from diversevis.methods.generator_settings import DGN_AM, INITS, PPGN

__all__ = ["COMMANDS", "add_dgn_am_parser", "add_ppgn_parser", "run_dgn_am", "run_ppgn"]


def _add_common(p: argparse.ArgumentParser) -> None:
    """Model, target, generator, init, contrast, seed and output flags of both commands."""
    add_model_args(p)
    p.add_argument("--layer", "-l", required=True, help="layer alias (conv3_1) or dot path (features.10)")
    p.add_argument("--unit", "-u", type=nonneg_int, required=True, help="channel index of the unit")
    p.add_argument(
        "--generator",
        default="default",
        help="a cached generator preset (default, tiny, gpu; see `diversevis train-generator`) or a .pt file "
        "(default: default)",
    )
    p.add_argument("--init", choices=INITS, default="natural",
                   help="start from codes of natural patches or random codes (default: natural)")  # fmt: skip
    add_contrast_args(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_out_args(p)


def add_dgn_am_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``dgn-am`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "dgn-am",
        help="activation maximisation through a generator's code (Nguyen et al. 2016)",
        description="Optimise the code h of a trained feature-inverting generator G so that the centre crop "
        "of G(h), at the MEI's contrast, drives the unit: normalised gradient steps, clip to [0, U], L2 "
        "decay. Writes grid.png (the crop next to the unrestricted MEI), generator.png (the whole output), "
        "images.npz and result.json. Needs a generator: `diversevis train-generator` first.",
        epilog="Example: diversevis dgn-am --model vgg16-paper --layer conv3_1 --unit 21 --out runs/dgn_u21",
    )
    _add_common(p)
    p.add_argument("--restarts", type=positive_int, default=DGN_AM.chains,
                   help=f"codes optimised in parallel, the best is kept (default: {DGN_AM.chains})")  # fmt: skip
    p.add_argument("--n-iter", type=positive_int, default=DGN_AM.n_iter,
                   help=f"updates (default: {DGN_AM.n_iter})")  # fmt: skip
    p.add_argument("--lr", type=positive_float, default=DGN_AM.lr,
                   help=f"first step size, in units of the codes' spread; falls linearly to 0 (default: {DGN_AM.lr})")  # fmt: skip
    p.add_argument("--decay", type=fraction, default=DGN_AM.decay,
                   help=f"L2 decay factor of the code per update (default: {DGN_AM.decay})")  # fmt: skip
    return p


def add_ppgn_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``ppgn`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "ppgn",
        help="sample images that drive a unit with Plug & Play Generative Networks (Nguyen et al. 2017)",
        description="Langevin sampling of a generator's code h: h += eps1 (R(h) - h)/sigma^2 (the code DAE's "
        "prior) + eps2 x the unit's normalised gradient + N(0, eps3^2), parallel chains from natural codes. "
        "With --min-ratio the most diverse samples at >= that fraction of the MEI are kept (matched "
        "activation, as DFV's floor). Writes grid.png, generator.png, images.npz and result.json.",
        epilog="Example: diversevis ppgn --model vgg16-paper --layer conv3_1 --unit 21 --samples 6 "
        "--min-ratio 0.85 --distance-layer conv2_2 --out runs/ppgn_u21",
    )
    _add_common(p)
    p.add_argument("--samples", type=positive_int, default=6, help="images returned (default: 6)")
    p.add_argument(
        "--chains", type=positive_int, default=None, help="parallel chains (default: max(16, samples))"
    )
    p.add_argument(
        "--n-iter", type=positive_int, default=PPGN.n_iter, help=f"updates (default: {PPGN.n_iter})"
    )
    p.add_argument("--lr", type=positive_float, default=PPGN.lr,
                   help=f"condition step size, in units of the codes' spread (default: {PPGN.lr})")  # fmt: skip
    p.add_argument("--eps1", type=nonneg_float, default=None,
                   help="weight of the prior gradient (default: 0.1 sigma^2, sigma the DAE's noise)")  # fmt: skip
    p.add_argument("--eps2", type=nonneg_float, default=PPGN.eps2,
                   help=f"weight of the unit's gradient (default: {PPGN.eps2})")  # fmt: skip
    p.add_argument("--eps3", type=nonneg_float, default=PPGN.eps3,
                   help=f"noise std per code element, in units of its natural spread (default: {PPGN.eps3})")  # fmt: skip
    p.add_argument("--every", type=positive_int, default=PPGN.every,
                   help=f"keep a sample of every chain each EVERY updates (default: {PPGN.every})")  # fmt: skip
    p.add_argument("--burn-in", type=nonneg_int, default=PPGN.burn_in,
                   help=f"updates before samples are kept (default: {PPGN.burn_in})")  # fmt: skip
    p.add_argument("--min-ratio", type=fraction, default=None,
                   help="keep the most diverse samples at >= this fraction of the MEI (default: the chains' last)")  # fmt: skip
    p.add_argument("--distance-layer", default=None,
                   help="layer of the pairwise distances and of the max-min choice (default: pixels)")  # fmt: skip
    return p


def _common_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        init=args.init, contrast=args.contrast, norm=args.norm, images=args.naturals, seed=args.seed,
        progress=not args.quiet,
    )  # fmt: skip


def run_dgn_am(args: argparse.Namespace) -> int:
    """Handler of ``diversevis dgn-am``; returns the exit status."""
    from diversevis.methods.dgn_am import dgn_am

    net = load(args)
    res = dgn_am(
        net, args.layer, args.unit, args.generator, restarts=args.restarts, n_iter=args.n_iter, lr=args.lr,
        decay=args.decay, **_common_kwargs(args),
    )  # fmt: skip
    out = res.save(out_dir(args, net))
    _summary("DGN-AM", res, out)
    return 0


def run_ppgn(args: argparse.Namespace) -> int:
    """Handler of ``diversevis ppgn``; returns the exit status."""
    from diversevis.methods.ppgn import ppgn

    net = load(args)
    res = ppgn(
        net, args.layer, args.unit, args.generator, args.samples, chains=args.chains, n_iter=args.n_iter,
        lr=args.lr, eps1=args.eps1, eps2=args.eps2, eps3=args.eps3, every=args.every, burn_in=args.burn_in,
        min_ratio=args.min_ratio, distance_layer=args.distance_layer, **_common_kwargs(args),
    )  # fmt: skip
    out = res.save(out_dir(args, net))
    _summary("PPGN", res, out)
    if res.spec.get("min_ratio") is not None:
        print(f"  {res.extra['eligible']} of {res.extra['pool']} kept samples met the bar")
    return 0


def _summary(name: str, res, out) -> None:
    s, m = res.spec, res.metrics()
    print(
        f"{s['model']} {s['layer']} unit {s['unit']}: {name}, {len(res.activations)} image(s) of "
        f"{px(s['image_size'])} from a {s['generator']['config']['size']}px generator, {s['seconds']:.1f}s"
    )
    if m.get("mean_ratio") is not None:
        print(
            f"  ratio to the MEI ({res.mei_activation:.4g}): min {m['min_ratio']:.3f}, mean {m['mean_ratio']:.3f}"
        )
    if len(res.activations) > 1 and m.get("min_distance") is not None:
        print(f"  pairwise distance ({s.get('distance_layer') or 'pixels'}): min {m['min_distance']:.4g}")
    print(f"  wrote {out}/ (grid.png, generator.png, images.npz, result.json)")


#: ``(add_parser, run)`` of each subcommand of this module, in ``diversevis --help`` order.
COMMANDS = ((add_dgn_am_parser, run_dgn_am), (add_ppgn_parser, run_ppgn))
