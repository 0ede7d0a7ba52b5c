"""Layer sweeps: DFV, MEI, phase test (and optionally the shift test) for many units, resumably.

Units of a layer are processed in chunks of ``batch_units``: the chunk's MEIs and diverse sets are each
one batched optimisation (:func:`~diversevis.dfv.mei_units`, :func:`~diversevis.dfv.diverse_units`),
then every unit's files are written and the unit is recorded in the store. A rerun skips recorded units,
so a killed sweep resumes where it stopped; ``force=True`` recomputes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .dfv import _prepare, diverse_units, mei_units
from .errors import DiversevisError
from .network import Network
from .store import Store

__all__ = ["parse_units", "auto_distance_layer", "sweep", "TESTS"]

TESTS = ("dfv", "phase", "shift")


def parse_units(spec: str | Sequence[int], channels: int, seed: int = 0) -> list[int]:
    """Units from a spec: ``all``, ``0-63``, ``1,5,9`` (ranges allowed inside), or ``sample:32``.

    Parameters
    ----------
    spec : str or sequence of int
        The spec; a sample is drawn without replacement with ``seed`` and sorted.
    channels : int
        Number of units in the layer (valid indices ``0 .. channels - 1``).
    """
    if not isinstance(spec, str):
        units = [int(u) for u in spec]
    else:
        s = spec.strip().lower()
        if s == "all":
            return list(range(channels))
        m = re.fullmatch(r"sample:(\d+)", s)
        if m:
            k = int(m.group(1))
            if not 1 <= k <= channels:
                raise DiversevisError(f"sample:{k} needs 1 <= k <= {channels} (the layer's units)")
            rng = np.random.default_rng(seed)
            return sorted(int(u) for u in rng.choice(channels, size=k, replace=False))
        units = []
        for part in s.split(","):
            r = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not r:
                raise DiversevisError(
                    f"bad units {spec!r}: use all, sample:K, a range like 0-63 or a list like 1,5,9"
                )
            lo = int(r.group(1))
            hi = int(r.group(2)) if r.group(2) is not None else lo
            if hi < lo:
                raise DiversevisError(f"bad range {part.strip()!r}: the end is before the start")
            units.extend(range(lo, hi + 1))
    bad = [u for u in units if not 0 <= u < channels]
    if bad:
        raise DiversevisError(
            f"units {bad[:5]} are out of range: the layer has {channels} units (0..{channels - 1})"
        )
    return sorted(dict.fromkeys(units))


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
        Units optimised together in one batch.
    force : bool
        Recompute units that are already recorded.

    Returns
    -------
    Store
    """
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
    store = Store(out, create=True)
    old = store.get_meta("settings")
    if old is not None and old != settings and not force:
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        raise DiversevisError(
            f"{str(out)!r} holds a sweep with other settings {diff} (stored, requested); "
            "use another --out, or --force to recompute with the new settings"
        )
    store.set_meta("settings", settings)

    plan = []
    for layer in layers:
        wanted = parse_units(units, net.channels(layer), seed)
        name = net.display_name(layer)  # the store is keyed by the layer's display name
        if force:
            store.forget(name, wanted)
        done = store.done(name)
        plan.append((layer, [u for u in wanted if u not in done]))
    total = sum(len(todo) for _, todo in plan)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="sweep", unit="unit", dynamic_ncols=True)
    try:
        for layer, todo in plan:
            dl = auto_distance_layer(net, layer) if distance_layer == "auto" else distance_layer
            name = net.display_name(layer)
            for chunk in _chunks(todo, batch_units):
                if bar is not None:
                    bar.set_postfix(layer=name, units=f"{chunk[0]}..{chunk[-1]}")
                _run_chunk(
                    net,
                    store,
                    layer,
                    name,
                    chunk,
                    dl,
                    tests=tests,
                    n_images=n_images,
                    diversity=diversity,
                    contrast=contrast,
                    max_iter=max_iter,
                    mei_restarts=mei_restarts,
                    seed=seed,
                    shift_stride=shift_stride,
                    images=images,
                    bar=bar,
                )
    finally:
        if bar is not None:
            bar.close()
    return store


def _run_chunk(
    net,
    store: Store,
    layer,
    name,
    chunk,
    dl,
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
    bar,
) -> None:
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
        )
    per_unit = (time.perf_counter() - t0) / len(chunk)
    for u, m, d in zip(chunk, meis, divs):
        t1 = time.perf_counter()
        folder = store.unit_dir(name, u)
        m.save(folder / "mei")
        metrics: dict[str, Any] = {"mei_activation": m.mei_activation}
        spec: dict[str, Any] = {"mei": m.spec}
        if d is not None:
            d.save(folder / "diverse")
            dm = d.metrics()
            metrics.update(
                dfv_mean_ratio=dm["mean_ratio"],
                dfv_min_ratio=dm["min_ratio"],
                dfv_min_distance=dm["min_distance"],
                dfv_mean_distance=dm["mean_distance"],
            )
            spec["diverse"] = d.spec
        if "phase" in tests:
            from .phase import phase_test

            ph = phase_test(net, layer, u, contrast=contrast, images=images, mei=m)
            ph.save(folder / "phase")
            metrics.update(f1_f0=ph.f1_f0, orientation=ph.orientation, frequency=ph.frequency)
        if "shift" in tests:
            from .shift import shift_test

            # at least two crop offsets per axis, whatever the requested stride
            stride = max(1, min(shift_stride, (m.spec["image_size"] - 2) // 2))
            st = shift_test(net, layer, u, contrast=contrast, stride=stride, seed=seed, mei=m, images=images)
            st.save(folder / "shift")
            metrics.update(shift_mean_ratio=st.mean_ratio, shift_min_ratio=st.min_ratio)
        store.record(name, u, metrics, spec, seconds=per_unit + time.perf_counter() - t1)
        if bar is not None:
            bar.update(1)
