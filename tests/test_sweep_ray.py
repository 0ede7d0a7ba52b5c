"""Distributed sweeps: ``sweep(backend="ray")`` on a local 2-CPU Ray instance (one for the module)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import torch
from torch import nn

import diversevis as dv
from diversevis.study.store import INDEX_NAME, Store
from diversevis.study.sweep import sweep

ray = pytest.importorskip("ray")

MODEL = "vgg16-paper"  # a zoo spec: each worker loads it itself
KW = dict(n_images=3, max_iter=20, mei_restarts=2, batch_units=2, tests=("dfv",), progress=False)


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray instance for all tests (starting one takes seconds); sweeps reuse it."""
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    yield
    ray.shutdown()


def _tiny() -> dv.Network:
    torch.manual_seed(0)
    # torch classes only: the workers unpickle it without importing this test module
    return dv.Network(nn.Sequential(nn.Conv2d(3, 8, 5), nn.ReLU()), name="tiny")


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    """The local backend's sweep of units 0-7, with one torch thread like a Ray worker (bit-identical)."""
    out = tmp_path_factory.mktemp("local") / "store"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sweep(MODEL, ["conv1_1"], "0-7", out=out, **KW).close()
    finally:
        torch.set_num_threads(threads)
    return out


def _by_unit(root) -> dict[int, dict]:
    with Store(root) as s:
        rows = s.rows()
    assert len(rows) == len({r["unit"] for r in rows})  # never twice
    return {r["unit"]: r for r in rows}


def test_ray_sweep_equals_local_and_runs_in_several_workers(tmp_path, local_store):
    out = tmp_path / "ray"
    sweep(MODEL, ["conv1_1"], "0-7", out=out, backend="ray", workers=2, **KW).close()
    rows, ref = _by_unit(out), _by_unit(local_store)
    assert sorted(rows) == list(range(8))
    for u, r in rows.items():
        assert r["metrics"] == ref[u]["metrics"], u  # same seed, same numbers, whatever the worker
        run = r["spec"]["sweep"]
        assert run["backend"] == "ray" and run["workers"] == 2 and run["model_from"] == "spec"
        assert run["chunk"] == [u - u % 2, u - u % 2 + 1]  # the same chunks as the local backend
        for f in ("mei/result.json", "diverse/result.json", "diverse/images.npz"):
            assert (out / r["path"] / f).is_file()
    pids = {r["spec"]["sweep"]["pid"] for r in rows.values()}
    assert len(pids) >= 2 and os.getpid() not in pids  # the chunks ran in >= 2 worker processes
    assert not list(out.rglob("*.tmp"))


def test_ray_sweep_resumes_a_partial_store_computing_only_missing_units(tmp_path, local_store):
    out = tmp_path / "partial"
    shutil.copytree(local_store, out)
    with Store(out) as s:
        s.forget("conv1_1", [4, 5, 6, 7])  # their folders stay: written by a worker, never indexed
    (out / "conv1_1" / "u5" / "mei" / ".images.npz.abc123.tmp").write_bytes(b"half a file")
    (out / "conv1_1" / "u6" / "diverse" / "result.json").write_text("{broken")
    before = _by_unit(out)

    sweep(MODEL, ["conv1_1"], "0-7", out=out, backend="ray", workers=2, **KW).close()
    rows, ref = _by_unit(out), _by_unit(local_store)
    assert sorted(rows) == list(range(8))
    for u, r in rows.items():
        assert r["spec"]["sweep"]["backend"] == ("local" if u < 4 else "ray")  # only 4-7 recomputed
        if u < 4:
            assert r["finished"] == before[u]["finished"]
        assert r["metrics"] == ref[u]["metrics"]
    assert not list(out.rglob("*.tmp"))
    assert dv.Result.load(out / "conv1_1" / "u6" / "diverse").spec["unit"] == 6
    # resuming with the local backend: nothing left to do
    sweep(MODEL, ["conv1_1"], "0-7", out=out, **KW).close()
    assert {u: r["finished"] for u, r in _by_unit(out).items()} == {u: r["finished"] for u, r in rows.items()}


def test_models_without_a_matching_spec_are_shipped_or_refused(tmp_path):
    # a zoo model whose weights were changed after loading: the workers' load_model(spec) copies do
    # not match its fingerprint, so the driver's object is shipped instead (and the result follows it)
    net = dv.load_model("cell:complex")
    with torch.no_grad():
        net.module.quadrature.weight.mul_(2.0)
    sweep(net, ["quadrature"], "all", out=tmp_path / "l", **KW).close()
    sweep(net, ["quadrature"], "all", out=tmp_path / "r", backend="ray", **KW).close()  # one chunk
    ref, rows = _by_unit(tmp_path / "l"), _by_unit(tmp_path / "r")
    for u in (0, 1):
        assert rows[u]["spec"]["sweep"]["model_from"] == "object"
        assert rows[u]["metrics"]["mei_activation"] == pytest.approx(
            ref[u]["metrics"]["mei_activation"], rel=1e-4
        )

    bad = _tiny()
    bad.module.lock = threading.Lock()  # not picklable
    with pytest.raises(dv.DiversevisError, match="not picklable"):
        sweep(bad, ["0"], "0-1", out=tmp_path / "bad", backend="ray", **KW)


def _count_done(db) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM units").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.slow
def test_ray_sweep_killed_midway_resumes_with_every_unit_exactly_once(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "-m", "vgg16-paper", "--layers", "conv1_1", "--units", "0-11", "--batch-units", "2"]
    args += ["--max-iter", "40", "--tests", "dfv", "--out", str(out), "-q"]
    # its own Ray instance (the driver starts one), killed with the driver
    proc = subprocess.Popen(
        [sys.executable, "-m", "diversevis", *args, "--backend", "ray", "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while _count_done(out / INDEX_NAME) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r["unit"]: r["finished"] for r in Store(out).rows()}
    assert 2 <= len(before) < 12, "the sweep should have been killed midway"

    sweep(
        "vgg16-paper",
        ["conv1_1"],
        "0-11",
        out=out,
        max_iter=40,
        tests=("dfv",),
        batch_units=2,
        progress=False,
        backend="ray",
    ).close()
    rows = _by_unit(out)
    assert sorted(rows) == list(range(12))
    for u, r in rows.items():
        if u in before:
            assert r["finished"] == before[u]  # finished units were not recomputed
        assert (out / r["path"] / "diverse" / "result.json").is_file()
    assert not list(out.rglob("*.tmp"))
