"""The package layout: arrows point down only, and the old import paths still work for one release."""

from __future__ import annotations

import ast
import importlib
import re
import sys
import warnings
from pathlib import Path

import pytest

import diversevis
from diversevis import _compat

SRC = Path(diversevis.__file__).parent

#: Layers from the bottom up; a module may import its own layer or a lower one, never a higher one.
LAYERS = ("core", "images", "models", "methods", "study", "cli")


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "diversevis" and parts[1] in LAYERS else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (top level and inside functions), as absolute names."""
    package = ".".join(("diversevis", *path.relative_to(SRC).parent.parts))
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{a.name}") for a in node.names]
    return found


def layering_violations() -> list[str]:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        own = _layer_of(".".join(("diversevis", *path.relative_to(SRC).parts)))
        if own is None:
            continue  # diversevis/__init__.py, __main__.py and _compat.py assemble the layers
        for line, name in _imports(path):
            other = _layer_of(name)
            if other is not None and LAYERS.index(other) > LAYERS.index(own):
                problems.append(f"{path.relative_to(SRC)}:{line} ({own}) imports {name} ({other})")
    return problems


def test_no_layer_imports_a_higher_layer():
    assert layering_violations() == []


def test_layering_check_sees_an_upward_import_inside_a_function(tmp_path, monkeypatch):
    fake = tmp_path / "diversevis"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "bad.py").write_text("def f():\n    from diversevis.models.zoo import load_model\n")
    (fake / "core" / "rel.py").write_text("from ..study import sweep\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert layering_violations() == [
        "core/bad.py:2 (core) imports diversevis.models.zoo (models)",
        "core/bad.py:2 (core) imports diversevis.models.zoo.load_model (models)",
        "core/rel.py:1 (core) imports diversevis.study (study)",
        "core/rel.py:1 (core) imports diversevis.study.sweep (study)",
    ]


@pytest.mark.parametrize("old", sorted(_compat.MOVED))
def test_old_import_path_still_works_with_a_deprecation_warning(old):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert any(issubclass(w.category, DeprecationWarning) and old in str(w.message) for w in caught)
    new = importlib.import_module(_compat.MOVED[old][0])
    public = [n for n in vars(new) if not n.startswith("__")]
    assert all(getattr(module, n) is getattr(new, n) for n in public)


def test_old_path_is_the_same_module_object_so_monkeypatching_reaches_the_code():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import diversevis.dfv as old
    from diversevis.methods import dfv

    assert old is dfv


def test_split_module_old_path_reexports_every_part():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from diversevis.params import PixelImage, natural_color_matrix
    from diversevis.core.params import PixelImage as new_pixel
    from diversevis.images.color import natural_color_matrix as new_color

    assert PixelImage is new_pixel and natural_color_matrix is new_color


def test_old_submodule_as_package_attribute():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = diversevis.sweep
    from diversevis.study import sweep

    assert old is sweep


def test_architecture_doc_names_every_module():
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    missing = [
        str(p.relative_to(SRC))
        for p in sorted(SRC.rglob("*.py"))
        if p.parent != SRC
        and p.name not in ("__init__.py", "__main__.py")
        and not re.search(rf"(?<!\w){re.escape(p.name)}`", doc)
    ]
    assert missing == [], "docs/architecture.md should say what these modules are for"
