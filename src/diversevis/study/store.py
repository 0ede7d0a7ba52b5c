"""Resumable results store of a sweep: an SQLite index plus per-unit result folders.

Layout of a store directory::

    DIR/index.sqlite            one row per (layer, unit): status, metrics, run spec (WAL journal)
    DIR/<layer>/u<unit>/...     the unit's result folders (diverse/, mei/, phase/, shift/), files written atomically

A unit is recorded as ``done`` only after all its files are written, in one transaction, so a sweep
killed at any moment leaves finished units intact and unfinished ones absent from the index: the next run
recomputes exactly those, and ``(layer, unit)`` is the primary key, so no unit is ever recorded twice.

Only one process writes the index (the sweep's driver); the per-unit folders may be written by other
processes (Ray workers), which find them with :func:`unit_dir` without opening the index.
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diversevis.core.cache import json_default
from diversevis.core.errors import DiversevisError

__all__ = ["Store", "INDEX_NAME", "unit_dir"]

INDEX_NAME = "index.sqlite"
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS units (
    layer TEXT NOT NULL,
    unit INTEGER NOT NULL,
    status TEXT NOT NULL,
    metrics TEXT NOT NULL,
    spec TEXT NOT NULL,
    path TEXT NOT NULL,
    seconds REAL,
    finished TEXT NOT NULL,
    PRIMARY KEY (layer, unit)
);
"""


def unit_dir(root: str | Path, layer: str, unit: int) -> Path:
    """Folder of one unit's result files in the store at ``root`` (no index needed: for workers).

    Parameters
    ----------
    root : str or Path
        The store directory.
    layer : str
        The layer's display name (as the store records it).
    unit : int

    Returns
    -------
    Path
        ``root/<layer>/u<unit>``.
    """
    return Path(root) / layer / f"u{int(unit)}"


