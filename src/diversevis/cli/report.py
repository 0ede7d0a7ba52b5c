"""``diversevis report`` and ``diversevis compare``: an HTML report of a sweep, two sweeps compared."""

from __future__ import annotations

import argparse
from pathlib import Path

from diversevis.cli.common import positive_float

__all__ = ["COMMANDS", "add_report_parser", "run_report", "add_compare_parser", "run_compare"]


def add_report_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "report",
        help="static HTML report of a sweep: galleries, sortable metrics, histograms, unit pages",
        description="Write a self-contained HTML report of a sweep's results directory (no server needed: "
        "open index.html from disk). Images are referenced by relative paths into DIR, not copied.",
    )
    p.add_argument(
        "dir",
        metavar="DIR",
        help="results directory of `diversevis sweep --out DIR`, or a manifold or manifold-cluster folder "
        "(its viewer page is written inside it: DIR/index.html)",
    )
    p.add_argument(
        "--out", "-o", metavar="OUTDIR", default=None, help="report directory (default: DIR/report)"
    )
    return p


def run_report(args: argparse.Namespace) -> int:
    """Handler of ``diversevis report``; returns the exit status."""
    from diversevis.study.report import write_report

    print(write_report(args.dir, args.out))
    return 0


def add_compare_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``compare`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "compare",
        help="compare two sweeps (two networks) at receptive-field-matched layers",
        description="Pair the layers of two sweep stores by receptive-field size and compare their invariance "
        "indices (F1/F0, shift test, DFV ratio): compare.md, compare.png, compare.json.",
    )
    p.add_argument("dir_a", metavar="DIR_A", help="first sweep store")
    p.add_argument("dir_b", metavar="DIR_B", help="second sweep store")
    p.add_argument(
        "--max-ratio",
        type=positive_float,
        default=1.5,
        help="largest RF size ratio for a layer pair (default: 1.5)",
    )
    p.add_argument("--out", "-o", default=None, help="output directory (default: DIR_A/compare-<DIR_B name>)")
    return p


def run_compare(args: argparse.Namespace) -> int:
    """Handler of ``diversevis compare``; returns the exit status."""
    from diversevis.study.compare import compare_stores

    cmp = compare_stores(args.dir_a, args.dir_b, max_ratio=args.max_ratio)
    out = cmp.save(args.out or Path(args.dir_a) / f"compare-{Path(args.dir_b).resolve().name}")
    print(cmp.markdown())
    print(f"wrote {out / 'compare.png'}, {out / 'compare.md'}, {out / 'compare.json'}")
    return 0


#: ``(add_parser, run)`` of each subcommand of this module, in ``diversevis --help`` order.
COMMANDS = ((add_report_parser, run_report), (add_compare_parser, run_compare))
