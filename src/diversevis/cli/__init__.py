"""The ``diversevis`` command.

Subcommands: ``models``, ``layers``, ``diverse``, ``mei``, ``shift-test``, ``phase-test``, ``analyze``,
``sweep``, ``report``, ``compare``, ``reproduce``, and the classic methods ``actmax``, ``deconv``,
``occlusion``, ``multifaceted``, ``invert``, ``dissect``. Each lives in a command module
``diversevis.cli.<module>`` (see :data:`COMMAND_MODULES`) whose ``COMMANDS`` lists ``(add_parser, run)``
pairs: ``add_parser(sub)`` adds one subcommand to the subparsers ``sub`` and returns its parser,
``run(args) -> int`` handles it. The argument helpers they share are in :mod:`diversevis.cli.common`.
User errors (unknown model or layer, unit out of range, bad values) print one line
``diversevis: error: ...`` and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence

from diversevis.cli import common as _common
from diversevis.core.errors import DiversevisError, EnvironmentProblem

__all__ = ["main", "build_parser", "EXIT_USAGE", "EXIT_ENVIRONMENT", "EXIT_INTERRUPTED", "COMMAND_MODULES"]

EXIT_USAGE = 2
EXIT_ENVIRONMENT = 1
EXIT_INTERRUPTED = 130

#: Modules ``diversevis.cli.<name>``, in ``diversevis --help`` order; each defines ``COMMANDS``, a
#: sequence of ``(add_parser, run)`` pairs (``add_parser(sub)`` returns the new subparser).
COMMAND_MODULES = (
    "models",
    "diverse",
    "invariance",
    "sweep",
    "report",
    "reproduce",
    "actmax",
    "deconv",
    "occlusion",
    "multifaceted",
    "invert",
    "dissect",
    "manifold",
    "manifold_cluster",
    "generator_prior",
    "generator",
)

#: The classic methods' command modules (a subset of :data:`COMMAND_MODULES`).
CLASSIC_COMMANDS = ("actmax", "deconv", "occlusion", "multifaceted", "invert", "dissect")

# The shared helpers under their old private names (``from diversevis.cli import _add_model_args``).
_number = _common.number
_positive_int = _common.positive_int
_nonneg_int = _common.nonneg_int
_positive_float = _common.positive_float
_nonneg_float = _common.nonneg_float
_unit_float = _common.unit_float
_add_model_args = _common.add_model_args
_add_target_args = _common.add_target_args
_add_contrast_args = _common.add_contrast_args
_add_out_args = _common.add_out_args
_add_optim_args = _common.add_optim_args
_direction = _common.direction
_out_dir = _common.out_dir
_load = _common.load


def _command_modules():
    return [importlib.import_module(f"diversevis.cli.{name}") for name in COMMAND_MODULES]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``diversevis`` command.

    Returns
    -------
    argparse.ArgumentParser
        With one subcommand per ``(add_parser, run)`` pair of the :data:`COMMAND_MODULES`; a parsed
        command's handler is ``args.handler``.
    """
    from diversevis import __version__

    parser = argparse.ArgumentParser(
        prog="diversevis",
        description="Diverse feature visualization (Cadena et al. 2018): the set of images that strongly "
        "drive one CNN unit, and what the unit is invariant to.",
        epilog="Example: diversevis diverse --model vgg16-paper --layer conv3_1 --unit 21 --images 6 "
        "--diversity 0.01 --distance-layer conv2_2 --out runs/u21",
    )
    parser.add_argument("--version", action="version", version=f"diversevis {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    parser.set_defaults(handler=None)
    for mod in _command_modules():
        for add_parser, run in mod.COMMANDS:
            add_parser(sub).set_defaults(handler=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diversevis`` console script.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: the handler's (0); :data:`EXIT_USAGE` (2) for a usage error
        (:class:`DiversevisError`: bad names or values; argparse errors exit 2 via :class:`SystemExit`);
        :data:`EXIT_ENVIRONMENT` (1) for the machine (:class:`EnvironmentProblem`, an :class:`OSError`
        such as a permission error or a full disk, or an unexpected error); :data:`EXIT_INTERRUPTED` (130)
        on Ctrl-C. Each prints one line on stderr; ``--debug`` adds the traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "out", None):
            _common.check_writable(args.out)  # before any optimisation
        return args.handler(args)
    except EnvironmentProblem as e:
        return _fail(args, str(e), EXIT_ENVIRONMENT)
    except DiversevisError as e:
        return _fail(args, str(e), EXIT_USAGE)
    except KeyboardInterrupt:
        print("diversevis: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        return _fail(args, _os_message(e, getattr(args, "out", None)), EXIT_ENVIRONMENT)
    except Exception as e:  # a bug, not the user's fault: one line, the traceback with --debug
        msg = f"unexpected {type(e).__name__}: {e} (please report it; --debug shows the traceback)"
        return _fail(args, msg, EXIT_ENVIRONMENT)


def _os_message(e: OSError, out: str | None) -> str:
    """One line for an OS error: the path (the file, else the output directory) and the OS's reason."""
    path = e.filename or out
    where = f" {str(path)!r}" if path else ""
    verb = "write" if e.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT) else "access"
    return f"cannot {verb}{where}: {e.strerror or e}"


def _fail(args: argparse.Namespace, message: str, status: int) -> int:
    """Print ``diversevis: error: message`` (and the traceback with ``--debug``); return ``status``."""
    if getattr(args, "debug", False):
        import traceback

        traceback.print_exc()
    print(f"diversevis: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
