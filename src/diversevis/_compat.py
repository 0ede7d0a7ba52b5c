"""Old import paths (before the subpackage layout of 0.2), kept for one release.

``import diversevis.dfv`` and ``from diversevis.sweep import sweep`` still work and give the module that
now lives at ``diversevis.methods.dfv`` / ``diversevis.study.sweep`` (the same module object, so
monkeypatching and private names behave as before), with a :class:`DeprecationWarning` naming the new
path. Where a module was split, the old path gives a module that re-exports every part.
The finder is installed by ``diversevis/__init__.py`` and answers only for the names below.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

#: old module name -> the module(s) its contents now live in (first = the main one).
MOVED: dict[str, tuple[str, ...]] = {
    "diversevis.errors": ("diversevis.core.errors",),
    "diversevis.cache": ("diversevis.core.cache",),
    "diversevis.precision": ("diversevis.core.precision",),
    "diversevis.receptive": ("diversevis.core.receptive",),
    "diversevis.network": ("diversevis.core.network",),
    "diversevis.params": ("diversevis.core.params", "diversevis.images.color"),
    "diversevis.transforms": ("diversevis.core.transforms",),
    "diversevis.objectives": ("diversevis.core.objectives",),
    "diversevis.optimize": ("diversevis.core.optimize",),
    "diversevis.result": ("diversevis.core.result",),
    "diversevis.naturals": ("diversevis.images.naturals",),
    "diversevis.prior": ("diversevis.images.prior",),
    "diversevis.zoo": ("diversevis.models.zoo",),
    "diversevis._vgg16_onnx": ("diversevis.models.vgg16_onnx",),
    "diversevis._efficientnet": ("diversevis.models.efficientnet",),
    "diversevis.synthetic": ("diversevis.models.synthetic",),
    "diversevis.dfv": ("diversevis.methods.dfv",),
    "diversevis.exemplars": ("diversevis.methods.exemplars",),
    "diversevis.shift": ("diversevis.methods.shift",),
    "diversevis.phase": ("diversevis.methods.phase",),
    "diversevis.invariance": ("diversevis.methods.baselines",),
    "diversevis.classic": ("diversevis.methods.classic",),
    "diversevis.classic.actmax": ("diversevis.methods.classic.actmax",),
    "diversevis.classic.deconvnet": ("diversevis.methods.classic.deconvnet",),
    "diversevis.classic.occlusion": ("diversevis.methods.classic.occlusion",),
    "diversevis.classic.multifaceted": ("diversevis.methods.classic.multifaceted",),
    "diversevis.classic.inversion": ("diversevis.methods.classic.inversion",),
    "diversevis.classic.dissection": ("diversevis.methods.classic.dissection",),
    "diversevis.classic.concepts": ("diversevis.methods.classic.concepts",),
    "diversevis.classic._photos": ("diversevis.images.photos",),
    "diversevis.classic.cli_actmax": ("diversevis.cli.actmax",),
    "diversevis.classic.cli_deconvnet": ("diversevis.cli.deconv",),
    "diversevis.classic.cli_occlusion": ("diversevis.cli.occlusion",),
    "diversevis.classic.cli_multifaceted": ("diversevis.cli.multifaceted",),
    "diversevis.classic.cli_inversion": ("diversevis.cli.invert",),
    "diversevis.classic.cli_dissection": ("diversevis.cli.dissect",),
    "diversevis.store": ("diversevis.study.store",),
    "diversevis.sweep": ("diversevis.study.sweep",),
    "diversevis.compare": ("diversevis.study.compare",),
    "diversevis.reproduce": ("diversevis.study.reproduce",),
    "diversevis.report": ("diversevis.study.report",),
    "diversevis.report.build": ("diversevis.study.report.build",),
}


def _merged(old: str, parts: tuple[str, ...]) -> types.ModuleType:
    """A module that re-exports the public and private names of every part (the first part wins)."""
    module = types.ModuleType(old, f"Deprecated alias of {', '.join(parts)}.")
    for name in reversed(parts):
        module.__dict__.update(
            {k: v for k, v in vars(importlib.import_module(name)).items() if not k.startswith("__")}
        )
    return module


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None  # default module; replaced in exec_module

    def exec_module(self, module) -> None:
        old = module.__name__
        parts = MOVED[old]
        warnings.warn(
            f"{old} has moved to {parts[0]}; the old path will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        real = importlib.import_module(parts[0]) if len(parts) == 1 else _merged(old, parts)
        # The import system returns sys.modules[old] after exec_module: hand it the real module.
        sys.modules[old] = real


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        is_pkg = fullname in ("diversevis.classic", "diversevis.report")
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(), is_package=is_pkg)


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
