"""The phase of an image's dominant Fourier component, and the phase test on a unit's own MEI."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import diversevis as dv
from diversevis.core.errors import DiversevisError
from diversevis.methods import mei_phase as mp
from diversevis.methods.dfv import run_mei
from diversevis.methods.mei_phase import dominant_frequency, mei_phase_test, shift_dominant_phase
from diversevis.methods.phase import grating, modulation_ratio
from diversevis.models.synthetic import cell_network, gabor

RHO = 1.0  # MEI norm around grey in these tests (the synthetic cells' closed forms scale with it)


def _mei(kind: str, size: int = 16) -> torch.Tensor:
    """The closed-form MEI at norm RHO: the even Gabor (simple: its filter; complex: one of its pair)."""
    if kind == "texture":
        return 0.5 + RHO * grating(size, 0.0, 0.25, 0.0, norm=1.0, per_image=True)
    return 0.5 + RHO * gabor(size)


# ------------------------------------------------------------------------------ shift_dominant_phase

GRATINGS = [  # (size, theta, frequency): wave vectors on FFT bins, so the grating is periodic
    (16, 0.0, 3 / 16),
    (16, math.pi / 2, 2 / 16),
    (16, math.pi / 4, math.sqrt(2) * 2 / 16),
    (15, 0.0, 4 / 15),
    ((12, 20), math.pi / 2, 1 / 12),
]


@pytest.mark.parametrize(("size", "theta", "f"), GRATINGS)
@pytest.mark.parametrize("dphi", [0.3, math.pi / 2, math.pi, -2.0])
@pytest.mark.parametrize("band", [0.0, 0.05, math.inf])
def test_shift_dominant_phase_of_a_grating_moves_its_phase_by_dphi(size, theta, f, dphi, band):
    phi = 0.7
    x = 0.5 + grating(size, theta, f, phi, norm=2.0)
    y = shift_dominant_phase(x, dphi, band=band)
    want = 0.5 + grating(size, theta, f, phi + dphi, norm=2.0)
    torch.testing.assert_close(y, want, rtol=0, atol=1e-5)
    assert float((y - 0.5).norm()) == pytest.approx(float((x - 0.5).norm()), rel=1e-6)
    assert y.dtype == x.dtype and y.shape == x.shape


def test_dominant_frequency_takes_the_member_of_the_pair_with_positive_horizontal_frequency():
    assert dominant_frequency(grating(16, 0.0, 3 / 16, 0.0)) == pytest.approx((0.0, 3 / 16))
    assert dominant_frequency(grating(16, math.pi, 3 / 16, 0.0)) == pytest.approx((0.0, 3 / 16))
    assert dominant_frequency(grating(16, math.pi / 2, 2 / 16, 0.0)) == pytest.approx((2 / 16, 0.0))
    assert dominant_frequency(grating(16, -math.pi / 2, 2 / 16, 0.0)) == pytest.approx((2 / 16, 0.0))
    # theta = pi flips the wave vector, hence the sign of the phase the function moves
    x = grating(16, math.pi, 3 / 16, 0.4)
    torch.testing.assert_close(
        shift_dominant_phase(x, 1.0), grating(16, math.pi, 3 / 16, -0.6), atol=1e-5, rtol=0
    )


def test_only_the_dominant_pair_moves_with_band_zero():
    strong, weak = grating(16, 0.0, 3 / 16, 0.0), 0.3 * grating(16, 0.0, 1 / 16, 0.2)
    x = strong + weak
    torch.testing.assert_close(shift_dominant_phase(x, math.pi), -strong + weak, atol=1e-5, rtol=0)
    # a band that reaches the weak component, or the whole half-plane, moves it too
    for band in (2 / 16, math.inf):
        torch.testing.assert_close(shift_dominant_phase(x, math.pi, band=band), -x, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        shift_dominant_phase(x, math.pi, band=1 / 16), -strong + weak, atol=1e-5, rtol=0
    )


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(3, 13),  # a 2 x 2 image holds only DC and Nyquist bins: no phase to move (refused)
    st.integers(1, 13),
    st.floats(-10, 10),
    st.sampled_from([0.0, 0.1, 0.3, math.inf]),
    st.integers(0, 2**32 - 1),
)
def test_any_image_keeps_its_norm_mean_and_spectrum_magnitudes(c, h, w, dphi, band, seed):
    x = 0.5 + torch.randn(c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = shift_dominant_phase(x, dphi, band=band)
    assert float((y - 0.5).norm()) == pytest.approx(float((x - 0.5).norm()), rel=1e-9)
    torch.testing.assert_close(y.mean((1, 2)), x.mean((1, 2)), rtol=0, atol=1e-9)
    torch.testing.assert_close(torch.fft.fft2(y).abs(), torch.fft.fft2(x).abs(), rtol=0, atol=1e-9)
    # a full turn is the identity
    torch.testing.assert_close(shift_dominant_phase(x, 2 * math.pi, band=band), x, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("image", "kw", "message"),
    [
        (torch.zeros(16, 16), {}, r"\(C, H, W\) tensor"),
        (np.zeros((3, 8, 8)), {}, r"\(C, H, W\) tensor"),
        (torch.full((3, 8, 8), math.nan), {}, "finite"),
        (torch.zeros(3, 8, 8, dtype=torch.int64), {}, "floating-point"),
        (torch.full((3, 8, 8), 0.5), {}, "no grating component"),
        (torch.rand(3, 2, 2), {}, "no grating component"),
        (torch.rand(3, 8, 8), {"dphi": math.nan}, "dphi must be a finite number"),
        (torch.rand(3, 8, 8), {"band": -1.0}, "band"),
        (torch.rand(3, 8, 8), {"band": True}, "band"),
    ],
)
def test_shift_dominant_phase_refuses_bad_input(image, kw, message):
    kw = {"dphi": 1.0, **kw}
    with pytest.raises(DiversevisError, match=message):
        shift_dominant_phase(image, kw.pop("dphi"), **kw)


# ------------------------------------------------------------------------------------- MEI phase test


def test_complex_cell_curve_is_flat_simple_cell_curve_is_modulated():
    simple = mei_phase_test(cell_network("simple", size=16), "response", 0, mei=_mei("simple"))
    complex_ = mei_phase_test(cell_network("complex", size=16), "response", 0, mei=_mei("complex"))
    # energy model: the response to its MEI does not depend on the phase
    assert complex_.modulation < 0.05 and complex_.f1_f0 < 0.05 and complex_.min_ratio > 0.95
    assert complex_.kind == "complex-like"
    # linear model: p(phi) = p(MEI) cos(phi): a rectified cosine, F1/F0 = pi / 2, min = -MEI
    assert simple.modulation == pytest.approx(1.0)
    assert simple.f1_f0 == pytest.approx(math.pi / 2, abs=0.02)
    assert simple.min_ratio == pytest.approx(-1.0, abs=0.01)
    np.testing.assert_allclose(simple.curve, simple.mei_activation * np.cos(simple.phases), atol=0.01)
    assert simple.kind == "simple-like"
    assert simple.mei_activation == pytest.approx(RHO, rel=1e-4)  # <g0, rho g0> = rho
    assert simple.frequency == pytest.approx((0.0, 3 / 16)) and simple.shifted_energy > 0.99


def test_texture_cell_curve_is_flat():
    r = mei_phase_test(cell_network("texture", size=16), "response", 0, mei=_mei("texture"))
    assert r.modulation < 0.05 and r.f1_f0 < 0.05 and r.min_ratio > 0.95


def test_f1_f0_is_the_grating_tests_definition_on_the_rectified_curve():
    r = mei_phase_test(cell_network("simple", size=16), "response", 0, mei=_mei("simple"), steps=16)
    ratio, f0, f1 = modulation_ratio(np.maximum(r.curve, 0), r.phases)
    assert (r.f1_f0, r.f0, r.f1) == (ratio, f0, f1)
    assert len(r.phases) == 16 and r.phases[1] == pytest.approx(2 * math.pi / 16)
    assert r.curve[0] == pytest.approx(r.mei_activation, rel=1e-5)


def test_moving_the_dominant_bin_alone_modulates_even_a_complex_cell():
    # why band defaults to inf: one bin of a localised MEI is only part of its pattern
    r = mei_phase_test(cell_network("complex", size=16), "response", 0, mei=_mei("complex"), band=0.0)
    assert r.modulation > 0.5 and r.shifted_energy < 0.6
    assert r.spec["band"] == 0.0


def test_every_shifted_image_keeps_the_mei_norm():
    r = mei_phase_test(cell_network("simple", size=16), "response", 0, mei=_mei("simple"))
    assert float((r.min_image - 0.5).norm()) == pytest.approx(RHO, rel=1e-5)
    assert r.spec["image_norm"] == pytest.approx(RHO, rel=1e-5) and r.spec["mei_source"] == "tensor"


@pytest.fixture
def quick_mei(monkeypatch):
    """mei=True computes the MEI with 30 iterations instead of 1000 (the same code path, faster)."""

    def short(net, layer, unit, direction, metric, s, **kw):
        return run_mei(net, layer, unit, direction, metric, dataclasses.replace(s, max_iter=30), **kw)

    monkeypatch.setattr(mp, "run_mei", short)


def test_mei_true_computes_the_mei_and_leaves_the_network_unchanged(quick_mei):
    net = cell_network("simple", size=16)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [m.training for m in net.modules()]
    r = mei_phase_test(net, "response", 0, mei=True, mei_restarts=1)
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in net.modules()] == flags
    assert r.spec["mei_source"] == "computed" and r.spec["mei_restarts"] == 1
    assert r.min_ratio < -0.9 and r.f1_f0 > 1.4  # the optimised MEI of a linear cell is its filter


def test_an_mei_result_is_accepted_and_checked_against_the_target():
    net = cell_network("complex", size=16)
    res = dv.mei(net, "response", 0, restarts=1, max_iter=30)
    r = mei_phase_test(net, "response", 0, mei=res)
    assert r.spec["mei_source"] == "result" and r.modulation < 0.05
    assert r.mei_activation == pytest.approx(res.mei_activation, rel=1e-4)
    other = dataclasses.replace(res, spec={**res.spec, "unit": 5})
    with pytest.raises(DiversevisError, match="the MEI Result is for unit 5, not 0"):
        mei_phase_test(net, "response", 0, mei=other)
    other = dataclasses.replace(res, spec={**res.spec, "layer": "conv1"})
    with pytest.raises(DiversevisError, match="the MEI Result is for layer 'conv1', not 'response'"):
        mei_phase_test(net, "response", 0, mei=other)


def test_save_writes_the_plot_and_then_the_json(tmp_path):
    r = mei_phase_test(cell_network("simple", size=16), "response", 0, mei=_mei("simple"))
    r.save(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mei_phase.json", "mei_phase.png"]
    assert (tmp_path / "out" / "mei_phase.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "out" / "mei_phase.json").read_text())
    assert data["metrics"]["f1_f0"] == pytest.approx(r.f1_f0) and len(data["curve"]) == 32
    assert data["spec"]["method"] == "mei_phase" and "versions" in data["spec"]


BAD = [
    ({"mei": False}, "mei=False leaves nothing to test"),
    ({"mei": 3.0}, "mei must be True, an MEI Result"),
    ({"mei": torch.rand(3, 12, 12)}, r"has shape \(3, 12, 12\) but this target takes \(3, 16, 16\)"),
    ({"mei": torch.full((3, 16, 16), math.inf)}, "finite"),
    ({"mei": torch.full((3, 16, 16), 0.5)}, "drives response unit 0 to 0 <= 0"),
    ({"mei": 1.0 - _mei("simple")}, "<= 0, so the ratios to it are meaningless"),
    ({"steps": 2}, "steps must be an integer in"),
    ({"steps": 8.0}, "steps must be an integer"),
    ({"band": -1.0}, "band"),
    ({"band": math.nan}, "band"),
    ({"contrast": 0.0}, "contrast must be a finite number > 0"),
    ({"norm": math.inf}, "norm must be a finite number"),
    ({"mei_restarts": 0}, "mei_restarts must be an integer >= 1"),
    ({"seed": -1}, "seed"),
]


@pytest.mark.parametrize(
    ("kw", "message"), BAD, ids=[next(iter(kw)) + str(i) for i, (kw, _) in enumerate(BAD)]
)
def test_bad_arguments_are_named(kw, message):
    with pytest.raises(DiversevisError, match=message):
        mei_phase_test(cell_network("simple", size=16), "response", 0, **{"mei": _mei("simple"), **kw})


def test_a_result_without_an_mei_image_is_refused():
    res = dv.mei(cell_network("simple", size=16), "response", 0, restarts=1, max_iter=5)
    res = dataclasses.replace(res, mei_image=None)
    with pytest.raises(DiversevisError, match="holds no MEI image"):
        mei_phase_test(cell_network("simple", size=16), "response", 0, mei=res)
