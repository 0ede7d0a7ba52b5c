"""Unit selections: which channels of a layer a command works on (``all``, ``0-63``, ``1,5,9``, ``sample:32``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from diversevis.core.errors import DiversevisError

__all__ = ["parse_units"]


def parse_units(
    spec: str | Sequence[int], channels: int, seed: int = 0, *, sample_at_most: bool = False
) -> list[int]:
    """Units from a spec: ``all``, ``0-63``, ``1,5,9`` (ranges allowed inside), or ``sample:32``.

    Parameters
    ----------
    spec : str or sequence of int
        The spec; a sample is drawn without replacement with ``seed`` and sorted.
    channels : int
        Number of units in the layer (valid indices ``0 .. channels - 1``).
    seed : int
        Seed of the sample.
    sample_at_most : bool
        ``sample:K`` of a layer with at most ``K`` units takes them all instead of failing (a sweep over
        layers of different widths: ``sample:32`` of a 16-unit layer is its 16 units).

    Returns
    -------
    list of int
        Sorted distinct unit indices.
    """
    if not isinstance(spec, str):
        units = [int(u) for u in spec]
    else:
        s = spec.strip().lower()
        if s == "all":
            return list(range(channels))
        m = re.fullmatch(r"sample:(\d+)", s)
        if m:
            k = int(m.group(1))
            if sample_at_most and k >= channels:
                return list(range(channels))
            if not 1 <= k <= channels:
                raise DiversevisError(f"sample:{k} needs 1 <= k <= {channels} (the layer's units)")
            rng = np.random.default_rng(seed)
            return sorted(int(u) for u in rng.choice(channels, size=k, replace=False))
        units = []
        for part in s.split(","):
            r = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not r:
                raise DiversevisError(
                    f"bad units {spec!r}: use all, sample:K, a range like 0-63 or a list like 1,5,9"
                )
            lo = int(r.group(1))
            hi = int(r.group(2)) if r.group(2) is not None else lo
            if hi < lo:
                raise DiversevisError(f"bad range {part.strip()!r}: the end is before the start")
            units.extend(range(lo, hi + 1))
    bad = [u for u in units if not 0 <= u < channels]
    if bad:
        raise DiversevisError(
            f"units {bad[:5]} are out of range: the layer has {channels} units (0..{channels - 1})"
        )
    return sorted(dict.fromkeys(units))
