"""Targets (max / cos / mse) and diversity terms, checked on closed-form values and numerical gradients."""

from __future__ import annotations

import math

import pytest
import torch

from diversevis.core.errors import DiversevisError
from diversevis.core.objectives import (
    Target,
    diversity_value,
    gram_cosine_diversity,
    min_distance,
    pairwise_rms,
    pairwise_rms_matrix,
    softmin_distance,
    target_value,
)

F3 = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]], dtype=torch.float64)


def test_pairwise_rms_distance_closed_form():
    d = pairwise_rms(F3)  # pairs (0,1), (0,2), (1,2)
    expected = torch.tensor([math.sqrt(25 / 2), math.sqrt(1 / 2), math.sqrt(18 / 2)], dtype=torch.float64)
    assert torch.allclose(d, expected)
    m = pairwise_rms_matrix(F3)
    assert torch.allclose(m, m.T) and torch.all(m.diag() == 0)
    assert math.isclose(float(min_distance(F3)), math.sqrt(0.5))


def test_pairwise_rms_matches_direct_differences_on_random_groups():
    f = torch.randn(4, 6, 50, dtype=torch.float64)  # 4 groups of 6 images
    d = pairwise_rms(f)
    iu = torch.triu_indices(6, 6, 1)
    direct = ((f[:, iu[0]] - f[:, iu[1]]) ** 2).mean(-1).sqrt()
    assert torch.allclose(d, direct)
    assert min_distance(f).shape == (4,)


def test_min_distance_gradient_reaches_only_the_closest_pair_and_matches_finite_differences():
    f = F3.clone().requires_grad_(True)
    min_distance(f).backward()
    # closest pair is (0, 2): d = ||f0 - f2|| / sqrt(D) -> grad f0 = (f0 - f2) / (D d)
    d = math.sqrt(0.5)
    expected = torch.zeros_like(F3)
    expected[0] = (F3[0] - F3[2]) / (2 * d)
    expected[2] = -expected[0]
    assert torch.allclose(f.grad, expected)
    assert torch.autograd.gradcheck(min_distance, (F3.clone().requires_grad_(True),))


def test_identical_images_have_zero_distance_and_finite_gradient():
    f = torch.ones(3, 5, requires_grad=True)
    v = min_distance(f)
    v.backward()
    assert float(v.detach()) == 0.0
    assert torch.isfinite(f.grad).all()


def test_softmin_is_a_lower_bound_that_tends_to_the_min():
    f = torch.randn(6, 30, dtype=torch.float64)
    m = float(min_distance(f))
    assert float(softmin_distance(f, tau=0.5)) <= m
    assert math.isclose(float(softmin_distance(f, tau=1e-4)), m, rel_tol=1e-3)
    assert torch.autograd.gradcheck(lambda x: softmin_distance(x, 0.3), (f.clone().requires_grad_(True),))


def test_gram_cosine_diversity_closed_form():
    # images whose Gram matrices are identical up to scale -> similarity 1 -> diversity -1
    base = torch.randn(1, 4, 3, 3)
    same = torch.cat([base, 2 * base])
    assert math.isclose(float(gram_cosine_diversity(same)), -1.0, abs_tol=1e-6)
    # channel-disjoint images have orthogonal Grams -> diversity 0
    a = torch.zeros(1, 2, 3, 3)
    a[0, 0] = 1
    b = torch.zeros(1, 2, 3, 3)
    b[0, 1] = 1
    assert math.isclose(float(gram_cosine_diversity(torch.cat([a, b]))), 0.0, abs_tol=1e-6)


def test_diversity_value_dispatches_and_rejects_unknown_kinds():
    f = torch.randn(5, 3, 4, 4)
    assert torch.isclose(diversity_value(f, "min"), min_distance(f.flatten(1)))
    with pytest.raises(DiversevisError, match="choose one of"):
        diversity_value(f, "median")


def test_target_metrics_closed_form():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    d = torch.tensor([0.0, 2.0])
    assert torch.allclose(target_value(a, d, "max"), torch.tensor([4.0, 0.0]))  # d normalised
    assert torch.allclose(target_value(a, d, "cos"), torch.tensor([4 / math.sqrt(25.01), 0.0]))
    assert torch.allclose(target_value(a, d, "mse"), torch.tensor([-(9 + 4) / 2, -(1 + 4) / 2]))


def test_target_validation_names_the_valid_range():
    with pytest.raises(DiversevisError, match=r"valid: 0\.\.255"):
        Target("conv3_1", 256).check(256)
    with pytest.raises(DiversevisError, match="exactly one"):
        Target("conv3_1").check(256)
    with pytest.raises(DiversevisError, match="length 256"):
        Target("conv3_1", direction=torch.ones(3)).check(256)
    with pytest.raises(DiversevisError, match="max, cos, mse"):
        Target("conv3_1", 1, metric="l2").check(256)
    assert Target("conv3_1", 255).check(256).vector(256)[255] == 1


def test_nearly_identical_images_keep_an_accurate_small_distance():
    # |a|^2 + |b|^2 - 2 a.b would cancel to 0 in float32 here; the true RMS distance is 1e-4
    base = torch.full((1, 768), 4.0)
    f = torch.cat([base, base + 1e-4])
    assert float(pairwise_rms(f)) == pytest.approx(1e-4, rel=1e-2)
