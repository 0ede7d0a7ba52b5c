"""The paper's image parametrisation: hard L2-norm constraint and 1/sqrt(f) gradient preconditioner."""

from __future__ import annotations

import math

import torch

from diversevis.core.params import PixelImage, fixed_norm, precondition, preconditioner_weights


def test_preconditioner_weights_follow_the_reference_formula_for_24px():
    w = preconditioner_weights(24)
    assert w.shape == (24, 24)
    assert torch.isclose(w.mean(), torch.tensor(1.0))
    # method.md A.4: for n = 24, F spans 0.676 ... 2.785
    assert math.isclose(float(w.min()), 0.676, abs_tol=1e-3)
    assert math.isclose(float(w.max()), 2.785, abs_tol=1e-3)
    # DC and |f| <= 1 share the top weight; |f| = 12 (Nyquist on both axes) is the smallest
    assert w[0, 0] == w.max() and w[0, 1] == w.max() and w[1, 0] == w.max()
    assert w[12, 12] == w.min()


def test_preconditioner_weight_is_inverse_sqrt_of_frequency():
    w = preconditioner_weights(32)
    # ratio between |f| = 4 and |f| = 16 along an axis: sqrt(16 / 4) = 2
    assert math.isclose(float(w[0, 4] / w[0, 16]), 2.0, rel_tol=1e-6)
    # and it is symmetric under k -> n - k
    assert torch.allclose(w[:, 1:], torch.flip(w[:, 1:], dims=[1]))


def test_preconditioner_is_identity_forward_and_scales_gradient_spectrum():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    y = precondition(x)
    assert torch.equal(y, x)
    g = torch.randn(2, 3, 16, 16)
    y.backward(g)
    ratio = torch.fft.fft2(x.grad) / torch.fft.fft2(g)
    w = preconditioner_weights(16)
    assert torch.allclose(ratio.real, w.expand_as(ratio.real), atol=1e-4)
    assert ratio.imag.abs().max() < 1e-4


def test_preconditioner_handles_rectangular_images():
    x = torch.zeros(1, 1, 8, 12, requires_grad=True)
    g = torch.zeros(1, 1, 8, 12)
    g[..., 0, 0] = 1.0  # a delta has a flat spectrum: the result's spectrum is the weights themselves
    precondition(x).backward(g)
    assert torch.allclose(torch.fft.fft2(x.grad).real[0, 0], preconditioner_weights(8, 12), atol=1e-5)


def test_fixed_norm_sets_every_image_norm():
    v = torch.randn(5, 3, 7, 7) * torch.arange(1, 6).view(5, 1, 1, 1)
    x = fixed_norm(v, 2.5)
    assert torch.allclose(x.flatten(1).norm(dim=1), torch.full((5,), 2.5))
    per = fixed_norm(v, torch.arange(1.0, 6.0))
    assert torch.allclose(per.flatten(1).norm(dim=1), torch.arange(1.0, 6.0))


def test_norm_constraint_gradient_is_orthogonal_to_raw_variable():
    # x = rho * V / ||V||  =>  dL/dV is orthogonal to V (the Adam steps inflate ||V||: implicit annealing)
    v = torch.randn(1, 3, 6, 6, requires_grad=True)
    (fixed_norm(v, 3.0) * torch.randn(1, 3, 6, 6)).sum().backward()
    assert abs(float((v.grad * v.detach()).sum())) < 1e-5


def test_pixel_image_is_grey_centred_with_the_requested_contrast():
    gen = torch.Generator().manual_seed(0)
    p = PixelImage(4, 3, 24, 5.0, generator=gen)
    x = p()
    assert x.shape == (4, 3, 24, 24)
    assert torch.allclose((x - 0.5).flatten(1).norm(dim=1), torch.full((4,), 5.0), atol=1e-5)
    same = PixelImage(4, 3, 24, 5.0, generator=torch.Generator().manual_seed(0))()
    assert torch.equal(x, same)


def test_preconditioner_matches_the_full_complex_fft_formula_for_odd_sizes():
    # the half-spectrum (rfft2) implementation must equal Re IFFT2(FFT2(g) * w) for any size
    for h, w in [(15, 15), (7, 9), (24, 24)]:
        x = torch.zeros(2, 3, h, w, dtype=torch.float64, requires_grad=True)
        g = torch.randn(2, 3, h, w, dtype=torch.float64)
        precondition(x).backward(g)
        ref = torch.fft.ifft2(torch.fft.fft2(g) * preconditioner_weights(h, w, dtype=torch.float64)).real
        assert torch.allclose(x.grad, ref, atol=1e-12)


def test_display_range_clips_after_the_norm_step_with_a_straight_through_gradient():
    g = torch.Generator().manual_seed(0)
    free = PixelImage(2, 1, 8, norm=8.0, generator=g)  # a norm large enough to leave [0, 1]
    clipped = PixelImage(2, 1, 8, norm=8.0, clip=True)
    clipped.raw.data.copy_(free.raw.data)
    x, y = free(), clipped()
    assert x.min() < 0 and x.max() > 1  # unclipped, the images leave the display range
    assert y.min() == 0 and y.max() == 1 and torch.equal(y, x.clamp(0, 1))
    for p in (free, clipped):  # the clip passes the gradient through: the same step either way
        p.raw.grad = None
        (p() * torch.arange(128.0).view(2, 1, 8, 8)).sum().backward()
    assert torch.allclose(clipped.raw.grad, free.raw.grad)
