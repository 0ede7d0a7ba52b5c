"""Build the static HTML report of a sweep store: data preparation, histograms and template rendering."""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import re
import struct
import textwrap
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from diversevis import __version__
from diversevis.core.cache import atomic_write_bytes, atomic_write_text, output_dir
from diversevis.core.errors import DiversevisError
from diversevis.study.store import Store

__all__ = ["write_report", "COLUMNS", "HISTOGRAMS"]

REPORT_DIR = "report"
HIST_SIZE = (3.1, 2.3)  # inches; drawn at HIST_DPI, shown at 100 dpi (sharp on high-density screens)
HIST_DPI = 150


@dataclass(frozen=True)
class Column:
    """A metric column of the units table."""

    key: str
    label: str
    help: str
    scale: float = 1.0  # displayed value = stored value * scale (orientation: radians -> degrees)


COLUMNS: tuple[Column, ...] = (
    Column("mei_activation", "MEI act.", "activation of the most exciting input"),
    Column(
        "di",
        "DI",
        "calibrated diversity index (pixels): 0 = a simple cell, 1 = a complex cell, same settings",
    ),
    Column("di_feature", "DI layer", "calibrated diversity index in the distance layer's features"),
    Column("dfv_mean_ratio", "DFV mean/MEI", "mean activation of the diverse set relative to the MEI"),
    Column("dfv_min_ratio", "DFV min/MEI", "weakest image of the diverse set relative to the MEI"),
    Column("dfv_min_distance", "DFV min dist.", "minimum pairwise RMS distance within the diverse set"),
    Column("dfv_mean_distance", "DFV mean dist.", "mean pairwise RMS distance within the diverse set"),
    Column("f1_f0", "F1/F0", "phase modulation of the grating response: < 1 complex-like, > 1 simple-like"),
    Column(
        "mei_f1_f0",
        "MEI F1/F0",
        "units gratings do not drive: F1/F0 over a phase cycle of the MEI's own pattern",
    ),
    Column("orientation", "orient. (°)", "preferred grating orientation in degrees", 180.0 / math.pi),
    Column("frequency", "freq. (c/px)", "preferred spatial frequency in cycles per pixel"),
    Column("shift_mean_ratio", "shift mean/MEI", "shift test: mean crop activation relative to the MEI"),
    Column("shift_min_ratio", "shift min/MEI", "shift test: worst crop activation relative to the MEI"),
    Column(
        "retention",
        "retention",
        "held-out check: mean fraction of the response to the top natural patches kept under sub-RF "
        "shifts, phase shifts, small rotations and elastic deformations (1 = all kept)",
    ),
    Column(
        "retention_phase",
        "retention phase",
        "held-out check: fraction kept when the phase of the patches' dominant grating moves "
        "(1 = phase invariant, < 0 = the response changes sign)",
    ),
)

# (metric, title, x-axis label, threshold line or None)
HISTOGRAMS: tuple[tuple[str, str, str, float | None], ...] = (
    ("di", "diversity index (pixels)", "DI: 0 = simple cell, 1 = complex cell", None),
    ("dfv_mean_ratio", "DFV mean activation / MEI", "mean activation of the diverse set / MEI", None),
    ("dfv_min_distance", "DFV min pairwise distance", "RMS distance (distance layer or pixels)", None),
    ("f1_f0", "F1/F0 (phase modulation), units gratings drive", "F1/F0", 1.0),
    ("shift_min_ratio", "shift test: worst crop / MEI", "worst crop activation / MEI", None),
)

# (sub-folder, file, caption): the PNGs a unit can have; _expected() picks those its record implies
_IMAGES: tuple[tuple[str, str, str], ...] = (
    ("mei", "grid.png", "MEI"),
    ("diverse", "grid.png", "diverse set"),
    ("phase", "phase.png", "phase test"),
    ("shift", "texture.png", "shift-test texture"),
    ("shift", "shift_map.png", "shift map"),
)


# ---------------------------------------------------------------------------------------------- views
@dataclass
class Image:
    """One PNG of a unit: its relative URL from the report pages, or ``None`` if the file is missing."""

    caption: str
    file: str  # e.g. "mei/grid.png", relative to the unit folder
    src: str | None
    pixelated: bool = True
    width: int | None = None
    height: int | None = None


@dataclass
class Cell:
    text: str
    sort: str  # data-sort value: the raw number, or "" when missing (always sorted last)


