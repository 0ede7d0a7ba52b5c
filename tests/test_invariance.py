"""Invariance metrics and DFV against its baselines (claim iii of the paper, on ground truth)."""

from __future__ import annotations

import math

import pytest
import torch

from diversevis.methods.baselines import compare_baselines, participation_ratio, set_metrics
from diversevis.models.synthetic import cell_network


def test_participation_ratio_closed_forms():
    ang = torch.arange(6) * (2 * math.pi / 6)
    circle = torch.stack([ang.cos(), ang.sin(), torch.zeros(6)], 1)
    assert participation_ratio(circle) == pytest.approx(2.0)
    assert participation_ratio(torch.eye(6)) == pytest.approx(5.0)  # a regular simplex spans N - 1 dims
    line = torch.arange(5.0)[:, None] * torch.tensor([[1.0, 2.0, 3.0]])
    assert participation_ratio(line) == pytest.approx(1.0)
    assert participation_ratio(torch.ones(4, 3)) == 0.0
    # unequal axes: eigenvalues (a^2, b^2) up to a common factor -> (a^2 + b^2)^2 / (a^4 + b^4)
    ellipse = torch.stack([3 * ang.cos(), ang.sin()], 1)
    assert participation_ratio(ellipse) == pytest.approx(100 / 82)


def test_set_metrics_ratios_and_distances():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    m = set_metrics(torch.tensor([1.0, 2.0, 3.0]), f, mei_activation=4.0)
    assert m["mean_ratio"] == pytest.approx(0.5) and m["min_ratio"] == pytest.approx(0.25)
    assert m["min_distance"] == pytest.approx(math.sqrt(0.5))
    assert m["mean_distance"] == pytest.approx((math.sqrt(12.5) + math.sqrt(0.5) + 3.0) / 3)


def test_complex_cell_dfv_is_more_diverse_than_random_restarts_at_full_activation():
    cmp = compare_baselines(
        cell_network("complex"),
        "response",
        0,
        norm=4.0,
        diversity=4.0,
        natural=False,
        gram=False,
        max_iter=400,
    )
    dfv, restarts = cmp.row("dfv"), cmp.row("restarts")
    assert dfv["min_ratio"] >= 0.95 and restarts["min_ratio"] >= 0.95
    assert dfv["min_distance"] > 3 * restarts["min_distance"]
    assert dfv["participation_ratio"] == pytest.approx(2.0, abs=0.1)  # the phase circle
    assert cmp.gaps()["restarts"] > 3


def test_in_floor_mode_the_complex_cell_scores_near_one_and_above_its_random_restarts():
    cmp = compare_baselines(
        cell_network("complex", size=12), "response", 0, norm=2.0, floor=0.85, natural=False, gram=False,
        max_iter=400,
    )  # fmt: skip
    dfv, restarts = cmp.row("dfv"), cmp.row("restarts")
    assert dfv["min_ratio"] >= 0.845 and dfv["di"] > 0.8
    # restarts land at random phases of the circle: spread, but less evenly than DFV's set
    assert restarts["di"] < dfv["di"] - 0.2
    assert "| DI |" in cmp.markdown() and cmp.extra["di_calibration"]["floor"] == 0.85


@pytest.mark.slow
def test_vgg16_conv2_1_comparison_with_all_baselines(vgg16_paper, tmp_path):
    cmp = compare_baselines(
        vgg16_paper,
        "conv2_1",
        5,
        diversity=0.5,
        distance_layer="conv1_2",
        exemplar_candidates=2048,
        max_iter=300,
    )
    assert [r["method"] for r in cmp.rows] == ["dfv", "restarts", "gram", "natural"]
    # the Gram baseline is tuned to DFV's mean activation
    assert cmp.row("gram")["mean_ratio"] == pytest.approx(cmp.row("dfv")["mean_ratio"], abs=0.05)
    out = cmp.save(tmp_path / "cmp")
    assert (out / "comparison.png").is_file() and (out / "comparison.json").is_file()
    assert "| dfv |" in (out / "comparison.md").read_text()
