"""The user's own models: ``module.path:function`` specs, their arguments and input conventions.

A spec ``my_pkg.models:build`` imports ``my_pkg.models`` (from ``sys.path``, then the current directory)
and calls ``build(**model_args)``; the function returns an ``nn.Module`` (wrapped in a
:class:`~diversevis.core.network.Network` with the given normalisation) or a ready ``Network``.

:class:`LoadOptions` holds what ``load_model(spec, mean=, std=, in_channels=, input_size=, model_args=)``
and the CLI flags ``--mean``, ``--std``, ``--in-channels``, ``--input-size``, ``--model-arg`` say about
such a model, validated; :meth:`LoadOptions.network` wraps a module with them and records them on the
network as ``net.load_args``, so that ``load_model(net.spec, **net.load_args)`` loads the same model
again. The string parsers (:func:`parse_model_args`, :func:`parse_floats`, :func:`parse_input_size`)
turn the CLI's text into those values and raise :class:`~diversevis.core.errors.DiversevisError`.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from diversevis.core.errors import DiversevisError, ModelNotFoundError, did_you_mean
from diversevis.core.network import Network

__all__ = [
    "LoadOptions",
    "parse_model_arg",
    "parse_model_args",
    "parse_floats",
    "parse_input_size",
    "is_module_spec",
    "load_module_spec",
    "add_cwd_to_path",
    "one_line",
]

_DOTTED = re.compile(r"^[^\W\d]\w*(\.[^\W\d]\w*)*$")
SPEC_HELP = "MODULE:FUNCTION (e.g. my_pkg.models:build)"


def one_line(e: BaseException | str, limit: int = 300) -> str:
    """An exception's message (or a text) on one line, at most ``limit`` characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------ parsers
def parse_model_arg(text: str) -> tuple[str, Any]:
    """Parse one ``--model-arg KEY=VALUE``: the value as a Python literal, else as a string.

    ``depth=3`` -> ``("depth", 3)``, ``pretrained=False`` -> ``("pretrained", False)``,
    ``sizes=[1,2]`` -> ``("sizes", [1, 2])``, ``act=relu`` -> ``("act", "relu")``.

    Raises
    ------
    DiversevisError
        Without ``=`` or when the key is not a Python identifier.
    """
    if not isinstance(text, str) or "=" not in text:
        raise DiversevisError(f"--model-arg takes KEY=VALUE (e.g. depth=3 or pretrained=False), got {text!r}")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key.isidentifier():
        raise DiversevisError(
            f"--model-arg {text!r}: the key {key!r} is not a Python keyword-argument name (KEY=VALUE)"
        )
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw  # not a literal: the text itself
    return key, value


