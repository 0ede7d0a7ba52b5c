"""The settings of multifaceted feature visualization, declared once: :class:`MultifacetedSettings`.

Re-exported by :mod:`.multifaceted`, whose :func:`~.multifaceted.multifaceted` builds one from its
keyword arguments (their defaults are this class's) and whose CLI maps its flags onto it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from diversevis.core.errors import DiversevisError
from diversevis.core.settings import Settings
from diversevis.methods.classic._checks import _check_float, _check_int
from diversevis.methods.classic.multifaceted_facets import POOLS

__all__ = ["MultifacetedSettings"]

#: The integer settings and their minimum, in the order they are checked.
_INTS = (
    ("k", 1),
    ("top", 1),
    ("candidates", 1),
    ("n_mean", 1),
    ("max_iter", 1),
    ("patience", 0),
    ("batch", 1),
    ("seed", 0),
)
#: The float settings (lower bound, open?), checked after the integers.
_FLOATS = (("lr", 0.0, True), ("tv", 0.0, False), ("window", 0.0, False), ("facet_weight", 0.0, False))


@dataclasses.dataclass(frozen=True)
class MultifacetedSettings(Settings):
    """The settings of :func:`~diversevis.methods.classic.multifaceted.multifaceted` (see there).

    Building one checks, in this order, the integers (``k`` to ``seed``; stored as ``int``), the floats
    (``lr``, ``tv``, ``window``, ``facet_weight``; stored as ``float``), ``pool`` and ``k <= top``.
    ``patch_size``, ``embed_layer`` and ``jitter`` depend on the network and are checked against it
    when the method runs; ``normalize``, ``pca``, ``match_contrast``, ``contrast`` and ``images`` are
    kept as given.
    """

    k: int = 4
    top: int = 128
    candidates: int = 2048
    patch_size: int | None = None
    match_contrast: bool = False
    contrast: float = 0.5
    embed_layer: str | None = None
    pool: str = "mean"
    normalize: bool = True
    pca: int | None = None
    n_mean: int = 15
    lr: float = 0.02
    max_iter: int = 200
    patience: int = 0
    tv: float = 2.0
    facet_weight: float = 0.0
    jitter: int | None = None
    window: float = 0.3
    seed: int = 0
    batch: int = 64
    images: str | Path | None = None

    def check(self) -> None:
        # a frozen dataclass: the checked values (numpy integers as int, numbers as float) are stored
        # with object.__setattr__
        for name, minimum in _INTS:
            object.__setattr__(self, name, _check_int(name, getattr(self, name), minimum))
        for name, lo, open_lo in _FLOATS:
            object.__setattr__(self, name, _check_float(name, getattr(self, name), lo, open_lo=open_lo))
        if self.pool not in POOLS:
            raise DiversevisError(f"unknown pool {self.pool!r}; choose one of {', '.join(POOLS)}")
        if self.k > self.top:
            raise DiversevisError(
                f"k={self.k} exceeds the number of top patches ({self.top}); lower k or raise top"
            )
