"""Argument checks shared by the classic methods (user errors become :class:`DiversevisError`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from diversevis.core.errors import DiversevisError


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int if it is an integer (not a bool) ``>= minimum``, else a user error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DiversevisError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_float(name: str, value: Any, lo: float, hi: float = math.inf, *, open_lo: bool = False) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``), else a user error."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DiversevisError(f"{name} must be a number, got {value!r}") from None
    ok = (v > lo if open_lo else v >= lo) and v <= hi and math.isfinite(v)
    if not ok:
        rule = f"{'>' if open_lo else '>='} {lo}" + ("" if hi == math.inf else f" and <= {hi}")
        raise DiversevisError(f"{name} must be a finite number {rule}, got {value!r}")
    return v
