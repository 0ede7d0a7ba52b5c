"""Grating phase test (method.md A.11(c)): F1/F0 > 1 is simple-like, < 1 complex-like.

Closed forms: a grating of fixed amplitude at phase phi is ``cos(phi) G_c - sin(phi) G_s``, so a linear
unit responds ``c + A cos(phi - phi0)`` (``c``: its response to grey) and any quadratic (energy) unit has
only the harmonics 0 and 2 of phi. Rectified: ``relu(A cos)`` has F1/F0 = pi/2, ``c + A cos`` with
``c >= A`` has A/c, an energy unit 0.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import diversevis as dv
from diversevis.methods.phase import F_MAX, PhaseResult, grating, modulation_ratio, phase_test
from diversevis.models.synthetic import cell_network

SIZE = 16
NORM = 4.0


@pytest.fixture(scope="module")
def cells():
    return {k: cell_network(k, size=SIZE) for k in ("simple", "complex", "texture")}


@pytest.fixture(scope="module")
def results(cells):
    # each cell's MEI at the grating norm (short runs: the best grating reaches 0.46-0.67 of it)
    meis = {k: dv.mei(net, "response", 0, norm=NORM, restarts=2, max_iter=300) for k, net in cells.items()}
    return {k: phase_test(net, "response", 0, norm=NORM, mei=meis[k]) for k, net in cells.items()}


def _rectified_cosine_ratio(c: float, a: float) -> float:
    """F1/F0 of relu(c + a cos phi) for |c| < a (closed form)."""
    alpha = math.acos(-c / a)  # half-width of the firing part of the cycle
    f0 = (c * alpha + a * math.sin(alpha)) / math.pi
    f1 = (2 * c * math.sin(alpha) + a * (alpha + math.sin(alpha) * math.cos(alpha))) / math.pi
    return f1 / f0


def _step(grid: np.ndarray) -> float:
    return float(np.log(grid[1] / grid[0]))


# --------------------------------------------------------------------------- stimuli and the index
def test_grating_closed_form():
    g = grating(5, 0.0, 0.25, 0.0, channels=1)  # x = col - 2: cos(pi x / 2)
    assert g.shape == (1, 5, 5)
    assert torch.allclose(g[0, 3], torch.tensor([-1.0, 0.0, 1.0, 0.0, -1.0]), atol=1e-6)
    assert torch.allclose(g[0], g[0, :1].expand(5, 5))  # theta = 0: constant down each column
    v = grating(5, math.pi / 2, 0.25, math.pi / 2, channels=1)[0]  # varies along rows, cos(pi y / 2 + pi / 2)
    assert torch.allclose(v[:, 1], torch.tensor([0.0, 1.0, 0.0, -1.0, 0.0]), atol=1e-6)
    o = grating(7, math.pi / 4, 0.1, 0.3, channels=1)[0]
    r, c = 1, 5  # y = -2, x = 2: x cos + y sin = 0
    assert float(o[r, c]) == pytest.approx(math.cos(0.3), abs=1e-6)
    assert float(o[6, 6]) == pytest.approx(math.cos(2 * math.pi * 0.1 * 6 / math.sqrt(2) + 0.3), abs=1e-6)

    # same grey pattern in every channel; broadcasting of 1-D parameters against scalars
    rgb = grating(6, torch.tensor([0.0, 1.0, 2.0]), 0.2, torch.tensor([0.0, 0.5, 1.0]), channels=3)
    assert rgb.shape == (3, 3, 6, 6) and rgb.dtype == torch.float32
    assert torch.equal(rgb[:, 0], rgb[:, 2])
    assert torch.allclose(rgb[1, 0], grating(6, 1.0, 0.2, 0.5, channels=1)[0])
    assert grating(6, 0.0, torch.tensor([0.1, 0.2]), 0.0).shape == (2, 3, 6, 6)
    with pytest.raises(dv.DiversevisError, match="broadcast"):
        grating(6, torch.zeros(3), torch.ones(2), 0.0)

    # norm: a fixed amplitude norm * sqrt(2 / D), whose RMS norm over a phase cycle is exactly `norm`
    ph = torch.arange(16) * (2 * math.pi / 16)
    n = grating(9, 0.7, 0.13, ph, channels=3, norm=2.0)
    assert float(n.abs().max()) <= 2.0 * math.sqrt(2 / (3 * 81)) + 1e-6
    assert float(n.flatten(1).norm(dim=1).pow(2).mean().sqrt()) == pytest.approx(2.0, rel=1e-5)
    each = grating(9, 0.7, 0.13, ph, channels=3, norm=2.0, per_image=True)
    assert torch.allclose(each.flatten(1).norm(dim=1), torch.full((16,), 2.0), atol=1e-5)
    # a vertical Nyquist grating on an even size vanishes at phase 0: stays zero, no nan
    z = grating(4, 0.0, 0.5, 0.0, norm=1.0, per_image=True)
    assert torch.isfinite(z).all() and float(z.abs().max()) < 1e-6


def test_modulation_ratio_closed_forms():
    # F1 of a half-wave rectified cosine is exact for an even number of samples; F0 carries an O(1/n^2)
    # discretisation error from the rectifier's kinks (1.3e-3 in the ratio at n = 64, 3e-4 at n = 128)
    for n, tol in ((64, 2e-3), (128, 5e-4)):
        phi = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
        for phi0 in (0.0, 0.4, 2.0):
            ratio, f0, f1 = modulation_ratio(torch.relu(torch.cos(phi - phi0)), phi)
            assert ratio == pytest.approx(math.pi / 2, abs=tol)
            assert f0 == pytest.approx(1 / math.pi, abs=tol) and f1 == pytest.approx(0.5, abs=1e-12)
    phi = torch.arange(64, dtype=torch.float64) * (2 * math.pi / 64)
    assert modulation_ratio(torch.full((64,), 3.0), phi) == pytest.approx((0.0, 3.0, 0.0), abs=1e-12)
    a, c = 0.7, 2.0  # above threshold all cycle long: pure first harmonic over the mean
    assert modulation_ratio(c + a * np.cos(phi.numpy() + 1.0), phi)[0] == pytest.approx(a / c, abs=1e-9)
    for c in (-0.5, 0.3):  # partly rectified: between pi/2 and 1, or beyond pi/2 below threshold
        r = torch.relu(c + torch.cos(phi))
        assert modulation_ratio(r, phi)[0] == pytest.approx(_rectified_cosine_ratio(c, 1.0), rel=2e-3)
    ratio, f0, f1 = modulation_ratio(torch.zeros(64), phi)  # never fires: undefined, not "complex"
    assert math.isnan(ratio) and f0 == 0 and f1 == 0
    with pytest.raises(dv.DiversevisError, match="same non-zero length"):
        modulation_ratio(torch.zeros(8), torch.zeros(9))


# --------------------------------------------------------------------------- synthetic cells
def test_simple_cell_is_simple_like(results):
    r = results["simple"]
    assert r.f1_f0 > 1 and r.f1_f0 == pytest.approx(math.pi / 2, abs=0.1)
    assert r.kind == r.label == "simple-like" and r.drives  # best grating 0.67 of the MEI
    # gabor(theta=0) varies along x, as does grating(theta=0): the same orientation convention
    assert min(r.orientation, math.pi - r.orientation) < 1e-9
    assert abs(math.log(r.frequency * 6.0)) <= _step(r.frequencies)  # wavelength 6 px
    # linear unit, fixed grating amplitude: the raw phase curve is exactly A cos(phi - phi0), no offset
    z = np.fft.rfft(r.phase_curve) / len(r.phases)
    assert abs(z[0]) < 1e-5 * abs(z[1]) and np.abs(z[2:]).max() < 1e-5 * abs(z[1])
    assert r.grey_response == 0.0


def test_complex_cell_is_complex_like(results):
    r = results["complex"]
    assert r.f1_f0 < 0.3 and r.kind == r.label == "complex-like" and r.drives  # 0.46 of the MEI
    assert r.f1_f0 < 1e-3  # closed form: an energy unit has no first harmonic
    assert min(r.orientation, math.pi - r.orientation) < 1e-9
    assert abs(math.log(r.frequency * 6.0)) <= _step(r.frequencies)
    assert r.phase_curve.min() > 0.9 * r.phase_curve.max()  # nearly flat over phase


def test_texture_cell_is_complex_like(results):
    r = results["texture"]
    assert r.f1_f0 < 0.5 and r.kind == "complex-like"
    assert r.f1_f0 < 1e-3
    assert min(r.orientation, math.pi - r.orientation) < 1e-9
    assert abs(math.log(r.frequency * 4.0)) <= _step(r.frequencies)  # wavelength 4 px


def test_grids_and_spec(results):
    r = results["simple"]
    assert r.orientations.shape == (16,) and r.orientations[0] == 0 and r.orientations[-1] < math.pi
    assert r.frequencies.shape == (12,)
    assert r.frequencies[0] == pytest.approx(1 / SIZE) and r.frequencies[-1] == pytest.approx(F_MAX)
    assert r.phases.shape == r.phase_curve.shape == (32,)
    assert r.coarse_responses.shape == (16, 12, 8)
    assert r.orientation_curve.max() == pytest.approx(r.coarse_responses.max())
    assert r.best_grating.shape == (3, SIZE, SIZE)
    assert float((r.best_grating - 0.5).norm()) == pytest.approx(NORM, rel=0.05)
    s = r.spec
    assert s["method"] == "phase" and s["norm"] == NORM and s["image_size"] == SIZE
    assert (s["orientations"], s["frequencies"], s["phases"], s["fine_phases"]) == (16, 12, 8, 32)
    assert "versions" in s and "created" in s and s["contrast"] is None
    assert s["drive_threshold"] == 0.3 and s["mei_restarts"] is None  # the MEI was given
    assert s["mei_seconds"] > 0 and r.mei_activation > r.max_response
    # explicit grids
    e = phase_test(
        cell_network("simple", size=SIZE),
        "response",
        0,
        norm=NORM,
        orientations=[0.0, math.pi / 2],
        frequencies=[1 / 6],
        phases=4,
        fine_phases=16,
        mei=False,
    )
    assert e.spec["mei_restarts"] is None and e.drives is None
    assert e.orientation == 0.0 and e.frequency == pytest.approx(1 / 6)
    assert e.f1_f0 == pytest.approx(math.pi / 2, abs=0.1)


# --------------------------------------------------------------------------- a real network
def test_vgg_conv1_1_units_are_linear_and_oriented_ones_simple_like(vgg16_paper, vgg16):
    # conv1_1 is a linear 3x3 filter plus bias: the phase curve is c + A cos(phi - phi0) with c the grey
    # response, so F1/F0 follows the rectified-cosine closed form. Units 0 and 47 are oriented edge
    # filters with c ~ 0 (simple-like, ~pi/2); unit 1 is a colour/luminance unit whose grey response
    # exceeds its grating modulation, so it never drops below threshold and reads complex-like (A / c).
    for u, simple in ((0, True), (47, True), (1, False)):
        r = phase_test(vgg16_paper, "conv1_1", u)
        assert math.isfinite(r.f1_f0)
        z = np.fft.rfft(r.phase_curve) / len(r.phases)
        c, a = float(z[0].real), 2 * float(abs(z[1]))
        assert c == pytest.approx(r.grey_response, abs=1e-4 * a)
        assert np.abs(z[2:]).max() < 1e-4 * a
        expect = a / c if c >= a else _rectified_cosine_ratio(c, a)
        assert r.f1_f0 == pytest.approx(expect, rel=0.01)
        assert (r.f1_f0 > 1) is simple
        if simple:
            o = r.orientation_curve
            assert o.min() < 0.2 * o.max()  # orientation selective
            assert r.f1_f0 == pytest.approx(math.pi / 2, abs=0.05)
        # padded vgg16 differs from vgg16-paper by a positive rescaling of each channel: same ratio
        p = phase_test(vgg16, "conv1_1", u, norm=r.spec["norm"], mei=False)
        assert p.f1_f0 == pytest.approx(r.f1_f0, rel=1e-4)
        assert p.orientation == r.orientation and p.frequency == r.frequency


# --------------------------------------------------------------------------- output and errors
def test_save_writes_plot_and_json(results, tmp_path):
    pytest.importorskip("matplotlib")
    out = results["simple"].save(tmp_path / "run")
    assert (out / "phase.png").is_file() and (out / "phase.json").is_file()
    meta = json.loads((out / "phase.json").read_text())
    assert meta["metrics"]["f1_f0"] == pytest.approx(results["simple"].f1_f0)
    assert meta["metrics"]["kind"] == "simple-like" and meta["metrics"]["label"] == "simple-like"
    assert meta["metrics"]["drives"] is True and meta["metrics"]["grating_ratio"] > 0.3
    assert meta["spec"]["method"] == "phase" and meta["spec"]["unit"] == 0
    assert len(meta["curves"]["phase_curve"]) == 32
    with Image.open(out / "phase.png") as im:
        assert im.format == "PNG" and im.size[0] > 800
    assert not list(out.glob(".*.tmp"))


def test_never_firing_unit_gives_nan_and_valid_json(cells, tmp_path):
    pytest.importorskip("matplotlib")
    # mse target -(a - 100)^2 is never positive: the rate is 0 over the whole cycle
    r = phase_test(
        cells["complex"], "response", direction=[100.0], metric="mse", norm=NORM, phases=2, mei=False
    )
    assert isinstance(r, PhaseResult) and math.isnan(r.f1_f0) and r.kind is None and r.f0 == 0
    assert r.label.startswith("undefined") and "never fires" in r.nan_cause()
    r.save(tmp_path)

    def no_constants(x):
        raise AssertionError(f"non-JSON constant {x}")

    meta = json.loads((tmp_path / "phase.json").read_text(), parse_constant=no_constants)
    assert meta["metrics"]["f1_f0"] is None and meta["metrics"]["label"] == r.label


def test_bad_arguments_raise(cells):
    net = cells["simple"]
    bad = [
        (dict(orientations=0), "orientations must be an int >= 1"),
        (dict(frequencies=0), "frequencies must be an int >= 1"),
        (dict(frequencies=[0.1, -0.2]), "positive"),
        (dict(orientations=[]), "non-empty"),
        (dict(phases=0), "phases must be an int >= 1"),
        (dict(fine_phases=2), "fine_phases must be an int >= 3"),
        (dict(phases=True), ">= 1"),
        (dict(norm=-1.0), "norm must be > 0"),
    ]
    for kw, msg in bad:
        with pytest.raises(dv.DiversevisError, match=msg):
            phase_test(net, "response", 0, **{"norm": NORM, **kw})
    with pytest.raises(dv.DiversevisError, match=r"valid: 0\.\.0"):
        phase_test(net, "response", 1, norm=NORM)
    with pytest.raises(dv.LayerNotFoundError):
        phase_test(net, "respons", 0, norm=NORM)
    with pytest.raises(dv.DiversevisError, match="size must be an int >= 1"):
        grating(0, 0.0, 0.1, 0.0)
    with pytest.raises(dv.DiversevisError, match="norm must be > 0"):
        grating(8, 0.0, 0.1, 0.0, norm=0.0)
