"""Exceptions raised for user errors (bad model spec, layer name, unit index, sizes, files).

Every user-facing error derives from :class:`DiversevisError`; the CLI prints its message on one line and
exits with status 2 (a usage error) or, for :class:`EnvironmentProblem` (an unwritable output, a full
disk, a missing device), 1, instead of showing a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DiversevisError(ValueError):
    """Base class of errors caused by user input (not by bugs)."""


class LayerNotFoundError(DiversevisError, KeyError):
    """A layer name that is neither a module path nor an alias of the network."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class EnvironmentProblem(DiversevisError):
    """The machine, not the arguments: an output that cannot be written, a full disk, a missing device."""


class ModelNotFoundError(DiversevisError):
    """A model spec that the zoo cannot resolve."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 5) -> str:
    """Return a ``" Did you mean: a, b?"`` suffix listing close matches of ``name`` (or ``""``)."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:
        low = name.lower()
        close = [c for c in choices if low in c.lower()][:n]
    return f" Did you mean: {', '.join(close)}?" if close else ""
