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
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.precision import check_precision
from diversevis.core.units import parse_units
from diversevis.methods.dfv import _prepare, diverse_units, mei_units
from diversevis.study.store import Store, unit_dir

__all__ = ["parse_units", "auto_distance_layer", "sweep", "TESTS", "BACKENDS"]

TESTS = ("dfv", "phase", "shift")
BACKENDS = ("local", "ray")


def auto_distance_layer(net: Network, layer: str) -> str | None:
    """The paper's choice of distance layer: the last conv of the previous block (conv3_1 -> conv2_2).

    Works on VGG-style aliases ``conv{block}_{k}``; returns ``None`` (pixel space) for block 1 or
    networks without such aliases.
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


def _spread(tasks: list, n: int) -> list:
    """Split the largest chunks (in half, first one first) until there are ``n`` tasks or only single units.

    Deterministic; a unit's result does not depend on its chunk, so this only spreads a small sweep
    over all Ray workers.
    """
    tasks = list(tasks)
    while len(tasks) < n:
        i = max(range(len(tasks)), key=lambda j: (len(tasks[j][3]), -j), default=None)
        if i is None or len(tasks[i][3]) < 2:
            break
        layer, name, dl, chunk = tasks[i]
        half = (len(chunk) + 1) // 2
        tasks[i : i + 1] = [(layer, name, dl, chunk[:half]), (layer, name, dl, chunk[half:])]
    return tasks


def _import_ray():
    try:
        import ray
    except ImportError:
        raise DiversevisError(
            "the ray backend needs Ray: install diversevis[ray] (pip install 'diversevis[ray]')"
        ) from None
    return ray


def sweep(
    model: Network | nn.Module | str,
    layers: Sequence[str],
    units: str | Sequence[int] = "all",
    *,
    out: str | Path,
    n_images: int = 6,
    diversity: float = 0.01,
    distance_layer: str | None = "auto",
    tests: Sequence[str] = ("dfv", "phase"),
    shift_stride: int = 1,
    batch_units: int = 32,
    contrast: float = 0.5,
    max_iter: int = 1000,
    mei_restarts: int = 4,
    seed: int = 0,
    force: bool = False,
    device: str | torch.device | None = None,
    images: str | Path | None = None,
    progress: bool = True,
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    worker_threads: int = 1,
    precision: str = "fp32",
) -> Store:
    """Characterise many units of several layers; results go to a resumable :class:`Store`.

    Parameters
    ----------
    model : Network, nn.Module or str
    layers : sequence of str
    units : str or sequence of int
        ``all``, ``0-63``, ``1,5,9`` or ``sample:32`` (see :func:`parse_units`), applied to every layer.
    out : str or Path
        Store directory (created if new; resumed if it holds a sweep with the same settings).
    n_images, diversity : int, float
        DFV set size and lambda.
    distance_layer : str or None
        ``"auto"`` (the previous block's last conv, as the paper), a layer, or ``None`` (pixel space).
    tests : sequence of str
        Which analyses run per unit besides the MEI: ``dfv``, ``phase``, ``shift`` (the shift test is
        the slow one: use ``shift_stride``).
    batch_units : int
        Units optimised together in one batch (one chunk; with ``backend="ray"``, one Ray task).
    force : bool
        Recompute units that are already recorded.
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

    Returns
    -------
    Store
    """
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
    unknown = [t for t in tests if t not in TESTS]
    if unknown:
        raise DiversevisError(f"unknown tests {unknown}; choose from {', '.join(TESTS)}")
    if batch_units < 1:
        raise DiversevisError(f"batch_units must be >= 1, got {batch_units}")
    net = _prepare(model, device)
    for layer in layers:
        net.resolve(layer)
    settings = {
        "model": net.spec or net.name,
        "n_images": n_images,
        "diversity": diversity,
        "distance_layer": distance_layer,
        "contrast": contrast,
        "max_iter": max_iter,
        "seed": seed,
        "mei_restarts": mei_restarts,
        "shift_stride": shift_stride,
    }
    if check_precision(precision) != "fp32":  # absent for fp32, so stores from before still resume
        settings["precision"] = precision
    store = Store(out, create=True)
    old = store.get_meta("settings")
    if old is not None and old != settings and not force:
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        raise DiversevisError(
            f"{str(out)!r} holds a sweep with other settings {diff} (stored, requested); "
            "use another --out, or --force to recompute with the new settings"
        )
    store.set_meta("settings", settings)

    # The plan: (layer, display name, distance layer, chunk), the same for both backends.
    tasks: list[tuple[str, str, str | None, list[int]]] = []
    for layer in layers:
        wanted = parse_units(units, net.channels(layer), seed)
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
    kw = dict(
        tests=tuple(tests),
        n_images=n_images,
        diversity=diversity,
        contrast=contrast,
        max_iter=max_iter,
        mei_restarts=mei_restarts,
        seed=seed,
        shift_stride=shift_stride,
        images=images,
        precision=precision,
    )
    total = sum(len(t[3]) for t in tasks)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="sweep", unit="unit", dynamic_ncols=True)
    try:
        if backend == "ray":
            if tasks:
                _sweep_ray(
                    net,
                    store,
                    tasks,
                    kw,
                    workers=workers,
                    address=ray_address,
                    threads=worker_threads,
                    device=device,
                    bar=bar,
                )
        else:
            run = {"backend": "local", "workers": 1}
            for layer, name, dl, chunk in tasks:
                if bar is not None:
                    bar.set_postfix(layer=name, units=f"{chunk[0]}..{chunk[-1]}")

                def on_unit(row, bar=bar):
                    store.record(*row)
                    if bar is not None:
                        bar.update(1)

                _run_chunk(net, store.root, layer, name, chunk, dl, run=run, on_unit=on_unit, **kw)
    finally:
        if bar is not None:
            bar.close()
    return store


Row = tuple[str, int, dict[str, Any], dict[str, Any], float]


def _run_chunk(
    net: Network,
    root: str | Path,
    layer: str,
    name: str,
    chunk: list[int],
    dl: str | None,
    *,
    tests,
    n_images,
    diversity,
    contrast,
    max_iter,
    mei_restarts,
    seed,
    shift_stride,
    images,
    precision: str = "fp32",
    run: dict[str, Any],
    on_unit: Callable[[Row], None],
) -> None:
    """Optimise one chunk, write each unit's folder, then hand its index row to ``on_unit``."""
    t0 = time.perf_counter()
    meis = mei_units(
        net,
        layer,
        chunk,
        restarts=mei_restarts,
        contrast=contrast,
        max_iter=max_iter,
        seed=seed,
        images=images,
        precision=precision,
    )
    divs = [None] * len(chunk)
    if "dfv" in tests:
        divs = diverse_units(
            net,
            layer,
            chunk,
            n_images=n_images,
            diversity=diversity,
            distance_layer=dl,
            contrast=contrast,
            max_iter=max_iter,
            seed=seed,
            mei=meis,
            images=images,
            precision=precision,
        )
    per_unit = (time.perf_counter() - t0) / len(chunk)
    where = {**run, "pid": os.getpid(), "host": socket.gethostname(), "chunk": list(chunk)}
    for u, m, d in zip(chunk, meis, divs):
        t1 = time.perf_counter()
        folder = unit_dir(root, name, u)
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
            spec["diverse"] = d.spec
        if not responsive:
            spec["skipped"] = "MEI activation <= 0: ratio-based tests skipped"
        elif "phase" in tests:
            from diversevis.methods.phase import phase_test

            ph = phase_test(net, layer, u, contrast=contrast, images=images, mei=m)
            ph.save(folder / "phase")
            metrics.update(f1_f0=ph.f1_f0, orientation=ph.orientation, frequency=ph.frequency)
        if "shift" in tests and responsive:
            from diversevis.methods.shift import shift_test

            # at least two crop offsets per axis, whatever the requested stride
            stride = max(1, min(shift_stride, (m.spec["image_size"] - 2) // 2))
            st = shift_test(net, layer, u, contrast=contrast, stride=stride, seed=seed, mei=m, images=images)
            st.save(folder / "shift")
            metrics.update(shift_mean_ratio=st.mean_ratio, shift_min_ratio=st.min_ratio)
        on_unit((name, u, metrics, spec, per_unit + time.perf_counter() - t1))


# ---------------------------------------------------------------------------------------------- ray


def _fingerprint(net: Network) -> str:
    """Hash of a network's class, weights and normalisation: do two copies compute the same function?"""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(net.module).__qualname__.encode())
    for key, t in net.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _Worker:
    """A Ray actor (see :func:`_sweep_ray`): one network, one chunk at a time."""

    def __init__(self, recipe: tuple, root: str, device: str, threads: int, run: dict[str, Any]) -> None:
        torch.set_num_threads(threads)
        self.root, self.run_info, self.error = root, run, None
        kind, what, extra = recipe
        if kind == "spec":  # what: the zoo spec; extra: (load_model kwargs, the driver's fingerprint)
            from diversevis.models.zoo import load_model

            try:
                self.net = load_model(what, device=device, **extra[0])
                if _fingerprint(self.net) != extra[1]:
                    self.error = f"load_model({what!r}) on the worker differs from the driver's model"
            except Exception as e:  # noqa: BLE001 - reported to the driver, which ships the object instead
                self.error = f"load_model({what!r}) failed on the worker: {e}"
        else:  # what: a reference to the driver's Network in the object store
            import ray

            self.net = ray.get(what).to(device)

    def ready(self) -> tuple[int, str | None]:
        return os.getpid(), self.error

    def run(self, layer: str, name: str, dl: str | None, chunk: list[int], kw: dict[str, Any]) -> list[Row]:
        rows: list[Row] = []
        _run_chunk(self.net, self.root, layer, name, chunk, dl, run=self.run_info, on_unit=rows.append, **kw)
        return rows


def _sweep_ray(net, store, tasks, kw, *, workers, address, threads, device, bar) -> None:
    """Run ``tasks`` on Ray actors, merging their rows into ``store``'s index as they finish."""
    ray = _import_ray()
    import logging

    started = False
    if not ray.is_initialized():
        init = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        if address is not None:
            ray.init(address=address, **init)
        else:
            ray.init(address="local", num_cpus=workers, **init)
        started = True
    elif address is not None:
        warnings.warn("Ray is already initialised in this process; ray_address is ignored", stacklevel=3)
    actors: list = []
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        tasks = _spread(tasks, workers or cpus)  # fewer chunks than workers: smaller chunks
        n = min(workers or cpus, len(tasks))
        if (workers or cpus) > cpus:
            warnings.warn(
                f"{workers} Ray workers but the cluster has {cpus} CPUs: some wait for CPUs", stacklevel=3
            )
        dev = torch.device(device) if device is not None else net.device
        options: dict[str, Any] = {"num_cpus": 1}
        if dev.type == "cuda":  # the workers share the GPUs (Ray picks them: "cuda" is its GPU)
            options["num_gpus"] = 1 / max(1, n)
        Actor = ray.remote(_Worker).options(**options)
        root = str(store.root.resolve())  # workers may run elsewhere (another cwd, another node)
        if kw["images"] is not None:
            kw = {**kw, "images": str(Path(kw["images"]).resolve())}

        def start(recipe) -> list[str | None]:
            run = {"backend": "ray", "workers": n, "model_from": recipe[0]}
            actors[:] = [Actor.remote(recipe, root, dev.type, threads, run) for _ in range(n)]
            try:
                return [err for _, err in ray.get([a.ready.remote() for a in actors])]
            except ray.exceptions.RayActorError as e:
                raise DiversevisError(f"the Ray workers could not start: {e}") from None

        # file: paths may not exist on other nodes (and may need allow_pickle): ship those objects
        errors: list[str | None] = ["no zoo spec"]
        if net.spec and not net.spec.startswith("file:"):
            errors = start(("spec", net.spec, ({"images": kw["images"]}, _fingerprint(net))))
        if any(errors):
            for a in actors:
                ray.kill(a)
            actors.clear()
            try:
                ref = ray.put(net)
            except Exception as e:  # noqa: BLE001 - Ray raises several kinds for unpicklable values
                why = next(err for err in errors if err)
                raise DiversevisError(
                    f"the model cannot be sent to Ray workers: it is not picklable ({e}) and cannot be "
                    f"rebuilt from a zoo spec ({why}); pass a zoo spec string or a picklable nn.Module"
                ) from None
            start(("object", ref, None))

        queue = deque(tasks)
        idle = list(actors)
        pending: dict = {}
        finished = 0
        while queue or pending:
            while idle and queue:
                actor = idle.pop()
                task = queue.popleft()
                layer, name, dl, chunk = task
                pending[actor.run.remote(layer, name, dl, chunk, kw)] = (actor, task)
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                actor, (_, name, _, chunk) = pending.pop(ref)
                try:
                    rows = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    if isinstance(e.cause, DiversevisError):
                        raise e.cause from None
                    raise
                except ray.exceptions.RayActorError as e:
                    raise DiversevisError(
                        f"a Ray worker died while computing {name} units {chunk} ({e}); "
                        "rerun the same command to resume"
                    ) from None
                store.record_many(rows)  # only the driver writes the index
                idle.append(actor)
                finished += 1
                if bar is not None:
                    bar.update(len(rows))
                    bar.set_postfix(chunks=f"{finished}/{len(tasks)}", workers=n)
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
