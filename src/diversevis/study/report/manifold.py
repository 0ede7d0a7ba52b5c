"""The manifold viewer: a static page per invariance manifold and one per manifold cluster.

:func:`write_manifold_page` reads a unit's manifold folder (``ManifoldResult.save``: ``manifold.json``, the
frames, contact sheet and animation) and writes ``index.html`` beside it: the unit, the summary numbers, a
latent slider (1-D) or a 2-D latent pad that swaps the precomputed frames and shows each frame's latent,
activation and ratio to the MEI, the ratio plotted against the latent (inline SVG), the contact sheet, the
animation and the run spec. :func:`write_cluster_page` reads a ``diversevis manifold-cluster`` folder
(``manifold_cluster.json``, ``similarity.png``, the cluster galleries and a manifold folder per unit) and
writes its ``index.html`` (similarity heat map and matrix, one section per cluster with its gallery and
members) and every member's page. Pages reference the files by relative paths, run a few lines of inline
vanilla JavaScript and open from ``file://`` offline.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diversevis import __version__
from diversevis.core.cache import atomic_write_text
from diversevis.core.errors import DiversevisError
from diversevis.study.report import build
from diversevis.study.report.manifold_svg import ratio_colour, ratio_line_svg, ratio_pad_svg

__all__ = [
    "MANIFOLD_JSON",
    "CLUSTER_JSON",
    "write_manifold_page",
    "write_cluster_page",
    "write_manifold_report",
    "is_manifold_folder",
]

MANIFOLD_JSON = "manifold.json"
CLUSTER_JSON = "manifold_cluster.json"
PAGE = "index.html"
_NEEDED = ("dim", "per_dim", "latents", "ratios", "activations", "frames")


@dataclass
class Frame:
    """One grid latent of a manifold: its image and numbers, as the page shows them."""

    index: int
    src: str | None  # relative URL, None when the PNG is missing or unreadable
    file: str
    latent: str  # e.g. "0.25" or "(0.25, 0.5)"
    ratio: float | None
    ratio_text: str
    activation_text: str
    below: bool  # under the floor

    def data(self) -> dict[str, Any]:
        """What the page's script needs about this frame."""
        return {
            "src": self.src or "",
            "z": self.latent,
            "ratio": self.ratio_text,
            "act": self.activation_text,
            "below": self.below,
        }


@dataclass
class Member:
    """A unit of a cluster: its manifold folder, page link and summary numbers."""

    unit: int
    cluster: int
    href: str | None  # the unit's page relative to the cluster page; None when its manifold is missing
    folder: str
    thumb: build.Image | None
    facts: list[tuple[str, str]]


