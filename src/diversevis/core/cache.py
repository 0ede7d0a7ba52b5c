"""Cache directory and atomic file writes.

Converted weights, normalised networks and natural-patch statistics are cached under
``$DIVERSEVIS_CACHE`` (default ``~/.cache/diversevis``). Every file is written atomically: to a temporary
file in the same directory, fsynced, then renamed over the target, so a crash never leaves a half-written
file behind.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """Return (and create) the cache directory: ``$DIVERSEVIS_CACHE`` or ``~/.cache/diversevis``."""
    root = os.environ.get("DIVERSEVIS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "diversevis"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_dir(path: str | os.PathLike) -> Path:
    """Create (if needed) and return an output directory; a clear user error if that is impossible."""
    from diversevis.core.errors import EnvironmentProblem

    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EnvironmentProblem(f"cannot create output directory {str(out)!r}: {e.strerror}") from e
    return out


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; give them normal permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def atomic_save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` ``obj`` (tensors, dicts of tensors) to ``path`` atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for numpy and torch values and paths."""
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        if isinstance(o, torch.Tensor):
            return o.detach().cpu().tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def weights_only_plain(obj: Any) -> Any:
    """``obj`` as types ``torch.load(weights_only=True)`` accepts: dict, list, str, int, float, bool, None.

    Tuples become lists, numpy and other numeric scalars Python numbers, and any other object its text
    (e.g. ``torch.__version__``, a str subclass).
    """
    import numbers
    from collections.abc import Mapping

    import numpy as np

    if isinstance(obj, Mapping):
        return {str(k): weights_only_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [weights_only_plain(v) for v in obj]
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    if isinstance(obj, np.bool_):  # Python bools are handled above
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    return str(obj)


def read_torch_record(path: str | os.PathLike, fmt: str, version: int, what: str) -> dict[str, Any]:
    """A dict saved with :func:`atomic_save_torch`, read with ``weights_only=True``, whose ``format`` is
    ``fmt`` and ``version`` is ``version`` (a :class:`DiversevisError` naming the file otherwise).

    ``what`` names the kind of file in the messages (``"prior"``, ``"generator"``).
    """
    import torch

    from diversevis.core.errors import DiversevisError

    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DiversevisError(f"cannot read {what} file {str(path)!r}: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise DiversevisError(f"{str(path)!r} is not a diversevis {what} file")
    if record.get("version") != version:
        raise DiversevisError(
            f"{what} file {str(path)!r} has format version {record.get('version')}, expected {version}"
        )
    return record