class Store:
    """A sweep's results directory.

    Parameters
    ----------
    root : str or Path
        The directory. ``create=True`` makes it (and the index) if needed; otherwise it must hold a store.
    create : bool
        Create a new store if none exists.

    Raises
    ------
    DiversevisError
        If ``root`` is a file, a non-empty directory that is not a store, or holds a corrupt index.
    """

    def __init__(self, root: str | Path, *, create: bool = False) -> None:
        self.root = Path(root)
        index = self.root / INDEX_NAME
        if self.root.exists() and not self.root.is_dir():
            raise DiversevisError(f"{str(self.root)!r} is a file, not a results directory")
        if not index.is_file():
            if not create:
                raise DiversevisError(
                    f"{str(self.root)!r} is not a diversevis results directory (no {INDEX_NAME}); "
                    "run `diversevis sweep --out DIR` first"
                )
            if self.root.is_dir() and any(p.name != ".DS_Store" for p in self.root.iterdir()):
                raise DiversevisError(
                    f"{str(self.root)!r} already contains files but no {INDEX_NAME}; choose an empty or new --out"
                )
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(index, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            version = self.get_meta("schema_version")
            if version is None:
                self.set_meta("schema_version", SCHEMA_VERSION)
            elif version != SCHEMA_VERSION:
                raise DiversevisError(
                    f"{str(index)!r} has schema version {version}, this diversevis reads {SCHEMA_VERSION}"
                )
        except sqlite3.DatabaseError as e:
            raise DiversevisError(f"{str(index)!r} is not a readable results index ({e})") from e

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str) -> Any:
        """A stored setting (JSON-decoded), or ``None``."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except (TypeError, ValueError) as e:
            raise DiversevisError(
                f"{str(self.root)!r}: the stored {key!r} is corrupt ({e}); start the sweep in a new --out"
            ) from None

    def set_meta(self, key: str, value: Any) -> None:
        """Store a setting (JSON-encoded)."""
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
            )

    # ----------------------------------------------------------------- units
    def unit_dir(self, layer: str, unit: int) -> Path:
        """Folder of one unit's result files."""
        return unit_dir(self.root, layer, unit)

    def done(self, layer: str) -> set[int]:
        """Units of ``layer`` recorded as done."""
        rows = self._db.execute("SELECT unit FROM units WHERE layer = ? AND status = 'done'", (layer,))
        return {int(r[0]) for r in rows}

    def record(
        self,
        layer: str,
        unit: int,
        metrics: dict[str, Any],
        spec: dict[str, Any],
        seconds: float | None = None,
    ) -> None:
        """Mark a unit done (call after all its files are written). Replaces an earlier record (``--force``)."""
        self.record_many([(layer, unit, metrics, spec, seconds)])

    def record_many(self, rows: list[tuple[str, int, dict[str, Any], dict[str, Any], float | None]]) -> None:
        """:meth:`record` several ``(layer, unit, metrics, spec, seconds)`` rows in one transaction."""
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        values = [
            (
                layer,
                int(unit),
                json.dumps(metrics, default=json_default),
                json.dumps(spec, default=json_default),
                str(self.unit_dir(layer, unit).relative_to(self.root)),
                seconds,
                now,
            )
            for layer, unit, metrics, spec, seconds in rows
        ]
        with self._tx():
            self._db.executemany(
                "INSERT OR REPLACE INTO units (layer, unit, status, metrics, spec, path, seconds, finished) "
                "VALUES (?, ?, 'done', ?, ?, ?, ?, ?)",
                values,
            )

    def forget(self, layer: str, units: list[int] | None = None) -> None:
        """Remove records (all of a layer, or the given units), e.g. before recomputing with ``--force``."""
        with self._tx():
            if units is None:
                self._db.execute("DELETE FROM units WHERE layer = ?", (layer,))
            else:
                self._db.executemany(
                    "DELETE FROM units WHERE layer = ? AND unit = ?", [(layer, int(u)) for u in units]
                )

    def rows(self, layer: str | None = None) -> list[dict[str, Any]]:
        """All recorded units (optionally of one layer), with decoded metrics and specs, ordered by layer and unit."""
        q = "SELECT layer, unit, status, metrics, spec, path, seconds, finished FROM units"
        args: tuple = ()
        if layer is not None:
            q += " WHERE layer = ?"
            args = (layer,)
        out = []
        for r in self._db.execute(q + " ORDER BY layer, unit", args):
            metrics, spec = _decoded(r[3]), _decoded(r[4])
            if metrics is _CORRUPT or spec is _CORRUPT:
                raise DiversevisError(
                    f"{str(self.root)!r}: the index row of {r[0]} unit {r[1]} is corrupt (not valid JSON); "
                    "rerun the sweep with --repair to recompute such units"
                )
            out.append(
                {
                    "layer": r[0],
                    "unit": r[1],
                    "status": r[2],
                    "metrics": metrics,
                    "spec": spec,
                    "path": r[5],
                    "seconds": r[6],
                    "finished": r[7],
                }
            )
        return out

    def repair(self) -> list[tuple[str, int]]:
        """Forget the units whose index rows do not decode (so a sweep recomputes them); returns them."""
        bad = [
            (layer, int(unit))
            for layer, unit, metrics, spec in self._db.execute("SELECT layer, unit, metrics, spec FROM units")
            if _decoded(metrics) is _CORRUPT or _decoded(spec) is _CORRUPT
        ]
        for layer, unit in bad:
            self.forget(layer, [unit])
        return bad

    def layers(self) -> list[str]:
        """Layers with at least one recorded unit."""
        return [r[0] for r in self._db.execute("SELECT DISTINCT layer FROM units ORDER BY layer")]

    def close(self) -> None:
        """Close the index."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        try:
            with self._db:
                yield
        except sqlite3.DatabaseError as e:
            raise DiversevisError(f"results index {str(self.root / INDEX_NAME)!r}: {e}") from e


_CORRUPT = object()


def _decoded(text: Any) -> Any:
    """JSON-decoded ``text``, or :data:`_CORRUPT` when it is not valid JSON."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return _CORRUPT
