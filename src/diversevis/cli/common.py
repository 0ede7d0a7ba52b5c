"""Argument helpers shared by the ``diversevis`` subcommands.

Argparse ``type=`` checkers (:func:`number` and its instances), the argument groups several commands add
(model, target unit, contrast, output, optimisation, precision) and the helpers their handlers share
(:func:`load`, :func:`direction`, :func:`out_dir`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from diversevis.core.devices import check_device
from diversevis.core.errors import DiversevisError, EnvironmentProblem
from diversevis.core.optimize import Interrupted
from diversevis.core.settings import Settings

#: Exit status after Ctrl-C (as :data:`diversevis.cli.EXIT_INTERRUPTED`).
EXIT_INTERRUPTED = 130

S = TypeVar("S", bound=Settings)

__all__ = [
    "number",
    "positive_int",
    "nonneg_int",
    "positive_float",
    "fraction",
    "floor_or_none",
    "add_floor_args",
    "nonneg_float",
    "add_stop_args",
    "unit_float",
    "add_model_args",
    "add_target_args",
    "add_contrast_args",
    "add_out_args",
    "add_optim_args",
    "add_precision_arg",
    "add_display_range_arg",
    "direction",
    "out_dir",
    "load",
]


def number(kind: type, check, rule: str):
    """An argparse ``type=`` that parses ``kind`` and enforces ``check`` (described by ``rule``).

    Parameters
    ----------
    kind : type
        ``int`` or ``float``.
    check : callable
        Predicate the parsed value must satisfy.
    rule : str
        ``check`` in words, for the error message (e.g. ``">= 1"``).

    Returns
    -------
    callable
        ``parse(s)``, raising :class:`argparse.ArgumentTypeError` on bad input.
    """
    noun = "an integer" if kind is int else "a number"

    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {s!r}") from None
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number {rule}, got {s}")
        if not check(v):
            raise argparse.ArgumentTypeError(f"expected {noun} {rule}, got {s}")
        return v

    return parse


positive_int = number(int, lambda v: v >= 1, ">= 1")
nonneg_int = number(int, lambda v: v >= 0, ">= 0")
positive_float = number(float, lambda v: v > 0, "> 0")
nonneg_float = number(float, lambda v: v >= 0, ">= 0")
unit_float = number(float, lambda v: 0 <= v <= 1, "in [0, 1]")
fraction = number(float, lambda v: 0 < v <= 1, "in (0, 1]")


def floor_or_none(s: str) -> float | None:
    """``--floor``: a fraction in (0, 1], or ``none`` for lambda mode."""
    return None if s.strip().lower() in ("none", "lambda", "off") else fraction(s)


def add_floor_args(p: argparse.ArgumentParser) -> None:
    """Add ``--floor`` and ``--mean-floor`` (floor-mode DFV, :mod:`diversevis.methods.floor`) to ``p``."""
    p.add_argument(
        "--floor",
        type=fraction,
        default=None,
        help="floor mode: maximise diversity with every image at >= FLOOR x the MEI's activation "
        "(e.g. 0.85; replaces the weight --diversity; needs the MEI)",
    )
    p.add_argument(
        "--mean-floor",
        type=fraction,
        default=None,
        help="floor mode: also hold the set's mean activation at >= MEAN_FLOOR x the MEI (e.g. 0.9)",
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Add ``--model`` with its options (``--model-arg``, ``--mean``, ``--std``, ``--in-channels``,
    ``--input-size``), ``--device``, ``--allow-pickle``, ``--naturals`` and ``--channels-last`` to ``p``."""
    p.add_argument(
        "--model",
        "-m",
        required=True,
        help="model spec: vgg16, vgg16-paper, efficientnet-lite0, cell:complex, your own MODULE:FUNCTION "
        "(e.g. my_pkg.models:build), file:PATH, torchvision:NAME[@PATH], timm:NAME[@PATH] "
        "(see `diversevis models`)",
    )
    g = p.add_argument_group("your own model (MODULE:FUNCTION, file:, torchvision:, timm:)")
    g.add_argument(
        "--model-arg",
        action="append",
        metavar="KEY=VALUE",
        default=None,
        help="keyword argument of the model function (repeatable; VALUE is a Python literal, else a string), "
        "e.g. --model-arg depth=3; pretrained=False for torchvision:/timm: random weights",
    )
    g.add_argument(
        "--mean",
        metavar="M[,M,...]",
        default=None,
        help="input mean in display units [0, 1], one per channel or one for all (default: 0; torchvision: ImageNet)",
    )
    g.add_argument(
        "--std",
        metavar="S[,S,...]",
        default=None,
        help="input std in display units, one per channel or one for all (default: 1; torchvision: ImageNet)",
    )
    g.add_argument(
        "--in-channels",
        type=positive_int,
        default=None,
        help="input channels, e.g. 1 for grayscale (default: from --mean/--std or the first convolution)",
    )
    g.add_argument(
        "--input-size",
        metavar="H,W",
        default=None,
        help="the model's input size: a side or HEIGHT,WIDTH (default: 224)",
    )
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow file: models that are pickled Python objects (runs code from the file; "
        "only for files you trust)",
    )
    p.add_argument(
        "--naturals",
        metavar="DIR",
        default=None,
        help="folder of natural images for contrast statistics (default: bundled photos)",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="NHWC memory format for the network (faster convolutions on CPUs; see docs/performance.md)",
    )


