"""Ctrl-C keeps the best iterate found so far: a partial result marked ``interrupted``, saved by the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import diversevis as dv
from diversevis.cli import main
from diversevis.core.optimize import Interrupted, _GroupState
from diversevis.models.synthetic import cell_network


def ctrl_c_at(step: int):
    def callback(info):
        if info.step == step:
            raise KeyboardInterrupt

    return callback


def test_ctrl_c_in_diverse_gives_the_best_iterate_so_far():
    net = cell_network("complex", size=9)
    with pytest.raises(Interrupted) as stop:
        dv.diverse(net, "response", 0, n_images=3, norm=1.0, mei=False, callbacks=[ctrl_c_at(5)])
    res = stop.value.result
    assert res.spec["interrupted"] is True and res.spec["n_iter"] == 6  # steps 0..5 were taken
    assert res.images.shape == (3, 3, 9, 9) and torch.isfinite(res.activations).all()
    assert len(res.loss_history) == 6


def test_ctrl_c_before_the_first_step_is_a_plain_interrupt(monkeypatch):
    def stop_at_once(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_GroupState, "record", stop_at_once)
    with pytest.raises(KeyboardInterrupt) as stop:
        dv.mei(cell_network("complex", size=9), "response", 0, norm=1.0, restarts=1, max_iter=5)
    assert not isinstance(stop.value, Interrupted)  # nothing to keep


def test_the_cli_saves_the_partial_result_and_exits_130(tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    record = _GroupState.record

    def record_then_stop(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return record(self, *args, **kwargs)

    monkeypatch.setattr(_GroupState, "record", record_then_stop)
    out = tmp_path / "run"
    rc = main(["diverse", "--model", "cell:complex", "--layer", "response", "--unit", "0", "--no-mei",
               "--norm", "1", "--images", "2", "--quiet", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 130 and "partial result above is saved" in err
    spec = json.loads((out / "result.json").read_text())["spec"]
    assert spec["interrupted"] is True and spec["n_iter"] == 7
    assert (out / "grid.png").is_file() and not list(out.glob("*.tmp"))


def test_ctrl_c_in_the_shift_test_gives_the_best_texture_so_far():
    net = cell_network("complex", size=9)
    with pytest.raises(Interrupted) as stop:
        dv.shift_test(net, "response", 0, norm=1.0, mei=1.0, stride=4, callbacks=[ctrl_c_at(3)])
    res = stop.value.result
    assert isinstance(res, dv.ShiftResult) and res.spec["interrupted"] is True and res.spec["n_iter"] == 4
    assert torch.isfinite(res.activations).all() and res.activations.shape == (2, 2)


def _stop_at_record(monkeypatch, n: int) -> None:
    calls = {"n": 0}
    record = _GroupState.record

    def record_then_stop(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return record(self, *args, **kwargs)

    monkeypatch.setattr(_GroupState, "record", record_then_stop)


def test_the_cli_saves_a_partial_shift_test_and_exits_130(tmp_path, capsys, monkeypatch):
    from diversevis.methods import shift

    monkeypatch.setattr(shift, "_shift_mei", lambda *a: (None, 1.0))  # interrupt the texture, not the MEI
    _stop_at_record(monkeypatch, 6)
    out = tmp_path / "shift"
    rc = main(["shift-test", "--model", "cell:complex", "--layer", "response", "--unit", "0", "--norm", "1",
               "--stride", "4", "--quiet", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 130 and "partial result above is saved" in err
    spec = json.loads((out / "shift.json").read_text())["spec"]
    assert spec["interrupted"] is True and (out / "texture.png").is_file() and not list(out.glob("*.tmp"))


def test_ctrl_c_in_a_sweep_keeps_the_finished_units_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    argv = ["sweep", "--model", "cell:complex", "--layers", "response", "--units", "0", "--tests", "dfv",
            "--max-iter", "20", "--quiet", "--out", str(out)]  # fmt: skip
    _stop_at_record(monkeypatch, 3)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted: 0 units are saved" in err and "run the same command again to resume" in err
    monkeypatch.undo()
    assert main(argv) == 0  # the same command resumes
