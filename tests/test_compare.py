"""Comparing two networks' sweeps at receptive-field-matched layers."""

from __future__ import annotations

import json

import pytest

import diversevis as dv
from diversevis.cli import main
from diversevis.study.compare import LayerSummary, compare_stores, match_layers
from diversevis.study.store import Store
from diversevis.study.sweep import sweep


def test_layers_are_paired_by_closest_receptive_field():
    a = [LayerSummary("conv1_1", 3, 1), LayerSummary("conv2_1", 10, 1), LayerSummary("conv3_1", 24, 1)]
    b = [LayerSummary("stem", 3, 1), LayerSummary("stage1", 7, 1), LayerSummary("stage2", 19, 1)]
    pairs = [(x.layer, y.layer) for x, y in match_layers(a, b)]
    assert pairs == [("conv1_1", "stem"), ("conv2_1", "stage1"), ("conv3_1", "stage2")]
    assert match_layers(a, b, max_ratio=1.2) == [(a[0], b[0])]  # 10 vs 7 and 24 vs 19 are too far apart


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory, vgg16_paper):
    root = tmp_path_factory.mktemp("cmp")
    kw = dict(max_iter=30, tests=("dfv", "phase"), progress=False)
    sweep(vgg16_paper, ["conv1_1"], "0-3", out=root / "vgg", **kw)
    sweep(dv.load_model("vgg16"), ["conv1_1"], "0-3", out=root / "vggpad", **kw)
    return root


def test_compare_two_sweeps_writes_table_figure_and_json(two_sweeps, capsys):
    assert (
        main(["compare", str(two_sweeps / "vgg"), str(two_sweeps / "vggpad"), "--out", str(two_sweeps / "c")])
        == 0
    )
    meta = json.loads((two_sweeps / "c" / "compare.json").read_text())
    (pair,) = meta["pairs"]
    assert pair["a"]["layer"] == pair["b"]["layer"] == "conv1_1" and pair["a"]["rf"] == 3
    # the padded and the VALID VGG-16 compute the same conv1_1 up to a positive per-channel scale:
    # the phase test's F1/F0 must agree unit by unit, hence in the median
    assert pair["a"]["median_f1_f0"] == pytest.approx(pair["b"]["median_f1_f0"], rel=1e-3)
    assert (two_sweeps / "c" / "compare.png").stat().st_size > 1000
    assert "| 3 / 3 | conv1_1 | conv1_1 |" in capsys.readouterr().out
    # floor mode by default: the calibrated diversity index is compared, and with it the same network
    # (up to a per-channel scale) gives the same index
    assert pair["a"]["median_di"] == pytest.approx(pair["b"]["median_di"], abs=0.05)
    assert pair["a"]["frac_not_driven"] is not None


def test_complex_like_counts_only_units_gratings_drive():
    labels = ["complex-like", "simple-like", "gratings do not drive this unit", "complex-like"]
    s = LayerSummary("l", 10, 4, phase_labels=labels).stats()
    assert s["frac_complex_like"] == pytest.approx(2 / 3) and s["frac_not_driven"] == pytest.approx(0.25)


def test_compare_rejects_bad_inputs(tmp_path, two_sweeps):
    Store(tmp_path / "empty", create=True).close()
    with pytest.raises(dv.DiversevisError, match="no finished units"):
        compare_stores(two_sweeps / "vgg", tmp_path / "empty")
    with pytest.raises(dv.DiversevisError, match="not a diversevis results directory"):
        compare_stores(two_sweeps / "vgg", tmp_path / "nothing")