# -------------------------------------------------------------------------------------------- reading
def is_manifold_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a manifold (``manifold.json``) or a manifold cluster (``manifold_cluster.json``)."""
    p = Path(folder)
    return (p / MANIFOLD_JSON).is_file() or (p / CLUSTER_JSON).is_file()


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or a clear user error."""
    if not path.is_file():
        raise DiversevisError(f"{str(path)!r} does not exist; is {str(path.parent)!r} the right folder?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiversevisError(f"cannot read {str(path)!r}: {e}; write the folder again") from e
    if not isinstance(data, dict):
        raise DiversevisError(f"{str(path)!r} is not a JSON object; write the folder again")
    return data


def _read_manifold(folder: Path) -> dict[str, Any]:
    """``manifold.json`` of ``folder``, checked for what the page needs."""
    rec = _read_json(folder / MANIFOLD_JSON)
    missing = [k for k in _NEEDED if k not in rec]
    if missing:
        raise DiversevisError(
            f"{str(folder / MANIFOLD_JSON)!r} lacks {', '.join(missing)}; not a manifold folder"
        )
    n = len(rec["frames"])
    if (
        rec["dim"] not in (1, 2)
        or n != int(rec["per_dim"]) ** int(rec["dim"])
        or not (len(rec["latents"]) == len(rec["ratios"]) == len(rec["activations"]) == n)
    ):
        raise DiversevisError(
            f"{str(folder / MANIFOLD_JSON)!r}: dim {rec['dim']!r}, per_dim {rec['per_dim']!r} and {n} frames, "
            f"{len(rec['latents'])} latents, {len(rec['ratios'])} ratios, {len(rec['activations'])} activations "
            "do not match; write the folder again"
        )
    return rec


def _image_size(path: Path) -> tuple[int, int] | None:
    """Width and height of a PNG or GIF from its header, or ``None`` if unreadable."""
    if path.suffix.lower() != ".gif":
        return build._png_size(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(10)
    except OSError:
        return None
    if len(head) < 10 or head[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    w, h = struct.unpack("<HH", head[6:10])
    return (w, h) if w > 0 and h > 0 else None


def _image(
    folder: Path, file: Any, caption: str, page_dir: Path, pixelated: bool = True
) -> build.Image | None:
    """A file of the folder as a report image (``src`` None when missing); None when no file is named."""
    if not isinstance(file, str) or not file:
        return None
    path = folder / file
    size = _image_size(path)
    shown = None if size is None else _shown_size(size) if pixelated else size
    return build.Image(
        caption,
        file,
        None if size is None else build._url(path, page_dir),
        pixelated,
        shown and shown[0],
        shown and shown[1],
    )


def _shown_size(size: tuple[int, int], height: int = 128, max_width: int = 1100) -> tuple[int, int]:
    """The on-page size of a small pixel image: scaled up by a whole factor to about ``height`` pixels,
    never wider than ``max_width`` (never scaled down)."""
    w, h = size
    s = max(1, round(height / h))
    while s > 1 and w * s > max_width:
        s -= 1
    return w * s, h * s


# ------------------------------------------------------------------------------------------- one unit
def _latent_text(z: Any) -> str:
    vals = [build._fmt(build._num(x), 4) for x in (z if isinstance(z, (list, tuple)) else [z])]
    return vals[0] if len(vals) == 1 else "(" + ", ".join(vals) + ")"


def _frames(rec: dict[str, Any], folder: Path) -> list[Frame]:
    """The grid latents in frame order (row-major for dim 2)."""
    floor = build._num(rec.get("floor"))
    out = []
    for k, (file, z, r, a) in enumerate(
        zip(rec["frames"], rec["latents"], rec["ratios"], rec["activations"])
    ):
        img = _image(folder, str(file), f"frame {k}", folder)
        ratio = build._num(r)
        out.append(
            Frame(
                k,
                img.src if img else None,
                str(file),
                _latent_text(z),
                ratio,
                build._fmt(ratio),
                build._fmt(build._num(a)),
                floor is not None and ratio is not None and ratio < floor,
            )
        )
    return out


def _summary(rec: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The headline numbers as (key, label, text, raw value) rows."""
    rows: list[tuple[str, str, str, str]] = []
    for key, label in (
        ("mean_ratio", "mean / MEI"),
        ("min_ratio", "min / MEI"),
        ("di", "DI (grid)"),
        ("mei_activation", "MEI activation"),
        ("floor", "floor (min / MEI)"),
        ("mean_floor", "mean floor"),
        ("seconds", "seconds"),
    ):
        v = build._num(rec.get(key))
        rows.append((key, label, build._fmt(v), "" if v is None else repr(v)))
    holds = rec.get("floor_holds")
    rows.append(
        ("floor_holds", "floor holds", "–" if holds is None else ("yes" if holds else "no"), str(holds))
    )
    return rows


def _plot(rec: dict[str, Any], frames: list[Frame]):
    """The ratio-vs-latent SVG: a line for dim 1, the coloured latent pad for dim 2."""
    ratios = [f.ratio if f.ratio is not None else math.nan for f in frames]
    titles = [f"frame {f.index}: z = {f.latent}, ratio {f.ratio_text}" for f in frames]
    floor, mean_floor = build._num(rec.get("floor")), build._num(rec.get("mean_floor"))
    finite = [r if math.isfinite(r) else 0.0 for r in ratios]
    if int(rec["dim"]) == 1:
        zs = [build._num(z[0] if isinstance(z, (list, tuple)) else z) or 0.0 for z in rec["latents"]]
        return ratio_line_svg(zs, finite, titles, floor, mean_floor)
    return ratio_pad_svg(int(rec["per_dim"]), finite, titles, floor)


def _cluster_of(folder: Path) -> dict[str, Any] | None:
    """The cluster a unit's manifold folder belongs to (its parent holds ``manifold_cluster.json`` naming it):
    the link back, the unit's cluster, its most similar units and the previous/next unit of the layer."""
    parent = folder.parent
    if not (parent / CLUSTER_JSON).is_file():
        return None
    try:
        cl = _read_json(parent / CLUSTER_JSON)
    except DiversevisError:
        return None
    dirs = {str(d): int(u) for u, d in (cl.get("unit_dirs") or {}).items()}
    units, labels = [int(u) for u in cl.get("units", [])], cl.get("labels") or []
    if folder.name not in dirs or dirs[folder.name] not in units:
        return None
    i = units.index(dirs[folder.name])
    inv = {u: d for d, u in dirs.items()}

    def href(u: int) -> str:  # a member's page, or "" when it has no manifold (so no page)
        return f"../{inv[u]}/{PAGE}" if u in inv and (parent / inv[u] / MANIFOLD_JSON).is_file() else ""

    sym = cl.get("symmetric") or cl.get("similarity") or []
    row = sym[i] if i < len(sym) else []
    others = sorted(((v, u) for u, v in zip(units, row) if u != units[i] and build._num(v) is not None))
    linked = [u for u in units if href(u)]
    pos = linked.index(units[i]) if units[i] in linked else None
    return {
        "href": f"../{PAGE}",
        "cluster": labels[i] if i < len(labels) else None,
        "n_clusters": cl.get("n_clusters"),
        "near": [(f"unit {u}", href(u), build._fmt(v, 3)) for v, u in others[::-1][:5]],
        "layer": cl.get("layer"),
        "prev": None if not pos else (linked[pos - 1], href(linked[pos - 1])),
        "next": None if pos is None or pos + 1 >= len(linked) else (linked[pos + 1], href(linked[pos + 1])),
    }


def _manifold_context(folder: Path) -> dict[str, Any]:
    rec = _read_manifold(folder)
    spec = rec.get("spec") if isinstance(rec.get("spec"), dict) else {}
    frames = _frames(rec, folder)
    images = [
        _image(folder, rec.get("contact_sheet"), "contact sheet: every grid latent", folder, pixelated=False),
        _image(folder, rec.get("animation"), "a loop through the latent", folder),
    ]
    files = [
        (f, build._url(folder / f, folder))
        for f in (MANIFOLD_JSON, rec.get("generator"), "images.npz")
        if isinstance(f, str) and (folder / f).is_file()
    ]
    return {
        **_common(str(spec.get("model") or "unknown model"), folder.name),
        "layer": str(spec.get("layer", "?")),
        "unit": spec.get("unit", "?"),
        "dim": int(rec["dim"]),
        "per_dim": int(rec["per_dim"]),
        "frames": frames,
        "frames_data": [f.data() for f in frames],
        "missing": [f.file for f in frames if f.src is None],
        "summary": _summary(rec),
        "floor_holds": rec.get("floor_holds"),
        "floor_failure": str(spec.get("floor_failure") or ""),
        "plot": _plot(rec, frames),
        "images": [i for i in images if i is not None],
        "files": files,
        "spec_rows": build._flatten(spec),
        "cluster": _cluster_of(folder),
    }


def _common(model: str, source: str) -> dict[str, Any]:
    """What ``base.html.j2`` needs on every page."""
    return {
        "version": __version__,
        "model": model,
        "store_name": source,
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_manifold_page(manifold_dir: str | os.PathLike) -> Path:
    """Write the viewer page of one unit's invariance manifold; return its path.

    Parameters
    ----------
    manifold_dir : str or Path
        A folder written by ``ManifoldResult.save`` (``diversevis manifold --out DIR``).

    Returns
    -------
    Path
        ``manifold_dir/index.html`` (written atomically). It references the folder's frames, contact sheet
        and animation by relative paths; when the folder is a member of a ``manifold-cluster`` folder the
        page links back to the cluster page and to the most similar units.

    Raises
    ------
    DiversevisError
        If the folder has no readable ``manifold.json`` or its lists do not match.
    """
    folder = Path(manifold_dir).resolve()
    context = _manifold_context(folder)
    html = build._environment().get_template("manifold.html.j2").render(**context, page="manifold")
    return atomic_write_text(folder / PAGE, html)


# --------------------------------------------------------------------------------------------- cluster
def _member(cl_dir: Path, unit: int, cluster: int, sub: str | None) -> Member:
    """A cluster member's card: link and numbers from its manifold folder, if present."""
    folder = cl_dir / sub if sub else None
    if folder is None or not (folder / MANIFOLD_JSON).is_file():
        return Member(unit, cluster, None, sub or f"u{unit}", None, [])
    rec = _read_manifold(folder)
    first = rec["frames"][0] if rec["frames"] else None
    thumb = _image(folder, first, f"unit {unit}, frame 0", cl_dir)
    facts = [
        (label, text)
        for key, label, text, _ in _summary(rec)
        if key in ("mean_ratio", "min_ratio", "di", "floor_holds")
    ]
    return Member(unit, cluster, build._url(folder / PAGE, cl_dir), sub or "", thumb, facts)


def _matrix(cl: dict[str, Any], units: list[int]) -> list[tuple[int, list[tuple[str, str]]]]:
    """The similarity matrix as rows of (unit, [(text, background colour)])."""
    rows = []
    for u, row in zip(units, cl.get("similarity") or []):
        cells = []
        for v in row:
            x = build._num(v)
            cells.append((build._fmt(x, 3), "" if x is None else ratio_colour(x, 0.0, 1.0)))
        rows.append((u, cells))
    return rows


def _cluster_context(cl_dir: Path) -> dict[str, Any]:
    cl = _read_json(cl_dir / CLUSTER_JSON)
    units = [int(u) for u in cl.get("units") or []]
    labels = [int(k) for k in cl.get("labels") or []]
    if not units or len(labels) != len(units):
        raise DiversevisError(f"{str(cl_dir / CLUSTER_JSON)!r}: {len(units)} units but {len(labels)} labels")
    dirs = {str(u): str(d) for u, d in (cl.get("unit_dirs") or {}).items()}
    galleries = list(cl.get("galleries") or [])
    clusters = []
    for k in sorted(set(labels)):
        members = [_member(cl_dir, u, k, dirs.get(str(u))) for u, lab in zip(units, labels) if lab == k]
        gallery = _image(
            cl_dir, galleries[k] if k < len(galleries) else None, f"cluster {k}", cl_dir, pixelated=False
        )
        clusters.append({"k": k, "members": members, "gallery": gallery})
    stats = [
        ("units", str(len(units))),
        ("clusters", str(cl.get("n_clusters", len(clusters)))),
        ("silhouette", build._fmt(build._num(cl.get("silhouette")), 3)),
        ("seconds", build._fmt(build._num(cl.get("seconds")))),
    ]
    return {
        **_common(str(cl.get("model") or "unknown model"), cl_dir.name),
        "layer": str(cl.get("layer", "?")),
        "stats": stats,
        "clusters": clusters,
        "units": units,
        "heatmap": _image(
            cl_dir,
            cl.get("heatmap") or "similarity.png",
            "similarity: ratio unit b reaches on unit a's aligned manifold",
            cl_dir,
            pixelated=False,
        ),
        "matrix": _matrix(cl, units),
        "spec_rows": build._flatten(cl.get("spec") or {}),
    }


def write_cluster_page(cluster_dir: str | os.PathLike) -> Path:
    """Write the page of a manifold cluster folder and the page of each member unit; return its path.

    Parameters
    ----------
    cluster_dir : str or Path
        A folder written by ``diversevis manifold-cluster --out DIR``.

    Returns
    -------
    Path
        ``cluster_dir/index.html``: the similarity heat map and matrix, then one section per cluster with
        its gallery and links to its members' pages (``cluster_dir/u{unit}/index.html``, written too).

    Raises
    ------
    DiversevisError
        If ``manifold_cluster.json`` is missing or unreadable, or a member's ``manifold.json`` is malformed.
    """
    folder = Path(cluster_dir).resolve()
    context = _cluster_context(folder)
    for c in context["clusters"]:
        for m in c["members"]:
            if m.href is not None:
                write_manifold_page(folder / m.folder)
    html = build._environment().get_template("manifold_cluster.html.j2").render(**context, page="cluster")
    return atomic_write_text(folder / PAGE, html)


def write_manifold_report(folder: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """``diversevis report`` on a manifold or manifold-cluster folder: the page goes inside the folder.

    Raises
    ------
    DiversevisError
        If ``out`` names another place (the pages reference the folder's files from inside it).
    """
    root = Path(folder).resolve()
    if out is not None and Path(out).resolve() != root:
        raise DiversevisError(
            f"a manifold page is written inside its folder ({root / PAGE}); drop --out {out}"
        )
    if (root / CLUSTER_JSON).is_file():
        return write_cluster_page(root)
    return write_manifold_page(root)
