"""The Ray backend of :func:`diversevis.study.sweep.sweep` (see that module's docstring).

The driver starts (or joins) Ray, starts one :class:`_Worker` actor per worker -- each rebuilds the
model from its zoo spec or receives the driver's network -- hands them the chunks one at a time and
records the rows they return in the store's index.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import torch

from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.study.store import Store
from diversevis.study.sweep_chunk import Row, Task, _run_chunk
from diversevis.study.sweep_settings import SweepSettings


def _import_ray():
    try:
        import ray
    except ImportError:
        raise DiversevisError(
            "the ray backend needs Ray: install diversevis[ray] (pip install 'diversevis[ray]')"
        ) from None
    return ray


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

    def run(
        self, layer: str, name: str, dl: str | None, chunk: list[int], settings: SweepSettings
    ) -> list[Row]:
        rows: list[Row] = []
        _run_chunk(
            self.net, self.root, layer, name, chunk, dl, settings, run=self.run_info, on_unit=rows.append
        )
        return rows


def _sweep_ray(net, store, tasks, settings: SweepSettings, *, workers, address, threads, device, bar) -> None:
    """Run ``tasks`` on Ray actors, merging their rows into ``store``'s index as they finish."""
    ray = _import_ray()
    started = _init_ray(ray, address, workers)
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
        root = str(store.root.resolve())  # workers may run elsewhere (another cwd, another node)
        if settings.images is not None:
            settings = settings.replace(images=str(Path(settings.images).resolve()))
        _start_actors(ray, actors, net, n, root=root, dev=dev, threads=threads, images=settings.images)
        _run_on_actors(ray, actors, tasks, settings, store, bar)
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()


def _init_ray(ray, address: str | None, workers: int | None) -> bool:
    """Start a local Ray instance (or join ``address``) unless one runs; return whether this call started it."""
    import logging

    if not ray.is_initialized():
        init = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        if address is not None:
            ray.init(address=address, **init)
        else:
            ray.init(address="local", num_cpus=workers, **init)
        return True
    if address is not None:  # stacklevel: the caller of sweep()
        warnings.warn("Ray is already initialised in this process; ray_address is ignored", stacklevel=4)
    return False


def _start_actors(
    ray, actors: list, net: Network, n: int, *, root: str, dev: torch.device, threads: int, images: str | None
) -> None:
    """Start ``n`` workers into ``actors``: rebuilt from the zoo spec when they can, else shipped pickled.

    A worker that cannot rebuild the driver's model from its spec (no spec, a ``file:`` spec, a load
    error or other weights) gets the driver's network through Ray's object store instead.
    """
    options: dict[str, Any] = {"num_cpus": 1}
    if dev.type == "cuda":  # the workers share the GPUs (Ray picks them: "cuda" is its GPU)
        options["num_gpus"] = 1 / max(1, n)
    Actor = ray.remote(_Worker).options(**options)

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
        kwargs = {"images": images, **(getattr(net, "load_args", None) or {})}
        errors = start(("spec", net.spec, (kwargs, _fingerprint(net))))
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


def _run_on_actors(ray, actors: list, tasks: list[Task], settings: SweepSettings, store: Store, bar) -> None:
    """Hand the chunks to idle actors one at a time; record each chunk's rows (driver only) as it returns."""
    queue = deque(tasks)
    idle = list(actors)
    pending: dict = {}
    finished = 0
    while queue or pending:
        while idle and queue:
            actor = idle.pop()
            task = queue.popleft()
            layer, name, dl, chunk = task
            pending[actor.run.remote(layer, name, dl, chunk, settings)] = (actor, task)
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            actor, (_, name, _, chunk) = pending.pop(ref)
            rows = _chunk_rows(ray, ref, name, chunk)
            store.record_many(rows)  # only the driver writes the index
            idle.append(actor)
            finished += 1
            if bar is not None:
                bar.update(len(rows))
                bar.set_postfix(chunks=f"{finished}/{len(tasks)}", workers=len(actors))


def _chunk_rows(ray, ref, name: str, chunk: list[int]) -> list[Row]:
    """A finished chunk's rows; a worker's DiversevisError is raised as is, a dead worker as one."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, DiversevisError):
            raise e.cause from None
        raise
    except ray.exceptions.RayActorError as e:
        raise DiversevisError(
            f"a Ray worker died while computing {name} units {chunk} ({e}); rerun the same command to resume"
        ) from None
