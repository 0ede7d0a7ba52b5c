"""Dead starts: a unit after a ReLU gives exactly 0 (with no gradient) for most random starts.

Known answers on a rectified Gabor cell ``relu(<g, x> + b)`` with unit-norm ``g`` and images of norm 1:
the best achievable value is ``1 + b``. With ``b = -0.5`` every random start is dead (``<g, x>`` of a
random unit vector is ~0.1), yet the optimum is alive; with ``b = -2`` no image drives the unit at all.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import diversevis as dv
from diversevis.methods.dead_starts import dead_mask
from diversevis.methods.dfv_units import diverse_units, mei_units
from diversevis.models.synthetic import gabor

SIZE = 9


def rectified_cell(bias: float) -> dv.Network:
    conv = nn.Conv2d(3, 1, SIZE)
    with torch.no_grad():
        conv.weight[0] = gabor(SIZE, channels=3)
        conv.bias.fill_(bias)
    model = nn.Sequential(conv, nn.ReLU()).eval().requires_grad_(False)
    return dv.Network(model, mean=[0.5] * 3, std=[1.0] * 3, input_size=SIZE)


def test_dead_mask_finds_zero_value_zero_gradient_images():
    net = rectified_cell(-0.5)
    x = torch.full((3, 3, SIZE, SIZE), 0.5)
    x[1] += 0.9 * gabor(SIZE, channels=3)  # <g, x - 0.5> = 0.9 > 0.5: alive
    values = lambda z: net.activations(z, ["1"])["1"][:, 0, 0, 0]  # noqa: E731
    assert dead_mask(values, x).tolist() == [True, False, True]


def test_a_unit_dead_at_every_start_is_revived_through_the_redirected_relu():
    net = rectified_cell(-0.5)
    m = dv.mei(net, "1", 0, norm=1.0, restarts=2, max_iter=300)
    assert m.spec["redirected_relu"] is True and m.spec["dead_starts_redrawn"] == 2 * 3
    assert m.mei_activation == pytest.approx(0.5, abs=0.02)  # the optimum 1 + b
    res = dv.diverse(net, "1", 0, n_images=3, diversity=0.05, norm=1.0, max_iter=300, mei=m)
    assert "dead_images" not in res.spec and float(res.ratios.min()) > 0.8


def test_without_revival_the_same_unit_stays_at_zero():
    """The known failure the mechanism fixes: plain gradient ascent from a dead start never moves."""
    net = rectified_cell(-0.5)
    from diversevis.core.optimize import optimize
    from diversevis.core.params import PixelImage

    param = PixelImage(2, 3, SIZE, 1.0, generator=torch.Generator().manual_seed(0))
    opt = optimize(param, lambda x: -net.activations(x, ["1"])["1"].mean(), max_iter=50)
    assert float(net.activations(opt.images, ["1"])["1"].max()) == 0.0


def test_a_unit_no_image_drives_names_its_pre_activation_layer():
    net = rectified_cell(-2.0)
    with pytest.warns(RuntimeWarning, match=r"no image drives unit 0 of '1'.*pre-activation layer '0'"):
        m = dv.mei(net, "1", 0, norm=1.0, restarts=1, max_iter=20)
    assert m.mei_activation == 0 and "pre-activation layer '0'" in m.spec["dead_unit"]


def test_dead_images_are_reported():
    net = rectified_cell(-2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = dv.diverse(net, "1", 0, n_images=2, norm=1.0, max_iter=10, mei=False)
    assert res.spec["dead_images"] == [0, 1]


def test_batched_units_revive_dead_starts_like_one_unit_runs():
    net = rectified_cell(-0.5)
    one = dv.mei(net, "1", 0, norm=1.0, restarts=2, max_iter=60)
    (many,) = mei_units(net, "1", [0], norm=1.0, restarts=2, max_iter=60)
    torch.testing.assert_close(many.images, one.images, rtol=0, atol=0)
    (div,) = diverse_units(net, "1", [0], n_images=2, norm=1.0, max_iter=30, mei=[one])
    assert div.spec["redirected_relu"] is True


def test_alive_starts_keep_their_images_and_their_spec():
    net = rectified_cell(0.5)  # every start alive: nothing redrawn, nothing redirected
    m = dv.mei(net, "1", 0, norm=1.0, restarts=2, max_iter=20)
    assert "dead_starts_redrawn" not in m.spec and "redirected_relu" not in m.spec


def test_the_cli_reports_dead_starts_and_the_pre_activation_layer(tmp_path, capsys, monkeypatch):
    import diversevis.cli.diverse
    from diversevis.cli import main

    monkeypatch.setattr(diversevis.cli.diverse, "load", lambda args: rectified_cell(-2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rc = main(["diverse", "--model", "x", "--layer", "1", "--unit", "0", "--images", "2", "--norm", "1",
                   "--max-iter", "5", "--mei-restarts", "1", "--quiet", "--out", str(tmp_path / "r")])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "dead images (activation 0): [0, 1]" in out and "pre-activation layer '0'" in out
