"""``diversevis sweep``: DFV, MEI and phase test (optionally shift test) for many units; resumable."""

from __future__ import annotations

import argparse
import sys
import time

from diversevis.cli.common import (
    EXIT_INTERRUPTED,
    add_contrast_args,
    add_display_range_arg,
    add_model_args,
    add_precision_arg,
    floor_or_none,
    fraction,
    load,
    nonneg_float,
    positive_int,
    settings_from_args,
)
from diversevis.core.errors import DiversevisError
from diversevis.study.sweep_settings import SweepSettings

__all__ = ["COMMANDS", "add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``sweep`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "sweep",
        help="DFV, MEI and phase test (optionally shift test) for many units; resumable",
        description="Characterise all (or some) units of several layers. Units are optimised in batches "
        "(chunks of --batch-units); each finished unit is recorded in DIR/index.sqlite, so a rerun resumes "
        "where a killed one stopped (with either backend). --backend ray runs the chunks in parallel on Ray "
        "workers (pip install 'diversevis[ray]'): a local Ray instance with --workers CPUs, or the cluster at "
        "--ray-address (DIR must then be on a file system shared by all nodes). Each worker loads the model "
        "once and writes its units' folders; only this process writes the index. Results equal the local "
        "backend's for the same --seed (bit for bit when the local run uses as many torch threads as "
        "--worker-threads, e.g. OMP_NUM_THREADS=1).",
    )
    add_model_args(p)
    p.add_argument("--layers", required=True, help="comma-separated layers, e.g. conv1_1,conv2_1")
    p.add_argument(
        "--units", default="all", help="all, a range 0-63, a list 1,5,9, or sample:32 (default: all)"
    )
    p.add_argument("--images", "-n", type=positive_int, default=6, help="images per diverse set (default: 6)")
    p.add_argument(
        "--diversity", type=nonneg_float, default=0.01, help="DFV lambda, lambda mode only (default: 0.01)"
    )
    p.add_argument(
        "--floor",
        type=floor_or_none,
        default=SweepSettings.floor,
        help=f"floor mode: every image at >= FLOOR x its MEI (default: {SweepSettings.floor}); "
        "'none': lambda mode (--diversity)",
    )
    p.add_argument(
        "--mean-floor", type=fraction, default=None, help="floor mode: the set's mean at >= MEAN_FLOOR x MEI"
    )
    p.add_argument(
        "--distance-layer",
        default="auto",
        help="auto (previous block's last conv, as the paper), a layer, or pixels (default: auto)",
    )
    p.add_argument(
        "--tests",
        default="dfv,phase",
        help="analyses per unit: dfv, phase, shift, retention (held-out transformations of the top natural "
        "patches; the report then correlates DI and the other scores with it) (default: dfv,phase)",
    )
    p.add_argument("--shift-stride", type=positive_int, default=1, help="shift-test crop stride (default: 1)")
    p.add_argument(
        "--batch-units",
        type=positive_int,
        default=32,
        help="units per batched run: one chunk, one Ray task with --backend ray (default: 32)",
    )
    add_contrast_args(p, norm=False)  # a sweep sizes each layer's images by its contrast: no fixed norm
    p.add_argument("--max-iter", type=positive_int, default=1000, help="maximum iterations (default: 1000)")
    p.add_argument("--mei-restarts", type=positive_int, default=4, help="restarts of each MEI (default: 4)")
    add_precision_arg(p)
    add_display_range_arg(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--force", action="store_true", help="recompute units that are already done")
    p.add_argument(
        "--repair", action="store_true", help="recompute units whose records in the index are corrupt"
    )
    p.add_argument("--out", "-o", required=True, help="results directory (created, or resumed)")
    _add_backend_args(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return p


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    """Add ``--backend`` and the Ray backend's arguments to ``p``."""
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: chunks one after the other in this process; ray: in parallel on Ray workers "
        "(default: local)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="ray: workers (chunks in flight) (default: the CPUs Ray sees)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="ray: join this running cluster (e.g. auto or ray://head:10001) instead of starting Ray here",
    )
    p.add_argument(
        "--worker-threads",
        type=positive_int,
        default=1,
        metavar="N",
        help="ray: torch threads per worker (default: 1)",
    )


def run(args: argparse.Namespace) -> int:
    """Handler of ``diversevis sweep``; returns the exit status."""
    from diversevis.study.sweep import _import_ray

    if args.backend == "ray":
        _import_ray()  # before loading the model
    elif args.workers is not None or args.ray_address is not None:
        raise DiversevisError("--workers and --ray-address need --backend ray")
    net = load(args)
    dl = None if args.distance_layer in ("pixels", "none") else args.distance_layer
    t0 = time.perf_counter()
    settings = settings_from_args(
        SweepSettings, args, distance_layer=dl, tests=tuple(t for t in args.tests.split(",") if t)
    )
    try:
        store = _sweep(args, net, settings)
    except KeyboardInterrupt:  # every finished unit is in the store: the same command resumes
        n = _units_saved(args.out)
        print(
            f"diversevis: interrupted: {n} units are saved in {args.out}; run the same command again to "
            "resume (finished units are skipped)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    rows = store.rows()
    print(f"{len(rows)} units done in {args.out} ({time.perf_counter() - t0:.1f}s this run)")
    for layer in store.layers():
        rs = [r for r in rows if r["layer"] == layer]
        print(f"  {layer}: {len(rs)} units")
    store.close()
    return 0


def _units_saved(out: str) -> int:
    """How many units the store at ``out`` holds (0 when it was not created yet)."""
    from diversevis.study.store import Store

    try:
        with Store(out) as st:
            return len(st.rows())
    except DiversevisError:
        return 0


def _sweep(args: argparse.Namespace, net, settings: SweepSettings):
    """Run the sweep the flags ask for; returns its open store."""
    from diversevis.study.sweep import sweep

    return sweep(
        net,
        [x for x in args.layers.split(",") if x],
        args.units,
        out=args.out,
        **settings.as_dict(),
        batch_units=args.batch_units,
        force=args.force,
        repair=args.repair,
        progress=not args.quiet,
        backend=args.backend,
        workers=args.workers,
        ray_address=args.ray_address,
        worker_threads=args.worker_threads,
    )


#: ``(add_parser, run)`` of this module's subcommand.
COMMANDS = ((add_parser, run),)
