"""The fast shift-test optimiser: a lattice of crops plus the worst ones per step, every crop at refresh."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import diversevis as dv
from diversevis.methods.shift_subset import CropSampler, lattice_step, shift_objective
from diversevis.models.synthetic import cell_network

RHO = 4.0


@given(offsets=st.integers(2, 40), budget=st.integers(1, 2000))
def test_lattice_step_is_the_smallest_that_fits_the_budget(offsets, budget):
    s = lattice_step(offsets, budget)
    assert math.ceil(offsets / s) ** 2 <= max(budget, 1) or s == offsets
    if s > 1:
        assert math.ceil(offsets / (s - 1)) ** 2 > budget


def test_lattice_estimate_of_the_mean_is_exact_on_average_over_phases():
    """Horvitz-Thompson: each non-worst crop is in the lattice of 1 phase in s^2, weighted s^2."""
    m = 7
    values = torch.randn(m * m, generator=torch.Generator().manual_seed(1))
    sampler = CropSampler(m, 12, weight_min=0.0, generator=torch.Generator().manual_seed(0))
    sampler.update(values)
    s = sampler.step
    assert s == 4  # lattice budget 12 - 6 = 6 crops: ceil(7 / 3)^2 = 9 is too many, ceil(7 / 4)^2 = 4 fits
    total = 0.0
    for i0 in range(s):
        for j0 in range(s):
            lattice = (torch.arange(i0, m, s)[:, None] * m + torch.arange(j0, m, s)[None]).flatten()
            lattice = lattice[~sampler.is_worst[lattice]]
            idx = torch.cat([sampler.worst, lattice])
            w = torch.cat([torch.ones(sampler.k_worst), torch.full((len(lattice),), float(s * s))])
            total += float(-sampler.loss(values[idx], w))
    assert total / s**2 == pytest.approx(float(values.mean()), abs=1e-5)


def test_every_step_sees_the_worst_crops_of_the_last_full_evaluation():
    values = torch.arange(100.0)
    values[[17, 42, 99]] = -5.0
    sampler = CropSampler(10, 8, weight_min=0.5, generator=torch.Generator().manual_seed(0))
    sampler.update(values)
    for _ in range(5):
        idx, w = sampler.draw()
        assert {17, 42, 99} <= set(idx.tolist()) and len(set(idx.tolist())) == len(idx)
        # the min term of the step's loss is the true minimum
        est = sampler.loss(values[idx], w)
        assert float(est) <= float(-0.5 * -5.0) + 1e-6


def test_shift_objective_blends_mean_and_worst_crop():
    v = torch.tensor([1.0, 2.0, 6.0])
    assert float(shift_objective(v, 0.25)) == pytest.approx(-(0.75 * 3.0 + 0.25 * 1.0))


@pytest.mark.parametrize("kind", ["complex", "simple"])
def test_fast_shift_test_finds_what_every_crop_optimisation_finds(kind):
    net = cell_network(kind)
    mei = dv.mei(net, "response", 0, norm=RHO, restarts=2, seed=0)
    exact = dv.shift_test(net, "response", 0, norm=RHO, mei=mei, seed=0, crops_per_step=None)
    fast = dv.shift_test(net, "response", 0, norm=RHO, mei=mei, seed=0, crops_per_step=48)
    assert exact.spec["optimizer"] == "all crops" and fast.spec["optimizer"] == "subset"
    assert fast.activations.shape == exact.activations.shape == (15, 15)  # reported on every crop
    assert fast.min_ratio == pytest.approx(exact.min_ratio, abs=0.05)
    assert fast.mean_ratio == pytest.approx(exact.mean_ratio, abs=0.05)
    assert fast.spec["full_evaluations"] >= 2


def test_fast_shift_test_reports_the_best_fully_evaluated_texture():
    net = cell_network("complex")
    seen = []

    def spy(info):
        seen.append(info.step)

    res = dv.shift_test(
        net,
        "response",
        0,
        norm=RHO,
        mei=1.0,
        crops_per_step=32,
        refresh=5,
        max_iter=60,
        patience=0,
        callbacks=[spy],
    )
    assert res.spec["n_iter"] == 60 and res.spec["full_evaluations"] == 13  # steps 0, 5, ..., 55 and 59
    assert res.spec["best_step"] % 5 == 0 or res.spec["best_step"] == 59
    again = dv.shift_test(
        net, "response", 0, norm=RHO, mei=1.0, crops_per_step=32, refresh=5, max_iter=60, patience=0
    )
    assert torch.equal(res.texture, again.texture)  # seeded draws: the same run twice


@settings(max_examples=20, deadline=None)
@given(st.one_of(st.integers(-3, 1), st.floats(allow_nan=True), st.text(max_size=3)))
def test_bad_crops_per_step_is_a_clear_error(bad):
    with pytest.raises(dv.DiversevisError, match="crops_per_step"):
        dv.shift_test(cell_network("simple"), "response", 0, norm=RHO, mei=1.0, crops_per_step=bad)
