"""``diversevis models`` and ``diversevis layers``: the model specs that load offline, a model's layers."""

from __future__ import annotations

import argparse

from diversevis.cli.common import add_model_args, load

__all__ = ["COMMANDS", "add_models_parser", "run_models", "add_layers_parser", "run_layers"]


def add_models_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``models`` subcommand to ``sub`` and return its parser."""
    return sub.add_parser("models", help="list the model specs that load offline")


def run_models(args: argparse.Namespace) -> int:
    """Handler of ``diversevis models``; returns the exit status."""
    from diversevis.models.zoo import list_models

    for spec, desc in list_models().items():
        print(f"{spec:26s} {desc}")
    return 0


def _size(text: str) -> int | tuple[int, int]:
    """``--size``: a side or ``HEIGHT,WIDTH`` (an argparse ``type=``)."""
    from diversevis.core.errors import DiversevisError
    from diversevis.models.user import parse_input_size

    try:
        return parse_input_size(text)
    except DiversevisError:
        raise argparse.ArgumentTypeError(
            f"expected a side or HEIGHT,WIDTH of positive integers, got {text!r}"
        ) from None


def add_layers_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``layers`` subcommand to ``sub`` and return its parser."""
    p = sub.add_parser("layers", help="list a model's layers with output shapes and receptive fields")
    add_model_args(p)
    p.add_argument(
        "--size",
        type=_size,
        metavar="SIDE|H,W",
        default=None,
        help="input size for the shapes: a side or HEIGHT,WIDTH (default: the model's input size, see --input-size)",
    )
    return p


def run_layers(args: argparse.Namespace) -> int:
    """Handler of ``diversevis layers``; returns the exit status."""
    net = load(args)
    rows = net.list_layers(args.size)
    print(f"{'layer':22s} {'alias':10s} {'type':14s} {'output (C,H,W)':18s} {'RF':>5s} {'stride':>6s}")
    for r in rows:
        shape = "x".join(str(s) for s in r.shape) if r.shape else "-"
        print(
            f"{r.name:22s} {r.alias or '':10s} {r.type:14s} {shape:18s} "
            f"{r.rf if r.rf is not None else '-':>5} {r.stride if r.stride is not None else '-':>6}"
        )
    if any(r.rf is None for r in rows):
        print(
            "(RF '-': not a conv/pool chain here; diversevis measures it with a gradient probe when needed)"
        )
    return 0


#: ``(add_parser, run)`` of each subcommand of this module, in ``diversevis --help`` order.
COMMANDS = ((add_models_parser, run_models), (add_layers_parser, run_layers))
