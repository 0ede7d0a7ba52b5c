"""Run specs: what every result carries so that it can be reproduced (software versions, a timestamp)."""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from typing import Any

import numpy as np
import torch

__all__ = ["versions", "common_spec"]


def versions() -> dict[str, str]:
    """Versions of the software that produced a result."""
    from diversevis import __version__

    return {
        "diversevis": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def common_spec(**kw: Any) -> dict[str, Any]:
    """``kw`` plus the software versions and the UTC creation time (ISO 8601, seconds)."""
    return {
        **kw,
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
