"""Argument checks shared by every method, the API and the CLI: one rule per kind of value.

Numbers must be finite and in range, integers any :class:`numbers.Integral` (numpy and one-element
torch integers included, ``bool`` excluded), seeds fit torch's 64-bit generator. A bad value is a
:class:`~diversevis.core.errors.DiversevisError` naming the argument, the rule and the value given.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch

from diversevis.core.errors import DiversevisError

__all__ = [
    "SEED_MAX",
    "SIDE_MAX",
    "IMAGES_MAX",
    "STOPS",
    "finite",
    "integer",
    "check_fields",
    "check_loop",
    "check_stop",
]

#: Largest seed torch's generator takes (a signed 64-bit integer).
SEED_MAX = 2**63 - 1
#: Largest image side (pixels) a method accepts: beyond it one image alone would not fit in memory.
SIDE_MAX = 8192
#: Most images one set may hold (a batch beyond it cannot be held in memory at any useful size).
IMAGES_MAX = 65536
#: The optimisation loop's stopping rules (:mod:`diversevis.core.optimize`).
STOPS = ("ema", "plateau")


def _as_number(value: Any) -> Any:
    """A one-element torch tensor as its Python number; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def finite(
    name: str,
    value: Any,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    open_lo: bool = False,
    open_hi: bool = False,
) -> float:
    """``value`` as a float if it is a finite real number in the interval, else a user error.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : Any
        Any real number (Python, numpy, one-element torch tensor); ``bool`` is refused.
    lo, hi : float
        The interval's ends (infinite: unbounded on that side).
    open_lo, open_hi : bool
        Exclude the end (``> lo`` instead of ``>= lo``; ``< hi`` instead of ``<= hi``).
    """
    v = _as_number(value)
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        ok = (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi)
    if not ok:
        rules = []
        if lo > -math.inf and hi < math.inf and not (open_lo or open_hi):
            rules.append(f"in [{lo:g}, {hi:g}]")
        elif lo > -math.inf:
            rules.append(f"{'>' if open_lo else '>='} {lo:g}")
        if hi < math.inf and (open_lo or open_hi or lo == -math.inf):
            rules.append(f"{'<' if open_hi else '<='} {hi:g}")
        rule = (" " + " and ".join(rules)) if rules else ""
        raise DiversevisError(f"{name} must be a finite number{rule}, got {value!r}")
    return float(v)


def integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int if it is an integer (not a bool) in ``[lo, hi]``, else a user error."""
    v = _as_number(value)
    ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if ok:
        ok = (lo is None or v >= lo) and (hi is None or v <= hi)
    if not ok:
        if hi is None:
            rule = "" if lo is None else f" >= {lo}"
        else:
            top = "2**63 - 1" if hi == SEED_MAX else str(hi)
            rule = f" in [{lo}, {top}]" if lo is not None else f" <= {top}"
        raise DiversevisError(f"{name} must be an integer{rule}, got {value!r}")
    return int(v)


def check_fields(
    settings: Any,
    ints: Iterable[tuple] = (),
    floats: Iterable[tuple] = (),
    optional: Iterable[str] = (),
) -> None:
    """Check and store (as ``int``/``float``) fields of a frozen settings object.

    ``ints`` holds ``(name, lo[, hi])``, ``floats`` ``(name, lo[, hi[, open_lo]])``; a field named in
    ``optional`` may be ``None``.
    """
    skip = set(optional)
    for name, *bounds in ints:
        if not (name in skip and getattr(settings, name) is None):
            object.__setattr__(settings, name, integer(name, getattr(settings, name), *bounds))
    for name, lo, *rest in floats:
        hi = rest[0] if rest else math.inf
        open_lo = rest[1] if len(rest) > 1 else False
        if not (name in skip and getattr(settings, name) is None):
            value = finite(name, getattr(settings, name), lo, hi, open_lo=open_lo)
            object.__setattr__(settings, name, value)


def check_stop(
    stop: Any, window: Any, rtol: Any, atol: Any = 0.0, *, names: tuple[str, str] = ("window", "rtol")
) -> None:
    """Check a stopping rule: ``stop`` one of :data:`STOPS`, ``window`` 0 (off) or an integer ``>= 2``,
    ``rtol`` (a number or one per watched quantity) and ``atol`` finite and ``>= 0`` (``names``: how
    the messages call window and rtol)."""
    if not isinstance(stop, str) or stop not in STOPS:
        raise DiversevisError(f"unknown stop rule {stop!r}; choose one of {', '.join(STOPS)}")
    if integer(names[0], window, 0, SEED_MAX) == 1:
        raise DiversevisError(f"{names[0]} must be 0 (no plateau stopping) or an integer >= 2, got 1")
    for r in rtol if isinstance(rtol, (tuple, list)) else [rtol]:
        finite(names[1], r, 0.0)
    finite("atol", atol, 0.0)


def check_loop(settings: Any) -> None:
    """Check the optimisation loop's fields a settings object has: ``lr > 0``, ``max_iter >= 1``,
    ``patience >= 0`` (both at most ``SEED_MAX``), ``ema`` in ``[0, 1)``, ``seed`` in ``[0, SEED_MAX]`` (all finite);
    ``stop`` one of :data:`STOPS`, ``plateau_window`` 0 or ``>= 2``, ``plateau_rtol`` (and
    ``plateau_rtol_diversity``) ``>= 0``; the plateau fields may be ``None`` (the method's default)."""
    has = set(settings.names())
    check_fields(
        settings,
        ints=[
            f
            for f in (("max_iter", 1, SEED_MAX), ("patience", 0, SEED_MAX), ("seed", 0, SEED_MAX))
            if f[0] in has
        ],
        floats=[("lr", 0.0, math.inf, True)] if "lr" in has else [],
    )
    if "ema" in has:
        value = finite("ema", settings.ema, 0.0, 1.0, open_hi=True)
        object.__setattr__(settings, "ema", value)
    if "stop" in has:
        _check_plateau_fields(settings, has)


def _check_plateau_fields(settings: Any, has: set[str]) -> None:
    """``stop`` and the plateau rule's fields (``None`` allowed) of a settings object."""
    if not isinstance(settings.stop, str) or settings.stop not in STOPS:
        raise DiversevisError(f"unknown stop rule {settings.stop!r}; choose one of {', '.join(STOPS)}")
    rtols = [f for f in ("plateau_rtol", "plateau_rtol_diversity") if f in has]
    check_fields(
        settings,
        ints=[("plateau_window", 0, SEED_MAX)],
        floats=[(f, 0.0) for f in rtols],
        optional=["plateau_window", *rtols],
    )
    if settings.plateau_window == 1:
        raise DiversevisError("plateau_window must be 0 (no plateau stopping) or an integer >= 2, got 1")