@dataclass
class UnitView:
    layer: str
    unit: int
    href: str  # unit page file name
    layer_href: str
    cells: dict[str, Cell]
    images: dict[str, Image]  # key "sub/file"
    missing: list[str]
    seconds: float | None
    finished: str
    metrics: dict[str, Any]
    spec_groups: list[tuple[str, list[tuple[str, str]]]]  # per analysis (mei, diverse, ...)
    metric_rows: list[tuple[str, str]]
    kind: str  # "complex-like" / "simple-like" / ""
    failed: str = ""  # why the sweep could not compute this unit (no files, no numbers)
    prev: UnitView | None = field(default=None, repr=False, compare=False)
    next: UnitView | None = field(default=None, repr=False, compare=False)

    def image(self, sub: str, file: str) -> Image | None:
        return self.images.get(f"{sub}/{file}")


@dataclass
class Histogram:
    metric: str
    title: str
    src: str
    n: int
    width: int = round(HIST_SIZE[0] * 100)
    height: int = round(HIST_SIZE[1] * 100)


@dataclass
class Validation:
    """The index page's held-out validation section (method.md E.3)."""

    sentence: str
    rows: list[dict[str, str]]  # validation.table: layer, score, retention, n, rho, p, expected, why
    scatter: Histogram | None
    skipped: int = 0  # units whose retention check ran but gave no number (reasons on their pages)


@dataclass
class LayerView:
    name: str
    href: str
    units: list[UnitView]
    histograms: list[Histogram] = field(default_factory=list)
    summary: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_missing(self) -> int:
        return sum(1 for u in self.units if u.missing)

    @property
    def n_failed(self) -> int:
        return sum(1 for u in self.units if u.failed)


# -------------------------------------------------------------------------------------------- helpers
def _num(v: Any) -> float | None:
    """A finite float, or ``None`` (missing, NaN, infinite, not a number)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}g}"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _fmt_value(v: Any) -> str:
    """A spec or setting value as short text."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return _fmt(v, 6) if math.isfinite(v) else str(v)
    if isinstance(v, (list, dict)):
        s = json.dumps(v)
        return s if len(s) <= 160 else s[:157] + "…"
    return str(v)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.extend(_flatten(v, key))
        else:
            out.append((key, _fmt_value(v)))
    return out


def _spec_groups(spec: Any) -> list[tuple[str, list[tuple[str, str]]]]:
    """A unit's run spec as (analysis, flattened key/value rows) groups."""
    if not isinstance(spec, dict):
        return []
    groups = [(str(k), _flatten(v)) for k, v in spec.items() if isinstance(v, dict)]
    loose = [(str(k), _fmt_value(v)) for k, v in spec.items() if not isinstance(v, dict)]
    return groups + ([("other", loose)] if loose else [])


def _url(target: Path, start: Path) -> str:
    """Relative URL of ``target`` from the directory ``start`` (never absolute)."""
    rel = os.path.relpath(target, start)
    return quote(Path(rel).as_posix())


def _slugs(layers: list[str]) -> dict[str, str]:
    """File-name-safe, unique slugs of layer names."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for layer in layers:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", layer).strip(".") or "layer"
        slug, i = base, 2
        while slug.lower() in used:
            slug, i = f"{base}-{i}", i + 1
        used.add(slug.lower())
        out[layer] = slug
    return out


def _png_size(path: Path) -> tuple[int, int] | None:
    """Width and height of a PNG from its header, or ``None`` if it is not a readable PNG."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", head[16:24])
    return (w, h) if w > 0 and h > 0 else None


