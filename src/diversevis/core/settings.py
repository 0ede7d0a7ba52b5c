"""Frozen settings dataclasses: each method declares its hyperparameters once.

A method's settings class holds the defaults and the validation (in ``__post_init__``), the keyword API
builds one from its arguments, the CLI maps its flags onto it, a sweep stores and compares it, and the run
spec serialises it. :class:`Settings` is the shared base: conversion to and from plain dicts (with
close-match suggestions for unknown keys).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any, TypeVar

from diversevis.core.errors import DiversevisError, did_you_mean

__all__ = ["Settings"]

S = TypeVar("S", bound="Settings")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of the per-method settings (frozen: a settings object never changes after validation)."""

    def __post_init__(self) -> None:
        for name in self.names():  # numpy / torch scalars (np.int64 from argsort, ...) as Python numbers
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
                object.__setattr__(self, name, int(value))
            elif isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
                object.__setattr__(self, name, float(value))
        self.check()

    def check(self) -> None:
        """Raise :class:`DiversevisError` for an invalid value (overridden by each method)."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def as_dict(self) -> dict[str, Any]:
        """Every field, in declaration order (JSON-friendly for the usual field types)."""
        return {name: getattr(self, name) for name in self.names()}

    @classmethod
    def from_dict(cls: type[S], values: Mapping[str, Any]) -> S:
        """Build from a mapping; unknown keys are an error that names the close matches."""
        unknown = [k for k in values if k not in cls.names()]
        if unknown:
            raise DiversevisError(
                f"unknown {cls.__name__} setting {unknown[0]!r}{did_you_mean(unknown[0], cls.names())}"
            )
        return cls(**values)

    @classmethod
    def from_arguments(cls: type[S], arguments: Mapping[str, Any]) -> S:
        """Build from a keyword API's arguments (``locals()``): the fields of ``cls``, other names ignored."""
        return cls(**{name: arguments[name] for name in cls.names() if name in arguments})

    def loop(self) -> dict[str, Any]:
        """The shared optimisation loop's keywords these settings hold (``lr``, ``max_iter``, ...;
        ``plateau_window`` and ``plateau_rtol`` as the loop's ``window`` and ``rtol``)."""
        names = {"plateau_window": "window", "plateau_rtol": "rtol"}
        return {
            names.get(k, k): getattr(self, k)
            for k in (
                "lr",
                "max_iter",
                "patience",
                "ema",
                "stop",
                "plateau_window",
                "plateau_rtol",
                "precision",
            )
            if k in self.names()
        }

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)
