"""One chunk of a sweep: its units' MEIs and diverse sets in one batch each, then every unit's files.

Shared by both backends of :func:`diversevis.study.sweep.sweep`: the local one calls :func:`_run_chunk`
in this process, a Ray worker calls it in its own and sends the rows back to the driver.

A unit whose optimisation goes non-finite (:class:`~diversevis.core.optimize.NonFiniteError`, e.g. a
channel whose activation overflows) stops its whole batch; the chunk is then rerun unit by unit (a
group's trajectory does not depend on the others in its batch), and each unit that fails alone is
recorded with ``failed: <reason>`` in its metrics and spec and no files. Such a record counts as done:
a resumed sweep skips it (rerunning would fail the same way; ``--force`` retries it).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.optimize import NonFiniteError
from diversevis.methods.dfv_units import run_diverse_units, run_mei_units
from diversevis.study.store import unit_dir
from diversevis.study.sweep_settings import SweepSettings

#: One chunk of the plan: (layer, display name, distance layer, units).
Task = tuple[str, str, str | None, list[int]]

#: A unit's index row: (layer display name, unit, metrics, spec, seconds).
Row = tuple[str, int, dict[str, Any], dict[str, Any], float]


def _run_chunk(
    net: Network,
    root: str | Path,
    layer: str,
    name: str,
    chunk: list[int],
    dl: str | None,
    settings: SweepSettings,
    *,
    run: dict[str, Any],
    on_unit: Callable[[Row], None],
) -> None:
    """Optimise one chunk, write each unit's folder, then hand its index row to ``on_unit``.

    A chunk that goes non-finite is rerun unit by unit; a unit that fails alone is handed over as
    failed (module docstring).
    """
    t0 = time.perf_counter()
    where = {**run, "pid": os.getpid(), "host": socket.gethostname(), "chunk": list(chunk)}
    try:
        meis = run_mei_units(net, layer, chunk, settings.mei_settings())
        divs = [None] * len(chunk)
        if "dfv" in settings.tests:
            divs = run_diverse_units(net, layer, chunk, settings.diverse_settings(dl), mei=meis)
    except NonFiniteError as e:
        if len(chunk) > 1:
            for u in chunk:
                _run_chunk(net, root, layer, name, [u], dl, settings, run=run, on_unit=on_unit)
            return
        on_unit((name, chunk[0], *_failed(e, where), time.perf_counter() - t0))
        return
    per_unit = (time.perf_counter() - t0) / len(chunk)
    for u, m, d in zip(chunk, meis, divs):
        t1 = time.perf_counter()
        try:
            metrics, spec = _save_unit(net, unit_dir(root, name, u), layer, u, m, d, settings, where)
        except NonFiniteError as e:  # the phase or shift test of a unit whose MEI was finite
            metrics, spec = _failed(e, where)
        on_unit((name, u, metrics, spec, per_unit + time.perf_counter() - t1))


def _failed(error: Exception, where: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metrics and spec of a unit that failed with ``error``."""
    return {"failed": str(error)}, {"failed": str(error), "sweep": where}


def _save_unit(
    net: Network,
    folder: Path,
    layer: str,
    u: int,
    m,
    d,
    settings: SweepSettings,
    where: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write one unit's MEI and diverse set, run its phase, shift and retention tests; return its metrics
    and spec."""
    m.save(folder / "mei")
    metrics: dict[str, Any] = {"mei_activation": m.mei_activation}
    spec: dict[str, Any] = {"mei": m.spec, "sweep": where}
    # A unit that no image drives above zero has no meaningful ratios to its MEI: its folder and MEI
    # are kept, it is flagged, and the tests that divide by the MEI are skipped.
    responsive = m.mei_activation is not None and m.mei_activation > 0
    if not responsive:
        metrics["unresponsive"] = True
    if d is not None:
        d.save(folder / "diverse")
        dm = d.metrics()
        metrics.update(dfv_min_distance=dm["min_distance"], dfv_mean_distance=dm["mean_distance"])
        if responsive:
            metrics.update(dfv_mean_ratio=dm["mean_ratio"], dfv_min_ratio=dm["min_ratio"])
            metrics.update({k: dm[k] for k in ("di", "di_min", "di_feature", "di_feature_min") if k in dm})
            if "floor_holds" in d.spec:
                metrics["floor_holds"] = d.spec["floor_holds"]
        spec["diverse"] = d.spec
    if not responsive:
        spec["skipped"] = "MEI activation <= 0: ratio-based tests skipped"
    elif "phase" in settings.tests:
        from diversevis.methods.phase import phase_test

        ph = phase_test(net, layer, u, contrast=settings.contrast, images=settings.images, mei=m)
        ph.save(folder / "phase")
        metrics.update(f1_f0=ph.f1_f0, orientation=ph.orientation, frequency=ph.frequency)
        metrics.update(phase_label=ph.label, grating_ratio=ph.grating_ratio)
        if ph.drives is False:  # gratings do not drive it: probe the phase of its own MEI instead
            metrics.update(_mei_phase(net, layer, u, m, folder))
    if "shift" in settings.tests and responsive:
        from diversevis.methods.shift import run_shift_test

        # at least two crop offsets per axis, whatever the requested stride
        stride = max(1, min(settings.shift_stride, (m.spec["image_size"] - 2) // 2))
        st = run_shift_test(net, layer, u, None, "max", settings.shift_settings(stride), mei=m)
        st.save(folder / "shift")
        metrics.update(shift_mean_ratio=st.mean_ratio, shift_min_ratio=st.min_ratio)
    if "retention" in settings.tests and responsive:
        _save_retention(net, folder, layer, u, settings, metrics, spec)
    return metrics, spec


def _save_retention(
    net: Network,
    folder: Path,
    layer: str,
    u: int,
    settings: SweepSettings,
    metrics: dict[str, Any],
    spec: dict[str, Any],
) -> None:
    """Run a unit's held-out retention check, write ``folder/retention`` and add its numbers to
    ``metrics`` (``retention`` = overall, ``retention_<family>``) and its spec to ``spec``.

    A unit whose retention is undefined (none of its top natural patches drives it above 0, or one has no
    grating component whose phase can move, e.g. a uniform colour patch) gets no metric; the reason is
    kept in ``spec["retention"]["skipped"]``.
    """
    from diversevis.methods.retention import FAMILIES, response_retention

    try:
        rr = response_retention(net, layer, u, **settings.retention_arguments())
    except DiversevisError as e:
        spec["retention"] = {"skipped": str(e)}
        return
    rr.save(folder / "retention")
    metrics["retention"] = rr.overall
    metrics.update({f"retention_{f}": getattr(rr, f) for f in FAMILIES})
    spec["retention"] = rr.spec


def _mei_phase(net: Network, layer: str, u: int, m, folder: Path) -> dict[str, Any]:
    """The phase test on the unit's own MEI (its dominant Fourier components shifted over a cycle)."""
    from diversevis.methods.mei_phase import mei_phase_test

    try:
        mp = mei_phase_test(net, layer, u, mei=m)
    except DiversevisError as e:  # e.g. a uniform MEI: no phase to move
        return {"mei_phase_skipped": str(e)}
    mp.save(folder / "mei_phase")
    return {"mei_f1_f0": mp.f1_f0, "mei_phase_modulation": mp.modulation, "mei_phase_min_ratio": mp.min_ratio}
