"""Non-finite losses, images or gradients stop a run with a clear error; NaN weights are refused;
a sweep records a unit that goes non-finite as failed; the loss history grows with the run."""

from __future__ import annotations

import math
import re

import pytest
import torch

import diversevis as dv
from diversevis.core.errors import DiversevisError
from diversevis.core.optimize import NonFiniteError, optimize
from diversevis.models.synthetic import cell_network
from diversevis.study.sweep import sweep


@pytest.fixture(scope="module")
def cell():
    return cell_network("complex", size=9)


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), 1e38, 0.0])
def test_a_learning_rate_adam_cannot_step_with_is_refused(cell, lr):
    with pytest.raises(DiversevisError, match=r"lr must be"):
        dv.diverse(cell, "response", 0, n_images=2, max_iter=5, lr=lr)
    with pytest.raises(DiversevisError, match=r"lr must be a number > 0 and <= 3\.4e\+37"):
        optimize(_Images(torch.ones(1, 1, 2, 2)), lambda x: x.sum(), lr=lr, max_iter=5)


def test_images_that_overflow_stop_at_the_first_non_finite_iteration():
    """A huge step (lr 1e10 on images scaled by 1e30) overflows the images at the second iteration."""
    param = _Images(torch.ones(1, 1, 2, 2), scale=1e30)
    with pytest.raises(NonFiniteError, match=r"images became non-finite .* at iteration 1: .*lr=1e\+10"):
        optimize(param, lambda x: -x.mean(), lr=1e10, max_iter=20)


def test_a_loss_that_overflows_names_the_loss_value_and_iteration():
    """Images 1e19 apart: their squared sum overflows to inf at the second iteration."""
    with pytest.raises(NonFiniteError, match=r"the loss became -inf at iteration 1: .*learning rate"):
        optimize(_Images(torch.ones(1, 1, 2, 2)), lambda x: -(x**2).sum(), lr=1e20, max_iter=20)


@pytest.mark.parametrize("kw", [{"norm": 1e30}, {"contrast": 1e30}])
def test_an_absurd_norm_or_contrast_stops_at_the_first_non_finite_loss(cell, kw):
    with pytest.raises(DiversevisError, match=r"the loss became -inf at iteration 0: .*NaN weights"):
        dv.diverse(cell, "response", 0, n_images=2, max_iter=50, **kw)


def test_an_absurd_diversity_weight_stops_at_the_first_non_finite_gradient(cell):
    with pytest.raises(DiversevisError, match=r"the gradients became non-finite .* at iteration 0"):
        dv.diverse(cell, "response", 0, n_images=2, max_iter=50, diversity=3e38)


def test_non_finite_gradients_with_a_finite_loss_are_caught():
    """sqrt has an infinite derivative at 0: the loss stays finite, its gradient does not."""
    param = _Images(torch.zeros(1, 1, 2, 2))
    with pytest.raises(NonFiniteError, match=r"gradients became non-finite .* at iteration 0"):
        optimize(param, lambda x: x.sqrt().sum(), max_iter=20)


def test_a_model_with_a_nan_weight_is_refused_when_wrapped():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Conv2d(2, 2, 1))
    with torch.no_grad():
        model[2].weight[1, 0] = float("nan")
    with pytest.raises(DiversevisError, match=r"'2\.weight' holds NaN values: check the checkpoint"):
        dv.Network(model, in_channels=1)
    with torch.no_grad():
        model[2].weight[1, 0] = float("inf")
    with pytest.raises(DiversevisError, match=r"'2\.weight' holds infinite values"):
        dv.Network(model, in_channels=1)


def test_a_sweep_records_an_overflowing_unit_as_failed_and_finishes_the_others(tmp_path):
    """Unit 1's weights are a +-6e37 checkerboard (finite): optimising it overflows float32, while the
    bar detectors 0 and 2 (and their images, nearly orthogonal to the checkerboard) stay finite."""
    conv = torch.nn.Conv2d(3, 3, 5)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 2, :] = 1.0
        conv.weight[2, :, :, 2] = 1.0
        conv.bias.zero_()
        i = torch.arange(5)
        conv.weight[1] = 6e37 * (-1.0) ** (i.view(1, 5, 1) + i.view(1, 1, 5) + torch.arange(3).view(3, 1, 1))
    net = dv.Network(torch.nn.Sequential(conv), name="overflow", input_size=5)
    kw = dict(n_images=2, max_iter=30, mei_restarts=1, tests=("dfv",), progress=False)
    store = sweep(net, ["0"], "all", out=tmp_path / "s", **kw)
    rows = {r["unit"]: r for r in store.rows()}
    store.close()
    assert set(rows) == {0, 1, 2} and all(r["status"] == "done" for r in rows.values())
    bad = rows[1]["metrics"]
    assert set(bad) == {"failed"} and rows[1]["spec"]["failed"] == bad["failed"]
    assert re.search(r"non-finite .* at iteration \d+", bad["failed"]), bad["failed"]
    for u in (0, 2):
        assert "failed" not in rows[u]["metrics"] and rows[u]["metrics"]["dfv_min_ratio"] > 0.5
    again = sweep(net, ["0"], "all", out=tmp_path / "s", **kw)  # resumed: the failed unit is not retried
    assert {r["unit"]: r["seconds"] for r in again.rows()} == {u: r["seconds"] for u, r in rows.items()}
    again.close()


def test_the_loss_history_grows_with_the_run_not_with_max_iter(monkeypatch):
    """max_iter = 1e8 would take 400 MB of history up front; the run stops after a few steps."""
    sizes = []
    full = torch.full

    def spy(size, *args, **kwargs):
        sizes.append(math.prod(size))
        return full(size, *args, **kwargs)

    monkeypatch.setattr(torch, "full", spy)
    res = optimize(_Images(torch.ones(1, 1, 2, 2)), lambda x: (x * 0).sum(), max_iter=10**8, patience=3)
    assert res.n_iter == 5 and res.history.shape == (5,) and res.stopped_early
    assert max(sizes) <= 4096


class _Images(torch.nn.Module):
    def __init__(self, x: torch.Tensor, scale: float = 1.0) -> None:
        super().__init__()
        self.x = torch.nn.Parameter(x.clone())
        self.scale = scale

    def forward(self) -> torch.Tensor:
        return self.x * self.scale
