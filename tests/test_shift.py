"""The shift-invariance (texture) test: window, crops, contrast, and known answers on synthetic cells."""

from __future__ import annotations

import json
import math

import pytest
import torch

import diversevis as dv
from diversevis.methods.shift import TextureImage, crop_batch, crop_offsets, shift_test, super_gaussian_mask
from diversevis.models.synthetic import cell_network

RHO = 4.0


def test_super_gaussian_window_closed_form():
    m = super_gaussian_mask(25, p=2, q=4, sigma=10.0)
    assert m.shape == (25, 25) and float(m[12, 12]) == pytest.approx(1.0)
    # at radius sigma along an axis the window is exp(-1); at 2 sigma, exp(-16)
    assert float(m[12, 22]) == pytest.approx(math.exp(-1), rel=1e-5)
    g = super_gaussian_mask(9, p=2, q=2, sigma=3.0)  # q = 2: a Gaussian exp(-r^2 / sigma^2)
    assert float(g[4 + 2, 4 + 1]) == pytest.approx(math.exp(-(4 + 1) / 9), rel=1e-5)
    square = super_gaussian_mask(21, p=50, q=4, sigma=8.0)  # large p: a square window
    assert float(square[10 + 6, 10 + 6]) == pytest.approx(float(square[10, 10 + 6]), rel=0.05)
    assert torch.allclose(m, m.T) and torch.allclose(m, torch.flip(m, [0]))


def test_default_window_has_sigma_10_at_rf_24():
    assert torch.allclose(super_gaussian_mask(24), super_gaussian_mask(24, 2, 4, 10.0))


def test_crops_are_the_texture_windows_at_every_offset_but_the_last():
    rf = 6
    tex = torch.randn(3, 2 * rf - 1, 2 * rf - 1)
    crops = crop_batch(tex, rf)
    offs = crop_offsets(rf)
    assert offs == [0, 1, 2, 3, 4] and crops.shape == (25, 3, rf, rf)
    for k, (i, j) in enumerate((i, j) for i in offs for j in offs):
        assert torch.equal(crops[k], tex[:, i : i + rf, j : j + rf])
    strided = crop_batch(tex, rf, stride=2)
    assert strided.shape == (9, 3, rf, rf) and torch.equal(strided[4], tex[:, 2 : 2 + rf, 2 : 2 + rf])


def test_masked_crops_have_the_requested_rms_norm():
    param = TextureImage(3, 10, 2.5, generator=torch.Generator().manual_seed(0))
    crops = crop_batch(param() - 0.5, 10) * param.mask()
    rms = crops.detach().flatten(1).pow(2).sum(1).mean().sqrt()
    assert float(rms) == pytest.approx(2.5, rel=1e-5)


@pytest.fixture(scope="module")
def meis():
    return {
        k: dv.mei(cell_network(k), "response", 0, norm=RHO, restarts=2, seed=0)
        for k in ("complex", "simple", "texture")
    }


@pytest.mark.parametrize("kind", ["complex", "texture"])
def test_shift_invariant_cells_keep_every_shift_near_the_mei(kind, meis):
    res = shift_test(cell_network(kind), "response", 0, norm=RHO, mei=meis[kind], seed=0)
    assert res.activations.shape == (15, 15)
    assert res.min_ratio > 0.75 and res.mean_ratio > 0.8


def test_simple_cell_loses_its_response_under_shifts(meis):
    res = shift_test(cell_network("simple"), "response", 0, norm=RHO, mei=meis["simple"], seed=0)
    assert res.min_ratio < 0.2 and res.mean_ratio < 0.35


def test_learned_window_changes_shape_and_result_is_saved(meis, tmp_path):
    res = shift_test(
        cell_network("complex"),
        "response",
        0,
        norm=RHO,
        mei=meis["complex"],
        learn_mask=True,
        max_iter=60,
        stride=2,
    )
    mp = res.spec["mask_params"]
    assert (mp["p"], mp["q"], mp["sigma"]) != (2.0, 2.0, 16.0)
    out = res.save(tmp_path / "shift")
    for name in ("texture.png", "mask.png", "shift_map.png", "shift.npz", "shift.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "shift.json").read_text())
    assert meta["spec"]["method"] == "shift_test" and meta["spec"]["stride"] == 2
    assert meta["metrics"]["min_ratio"] == pytest.approx(res.min_ratio)
    assert res.crops().shape == (64, 3, 16, 16)


def test_shift_test_on_real_vgg16_conv2_1_reports_what_the_unit_sees(vgg16_paper):
    """Known answers on the real network: conv2_1 of the VALID VGG sees a 10 px field, so each masked crop
    gives a single (1 x 1) conv2_1 output. The reported activations are the unit's responses to
    ``res.crops()`` recomputed here, in row-major shift order; the crops have the requested contrast, the
    same as the MEI's, and the ratios are those activations over the MEI's (recomputed) activation."""
    mei = dv.mei(vgg16_paper, "conv2_1", 3, restarts=1, max_iter=100)
    res = shift_test(vgg16_paper, "conv2_1", 3, stride=3, max_iter=40, mei=mei)
    assert res.activations.shape == (3, 3) and res.spec["texture_size"] == 19
    assert res.spec["image_size"] == 10 and torch.isfinite(res.activations).all()

    crops = res.crops()
    assert crops.shape == (9, 3, 10, 10)
    with torch.no_grad():
        out = vgg16_paper.activations(crops, ["conv2_1"])["conv2_1"]
        mei_out = vgg16_paper.activations(mei.mei_image[None], ["conv2_1"])["conv2_1"]
    assert out.shape == (9, 128, 1, 1)
    torch.testing.assert_close(res.activations.flatten(), out[:, 3, 0, 0].cpu(), rtol=1e-4, atol=1e-4)

    norm = res.spec["norm"]
    rms = float((crops - 0.5).flatten(1).pow(2).sum(1).mean().sqrt())
    assert rms == pytest.approx(norm, rel=1e-4)  # the requested contrast (RMS of the crops' L2 norms)
    assert float((mei.mei_image - 0.5).norm()) == pytest.approx(norm, rel=1e-4)  # the MEI's contrast

    assert res.mei_activation == pytest.approx(mei.mei_activation)
    assert float(mei_out[0, 3, 0, 0]) == pytest.approx(res.mei_activation, rel=1e-4)
    acts = res.activations.flatten()
    assert res.mean_ratio == pytest.approx(float(acts.mean()) / res.mei_activation, rel=1e-6)
    assert res.min_ratio == pytest.approx(float(acts.min()) / res.mei_activation, rel=1e-6)
    assert 0 < res.min_ratio <= res.mean_ratio <= float(acts.max()) / res.mei_activation <= 1.0 + 1e-3


def test_bad_shift_arguments_are_rejected():
    net = cell_network("complex")
    with pytest.raises(dv.DiversevisError, match=r"weight_min must be a finite number in \[0, 1\]"):
        shift_test(net, "response", 0, norm=RHO, weight_min=2.0)
    with pytest.raises(dv.DiversevisError, match="stride"):
        shift_test(net, "response", 0, norm=RHO, stride=0)
    with pytest.raises(dv.DiversevisError, match="MEI"):
        shift_test(net, "response", 0, norm=RHO, mei=False)
    with pytest.raises(dv.DiversevisError, match="single crop"):
        shift_test(net, "response", 0, norm=RHO, stride=15, mei=1.0)
