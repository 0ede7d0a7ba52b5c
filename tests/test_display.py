"""What the user sees is what was measured: the saved PNG's images, their activation, and notebook displays.

The optimised images sit around grey 0.5 at a fixed L2 norm; at a large norm some values leave ``[0, 1]``
and the PNG clips them. ``clip_report`` gives the images exactly as ``grid.png`` stores them (clipped and
rounded to 8 bits), so the activation ``Result.measure_shown`` reports must equal the activation of the
file read back from disk with PIL.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import diversevis as dv
from diversevis.cli.diverse import _print_summary
from diversevis.core.result import _to_uint8, clip_report, grid_tiles, image_grid
from diversevis.methods.baselines import Comparison
from diversevis.methods.problem import Problem
from diversevis.methods.shift import ShiftResult
from diversevis.models.synthetic import cell_network

NORM = 5.0  # complex cell, 16 px: ~3 % of the values leave [0, 1] at this contrast


def _evaluate(net: dv.Network):
    prob = Problem.build(
        net, "response", 0, None, "max", contrast=0.5, norm=NORM, distance_layer=None, images_folder=None
    )
    return lambda x: prob.evaluate(x, need_features=False)[0]


@pytest.fixture(scope="module")
def measured():
    net = cell_network("complex")
    res = dv.diverse(net, "response", 0, n_images=4, diversity=1.0, norm=NORM, seed=0, max_iter=100)
    return net, res.measure_shown(_evaluate(net))


def test_clip_report_gives_the_png_levels_and_the_clipped_fraction():
    x = torch.tensor([-0.2, 0.0, 0.3, 0.5, 1.0, 1.7, 0.9981, 0.0019]).view(1, 2, 2, 2)
    shown, frac = clip_report(x)
    assert frac == pytest.approx(2 / 8)
    levels = torch.tensor([0, 0, 77, 128, 255, 255, 255, 0], dtype=torch.float32) / 255
    assert torch.equal(shown.flatten(), levels)
    assert np.array_equal(
        (shown[0] * 255).round().numpy().astype(np.uint8).transpose(1, 2, 0), _to_uint8(x[0])
    )
    assert clip_report(torch.full((2, 3, 4, 4), 0.5)) == (
        pytest.approx(torch.full((2, 3, 4, 4), 128 / 255)),
        0.0,
    )


def test_the_reported_activation_is_the_activation_of_the_saved_png(measured, tmp_path):
    net, res = measured
    m = res.metrics()
    assert 0.005 < m["clipped_fraction"] < 0.1  # the images do leave [0, 1] at this norm
    assert m["shown_loss"] > 0.005  # and clipping costs activation: the optimised numbers overstate
    out = res.save(tmp_path / "run")
    back, mei = grid_tiles(out / "grid.png", 4, 16, mei=True)
    again = _evaluate(net)(back)
    assert torch.allclose(again, res.shown_activations, rtol=1e-4)  # 8-bit levels included: no 1 % slack
    assert float(_evaluate(net)(mei[None])[0]) == pytest.approx(res.shown_mei_activation, rel=1e-4)
    assert not torch.allclose(again, res.activations, rtol=5e-3)  # the unclipped numbers would not match

    meta = json.loads((out / "result.json").read_text())["metrics"]
    assert meta["shown_activations"] == pytest.approx(res.shown_activations.tolist())
    assert meta["clipped_fraction"] == pytest.approx(m["clipped_fraction"])
    assert meta["shown_mean_activation"] == pytest.approx(float(again.mean()), rel=1e-4)
    loaded = dv.Result.load(out)
    assert torch.equal(loaded.shown_activations, res.shown_activations)
    assert loaded.clipped_fraction == res.clipped_fraction
    assert loaded.metrics()["shown_loss"] == pytest.approx(m["shown_loss"])


def test_captions_show_the_measured_activation_of_what_is_shown(measured):
    _, res = measured
    first = f"{float(res.shown_activations[0]):.3g}"
    assert first != f"{float(res.activations[0]):.3g}"
    from diversevis.core.result import _labels

    assert _labels(res)[0].startswith(first + "  (")
    unmeasured = dv.Result(res.images, res.activations, res.distances, res.loss_history, res.spec)
    assert unmeasured.metrics()["shown_activations"] is None and unmeasured.clipped_fraction is None
    assert _labels(unmeasured)[0] == f"{float(res.activations[0]):.3g}"


def test_cli_prints_the_activation_of_the_saved_png(measured, capsys, tmp_path):
    _, res = measured
    _print_summary(res, "diverse", tmp_path)
    out = capsys.readouterr().out
    m = res.metrics()
    assert "activation of the saved PNG images: " in out
    assert f"{m['shown_loss']:.1%} below the optimised images" in out
    assert f"{m['clipped_fraction']:.2%} of pixel values clipped" in out
    plain = dv.Result(res.images, res.activations, res.distances, res.loss_history, res.spec)
    _print_summary(plain, "diverse", tmp_path)
    assert "saved PNG" not in capsys.readouterr().out


def test_grid_tiles_refuses_a_layout_that_does_not_fit():
    png = image_grid(torch.rand(3, 3, 8, 8), ["a", "b", "c"], title="t")
    tiles, none = grid_tiles(png, 3, 8)
    assert tiles.shape == (3, 3, 8, 8) and none is None
    with pytest.raises(dv.DiversevisError, match="not the"):
        grid_tiles(png, 4, 8)


# --------------------------------------------------------------------------- notebooks
def _is_png(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def test_results_show_themselves_in_a_notebook(measured):
    _, res = measured
    assert _is_png(res._repr_png_())[0] > 4 * 16
    html = res._repr_html_()
    assert html.count('<img src="data:image/png;base64,') == 1 and "Result(complex-cell" in html

    shift = ShiftResult(
        texture=0.5 + 0.1 * torch.randn(3, 31, 31),
        mask=torch.ones(16, 16),
        activations=torch.rand(3, 3) + 1,
        mei_activation=2.0,
        spec={"model": "m", "layer": "l", "unit": 0, "image_size": 16, "stride": 7},
        loss_history=np.zeros(3),
    )
    assert _is_png(shift._repr_png_())[0] >= 200
    assert '<img src="data:image/png;base64,' in shift._repr_html_() and "ShiftResult(" in shift._repr_html_()
    assert 0 <= shift.metrics()["clipped_fraction"] < 0.1

    row = {"method": "dfv", "mean_ratio": 1.0, "min_ratio": 0.9, "min_distance": 0.1}
    row.update(mean_distance=0.2, participation_ratio=2.0)
    cmp = Comparison(rows=[row], sets={"dfv": res}, mei_activation=1.0, spec={"model": "m"})
    assert _is_png(cmp._repr_png_())[0] > 4 * 16
    assert '<img src="data:image/png;base64,' in cmp._repr_html_() and "| dfv |" in cmp._repr_html_()
