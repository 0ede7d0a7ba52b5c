"""``diversevis manifold-cluster``: invariance types across a layer's units, from their manifolds."""

from __future__ import annotations

import argparse
from pathlib import Path

from diversevis.cli.common import (
    add_contrast_args,
    add_model_args,
    fraction,
    load,
    positive_int,
)

__all__ = ["COMMANDS", "add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``manifold-cluster`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "manifold-cluster",
        help="cluster a layer's units by their invariance manifolds (aligned A->B similarity); resumable",
        description="Train (or load from OUT/u<unit>/) each unit's invariance manifold, fit for every pair "
        "(A, B) the affine map of A's pixel coordinates (rotation, scale, translation, reflection) under "
        "which A's manifold drives B best (the mean ratio to B's MEI: the A->B similarity), symmetrise "
        "with min(S, S^T) and cluster (average linkage; the number of clusters by silhouette unless "
        "--clusters). Writes OUT/manifold_cluster.json, OUT/u<unit>/ (each manifold), OUT/align/, one "
        "gallery OUT/cluster_<k>.png per cluster, OUT/similarity.png and the viewer page OUT/index.html. "
        "A rerun skips the units and alignments already done.",
        epilog="Example: diversevis manifold-cluster --model vgg16-paper --layer conv2_1 --units sample:32 "
        "--out runs/mcluster_conv2_1",
    )
    add_model_args(p)
    p.add_argument("--layer", "-l", required=True, help="layer alias (conv2_1) or dot path (features.5)")
    p.add_argument(
        "--units", default="all", help="all, a range 0-31, a list 1,5,9, or sample:32 (default: all)"
    )
    p.add_argument(
        "--dim", type=int, choices=(1, 2), default=1, help="manifold latent dimension (default: 1)"
    )
    p.add_argument(
        "--clusters", type=positive_int, default=None, help="number of clusters (default: best silhouette)"
    )
    p.add_argument(
        "--floor", type=fraction, default=None, help="manifold floor (default: the method's, 0.85)"
    )
    p.add_argument("--per-dim", type=positive_int, default=None, help="manifold grid latents per dimension")
    p.add_argument(
        "--max-iter",
        type=positive_int,
        default=None,
        help="most steps of each manifold (default: the method's)",
    )
    p.add_argument(
        "--align-iter", type=positive_int, default=150, help="most steps of each alignment (default: 150)"
    )
    p.add_argument(
        "--di", action="store_true", help="also compute each manifold's calibrated diversity index"
    )
    add_contrast_args(p)
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the unit sample and the manifolds (default: 0)"
    )
    p.add_argument(
        "--out", "-o", default=None, help="output directory (default: runs/<model>_<layer>_manifold_cluster)"
    )
    p.add_argument("--no-page", action="store_true", help="do not write the viewer page index.html")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return p


def _manifold_kwargs(args: argparse.Namespace) -> dict:
    """The manifold method's keywords the flags set (the others keep the method's defaults)."""
    kw = {"contrast": args.contrast, "norm": args.norm, "calibrate": args.di}
    for name in ("floor", "per_dim", "max_iter"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.naturals:
        kw["images"] = args.naturals
    return kw


def run(args: argparse.Namespace) -> int:
    """Handler of ``diversevis manifold-cluster``; returns the exit status."""
    from diversevis.methods.manifold_align import AlignSettings
    from diversevis.study.manifold_cluster import manifold_cluster

    settings = AlignSettings(max_iter=args.align_iter)
    net = load(args)
    net.resolve(args.layer)
    name = net.name.replace(":", "-").replace("/", "-")
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / f"{name}_{net.display_name(args.layer)}_manifold_cluster"
    )
    res = manifold_cluster(
        net,
        args.layer,
        args.units,
        out,
        dim=args.dim,
        clusters=args.clusters,
        seed=args.seed,
        align_settings=settings,
        manifold_kwargs=_manifold_kwargs(args),
        progress=not args.quiet,
    )
    page = None if args.no_page else _write_page(out)
    _summary(res, out, page)
    return 0


def _write_page(out: Path):
    """The viewer's cluster page (``None`` when the viewer is not there)."""
    try:
        from diversevis.study.report.manifold import write_cluster_page
    except ImportError:  # pragma: no cover (the viewer ships with the package)
        return None
    return write_cluster_page(out)


def _summary(res, out: Path, page) -> None:
    s = res.spec
    trained = s["manifold_seconds"]
    per_unit = f"{sum(trained.values()) / len(trained):.1f}s per unit trained" if trained else "all loaded"
    sil = "n/a" if res.silhouette is None else f"{res.silhouette:.3f}"
    print(
        f"{s['model']} {s['layer']}: {len(res.units)} units, manifolds {per_unit}, alignments "
        f"{s['align_seconds']:.1f}s, {res.seconds:.1f}s in all"
    )
    print(f"  {res.n_clusters} clusters (silhouette {sil}):")
    for c in range(res.n_clusters):
        members = [u for u, lab in zip(res.units, res.labels) if lab == c]
        print(f"    cluster {c}: units {', '.join(map(str, members))}")
    print(
        f"  wrote {out}/ (manifold_cluster.json, cluster_*.png, similarity.png"
        + (", index.html)" if page else ")")
    )


#: ``(add_parser, run)`` of each subcommand of this module, in ``diversevis --help`` order.
COMMANDS = ((add_parser, run),)