def parse_model_args(items: Iterable[str] | None) -> dict[str, Any]:
    """Parse repeated ``--model-arg KEY=VALUE`` into a dict (see :func:`parse_model_arg`).

    Raises
    ------
    DiversevisError
        For a malformed item or a key given twice.
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, value = parse_model_arg(item)
        if key in out:
            raise DiversevisError(f"--model-arg {key}=... is given twice")
        out[key] = value
    return out


def parse_floats(text: str | float | Iterable[float], what: str = "--mean") -> tuple[float, ...]:
    """Finite numbers from ``"0.485,0.456,0.406"`` (or ``"0.5"``, a number, a sequence of numbers).

    Raises
    ------
    DiversevisError
        When a value is not a number, is not finite, or none is given.
    """
    if isinstance(text, str):
        parts = text.split(",")
    elif isinstance(text, (int, float)) and not isinstance(text, bool):
        parts = [text]
    else:
        try:
            parts = list(text)
        except TypeError:
            raise DiversevisError(f"{what} takes numbers, got {type(text).__name__}") from None
    values = []
    for p in parts:
        try:
            if isinstance(p, bool):
                raise TypeError
            v = float(p.strip() if isinstance(p, str) else p)
        except (TypeError, ValueError):
            raise DiversevisError(
                f"{what} takes comma-separated numbers, one per input channel or one for all, got {text!r}"
            ) from None
        if not math.isfinite(v):
            raise DiversevisError(f"{what} values must be finite, got {text!r}")
        values.append(v)
    if not values:
        raise DiversevisError(f"{what} needs at least one number")
    return tuple(values)


def parse_input_size(text: str | int | Iterable[int]) -> int | tuple[int, int]:
    """An input size from ``"224"``, ``"36,64"`` / ``"36x64"`` (height, width), an int or a pair.

    Returns an int for a square size, ``(height, width)`` otherwise.

    Raises
    ------
    DiversevisError
        Unless it is one or two positive integers.
    """
    if isinstance(text, str):
        parts = re.split(r"[,x]", text.strip().lower())
    elif isinstance(text, int) and not isinstance(text, bool):
        parts = [text]
    else:
        try:
            parts = list(text)
        except TypeError:
            parts = [None]
    try:
        if any(isinstance(p, bool) or isinstance(p, float) for p in parts):
            raise ValueError
        hw = [int(p.strip() if isinstance(p, str) else p) for p in parts]
    except (TypeError, ValueError):
        hw = []
    if len(hw) not in (1, 2) or min(hw) < 1:
        raise DiversevisError(
            "input_size (--input-size) takes a side or HEIGHT,WIDTH of positive integers (e.g. 64 or "
            f"36,64), got {text!r}"
        )
    return hw[0] if len(hw) == 1 or hw[0] == hw[1] else (hw[0], hw[1])


# ------------------------------------------------------------------------------ options
def _first_conv_channels(module: nn.Module) -> int | None:
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return int(m.in_channels)
    return None


@dataclass(frozen=True)
class LoadOptions:
    """What the caller says about a model's inputs, and the arguments of the function that builds it.

    Attributes
    ----------
    mean, std : tuple of float or None
        Display-space normalisation, one value per input channel or one for all (``None``: the loader's
        default, identity for the user's own models).
    in_channels : int or None
        Input channels (``None``: the length of ``mean``/``std`` if it is > 1, else the first
        convolution's input channels, else 3).
    input_size : int, (int, int) or None
        The model's input side or ``(height, width)`` (``None``: the loader's default, 224).
    model_args : dict
        Keyword arguments of the factory (``module:function``, ``torchvision:``, ``timm:``).
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    in_channels: int | None = None
    input_size: int | tuple[int, int] | None = None
    model_args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, mean=None, std=None, in_channels=None, input_size=None, model_args=None) -> LoadOptions:
        """Validated options from ``load_model``'s keywords (numbers, sequences or the CLI's strings)."""
        if in_channels is not None and (
            isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1
        ):
            raise DiversevisError(f"in_channels must be a positive integer, got {in_channels!r}")
        if model_args is None:
            model_args = {}
        if not isinstance(model_args, Mapping) or not all(isinstance(k, str) for k in model_args):
            raise DiversevisError(f"model_args must be a dict of keyword arguments, got {model_args!r}")
        return cls(
            mean=None if mean is None else parse_floats(mean, "mean"),
            std=None if std is None else parse_floats(std, "std"),
            in_channels=in_channels,
            input_size=None if input_size is None else parse_input_size(input_size),
            model_args=dict(model_args),
        )

    def given(self) -> list[str]:
        """Names of the options that were set (for "does not apply" errors)."""
        names = ["mean", "std", "in_channels", "input_size"]
        return [n for n in names if getattr(self, n) is not None] + (
            ["model_args"] if self.model_args else []
        )

    def _channels(self, module: nn.Module, default: int | None) -> int:
        if self.in_channels is not None:
            return self.in_channels
        lengths = {len(v) for v in (self.mean, self.std) if v is not None and len(v) > 1}
        if len(lengths) == 1:
            return lengths.pop()
        return default or _first_conv_channels(module) or 3

    @staticmethod
    def _per_channel(values, default, c: int, what: str, explicit: bool) -> list[float]:
        values = default if values is None else values
        if values is None:
            return [0.0 if what == "mean" else 1.0] * c
        values = [float(v) for v in values]
        if len(values) == c:
            return values
        if len(values) == 1:
            return values * c
        if not explicit:  # a loader's RGB default for a model built with another channel count
            return [sum(values) / len(values)] * c
        flag = "--" + what
        raise DiversevisError(
            f"{what} has {len(values)} values but the model takes {c} input channel(s): give one value per "
            f"channel or a single value ({flag} 0.5), or set the channel count (--in-channels / in_channels=)"
        )

    def network(
        self,
        module: nn.Module,
        *,
        spec: str,
        name: str,
        defaults: Mapping[str, Any] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> Network:
        """Wrap ``module`` (or re-wrap a :class:`Network`) with these options, recorded as ``load_args``.

        Parameters
        ----------
        module : nn.Module or Network
            The model; a ``Network`` keeps its own normalisation, aliases and name where no option is set.
        spec : str
            The canonical spec string (set as ``net.spec``).
        name : str
            Name for the network (a ``Network``'s own name wins).
        defaults : mapping, optional
            The loader's ``mean``, ``std``, ``input_size`` when the caller gives none.
        aliases : mapping, optional
            Layer aliases.
        """
        d = dict(defaults or {})
        if isinstance(module, Network):
            d = {
                "mean": module.mean.flatten().tolist(),
                "std": module.std.flatten().tolist(),
                "input_size": module.input_size,
                "in_channels": module.in_channels,
            }
            aliases, name = module.aliases, module.name
        c = self._channels(module.module if isinstance(module, Network) else module, d.get("in_channels"))
        mean = self._per_channel(self.mean, d.get("mean"), c, "mean", self.mean is not None)
        std = self._per_channel(self.std, d.get("std"), c, "std", self.std is not None)
        if any(s <= 0 for s in std):
            raise DiversevisError(f"std must be positive, got {std}")
        size = parse_input_size(self.input_size or d.get("input_size") or 224)
        if isinstance(module, Network) and self.given() in ([], ["model_args"]):
            net = module  # the factory's own Network, as it is
        else:
            inner = module.module if isinstance(module, Network) else module
            net = Network(inner, mean, std, aliases=aliases, name=name, in_channels=c, input_size=size)
        net.spec = spec
        net.load_args = {
            "mean": mean,
            "std": std,
            "in_channels": c,
            "input_size": size if isinstance(size, int) else list(size),
            "model_args": dict(self.model_args),
        }
        return net


# --------------------------------------------------------------------- module:function
def is_module_spec(spec: str) -> bool:
    """Whether ``spec`` has the ``module.path:function`` form (checked by :func:`load_module_spec`)."""
    return ":" in spec


def _missing_module(e: ModuleNotFoundError, modname: str) -> bool:
    """Whether ``e`` is about ``modname`` (or a package above it), not about something it imports."""
    return bool(e.name) and (modname == e.name or modname.startswith(e.name + "."))


def add_cwd_to_path() -> bool:
    """Append the current directory to ``sys.path`` if it is not there; whether it was added."""
    cwd = os.getcwd()
    if any(os.path.abspath(p or os.curdir) == cwd for p in sys.path):
        return False
    sys.path.append(cwd)
    importlib.invalidate_caches()
    return True


def _import(modname: str, spec: str):
    """Import ``modname`` for ``spec``, with one retry from the current directory; user errors only."""
    for attempt in range(2):
        try:
            return importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if not _missing_module(e, modname):
                raise DiversevisError(
                    f"importing {modname!r} for the model {spec!r} failed: it imports {e.name!r}, which is not "
                    f"installed here (pip install it, or fix the import)"
                ) from e
            if attempt == 0 and add_cwd_to_path():
                continue
            raise ModelNotFoundError(
                f"cannot import module {modname!r} for the model {spec!r} (no module named {e.name!r}). Make it "
                f"importable: run from the folder that contains it, or add that folder to PYTHONPATH "
                f"(PYTHONPATH=/path/to/folder); sys.path and the current directory are searched."
                + did_you_mean(modname, ("torchvision", "timm", "file", "cell"))
            ) from e
        except Exception as e:  # noqa: BLE001 - the user's module failed at import time: report it
            raise DiversevisError(
                f"importing {modname!r} for the model {spec!r} raised {type(e).__name__}: {one_line(e)}"
            ) from e
    raise AssertionError("unreachable")  # pragma: no cover


def _public_callables(obj) -> list[str]:
    return sorted(n for n, v in vars(obj).items() if callable(v) and not n.startswith("_"))


def _resolve(spec: str):
    """The object that ``module.path:attr.path`` names (imported), or a user error saying why not."""
    modname, _, attr = spec.partition(":")
    modname, attr = modname.strip(), attr.strip()
    if modname.endswith(".py") or "/" in modname or "\\" in modname:
        stem = os.path.splitext(os.path.basename(modname.replace("\\", "/")))[0]
        raise ModelNotFoundError(
            f"model spec {spec!r}: name the module, not its file: {stem}:{attr or 'FUNCTION'} (run from the "
            f"file's folder or add it to PYTHONPATH); for a saved model file use file:PATH"
        )
    if not _DOTTED.match(modname) or not _DOTTED.match(attr):
        raise ModelNotFoundError(
            f"model spec {spec!r} is not {SPEC_HELP}, file:PATH, torchvision:NAME, timm:NAME or a zoo name "
            f"(see `diversevis models`)"
        )
    obj = _import(modname, spec)
    where = modname
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = _public_callables(obj)
            hint = did_you_mean(part, names)
            listing = hint or (
                f" It defines: {', '.join(names[:12])}." if names else " It defines no functions."
            )
            raise ModelNotFoundError(f"{where!r} has no attribute {part!r} (model spec {spec!r}).{listing}")
        obj, where = getattr(obj, part), f"{where}.{part}"
    return obj


def _describe(obj) -> tuple[str, str]:
    """What ``obj`` is, and a hint for turning it into a model (or ``""``)."""
    if isinstance(obj, (tuple, list)):
        kinds = ", ".join(type(v).__name__ for v in list(obj)[:4])
        return f"a {type(obj).__name__} ({kinds})", "; return the model alone"
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "a state_dict (weights only)", (
            "; build the model, call model.load_state_dict(state) and return the model"
        )
    if obj is None:
        return "None", "; does the function end with `return model`?"
    kind = type(obj).__name__
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}", ""


