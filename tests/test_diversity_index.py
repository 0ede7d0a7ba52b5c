"""The calibrated diversity index: 0 for a simple cell, 1 for a complex cell, in between for partial invariance."""

from __future__ import annotations

import math

import pytest
import torch

import diversevis as dv
from diversevis.methods import diversity_index as di
from diversevis.methods.diversity_index import calibrated_index, calibration_floor, set_distances
from diversevis.models.synthetic import cell_network

NORM = 2.0


def test_calibrated_index_is_zero_at_the_simple_reference_and_one_at_the_complex_one():
    assert calibrated_index(0.2, 0.2, 0.6) == 0.0
    assert calibrated_index(0.6, 0.2, 0.6) == 1.0
    assert calibrated_index(0.4, 0.2, 0.6) == pytest.approx(0.5)
    assert calibrated_index(0.8, 0.2, 0.6) == pytest.approx(1.5)  # more invariant than the complex cell
    assert calibrated_index(0.4, 0.3, 0.3) is None  # references that do not separate give no index


def test_set_distances_of_two_orthogonal_images_at_norm_rho():
    x = torch.full((2, 1, 2, 2), 0.5)
    x[0, 0, 0, 0] += 1.0
    x[1, 0, 1, 1] += 1.0  # orthogonal, both at norm 1 around grey: RMS distance sqrt(2 / 4)
    d = set_distances(x, feats=x.flatten(1) * 2)
    assert d["pixel_mean"] == pytest.approx(math.sqrt(0.5)) and d["pixel_min"] == pytest.approx(
        math.sqrt(0.5)
    )
    assert d["feature_mean"] == pytest.approx(2 * math.sqrt(0.5))


def test_lambda_mode_is_calibrated_at_the_sets_min_ratio_rounded_to_a_twentieth():
    assert calibration_floor(0.913, None) == 0.9
    assert calibration_floor(0.99, None) == 0.95 and calibration_floor(0.2, None) == 0.5
    assert calibration_floor(0.7, 0.85) == 0.85  # floor mode: the set's own floor
    assert calibration_floor(None, None) is None


def _index(kind: str, size: int = 13, **kw) -> dict:
    net = cell_network(kind, size=size, **kw)
    res = dv.diverse(net, "response", 0, n_images=6, floor=0.85, norm=NORM, mei_restarts=2, max_iter=600)
    assert res.spec["floor_holds"] is True
    return res.spec["diversity_index"]


@pytest.fixture(scope="module")
def held_out():
    """Cells not used by the calibration: another size, orientation and wavelength than the references."""
    kw = {"theta": 0.3, "wavelength": 6.0}
    return {kind: _index(kind, **kw) for kind in ("simple", "bipartite", "complex", "texture")}


def test_a_held_out_simple_cell_scores_near_zero(held_out):
    assert abs(held_out["simple"]["di"]) < 0.1


def test_a_held_out_complex_cell_scores_near_one(held_out):
    assert 0.85 < held_out["complex"]["di"] < 1.15


def test_a_position_invariant_texture_unit_scores_like_a_complex_cell_or_above(held_out):
    assert held_out["texture"]["di"] > 0.85


def test_a_half_invariant_bipartite_unit_scores_in_between(held_out):
    simple, bipartite, complex_ = (held_out[k]["di"] for k in ("simple", "bipartite", "complex"))
    assert simple + 0.2 < bipartite < complex_ - 0.1


def test_the_index_is_the_same_on_another_size_and_orientation():
    a = _index("complex", size=17, theta=1.1, wavelength=5.0)["di"]
    b = _index("simple", size=17, theta=1.1, wavelength=5.0)["di"]
    assert 0.85 < a < 1.15 and abs(b) < 0.1


def test_calibrations_are_cached_on_disk_and_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("DIVERSEVIS_CACHE", str(tmp_path))
    monkeypatch.setattr(di, "_MEMORY", {})
    net = cell_network("complex", size=9)
    kw = dict(n_images=3, floor=0.85, norm=1.0, mei=1.0, max_iter=60)
    first = dv.diverse(net, "response", 0, **kw).spec["di_calibration"]
    assert len(list((tmp_path / "diversity_index").glob("*.json"))) == 1

    def must_not_run(*a, **k):
        raise AssertionError("the cached calibration should have been read")

    monkeypatch.setattr(di, "_MEMORY", {})
    monkeypatch.setattr(di, "_run_references", must_not_run)
    again = dv.diverse(net, "response", 0, **kw).spec["di_calibration"]
    assert again["simple"] == first["simple"] and again["complex"] == first["complex"]


def test_without_the_mei_there_is_no_index_and_calibrate_false_skips_it():
    net = cell_network("complex", size=9)
    res = dv.diverse(net, "response", 0, n_images=3, norm=1.0, mei=False, max_iter=30)
    assert res.spec["diversity_index"] is None and res.metrics().get("di") is None
    off = dv.diverse(net, "response", 0, n_images=3, norm=1.0, mei=1.0, max_iter=30, calibrate=False)
    assert "diversity_index" not in off.spec


def test_the_index_is_in_the_metrics_of_a_floor_set():
    net = cell_network("complex", size=9)
    res = dv.diverse(net, "response", 0, n_images=3, floor=0.85, norm=1.0, mei=1.0, max_iter=200)
    m = res.metrics()
    assert m["di"] == res.spec["diversity_index"]["di"] and "di_min" in m and "di_feature" not in m


def test_the_cli_says_a_lambda_sets_index_is_not_comparable_and_a_floor_sets_is(tmp_path, capsys):
    from diversevis.cli import main

    base = ["diverse", "--model", "cell:complex", "--layer", "response", "--unit", "0", "--images", "3",
            "--max-iter", "150", "--quiet"]  # fmt: skip
    assert main([*base, "--diversity", "0.01", "--out", str(tmp_path / "lam")]) == 0
    out = capsys.readouterr().out
    assert "diversity index (0 simple, 1 complex" in out and "lambda mode" in out and "--floor 0.85" in out
    assert main([*base, "--floor", "0.85", "--out", str(tmp_path / "floor")]) == 0
    out = capsys.readouterr().out
    assert "diversity index (0 simple, 1 complex" in out and "lambda mode" not in out


def test_the_clipped_optimum_of_a_linear_filter_has_its_closed_form():
    from diversevis.methods.diversity_index import clipped_linear_optimum

    g = torch.tensor([0.8, 0.6])
    assert clipped_linear_optimum(g, 0.5) == pytest.approx(0.5)  # 0.5 g stays in range: the norm itself
    # at norm 0.7 pixel 1 saturates at 0.5 and pixel 2 takes the rest: sqrt(0.7^2 - 0.5^2) = 0.4899
    assert clipped_linear_optimum(g, 0.7) == pytest.approx(0.8 * 0.5 + 0.6 * math.sqrt(0.24), rel=1e-6)
    assert clipped_linear_optimum(g, 5.0) == pytest.approx(0.5 * 1.4)  # every pixel saturated


def test_with_display_range_a_di_whose_reference_cells_saturate_is_flagged_not_trusted():
    net = cell_network("simple", size=12)
    kw = dict(n_images=3, floor=0.85, display_range=True, max_iter=150, mei_restarts=1)
    low = dv.diverse(net, "response", 0, norm=2.0, **kw)  # the references stay inside [0, 1]
    assert "references_clipped" not in low.spec["di_calibration"]
    with pytest.warns(UserWarning, match="not calibrated here"):
        high = dv.diverse(net, "response", 0, norm=6.0, **kw)
    assert high.spec["di_calibration"]["references_clipped"] is True
