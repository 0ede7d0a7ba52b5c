"""Sweeps: batched multi-unit optimisation, unit specs, and a store that survives SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import diversevis as dv
from diversevis.cli import main
from diversevis.methods.dfv import diverse_units, mei_units
from diversevis.study.store import INDEX_NAME, Store
from diversevis.study.sweep import auto_distance_layer, parse_units, sweep


def test_unit_specs():
    assert parse_units("all", 4) == [0, 1, 2, 3]
    assert parse_units("0-3,7,5", 10) == [0, 1, 2, 3, 5, 7]
    s = parse_units("sample:5", 64, seed=1)
    assert len(s) == 5 and s == sorted(set(s)) and s == parse_units("sample:5", 64, seed=1)
    for bad, msg in [
        ("0-70", "out of range"),
        ("sample:0", "sample"),
        ("3-1", "before the start"),
        ("x", "bad units"),
    ]:
        with pytest.raises(dv.DiversevisError, match=msg):
            parse_units(bad, 64)


def test_a_sample_as_large_as_a_narrow_layer_takes_all_its_units_in_a_sweep(tmp_path):
    """``sample:3`` across a 2-unit and a 4-unit layer: the narrow layer gives both units, the wide one 3."""
    assert parse_units("sample:3", 2, sample_at_most=True) == [0, 1]
    assert parse_units("sample:3", 4, sample_at_most=True) == parse_units("sample:3", 4)
    with pytest.raises(dv.DiversevisError, match="sample"):
        parse_units("sample:3", 2)  # one layer, one request: still a clear error
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU(), torch.nn.Conv2d(2, 4, 3))
    net = dv.Network(model, name="two-widths", input_size=5)
    store = sweep(net, ["0", "2"], "sample:3", out=tmp_path / "s", n_images=2, tests=("dfv",), max_iter=20,
                  mei_restarts=1, progress=False)  # fmt: skip
    done = sorted((r["layer"], r["unit"]) for r in store.rows())
    store.close()
    assert [u for layer, u in done if layer == "0"] == [0, 1]
    assert len([u for layer, u in done if layer == "2"]) == 3


def test_auto_distance_layer_is_the_previous_blocks_last_conv(vgg16_paper):
    assert auto_distance_layer(vgg16_paper, "conv3_1") == "conv2_2"
    assert auto_distance_layer(vgg16_paper, "conv2_1") == "conv1_2"
    assert auto_distance_layer(vgg16_paper, "conv4_2") == "conv3_3"
    assert auto_distance_layer(vgg16_paper, "conv1_2") is None


def test_batched_units_give_the_same_result_as_one_unit_runs(vgg16_paper):
    kw = dict(n_images=3, diversity=0.5, distance_layer="conv1_2", seed=2, max_iter=60, patience=10)
    meis = mei_units(vgg16_paper, "conv2_1", [3, 9], restarts=2, seed=2, max_iter=60, patience=10)
    batch = diverse_units(vgg16_paper, "conv2_1", [3, 9], mei=meis, **kw)
    for u, b, m in zip([3, 9], batch, meis):
        single = dv.diverse(vgg16_paper, "conv2_1", u, mei=False, **kw)
        single_mei = dv.mei(vgg16_paper, "conv2_1", u, restarts=2, seed=2, max_iter=60, patience=10)
        assert torch.equal(b.images, single.images)  # identical, not just close: Adam is elementwise
        assert b.spec["n_iter"] == single.spec["n_iter"]  # per-group early stopping matches
        assert m.mei_activation == single_mei.mei_activation
        assert b.spec["unit"] == u and b.ratios is not None


def _count_done(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM units WHERE status = 'done'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_sweep_killed_midway_resumes_with_every_unit_exactly_once(tmp_path):
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "--model",
        "vgg16-paper",
        "--layers",
        "conv1_1",
        "--units",
        "0-11",
        "--batch-units",
        "2",
        "--max-iter",
        "40",
        "--tests",
        "dfv",
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "diversevis", *args],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    while _count_done(out / INDEX_NAME) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {(r["layer"], r["unit"]): r["finished"] for r in Store(out).rows()}
    assert 2 <= len(before) < 12, "the sweep should have been killed midway"

    assert main(args) == 0
    rows = Store(out).rows()
    assert sorted(r["unit"] for r in rows) == list(range(12))  # every unit, once (primary key)
    for r in rows:
        key = (r["layer"], r["unit"])
        if key in before:
            assert r["finished"] == before[key]  # finished units were not recomputed
        folder = out / r["path"]
        for sub in ("mei", "diverse"):
            assert (folder / sub / "result.json").is_file() and (folder / sub / "images.npz").is_file()
    assert not list(out.rglob("*.tmp")), "no half-written files"
    # a further rerun does nothing
    assert main(args) == 0
    assert len(Store(out).rows()) == 12


def test_rerun_with_other_settings_is_refused_unless_forced(tmp_path, capsys):
    out = str(tmp_path / "s")
    base = [
        "sweep",
        "--model",
        "vgg16-paper",
        "--layers",
        "conv1_1",
        "--units",
        "0-1",
        "--max-iter",
        "20",
        "--tests",
        "dfv",
        "--floor",
        "none",  # lambda mode: --diversity is used
        "--out",
        out,
        "--quiet",
    ]
    assert main(base) == 0
    first = {r["unit"]: r["finished"] for r in Store(out).rows()}
    assert main([*base[:-3], "--diversity", "0.5", "--out", out, "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err
    time.sleep(1.1)
    assert main([*base[:-3], "--diversity", "0.5", "--force", "--out", out, "--quiet"]) == 0
    rows = Store(out).rows()
    assert len(rows) == 2 and all(r["finished"] != first[r["unit"]] for r in rows)
    assert rows[0]["spec"]["diverse"]["diversity"] == 0.5


def test_bad_results_directories_give_clear_errors(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(dv.DiversevisError, match="is a file"):
        Store(f, create=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(dv.DiversevisError, match="already contains files"):
        Store(tmp_path / "other", create=True)
    with pytest.raises(dv.DiversevisError, match="not a diversevis results directory"):
        Store(tmp_path / "missing")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / INDEX_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(dv.DiversevisError, match="not a readable results index"):
        Store(tmp_path / "corrupt")


def test_backend_choices_and_a_missing_ray_give_clear_errors(tmp_path, monkeypatch, capsys):
    from diversevis.study.sweep import sweep

    with pytest.raises(dv.DiversevisError, match="unknown backend 'dask'; choose from local, ray"):
        sweep("cell:simple", ["response"], out=tmp_path / "a", backend="dask")
    with pytest.raises(dv.DiversevisError, match="need backend='ray'"):
        sweep("cell:simple", ["response"], out=tmp_path / "a", workers=2)
    with pytest.raises(SystemExit):
        main(["sweep", "-m", "cell:simple", "--layers", "response", "--backend", "dask", "--out", "x"])
    assert "choose from 'local', 'ray'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(dv.DiversevisError, match=r"install diversevis\[ray\]"):
        sweep("cell:simple", ["response"], out=tmp_path / "a", backend="ray")
    args = ["sweep", "-m", "cell:simple", "--layers", "response", "--out", str(tmp_path / "b")]
    assert main([*args, "--backend", "ray"]) == 2
    assert "install diversevis[ray]" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_unit_no_image_drives_is_flagged_and_its_ratio_tests_skipped(tmp_path):
    """Unit 1 is a constant -1 (a dead unit): the sweep finishes, flags it, and writes no ratios for it."""
    conv = torch.nn.Conv2d(3, 2, 5)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 2, :] = 1.0  # unit 0: a horizontal bar detector
        conv.bias.copy_(torch.tensor([0.0, -1.0]))
    net = dv.Network(torch.nn.Sequential(conv), name="dead-unit", input_size=5)
    store = sweep(
        net,
        ["0"],
        "all",
        out=tmp_path / "s",
        n_images=2,
        tests=("dfv", "phase", "shift"),
        max_iter=30,
        mei_restarts=1,
        progress=False,
    )
    rows = {r["unit"]: r for r in store.rows()}
    store.close()
    assert set(rows) == {0, 1} and all(r["status"] == "done" for r in rows.values())
    dead = rows[1]["metrics"]
    assert dead["unresponsive"] and dead["mei_activation"] <= 0
    assert "dfv_min_ratio" not in dead and "shift_min_ratio" not in dead and "f1_f0" not in dead
    live = rows[0]["metrics"]
    assert "unresponsive" not in live and live["dfv_min_ratio"] > 0.5 and "shift_min_ratio" in live


def test_a_default_sweep_runs_floor_mode_and_stores_the_diversity_index(tmp_path, vgg16_paper):
    store = sweep(
        vgg16_paper, ["conv1_1"], "0-1", out=tmp_path / "s", max_iter=200, tests=("dfv",), progress=False
    )
    settings = store.get_meta("settings")
    assert settings["floor"] == 0.85
    for row in store.rows():
        m = row["metrics"]
        assert m["floor_holds"] is True and m["dfv_min_ratio"] >= 0.85 - 0.005
        assert isinstance(m["di"], float) and row["spec"]["diverse"]["mode"] == "floor"
    store.close()


def test_a_lambda_mode_store_says_how_to_resume_it(tmp_path, vgg16_paper, capsys):
    out = str(tmp_path / "s")
    args = ["sweep", "-m", "vgg16-paper", "--layers", "conv1_1", "--units", "0", "--tests", "dfv",
            "--max-iter", "20", "--quiet", "--out", out]  # fmt: skip
    assert main([*args, "--floor", "none"]) == 0
    assert main(args) == 2
    assert "resume it with --floor none" in capsys.readouterr().err
    assert main([*args, "--floor", "none"]) == 0


def test_a_unit_gratings_do_not_drive_gets_the_phase_test_on_its_own_mei(tmp_path, vgg16_paper):
    store = sweep(vgg16_paper, ["conv2_1"], "3", out=tmp_path / "s", max_iter=60, tests=("dfv", "phase"),
                  progress=False)  # fmt: skip
    (row,) = store.rows()
    m = row["metrics"]
    assert "do not drive" in m["phase_label"]  # its best grating reaches ~12 % of the MEI
    assert m["mei_f1_f0"] >= 0 and 0 <= m["mei_phase_modulation"] <= 1
    assert (tmp_path / "s" / row["path"] / "mei_phase" / "mei_phase.json").is_file()
    store.close()


def test_a_display_range_sweep_keeps_every_units_mei_and_set_inside_zero_one(tmp_path):
    out = tmp_path / "s"
    args = ["sweep", "-m", "cell:complex", "--layers", "response", "--units", "0", "--images", "3",
            "--tests", "dfv", "--max-iter", "200", "--mei-restarts", "1", "--display-range",
            "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    with Store(out) as store:
        (row,) = store.rows()
        assert store.get_meta("settings")["display_range"] is True
    assert row["spec"]["mei"]["display_range"] is True and row["spec"]["diverse"]["display_range"] is True
    images = np.load(out / row["path"] / "diverse" / "images.npz")["images"]
    assert images.min() >= 0 and images.max() <= 1
    # resuming without the flag is another setting: refused, not mixed into the store
    assert main(args[:-4] + ["--quiet", "--out", str(out)]) == 2
