"""DFV against synthetic cells with known invariances (method.md B.4.1).

With unit-norm quadrature filters and images of L2 norm rho (around grey), the energy-model complex cell
responds rho^2 to *every* phase of its Gabor, so N images can all be maximal while spreading evenly over
phase; 6 evenly spread phases are rho apart (RMS rho / sqrt(D)). The simple cell's response
<g, x> = rho cos(theta) falls as soon as an image moves away from the preferred phase, so it cannot be
diverse and maximal at once.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diversevis as dv
from diversevis.models.synthetic import cell_network

RHO = 1.0
SIZE = 16
D = 3 * SIZE * SIZE
RMS = RHO / math.sqrt(D)  # RMS distance of two images at phases 60 degrees apart


@pytest.fixture(scope="module")
def complex_cell():
    return cell_network("complex", size=SIZE)


@pytest.fixture(scope="module")
def simple_cell():
    return cell_network("simple", size=SIZE)


def _phases(net, images):
    w = net.module.quadrature.weight  # (2, C, H, W): g0, g90
    x = (images - 0.5).flatten(1)
    c0 = x @ w[0].flatten()
    c90 = x @ w[1].flatten()
    return torch.atan2(c90, c0), (c0**2 + c90**2) / (x * x).sum(1)


def test_complex_cell_diverse_set_spans_phases(complex_cell):
    res = dv.diverse(complex_cell, "response", 0, n_images=6, diversity=1.0, norm=RHO, seed=0)
    assert float(res.ratios.min()) >= 0.95
    assert res.min_distance >= 0.8 * RMS
    phase, in_subspace = _phases(complex_cell, res.images)
    assert float(in_subspace.min()) > 0.95  # every image lies in the quadrature plane
    p = np.sort(phase.numpy() % (2 * np.pi))
    gaps = np.diff(np.concatenate([p, [p[0] + 2 * np.pi]]))
    assert gaps.max() < np.deg2rad(90)  # evenly spread: the ideal gap is 60 degrees


def test_complex_cell_mei_reaches_the_closed_form_maximum(complex_cell):
    m = dv.mei(complex_cell, "response", 0, norm=RHO, restarts=2, seed=0)
    assert 0.97 * RHO**2 <= m.mei_activation <= RHO**2 + 1e-5


def test_simple_cell_cannot_be_diverse_and_maximal_at_once(simple_cell, complex_cell):
    s = dv.diverse(simple_cell, "response", 0, n_images=6, diversity=1.0, norm=RHO, seed=0)
    c = dv.diverse(complex_cell, "response", 0, n_images=6, diversity=1.0, norm=RHO, seed=0)
    assert not (float(s.ratios.min()) >= 0.95 and s.min_distance >= 0.5 * RMS)
    assert c.min_distance > 5 * s.min_distance


def test_simple_cell_activation_falls_as_diversity_rises(simple_cell):
    mei = dv.mei(simple_cell, "response", 0, norm=RHO, seed=0)
    assert mei.mei_activation == pytest.approx(RHO, rel=0.02)  # <g, x> <= ||g|| ||x|| = rho
    ratios, dists = [], []
    for lam in (1.0, 10.0, 30.0):
        r = dv.diverse(simple_cell, "response", 0, n_images=6, diversity=lam, norm=RHO, seed=0, mei=mei)
        ratios.append(float(r.ratios.mean()))
        dists.append(r.min_distance)
        # closed form: an image at angle theta from g has activation rho cos(theta) and lies within
        # rho sin(theta) of the ray through g, so two images are at most 2 rho sin(theta_max) apart
        theta = np.arccos(np.clip(r.activations.numpy() / RHO, -1, 1)).max()
        assert r.min_distance <= 2 * RHO * np.sin(theta) / math.sqrt(D) + 1e-4
    assert ratios[0] > ratios[1] > ratios[2]
    assert dists[0] < dists[1] < dists[2]


def test_same_seed_gives_the_same_result_on_cpu(complex_cell):
    kw = dict(n_images=4, diversity=1.0, norm=RHO, max_iter=60, mei=False)
    a = dv.diverse(complex_cell, "response", 0, seed=3, **kw)
    b = dv.diverse(complex_cell, "response", 0, seed=3, **kw)
    c = dv.diverse(complex_cell, "response", 0, seed=4, **kw)
    assert torch.equal(a.images, b.images) and torch.equal(a.activations, b.activations)
    assert not torch.equal(a.images, c.images)


def test_images_keep_the_norm_constraint(complex_cell):
    res = dv.diverse(complex_cell, "response", 0, n_images=3, diversity=1.0, norm=0.7, max_iter=50, mei=False)
    assert torch.allclose((res.images - 0.5).flatten(1).norm(dim=1), torch.full((3,), 0.7), atol=1e-4)


def test_softmin_and_gram_diversities_run_on_the_same_engine(complex_cell):
    s = dv.diverse(
        complex_cell,
        "response",
        0,
        n_images=6,
        diversity=1.0,
        distance="softmin",
        tau=0.005,
        norm=RHO,
        mei=False,
        seed=0,
    )
    assert s.min_distance >= 0.6 * RMS
    with pytest.raises(dv.DiversevisError, match="distance_layer"):
        dv.diverse(complex_cell, "response", 0, distance="gram", norm=RHO)


def test_direction_targets_with_cos_metric(complex_cell):
    res = dv.diverse(
        complex_cell,
        "response",
        direction=[1.0],
        metric="cos",
        n_images=2,
        diversity=0.0,
        norm=RHO,
        max_iter=50,
        mei=False,
    )
    assert res.spec["direction"] == [1.0] and res.spec["unit"] is None
    assert float(res.activations.min()) > 0.9  # a / sqrt(a^2 + 0.01) with a ~ rho^2 = 1


def test_bad_requests_are_rejected_with_clear_messages(complex_cell):
    with pytest.raises(dv.DiversevisError, match=r"out of range .*valid: 0\.\.0"):
        dv.diverse(complex_cell, "response", 1, norm=RHO)
    with pytest.raises(dv.LayerNotFoundError, match="response"):
        dv.diverse(complex_cell, "respons", 0, norm=RHO)
    with pytest.raises(dv.DiversevisError, match=r"n_images must be an integer in \[2, "):
        dv.diverse(complex_cell, "response", 0, n_images=1, norm=RHO)
    with pytest.raises(dv.DiversevisError, match="norm"):
        dv.diverse(complex_cell, "response", 0, norm=-1.0)
    with pytest.raises(dv.DiversevisError, match="RGB|norm"):  # gray (1) and RGB (3) have natural contrast
        dv.diverse(cell_network("complex", size=SIZE, channels=2), "response", 0)