def _expected(row: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The PNGs this unit's record says were written."""
    m, spec = row["metrics"], row["spec"]
    if "failed" in m:  # a unit the sweep could not compute has no files, by design
        return []
    need = {"mei": True}
    need["diverse"] = "diverse" in spec or "dfv_mean_ratio" in m
    need["phase"] = "f1_f0" in m
    need["shift"] = "shift_mean_ratio" in m or "shift_min_ratio" in m
    return [img for img in _IMAGES if need[img[0]]]


def _unit_images(row: dict[str, Any], folder: Path, out: Path) -> tuple[dict[str, Image], list[str]]:
    """The PNGs a unit's record implies, keyed ``sub/file``, and those missing or unreadable."""
    images: dict[str, Image] = {}
    missing: list[str] = []
    for sub, file, caption in _expected(row):
        path = folder / sub / file
        size = _png_size(path)  # a missing, empty or truncated file would be a broken <img>
        if size is None:
            missing.append(f"{sub}/{file}")
        images[f"{sub}/{file}"] = Image(
            caption,
            f"{sub}/{file}",
            None if size is None else _url(path, out),
            pixelated=file in ("grid.png", "texture.png"),  # upscaled pixel art, not plots
            width=size and size[0],
            height=size and size[1],
        )
    return images, missing


def _metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Every metric of a unit as (label, text); scaled columns also show the stored value."""
    known = {c.key: c for c in COLUMNS}
    metric_rows = []
    for k, v in metrics.items():
        col = known.get(k)
        label = f"{k} ({col.label})" if col else k
        x = _num(v)
        if col is not None and x is not None and col.scale != 1.0:
            metric_rows.append((label, f"{_fmt(x * col.scale, 6)} ({_fmt(x, 6)} rad)"))
        else:
            metric_rows.append((label, _fmt(x, 6) if x is not None else _fmt_value(v)))
    return metric_rows


def _png_check(folder: Path, row: dict[str, Any]) -> dict[str, Any]:
    """The diverse set as its PNG shows it (clipped to [0, 1], 8-bit; recorded in ``diverse/result.json``
    when the set was saved): ``png_min_ratio``, its lowest activation over the MEI's, and, in floor mode,
    ``png_below_floor``. ``{}`` when not recorded. The floor is checked on the optimised images; this
    says whether the pictures hold it too."""
    from diversevis.methods.floor import FLOOR_TOLERANCE

    mei = _num(row["metrics"].get("mei_activation"))
    try:
        shown = json.loads((folder / "diverse" / "result.json").read_text())["metrics"]["shown_activations"]
        acts = [float(a) for a in shown]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if mei is None or mei <= 0 or not acts or not all(math.isfinite(a) for a in acts):
        return {}
    out: dict[str, Any] = {"png_min_ratio": min(acts) / mei}
    floor = _num(((row.get("spec") or {}).get("diverse") or {}).get("floor"))
    if floor is not None:
        out["png_below_floor"] = out["png_min_ratio"] < floor - FLOOR_TOLERANCE
    return out


def _unit_view(row: dict[str, Any], store_root: Path, out: Path, href: str, layer_href: str) -> UnitView:
    images, missing = _unit_images(row, store_root / row["path"], out)
    metrics = {**row["metrics"], **_png_check(store_root / row["path"], row)}
    cells: dict[str, Cell] = {}
    for col in COLUMNS:
        v = _num(metrics.get(col.key))
        v = None if v is None else v * col.scale
        cells[col.key] = Cell(_fmt(v), "" if v is None else repr(v))
    kind = _phase_kind(metrics)
    seconds = _num(row.get("seconds"))
    return UnitView(
        layer=row["layer"],
        unit=int(row["unit"]),
        href=href,
        layer_href=layer_href,
        cells=cells,
        images=images,
        missing=missing,
        seconds=seconds,
        finished=str(row.get("finished") or ""),
        metrics=metrics,
        spec_groups=_spec_groups(row["spec"]),
        metric_rows=_metric_rows(metrics),
        kind=kind,
        failed=str(metrics.get("failed") or ""),
    )


def _phase_kind(metrics: dict[str, Any]) -> str:
    """The phase test's verdict: its label when the sweep stored one (``gratings do not drive this
    unit`` included), else (older stores) complex-like for F1/F0 < 1."""
    label = metrics.get("phase_label")
    if label:
        return "not driven by gratings" if "do not drive" in str(label) else str(label).split(" (")[0]
    f1f0 = _num(metrics.get("f1_f0"))
    return "" if f1f0 is None else ("complex-like" if f1f0 < 1 else "simple-like")


def _histogram_png(values: list[float], title: str, xlabel: str, threshold: float | None) -> bytes:
    """A small histogram (matplotlib, Agg canvas, no pyplot state)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    v = np.asarray(values, dtype=float)
    lo, hi = float(v.min()), float(v.max())
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi - lo < 1e-12:
        pad = max(abs(lo) * 0.05, 0.05)
        lo, hi = lo - pad, hi + pad
    bins = int(np.clip(2 * math.ceil(math.sqrt(v.size)), 5, 30))
    fig = Figure(figsize=HIST_SIZE, dpi=HIST_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist(v, bins=bins, range=(lo, hi), color="#4c72b0", edgecolor="white", linewidth=0.6)
    if threshold is not None:
        below, above = int((v < threshold).sum()), int((v >= threshold).sum())
        ax.axvline(threshold, color="#c44e52", linestyle="--", linewidth=1.5)
        xlabel = (
            f"{xlabel} (dashed: {threshold:g})\n{below} complex-like (< {threshold:g}), {above} simple-like"
        )
    ax.set_title(textwrap.fill(f"{title} (n={v.size})", 48), fontsize=9)  # long titles wrap, not clip
    ax.set_xlabel(xlabel, fontsize=7.5)
    ax.set_ylabel("units", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _layer_summary(units: list[UnitView]) -> list[tuple[str, str]]:
    import numpy as np

    labels = {c.key: c.label for c in COLUMNS}
    out = [("units", str(len(units)))]
    failed = sum(1 for u in units if u.failed)
    if failed:
        out.append(("failed (not computed)", f"{failed} of {len(units)}"))
    for key in (*(h[0] for h in HISTOGRAMS), "retention"):
        vals = [x for u in units if (x := _num(u.metrics.get(key))) is not None]
        if vals:
            out.append((f"median {labels[key]}", _fmt(float(np.median(vals)))))
    out.extend(_display_check(units))
    kinds = [u.kind for u in units if u.kind]
    driven = [k for k in kinds if k in ("complex-like", "simple-like")]
    if kinds:
        n = sum(k == "complex-like" for k in driven)
        out.append(("complex-like (F1/F0 < 1), of units gratings drive", f"{n} of {len(driven)}"))
        out.append(("not driven by gratings", f"{len(kinds) - len(driven)} of {len(kinds)}"))
    return out


def _display_check(units: list[UnitView]) -> list[tuple[str, str]]:
    """Floor-mode sets whose saved PNG falls below the floor (display clipping), as a summary fact."""
    import numpy as np

    checked = [u.metrics for u in units if "png_below_floor" in u.metrics]
    if not checked:
        return []
    below = sum(bool(m["png_below_floor"]) for m in checked)
    median = float(np.median([m["png_min_ratio"] for m in checked]))
    label = "PNG below the floor (clipped to [0, 1])"
    fix = "; sweep with --display-range to optimise inside [0, 1]" if below else ""
    return [(label, f"{below} of {len(checked)} (median PNG min ratio {_fmt(median, 3)}){fix}")]


# ---------------------------------------------------------------------------------------------- Jinja
def _environment():
    import jinja2

    templates = resources.files("diversevis.study.report").joinpath("templates")

    def load(name: str):
        res = templates.joinpath(name)
        if not res.is_file():
            return None
        return res.read_text(encoding="utf-8"), None, lambda: True

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(load),
        autoescape=True,  # the templates are *.html.j2: select_autoescape would not match them
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


# ------------------------------------------------------------------------------------------------ API
def write_report(store_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the static HTML report of a sweep store; return the path of its ``index.html``.

    Parameters
    ----------
    store_dir : str or Path
        A results directory written by :func:`diversevis.sweep.sweep` (``diversevis sweep --out DIR``), or a
        manifold or manifold-cluster folder (:mod:`diversevis.study.report.manifold`: its page goes inside
        it, ``DIR/index.html``, and ``out`` must be left out).
    out : str or Path, optional
        Report directory (default ``DIR/report``). Pages reference the store's PNGs by relative paths,
        so keep the report and the store where they are relative to each other.

    Returns
    -------
    Path
        ``OUT/index.html``. Also written: ``layer-<layer>.html``, ``unit-<layer>-u<unit>.html`` and
        ``hist/<layer>-<metric>.png``; every file atomically.

    Raises
    ------
    DiversevisError
        If ``store_dir`` is not a results directory or holds no finished unit.
    """
    root = Path(store_dir)
    if not root.exists():
        raise DiversevisError(f"{str(root)!r} does not exist; run `diversevis sweep --out DIR` first")
    from diversevis.study.report import manifold

    if manifold.is_manifold_folder(root):  # a manifold or manifold-cluster folder: its viewer page
        return manifold.write_manifold_report(root, out)
    with Store(root) as store:
        rows = [r for r in store.rows() if r["status"] == "done"]
        settings = store.get_meta("settings")
    if not rows:
        raise DiversevisError(
            f"{str(root)!r} holds no finished units yet; run (or resume) `diversevis sweep --out {root}` first"
        )
    root = root.resolve()
    dest = output_dir(root / REPORT_DIR if out is None else Path(out)).resolve()
    settings = settings if isinstance(settings, dict) else {}
    layers = _layer_views(rows, root, dest)
    context = _context(rows, settings, layers, root.name)
    context["validation"] = _validation(rows, dest)
    return _render_pages(dest, context, layers)


def _histogram_units(units: list[UnitView], key: str) -> list[UnitView]:
    """The units a histogram counts: for F1/F0, only those gratings drive (when the sweep labelled them)."""
    if key != "f1_f0" or not any(u.metrics.get("phase_label") for u in units):
        return units
    return [u for u in units if u.kind in ("complex-like", "simple-like")]


def _layer_views(rows: list[dict[str, Any]], root: Path, dest: Path) -> list[LayerView]:
    """One view per layer (in store order) with its units linked in order; writes its histograms."""
    layer_names = list(dict.fromkeys(r["layer"] for r in rows))
    slugs = _slugs(layer_names)
    layers: list[LayerView] = []
    for name in layer_names:
        lhref = f"layer-{slugs[name]}.html"
        units = [
            _unit_view(r, root, dest, f"unit-{slugs[name]}-u{int(r['unit'])}.html", lhref)
            for r in rows
            if r["layer"] == name
        ]
        for a, b in zip(units, units[1:]):
            a.next, b.prev = b, a
        layer = LayerView(name=name, href=lhref, units=units, summary=_layer_summary(units))
        for key, title, xlabel, threshold in HISTOGRAMS:
            vals = [x for u in _histogram_units(units, key) if (x := _num(u.metrics.get(key))) is not None]
            if not vals:
                continue
            png = dest / "hist" / f"{slugs[name]}-{key}.png"
            atomic_write_bytes(png, _histogram_png(vals, f"{name}: {title}", xlabel, threshold))
            layer.histograms.append(Histogram(key, title, _url(png, dest), len(vals)))
        layers.append(layer)
    return layers


def _validation(rows: list[dict[str, Any]], dest: Path) -> Validation | None:
    """The validation section, or ``None`` when no unit has retention metrics; writes its scatter plot."""
    from diversevis.study import validation as val

    skipped = len(val.skipped(rows))
    if not skipped and not any("retention" in r["metrics"] for r in rows):
        return None
    corr = val.correlations(rows)
    png, scatter = val.scatter_png(rows), None
    if png is not None:
        path = dest / "hist" / "validation-di-retention.png"
        atomic_write_bytes(path, png)
        n = sum(c.n for c in corr if (c.score, c.retention) == ("di", "retention"))
        w, h = (round(x * 100) for x in val.SCATTER_SIZE)
        scatter = Histogram("retention", "DI vs overall retention", _url(path, dest), n, w, h)
    return Validation(val.summary(corr), val.table(corr), scatter, skipped)


def _context(
    rows: list[dict[str, Any]], settings: dict[str, Any], layers: list[LayerView], store_name: str
) -> dict[str, Any]:
    """What every page's template sees: model, settings, layers, units, table columns and counts."""
    all_units = [u for layer in layers for u in layer.units]
    present = {c.key for c in COLUMNS if any(u.cells[c.key].sort for u in all_units)}
    columns = [c for c in COLUMNS if c.key in present]
    seconds = [u.seconds for u in all_units if u.seconds is not None]
    model = settings.get("model") or next(
        (r["spec"].get("mei", {}).get("model") for r in rows if isinstance(r["spec"], dict)), None
    )
    return {
        "version": __version__,
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model or "unknown model",
        "store_name": store_name,
        "settings": [(k, _fmt_value(v)) for k, v in settings.items()],
        "layers": layers,
        "all_units": all_units,
        "columns": columns,
        "has_kind": any(u.kind for u in all_units),
        "counts": {
            "layers": len(layers),
            "units": len(all_units),
            "missing": sum(1 for u in all_units if u.missing),
            "failed": sum(1 for u in all_units if u.failed),
            "compute": _duration(sum(seconds)) if seconds else None,
        },
    }


def _render_pages(dest: Path, context: dict[str, Any], layers: list[LayerView]) -> Path:
    """Write ``index.html``, one page per layer and one per unit; return the index."""
    env = _environment()
    index = dest / "index.html"
    atomic_write_text(index, env.get_template("index.html.j2").render(**context, page="index"))
    layer_tpl = env.get_template("layer.html.j2")
    unit_tpl = env.get_template("unit.html.j2")
    for layer in layers:
        atomic_write_text(dest / layer.href, layer_tpl.render(**context, page="layer", layer=layer))
        for u in layer.units:
            atomic_write_text(dest / u.href, unit_tpl.render(**context, page="unit", layer=layer, u=u))
    return index
