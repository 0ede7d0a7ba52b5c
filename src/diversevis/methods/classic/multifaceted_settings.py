"""The settings of multifaceted feature visualization, declared once: :class:`MultifacetedSettings`.

Re-exported by :mod:`.multifaceted`, whose :func:`~.multifaceted.multifaceted` builds one from its
keyword arguments (their defaults are this class's) and whose CLI maps its flags onto it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from diversevis.core.checks import check_fields, check_loop
from diversevis.core.errors import DiversevisError
from diversevis.core.settings import Settings
from diversevis.methods.classic.multifaceted_facets import POOLS

__all__ = ["MultifacetedSettings"]

#: The integer settings and their minimum, in the order they are checked.
_INTS = (
    ("k", 1),
    ("top", 1),
    ("candidates", 1),
    ("n_mean", 1),
    ("batch", 1),
)
#: The float settings (lower bound, open?), checked after the integers.
_FLOATS = (
    ("tv", 0.0),
    ("window", 0.0),
    ("facet_weight", 0.0),
    ("contrast", 0.0, math.inf, True),
)


@dataclasses.dataclass(frozen=True)
class MultifacetedSettings(Settings):
    """The settings of :func:`~diversevis.methods.classic.multifaceted.multifaceted` (see there).

    Building one checks the counts (``k``, ``top``, ``candidates``, ``n_mean``, ``batch``;
    stored as ``int``), the floats (``tv``, ``window``, ``facet_weight``, ``contrast``; stored as
    ``float``), the loop (``lr``, ``max_iter``, ``patience``, ``seed``), ``pool`` and ``k <= top``.
    ``patch_size``, ``embed_layer`` and ``jitter`` depend on the network and are checked against it
    when the method runs; ``normalize``, ``pca``, ``match_contrast`` and ``images`` are
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
        check_fields(self, ints=_INTS, floats=_FLOATS)  # stored as int / float
        check_loop(self)  # lr, max_iter, patience, seed
        if self.pool not in POOLS:
            raise DiversevisError(f"unknown pool {self.pool!r}; choose one of {', '.join(POOLS)}")
        if self.k > self.top:
            raise DiversevisError(
                f"k={self.k} exceeds the number of top patches ({self.top}); lower k or raise top"
            )
