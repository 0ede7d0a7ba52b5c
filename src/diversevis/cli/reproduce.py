"""``diversevis reproduce``: the reproduction study of the paper's claims (Markdown + HTML report)."""

from __future__ import annotations

import argparse

from diversevis.cli.common import nonneg_float, positive_int

__all__ = ["COMMANDS", "add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``reproduce`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser(
        "reproduce",
        help="reproduction study of the paper's claims on real networks (Markdown + HTML report)",
        description="Run the paper's experiments on vgg16-paper and efficientnet-lite0 (reference notebook "
        "run, synthetic cells, lambda trade-off, layer sweeps with phase and shift tests, DFV vs baselines, "
        "natural-image prior) and write DIR/report.md and DIR/report.html with a verdict per claim. Each "
        "finished step is stored in DIR, so a rerun resumes.",
    )
    p.add_argument("--out", "-o", required=True, help="study directory (created, or resumed)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--quick", action="store_true", help="preset quick: a few units, ~10 min on a CPU (default)"
    )
    g.add_argument(
        "--preset",
        choices=["quick", "standard", "full"],
        default=None,
        help="quick (3 units/layer), standard (32), full (64 units/layer: a GPU job)",
    )
    p.add_argument(
        "--units",
        type=positive_int,
        default=None,
        help="override the preset's units per layer (e.g. --quick --units 8: enough for the network test)",
    )
    p.add_argument(
        "--baseline-units",
        type=positive_int,
        default=None,
        help="override the preset's units per layer in the baseline comparison",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--prior-beta", type=nonneg_float, default=1e-4, help="weight of the prior NLL (default: 1e-4)"
    )
    p.add_argument("--device", default=None, help="where the networks run, e.g. cuda (default: cpu)")
    p.add_argument(
        "--publish",
        metavar="MD",
        default=None,
        help="also copy report.md and its figures to MD and MD's folder (e.g. docs/reproduction.md)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``diversevis reproduce``; returns the exit status."""
    from dataclasses import replace

    from diversevis.study.reproduce import PRESETS, publish, reproduce

    preset = args.preset or "quick"
    over = {
        k: v for k, v in (("units", args.units), ("baseline_units", args.baseline_units)) if v is not None
    }
    if over:
        preset = replace(PRESETS[preset], **over)
    md = reproduce(
        args.out,
        preset=preset,
        seed=args.seed,
        prior_beta=args.prior_beta,
        progress=not args.quiet,
        device=args.device,
    )
    print(f"wrote {md} and {md.with_suffix('.html')}")
    if args.publish:
        print(f"published {publish(md.parent, args.publish)} with its figures")
    print((md.parent / "verdicts.json").read_text())
    return 0


#: ``(add_parser, run)`` of this module's subcommand.
COMMANDS = ((add_parser, run),)