def _call(factory, spec: str, model_args: dict[str, Any]):
    """``factory(**model_args)``, with the user's errors reported as such."""
    shown = ", ".join(f"{k}={v!r}" for k, v in model_args.items())
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(**model_args)
        except TypeError as e:
            raise DiversevisError(
                f"cannot call {spec}({shown}): {one_line(e)}; it takes {sig} (pass arguments with "
                f"--model-arg KEY=VALUE, Python: model_args={{...}})"
            ) from None
    try:
        return factory(**model_args)
    except Exception as e:  # noqa: BLE001 - the user's factory failed: report it, no traceback
        raise DiversevisError(
            f"the model factory {spec}({shown}) raised {type(e).__name__}: {one_line(e)}"
        ) from e


def load_module_spec(spec: str, options: LoadOptions) -> Network:
    """Load ``module.path:function``: import, call with ``options.model_args``, wrap with ``options``.

    An attribute that is already an ``nn.Module`` or ``Network`` instance is used as is (not called).
    The module the factory returns is the caller's, so it is not frozen or changed (each forward pass
    runs it in eval mode, see :func:`~diversevis.core.network.evaluating`).

    Raises
    ------
    ModelNotFoundError
        When the module cannot be imported or has no such attribute.
    DiversevisError
        When importing or calling the factory raises, or it returns something that is not a model.
    """
    canonical = ":".join(p.strip() for p in spec.split(":", 1))
    target = _resolve(canonical)
    if isinstance(target, nn.Module):
        if options.model_args:
            raise DiversevisError(
                f"{canonical} is a model object, not a function, so it takes no --model-arg / model_args"
            )
        obj = target
    elif callable(target):
        obj = _call(target, canonical, options.model_args)
    else:
        what, _ = _describe(target)
        raise DiversevisError(f"{canonical} is {what}, not a function that builds a model ({SPEC_HELP})")
    if not isinstance(obj, nn.Module):
        what, hint = _describe(obj)
        raise DiversevisError(f"{canonical} returned {what}, not an nn.Module or dv.Network{hint}")
    return options.network(obj, spec=canonical, name=canonical)
