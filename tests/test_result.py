"""Results: saved atomically with their full run spec, and read back identically."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

import diversevis as dv
from diversevis.models.synthetic import cell_network


@pytest.fixture(scope="module")
def result():
    return dv.diverse(
        cell_network("complex"), "response", 0, n_images=4, diversity=1.0, norm=1.0, seed=5, max_iter=80
    )


def test_save_writes_grid_npz_and_json_with_the_full_run_spec(result, tmp_path):
    out = result.save(tmp_path / "run")
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "images.npz", "result.json"]
    meta = json.loads((out / "result.json").read_text())
    spec = meta["spec"]
    for key in (
        "model",
        "layer",
        "unit",
        "n_images",
        "diversity",
        "distance",
        "norm",
        "lr",
        "max_iter",
        "patience",
        "ema",
        "seed",
        "precondition",
        "n_iter",
        "device",
        "versions",
        "created",
    ):
        assert key in spec, key
    assert spec["seed"] == 5 and spec["n_images"] == 4 and spec["model"] == "complex-cell"
    assert {"diversevis", "torch", "numpy", "python"} <= set(spec["versions"])
    assert meta["metrics"]["min_distance"] == pytest.approx(result.min_distance)
    grid = Image.open(out / "grid.png")
    assert grid.mode == "RGB" and grid.width > 4 * 16 * 4  # MEI + 4 tiles, upscaled


def test_saved_result_loads_back_identically(result, tmp_path):
    back = dv.Result.load(result.save(tmp_path / "run"))
    assert np.array_equal(back.images.numpy(), result.images.numpy())
    assert np.array_equal(back.activations.numpy(), result.activations.numpy())
    assert back.mei_activation == pytest.approx(result.mei_activation)
    assert back.spec == json.loads(json.dumps(result.spec))


def test_a_failed_save_leaves_no_result_json_and_no_temp_files(result, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(OSError):
        result.save(tmp_path / "run")
    names = [p.name for p in (tmp_path / "run").iterdir()]
    assert "result.json" not in names
    assert not [n for n in names if n.endswith(".tmp")]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_write_failing_after_its_temp_file_exists_leaves_no_temp_file_and_the_old_target(
    result, tmp_path, monkeypatch, failing
):
    """The failure strikes once the temporary file is written (at fsync or at the rename over the target):
    the temporary file is removed and every existing file keeps its old content."""
    out = tmp_path / "run"
    out.mkdir()
    old = {name: f"old {name}".encode() for name in ("grid.png", "images.npz", "result.json")}
    for name, data in old.items():
        (out / name).write_bytes(data)
    seen_tmp: list[list[str]] = []

    def boom(*a, **k):
        seen_tmp.append([p.name for p in out.iterdir() if p.name.endswith(".tmp")])
        raise OSError("disk full")

    monkeypatch.setattr(os, failing, boom)  # cache.py calls os.fsync / os.replace through the os module
    with pytest.raises(OSError, match="disk full"):
        result.save(out)
    monkeypatch.undo()
    assert seen_tmp and seen_tmp[0], "the failure must come after the temporary file exists"
    assert sorted(p.name for p in out.iterdir()) == sorted(old)  # no .tmp left behind
    for name, data in old.items():
        assert (out / name).read_bytes() == data, name


def test_loading_an_incomplete_directory_is_a_clear_error(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(dv.DiversevisError, match="no complete result"):
        dv.Result.load(tmp_path / "half")


def test_saved_files_get_normal_permissions(result, tmp_path):
    import os
    import stat

    out = result.save(tmp_path / "perm")
    mask = os.umask(0)
    os.umask(mask)
    for name in ("grid.png", "images.npz", "result.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~mask
