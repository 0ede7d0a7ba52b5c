"""``diversevis multifaceted``: multifaceted feature visualization (Nguyen, Yosinski & Clune 2016).

Clusters the unit's top natural patches into ``--k`` facets and optimises one image per facet from the
facet's mean image. Writes ``grid.png`` (row per facet: members | mean | visualization), ``facets.npz``
and ``result.json``.
"""

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
from diversevis.methods.classic.multifaceted_settings import MultifacetedSettings

#: The defaults of the flags (the method's own, except ``--max-iter``).
_D = MultifacetedSettings

__all__ = ["COMMANDS", "add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``multifaceted`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "multifaceted",
        help="multifaceted visualization: cluster the unit's top natural patches, one image per facet",
        description="Score random natural patches (the unit's receptive-field size), cluster the top ones "
        "with k-means in a layer's features, and optimise one image per facet from the mean of its members "
        "closest to the centroid (centre-biased jitter, TV regulariser). Writes grid.png, facets.npz and "
        "result.json.",
        epilog="Example: diversevis multifaceted -m vgg16 -l conv4_3 -u 10 --k 4 --candidates 2048",
    )
    add_model_args(p)
    p.add_argument("--layer", "-l", required=True, help="layer alias (conv4_3) or dot path (features.21)")
    p.add_argument("--unit", "-u", type=nonneg_int, required=True, help="channel index of the unit")
    p.add_argument(
        "--k", type=positive_int, default=_D.k, help=f"number of facets (k-means clusters; default: {_D.k})"
    )
    p.add_argument(
        "--top", type=positive_int, default=_D.top, help=f"top patches clustered (default: {_D.top})"
    )
    p.add_argument(
        "--candidates",
        type=positive_int,
        default=_D.candidates,
        help=f"random natural patches scored (default: {_D.candidates})",
    )
    p.add_argument(
        "--patch-size",
        type=positive_int,
        default=_D.patch_size,
        help="patch and image side in pixels (default: the unit's receptive-field size)",
    )
    p.add_argument(
        "--match-contrast",
        action="store_true",
        help="give every patch the DFV contrast before scoring (receptive-field size only)",
    )
    p.add_argument(
        "--embed-layer",
        default=_D.embed_layer,
        help="layer whose features are clustered, or pixels (default: --layer)",
    )
    p.add_argument(
        "--pool",
        choices=["mean", "max", "flatten"],
        default=_D.pool,
        help=f"spatial pooling of the embedding (default: {_D.pool})",
    )
    p.add_argument(
        "--no-normalize", action="store_true", help="cluster raw embeddings instead of unit-norm ones"
    )
    p.add_argument(
        "--pca", type=positive_int, default=_D.pca, help="PCA components before k-means (default: none)"
    )
    p.add_argument(
        "--n-mean",
        type=positive_int,
        default=_D.n_mean,
        help=f"members closest to the centroid averaged into the start image (default: {_D.n_mean}, as the paper)",
    )
    _add_optim_args(p)
    p.add_argument("--show", type=positive_int, default=6, help="members shown per facet row (default: 6)")
    p.add_argument(
        "--batch", type=positive_int, default=_D.batch, help=f"patches per forward pass (default: {_D.batch})"
    )
    p.add_argument("--seed", type=nonneg_int, default=_D.seed, help=f"random seed (default: {_D.seed})")
    add_out_args(p)
    return p


def _add_optim_args(p: argparse.ArgumentParser) -> None:
    """Add the facet images' optimisation arguments (``--lr`` to ``--window``) to ``p``."""
    p.add_argument("--lr", type=positive_float, default=_D.lr, help=f"Adam learning rate (default: {_D.lr})")
    # the command's default is half the function's (max_iter=200): a shorter schedule from the command line
    p.add_argument("--max-iter", type=positive_int, default=100, help="iterations (default: 100)")
    p.add_argument(
        "--patience",
        type=nonneg_int,
        default=_D.patience,
        help=f"early-stopping patience (default: {_D.patience} = off)",
    )
    p.add_argument(
        "--tv", type=nonneg_float, default=_D.tv, help=f"total-variation weight (default: {_D.tv})"
    )
    p.add_argument(
        "--facet-weight",
        type=nonneg_float,
        default=_D.facet_weight,
        help="weight of a term keeping each image in its facet's embedding direction "
        f"(default: {_D.facet_weight:g}, the paper)",
    )
    p.add_argument(
        "--jitter",
        type=nonneg_int,
        default=_D.jitter,
        help="jitter margin in pixels (default: size/16; 0 = off)",
    )
    p.add_argument(
        "--window",
        type=nonneg_float,
        default=_D.window,
        help=f"jitter SD as a fraction of its range (default: {_D.window})",
    )


def run(args: argparse.Namespace) -> int:
    """Handler of ``diversevis multifaceted``; returns the exit status."""
    from diversevis.methods.classic.multifaceted import run_multifaceted

    net = load(args)
    settings = settings_from_args(MultifacetedSettings, args, normalize=not args.no_normalize)
    res = run_multifaceted(net, args.layer, args.unit, settings, progress=not args.quiet)
    out = res.save(out_dir(args, net), n_show=args.show)
    s = res.spec
    print(
        f"{s['model']} {s['layer']} unit {s['unit']}: {res.k} facets of {s['top']} top patches "
        f"({s['patch_size']} px, of {s['candidates']}), embedding {s['embed_layer']}; {s['seconds']:.1f}s "
        f"(patches {s['exemplar_seconds']:.1f}s, optimisation {s['optimize_seconds']:.1f}s)"
    )
    for f in range(res.k):
        print(
            f"  facet {f}: {res.sizes[f]} patches, mean image {float(res.mean_activations[f]):.4g} -> "
            f"visualization {float(res.activations[f]):.4g}"
        )
    print(f"  top natural patch {float(res.patch_activations.max()):.4g}")
    print(f"  wrote {out / 'grid.png'}, {out / 'facets.npz'}, {out / 'result.json'}")
    return 0


#: ``(add_parser, run)`` of this module's subcommand.
COMMANDS = ((add_parser, run),)
