"""Layer sweeps: DFV, MEI, phase test (and optionally the shift test) for many units, resumably.

Units of a layer are processed in chunks of ``batch_units``: the chunk's MEIs and diverse sets are each
one batched optimisation (:func:`~diversevis.dfv.mei_units`, :func:`~diversevis.dfv.diverse_units`),
then every unit's files are written and the unit is recorded in the store. A rerun skips recorded units,
so a killed sweep resumes where it stopped (the folders of units it wrote but never recorded are
removed and recomputed); ``force=True`` recomputes.

Backends
--------
``local`` (default) runs the chunks one after the other in this process. ``ray`` runs them in parallel
on a Ray cluster (``pip install diversevis[ray]``): the driver (this process) plans the chunks of the
units not yet done, starts a local Ray instance with ``workers`` CPUs (or joins ``ray_address``) and
one actor per worker. Each actor loads the model once -- from its zoo spec string when it has one
(checked against a fingerprint of the driver's weights), otherwise the driver's ``nn.Module`` is
shipped through the object store (it must be picklable) -- runs ``worker_threads`` torch threads, and
takes one chunk at a time. A worker writes its units' folders into the store directory itself (so on a
multi-node cluster ``out`` must be on a shared file system) and returns the rows; only the driver
writes the SQLite index, as chunks finish. A killed ray sweep resumes like a local one, with either
backend: backend and workers are recorded in each unit's spec (``spec["sweep"]``: backend, workers,
pid, host, chunk, and with Ray ``model_from``: ``spec`` or ``object``), not in the settings that a
resumed sweep must match.

Reproducibility: every unit starts from the images of a one-unit run with ``seed`` and has its own
early stopping, so a unit's result does not depend on which units share its chunk, on the chunk order
or on the worker. The chunks are the units to do, in order, cut into ``batch_units`` (with Ray, while
there are fewer chunks than workers, the largest chunk is halved). Torch's CPU kernels may round
differently with another number of intra-op threads, so a ray sweep equals a local one bit for bit when
the local process runs with as many torch threads as ``worker_threads`` (e.g. ``OMP_NUM_THREADS=1
diversevis sweep ...``), and up to float rounding (which a long optimisation can amplify) otherwise.

Modules: this one plans the sweep and runs the local backend; :mod:`diversevis.study.sweep_chunk` runs
one chunk (both backends), :mod:`diversevis.study.sweep_ray` is the Ray backend.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.units import parse_units
from diversevis.methods.dfv import _prepare
from diversevis.study.store import Store
from diversevis.study.sweep_chunk import Task, _run_chunk
from diversevis.study.sweep_ray import _import_ray, _sweep_ray
from diversevis.study.sweep_settings import TESTS, SweepSettings

__all__ = ["parse_units", "auto_distance_layer", "sweep", "SweepSettings", "TESTS", "BACKENDS"]

BACKENDS = ("local", "ray")


def auto_distance_layer(net: Network, layer: str) -> str | None:
    """The paper's choice of distance layer: the last conv of the previous block (conv3_1 -> conv2_2).

    Works on VGG-style aliases ``conv{block}_{k}``; returns ``None`` (pixel space) for block 1 or
    networks without such aliases.

    Parameters
    ----------
    net : Network
    layer : str
        The swept layer (name or alias).

    Returns
    -------
    str or None
        The distance layer's alias, or ``None`` for pixel space.
    """
    name = net.display_name(layer)
    m = re.fullmatch(r"conv(\d+)_(\d+)", name)
    if not m or int(m.group(1)) == 1:
        return None
    prev = int(m.group(1)) - 1
    convs = sorted(
        (int(mm.group(1)), a) for a in net.aliases if (mm := re.fullmatch(rf"conv{prev}_(\d+)", a))
    )
    return convs[-1][1] if convs else None


def _chunks(xs: list[int], n: int) -> list[list[int]]:
    return [xs[i : i + n] for i in range(0, len(xs), n)]


def sweep(
    model: Network | nn.Module | str,
    layers: Sequence[str],
    units: str | Sequence[int] = "all",
    *,
    out: str | Path,
    n_images: int = SweepSettings.n_images,
    diversity: float = SweepSettings.diversity,
    floor: float | None = SweepSettings.floor,
    mean_floor: float | None = SweepSettings.mean_floor,
    distance_layer: str | None = SweepSettings.distance_layer,
    tests: Sequence[str] = SweepSettings.tests,
    shift_stride: int = SweepSettings.shift_stride,
    batch_units: int = 32,
    contrast: float = SweepSettings.contrast,
    max_iter: int = SweepSettings.max_iter,
    mei_restarts: int = SweepSettings.mei_restarts,
    seed: int = SweepSettings.seed,
    force: bool = False,
    device: str | torch.device | None = None,
    images: str | Path | None = SweepSettings.images,
    progress: bool = True,
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    worker_threads: int = 1,
    precision: str = SweepSettings.precision,
    display_range: bool = SweepSettings.display_range,
    repair: bool = False,
) -> Store:
    """Characterise many units of several layers; results go to a resumable :class:`Store`.

    Parameters
    ----------
    model : Network, nn.Module or str
    layers : sequence of str
    units : str or sequence of int
        ``all``, ``0-63``, ``1,5,9`` or ``sample:32`` (see :func:`parse_units`), applied to every layer;
        ``sample:32`` of a layer with at most 32 units takes all of them.
    out : str or Path
        Store directory (created if new; resumed if it holds a sweep with the same settings).
    n_images, diversity : int, float
        DFV set size and lambda (lambda mode only).
    floor, mean_floor : float or None
        Floor mode (the default, 0.85): every image of a set at >= ``floor`` x its MEI (and the mean at
        >= ``mean_floor`` x); ``floor=None`` is lambda mode. Each set also gets the calibrated diversity
        index (``di`` in the metrics).
    distance_layer : str or None
        ``"auto"`` (the previous block's last conv, as the paper), a layer, or ``None`` (pixel space).
    tests : sequence of str
        Which analyses run per unit besides the MEI: ``dfv``, ``phase``, ``shift`` (the shift test is
        the slow one: use ``shift_stride``), ``retention`` (the held-out check of
        :func:`~diversevis.methods.retention.response_retention`: top 32 of 2048 natural patches).
    batch_units : int
        Units optimised together in one batch (one chunk; with ``backend="ray"``, one Ray task).
    force : bool
        Recompute units that are already recorded.
    repair : bool
        Forget (and so recompute) units whose index rows are corrupt (:meth:`Store.repair`).
    backend : {"local", "ray"}
        Where the chunks run (see the module docstring): this process, or Ray workers.
    workers : int, optional
        Ray only: number of workers (actors, each running one chunk at a time). Default: the CPUs Ray
        sees (all of this machine's when Ray is started here, the cluster's with ``ray_address``).
    ray_address : str, optional
        Ray only: join this running cluster (e.g. ``"ray://head:10001"`` or ``"auto"``) instead of
        starting a local Ray instance. A Ray session already initialised in this process is reused.
    worker_threads : int
        Ray only: torch intra-op threads per worker (default 1: ``workers`` processes share the CPUs).
    precision : {"fp32", "tf32", "bf16"}
        Precision of the MEI and DFV forward passes (:mod:`diversevis.precision`); the phase and shift
        tests run in fp32.
    display_range : bool
        Optimise the MEIs and diverse sets inside ``[0, 1]`` (:func:`~diversevis.diverse`), so that the
        stored ratios, floor and DI hold for the PNGs.

    Returns
    -------
    Store
    """
    _check_arguments(batch_units, backend, workers, ray_address, worker_threads)
    net = _prepare(model, device)
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers or not all(isinstance(x, str) and x.strip() for x in layers):
        raise DiversevisError(
            f"give at least one layer name to sweep, got {layers!r} (CLI: --layers conv1_1,conv2_1)"
        )
    for layer in layers:  # every request checked before the store is touched (its settings are saved)
        parse_units(units, net.channels(layer), seed, sample_at_most=True)
    settings = SweepSettings.from_arguments({**locals(), "tests": tuple(tests)})
    store = _open_store(out, settings.stored(net.spec or net.name, getattr(net, "load_args", None)), force)
    if repair:
        store.repair()
    tasks = _plan(
        net,
        store,
        layers,
        units,
        seed=seed,
        force=force,
        distance_layer=distance_layer,
        batch_units=batch_units,
    )
    bar = _progress_bar(progress, total=sum(len(t[3]) for t in tasks))
    try:
        if backend == "ray":
            if tasks:
                _sweep_ray(
                    net,
                    store,
                    tasks,
                    settings,
                    workers=workers,
                    address=ray_address,
                    threads=worker_threads,
                    device=device,
                    bar=bar,
                )
        else:
            _sweep_local(net, store, tasks, settings, bar)
    finally:
        if bar is not None:
            bar.close()
    return store


def _check_arguments(
    batch_units: int,
    backend: str,
    workers: int | None,
    ray_address: str | None,
    worker_threads: int,
) -> None:
    """Reject bad arguments of :func:`sweep` before loading or optimising anything."""
    if backend not in BACKENDS:
        raise DiversevisError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "local" and (workers is not None or ray_address is not None):
        raise DiversevisError("workers and ray_address need backend='ray' (--backend ray)")
    if workers is not None and workers < 1:
        raise DiversevisError(f"workers must be >= 1, got {workers}")
    if worker_threads < 1:
        raise DiversevisError(f"worker_threads must be >= 1, got {worker_threads}")
    if backend == "ray":
        _import_ray()  # fail fast, before loading or optimising anything
    if batch_units < 1:
        raise DiversevisError(f"batch_units must be >= 1, got {batch_units}")


def _open_store(out: str | Path, settings: dict[str, Any], force: bool) -> Store:
    """The store at ``out`` (created if new), refusing one with other settings unless ``force``."""
    store = Store(out, create=True)
    old = store.get_meta("settings")
    if old is not None and old != settings and not force:
        keys = list(settings) + [k for k in old if k not in settings]
        diff = {k: (old.get(k), settings.get(k)) for k in keys if old.get(k) != settings.get(k)}
        hint = ""
        if "floor" in diff and diff["floor"][0] is None:
            hint = " (a lambda-mode sweep: resume it with --floor none, Python floor=None)"
        raise DiversevisError(
            f"{str(out)!r} holds a sweep with other settings {diff} (stored, requested){hint}; "
            "use another --out, or --force to recompute with the new settings"
        )
    store.set_meta("settings", settings)
    return store


def _plan(
    net: Network,
    store: Store,
    layers: Sequence[str],
    units: str | Sequence[int],
    *,
    seed: int,
    force: bool,
    distance_layer: str | None,
    batch_units: int,
) -> list[Task]:
    """The chunks of units still to do, per layer; the same for both backends.

    Forgets the units to recompute (``force``) and removes the folders of units a killed run wrote but
    never recorded.
    """
    tasks: list[Task] = []
    for layer in layers:
        wanted = parse_units(units, net.channels(layer), seed, sample_at_most=True)
        name = net.display_name(layer)  # the store is keyed by the layer's display name
        if force:
            store.forget(name, wanted)
        done = store.done(name)
        todo = [u for u in wanted if u not in done]
        for u in todo:  # files of a unit that a killed run wrote but never indexed: start clean
            stale = store.unit_dir(name, u)
            if stale.exists():
                shutil.rmtree(stale)
        dl = auto_distance_layer(net, layer) if distance_layer == "auto" else distance_layer
        tasks.extend((layer, name, dl, chunk) for chunk in _chunks(todo, batch_units))
    return tasks


def _progress_bar(progress: bool, total: int):
    """A tqdm bar over ``total`` units, or ``None`` without progress."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep", unit="unit", dynamic_ncols=True)


def _sweep_local(net: Network, store: Store, tasks: list[Task], settings: SweepSettings, bar) -> None:
    """Run the chunks one after the other in this process, recording each unit as it finishes."""
    run = {"backend": "local", "workers": 1}
    for layer, name, dl, chunk in tasks:
        if bar is not None:
            bar.set_postfix(layer=name, units=f"{chunk[0]}..{chunk[-1]}")

        def on_unit(row, bar=bar):
            store.record(*row)
            if bar is not None:
                bar.update(1)

        _run_chunk(net, store.root, layer, name, chunk, dl, settings, run=run, on_unit=on_unit)