def add_target_args(p: argparse.ArgumentParser) -> None:
    """Add ``--layer``, ``--unit`` or ``--direction`` (one required), and ``--metric`` to ``p``."""
    p.add_argument("--layer", "-l", required=True, help="layer alias (conv3_1) or dot path (features.10)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--unit", "-u", type=nonneg_int, help="channel index of the unit")
    g.add_argument(
        "--direction",
        metavar="FILE|v1,v2,...",
        help="target direction in channel space: a .npy file or comma-separated values",
    )
    p.add_argument(
        "--metric", choices=["max", "cos", "mse"], default="max", help="target metric (default: max)"
    )


def add_contrast_args(p: argparse.ArgumentParser, norm: bool = True) -> None:
    """Add ``--contrast`` and (``norm``) ``--norm`` (the image's fixed L2 norm) to ``p``."""
    p.add_argument(
        "--contrast",
        type=positive_float,
        default=0.5,
        help="image L2 norm as a fraction of the mean natural-patch norm (default: 0.5, as the paper)",
    )
    if norm:
        p.add_argument(
            "--norm", type=positive_float, default=None, help="absolute image L2 norm (overrides --contrast)"
        )


def add_out_args(p: argparse.ArgumentParser) -> None:
    """Add ``--out`` and ``--quiet`` to ``p``."""
    p.add_argument(
        "--out", "-o", default=None, help="output directory (default: runs/<model>_<layer>_u<unit>_<command>)"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def add_optim_args(p: argparse.ArgumentParser, lr: float = 1.0, max_iter: int = 1000) -> None:
    """Add the contrast, optimiser (``--lr``, ``--max-iter``, ...), seed and output arguments to ``p``.

    Parameters
    ----------
    p : argparse.ArgumentParser
        The subcommand's parser.
    lr, max_iter : float, int
        Defaults of ``--lr`` and ``--max-iter``.
    """
    add_contrast_args(p)
    p.add_argument("--lr", type=positive_float, default=lr, help=f"Adam learning rate (default: {lr})")
    p.add_argument(
        "--max-iter", type=positive_int, default=max_iter, help=f"maximum iterations (default: {max_iter})"
    )
    p.add_argument(
        "--patience",
        type=nonneg_int,
        default=100,
        help="early stopping: iterations without EMA-loss improvement (default: 100; 0 disables)",
    )
    p.add_argument(
        "--no-precondition", action="store_true", help="disable the 1/sqrt(f) gradient preconditioner"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_out_args(p)


def add_stop_args(p: argparse.ArgumentParser, diversity: bool = True) -> None:
    """Add the early-stopping rule (``--stop``, ``--plateau-window``, ``--plateau-rtol`` and, for a
    diverse set, ``--plateau-rtol-diversity``) to ``p``; the defaults are the method's
    (:data:`diversevis.methods.settings.PLATEAU`)."""
    p.add_argument(
        "--stop",
        choices=("plateau", "ema"),
        default="plateau",
        help="early stopping: 'plateau' once the activations (and the diversity) stop drifting over a "
        "window, or 'ema' the reference rule (--patience steps without a new EMA-loss minimum) "
        "(default: plateau)",
    )
    what = "mode's default: 50 steps, 200 in floor mode" if diversity else "default: 50"
    p.add_argument(
        "--plateau-window",
        type=nonneg_int,
        default=None,
        help=f"plateau rule: steps compared, two halves (0 disables; {what})",
    )
    p.add_argument(
        "--plateau-rtol",
        type=nonneg_float,
        default=None,
        help="plateau rule: largest relative drift of the activations per window "
        + ("(mode's default: 0.0015, 0.005 in floor mode)" if diversity else "(default: 0.0015)"),
    )
    if diversity:
        p.add_argument(
            "--plateau-rtol-diversity",
            type=nonneg_float,
            default=None,
            help="plateau rule: largest relative drift of the diversity per window "
            "(mode's default: 0.02, 0.005 in floor mode)",
        )


def add_display_range_arg(p: argparse.ArgumentParser) -> None:
    """Add ``--display-range`` (optimise images clipped to [0, 1], as their PNG shows them) to ``p``."""
    p.add_argument(
        "--display-range",
        action="store_true",
        help="keep the images in [0, 1] while optimising (clipped after the norm step), so the activations, "
        "ratios and floor hold for the saved PNG; by default images may leave [0, 1] and the PNG clips them",
    )


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    """Add ``--precision`` (fp32, tf32 or bf16 forward passes) to ``p``."""
    p.add_argument(
        "--precision",
        choices=("fp32", "tf32", "bf16"),
        default="fp32",
        help="forward-pass precision: tf32 on Ampere+ GPUs, bf16 autocast anywhere (default: fp32)",
    )


def direction(arg: str | None):
    """The ``--direction`` value as a list of floats (from a ``.npy`` file or ``v1,v2,...``), or None.

    Raises
    ------
    DiversevisError
        If the file does not exist or the values are not numbers.
    """
    if arg is None:
        return None
    import numpy as np

    if arg.endswith(".npy"):
        path = Path(arg)
        if not path.is_file():
            raise DiversevisError(f"direction file {arg!r} does not exist")
        try:
            return np.load(path, allow_pickle=False).astype("float32").ravel().tolist()
        except (ValueError, OSError) as exc:
            raise DiversevisError(
                f"direction file {arg!r} is not a plain numeric .npy array ({exc}); save one with np.save"
            ) from None
    try:
        return [float(v) for v in arg.split(",")]
    except ValueError:
        raise DiversevisError(
            f"--direction must be a .npy file or comma-separated numbers, got {arg!r}"
        ) from None


def out_dir(args, net) -> Path:
    """``--out``, or ``runs/<model>_<layer>_u<unit>_<command>`` (``dir`` for ``u<unit>`` with a direction)."""
    if args.out:
        return Path(args.out)
    unit = f"u{args.unit}" if getattr(args, "unit", None) is not None else "dir"
    name = net.name.replace(":", "-").replace("/", "-")
    return Path("runs") / f"{name}_{net.display_name(args.layer)}_{unit}_{args.command}"


def load(args):
    """Load ``--model`` with its options, ``--device``, ``--allow-pickle``, ``--naturals``, ``--channels-last``.

    Raises
    ------
    DiversevisError
        For a malformed ``--model-arg``, ``--mean``, ``--std`` or ``--input-size``, and every model error.
    """
    from diversevis.models.user import parse_model_args
    from diversevis.models.zoo import load_model

    check_device(args.device)  # before loading: "cuda is not available" beats a long load
    net = load_model(
        args.model,
        device=args.device,
        allow_pickle=args.allow_pickle,
        images=args.naturals,
        mean=getattr(args, "mean", None),
        std=getattr(args, "std", None),
        in_channels=getattr(args, "in_channels", None),
        input_size=getattr(args, "input_size", None),
        model_args=parse_model_args(getattr(args, "model_arg", None)),
    )
    return net.use_channels_last() if getattr(args, "channels_last", False) else net


#: Settings fields whose flag has another name: field -> argparse dest (``--images`` is the set size,
#: ``--naturals`` the natural-image folder).
FLAG_DEST = {"n_images": "images", "images": "naturals"}
#: Boolean settings fields switched off by a ``--no-...`` flag: field -> argparse dest.
NEGATED_FLAG = {"precondition": "no_precondition", "precondition_grad": "no_precondition"}


def settings_from_args(cls: type[S], args: argparse.Namespace, **values) -> S:
    """The ``cls`` settings that the parsed flags describe (validated by ``cls``).

    Every field of ``cls`` takes the value of its flag (same name, or the name in :data:`FLAG_DEST`;
    :data:`NEGATED_FLAG` for ``--no-...`` switches); fields the command has no flag for keep the
    dataclass default, and ``values`` override both.
    """
    for name in cls.names():
        if name in values:
            continue
        if name in NEGATED_FLAG and hasattr(args, NEGATED_FLAG[name]):
            values[name] = not getattr(args, NEGATED_FLAG[name])
        elif hasattr(args, FLAG_DEST.get(name, name)):
            values[name] = getattr(args, FLAG_DEST.get(name, name))
    return cls(**values)


def add_crop_arg(p: argparse.ArgumentParser, what: str) -> None:
    """Add ``--crop nominal|effective``: how the ``what`` (images, crops) are sized."""
    p.add_argument(
        "--crop",
        choices=["nominal", "effective"],
        default="nominal",
        help=f"size of the {what}: the unit's nominal receptive field (a readout: the whole input), or its "
        "effective field, the box holding 95%% of the MEI's gradient energy (default: nominal)",
    )


def px(size) -> str:
    """``24px`` for a side, ``36x64px`` for ``(height, width)``."""
    return f"{size}px" if isinstance(size, int) else f"{size[0]}x{size[1]}px"


def check_writable(path: str | Path) -> None:
    """Refuse an output directory that cannot be created or written, before any work is done.

    Nothing is created: the path must be a directory or not exist yet, and its nearest existing
    ancestor must be a writable directory.

    Raises
    ------
    DiversevisError
        The path (or an ancestor) is a file: a usage error.
    EnvironmentProblem
        No permission to write there (or a read-only file system).
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise DiversevisError(f"cannot create output directory {str(out)!r}: it is a file, not a directory")
    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise DiversevisError(
            f"cannot create output directory {str(out)!r}: {str(base)!r} is a file, not a directory"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise EnvironmentProblem(
            f"cannot create output directory {str(out)!r}: no permission to write to {str(base)!r}"
        )


def save_interrupted(
    stop: Interrupted, kind: type, args: argparse.Namespace, net: Any, summary: Callable[[Any, Path], None]
) -> int:
    """Save the partial result an :class:`Interrupted` carries (if it is a ``kind``) and return 130.

    ``summary(result, out)`` prints the usual lines; a Ctrl-C before any ``kind`` result exists (e.g.
    during the MEI of a shift test) is re-raised: the CLI then prints ``interrupted`` and exits 130.
    """
    if not isinstance(stop.result, kind):
        raise KeyboardInterrupt from stop
    out = stop.result.save(out_dir(args, net))
    summary(stop.result, out)
    print("diversevis: interrupted: the partial result above is saved (spec: interrupted)", file=sys.stderr)
    return EXIT_INTERRUPTED
