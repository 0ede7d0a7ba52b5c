"""Tests of the PixelCNN++ natural-image prior (diversevis.images.prior)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diversevis.core.errors import DiversevisError
from diversevis.images import prior as pr
from diversevis.images.prior import (
    MaskedConv2d,
    PixelCNNPrior,
    PriorConfig,
    causal_mask,
    load_prior,
    logistic_bin_log_prob,
    mixture_log_prob,
    save_prior,
    train_prior,
)
from diversevis.images.prior import cache as prior_cache


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread is faster than two on a loaded machine (no OpenMP barriers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


GRID = -1.0 + 2.0 * torch.arange(256, dtype=torch.float64) / 255.0  # the 256 levels in [-1, 1] units


def _tiny(blocks: int = 4, channels: int = 8, n_mix: int = 2, seed: int = 0) -> PixelCNNPrior:
    torch.manual_seed(seed)
    return PixelCNNPrior(PriorConfig(channels=channels, blocks=blocks, n_mix=n_mix)).double().eval()


def _strict_past(h: int, w: int) -> torch.Tensor:
    """``(h, w, h, w)`` bool: ``[i, j, k, l]`` is True iff pixel (k, l) comes before (i, j) in raster order."""
    idx = torch.arange(h * w)
    return (idx[None, :] < idx[:, None]).reshape(h, w, h, w)


# ------------------------------------------------------------------------------------------------ masks


def test_causal_masks_k3():
    assert causal_mask(3, "A").tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert causal_mask(3, "B").tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    assert causal_mask(3, "VA").tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 0]]
    assert causal_mask(3, "VB").tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 0]]
    assert causal_mask(5, "A").sum() == 12 and causal_mask(5, "B").sum() == 13
    with pytest.raises(ValueError):
        causal_mask(3, "C")
    with pytest.raises(ValueError):
        causal_mask(4, "A")


@pytest.mark.parametrize("kind", ["A", "B", "VA", "VB"])
@pytest.mark.parametrize("kernel", [3, 5])
def test_masked_conv_equals_full_masked_kernel(kind, kernel):
    torch.manual_seed(0)
    conv = MaskedConv2d(4, 5, kernel, kind).double()
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    ref = F.conv2d(x, conv.weight * causal_mask(kernel, kind).double(), conv.bias, padding=kernel // 2)
    torch.testing.assert_close(conv(x), ref)


# ------------------------------------------------------------------------------------------- causality


def test_network_output_depends_on_exactly_the_strict_past():
    """d params(i, j) / d x(k, l) is zero for every (k, l) at or after (i, j), and nonzero for every earlier
    pixel (no blind spot), exhaustively on a 5x5 image with the full Jacobian."""
    model = _tiny(blocks=4)
    y = 2 * torch.rand(1, 3, 5, 5, dtype=torch.float64) - 1
    jac = torch.autograd.functional.jacobian(model, y, vectorize=True)  # (1, 20, 5, 5, 1, 3, 5, 5)
    dep = jac.abs().sum(dim=(0, 1, 4, 5)) > 0  # (i, j, k, l)
    assert torch.equal(dep, _strict_past(5, 5))


def test_likelihood_channel_causality():
    """The marginal log p(x_ij^{<=c}) depends on earlier pixels and on channels <= c of pixel (i, j) only."""
    model = _tiny(blocks=3)
    h = w = 5
    y = 2 * torch.rand(1, 3, h, w, dtype=torch.float64) - 1
    past = _strict_past(h, w)
    for channels in (1, 2, 3):
        jac = torch.autograd.functional.jacobian(
            lambda t, c=channels: mixture_log_prob(t, model(t), model.n_mix, channels=c), y, vectorize=True
        )  # (1, h, w, 1, 3, h, w)
        dep = jac[0, :, :, 0] != 0  # (i, j, c', k, l)
        for c in range(3):
            same_pixel = torch.eye(h * w, dtype=torch.bool).reshape(h, w, h, w)
            allowed = past | (same_pixel if c < channels else torch.zeros_like(past))
            assert not (dep[:, :, c] & ~allowed).any(), (channels, c)
            # and it does depend on its own channels (sanity: the test is not vacuous)
            if c < channels:
                assert dep[:, :, c][same_pixel].all()


# ------------------------------------------------------------------------------------------ likelihood


def test_logistic_bins_sum_to_one_and_match_cdf_differences():
    torch.manual_seed(0)
    mean = torch.tensor([-1.2, -0.3, 0.0, 0.5, 0.99], dtype=torch.float64)[:, None]
    log_scale = torch.tensor([-7.0, -3.0, -1.0, 0.0, 2.0], dtype=torch.float64)[:, None]
    lp = logistic_bin_log_prob(GRID[None, :], mean, log_scale)  # (5, 256)
    torch.testing.assert_close(lp.exp().sum(dim=1), torch.ones(5, dtype=torch.float64), atol=1e-12, rtol=0)
    # closed form: sigma((y + h - mu) / s) - sigma((y - h - mu) / s) for the interior bins
    s = log_scale.exp()
    cdf = torch.sigmoid((GRID[None, 1:-1] + 1 / 255 - mean) / s) - torch.sigmoid(
        (GRID[None, 1:-1] - 1 / 255 - mean) / s
    )
    torch.testing.assert_close(lp[:, 1:-1].exp(), cdf, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(lp[:, 0].exp(), torch.sigmoid((GRID[0] + 1 / 255 - mean[:, 0]) / s[:, 0]))
    torch.testing.assert_close(lp[:, -1].exp(), torch.sigmoid(-(GRID[-1] - 1 / 255 - mean[:, 0]) / s[:, 0]))


def test_mixture_is_normalised_over_rgb_levels():
    """Chain rule over the 256 levels: sum_R p(R) = 1, sum_G p(R, G) = p(R), sum_B p(R, G, B) = p(R, G)."""
    torch.manual_seed(1)
    n_mix = 3
    params = torch.randn(1, 10 * n_mix, 1, 1, dtype=torch.float64)

    def logp(rgb: torch.Tensor, channels: int) -> torch.Tensor:  # rgb (K, 3) -> (K,)
        y = rgb[:, :, None, None]
        return mixture_log_prob(y, params.expand(len(rgb), -1, -1, -1), n_mix, channels=channels)[:, 0, 0]

    zeros = torch.zeros(256, dtype=torch.float64)
    p_r = logp(torch.stack([GRID, zeros, zeros], 1), 1).exp()
    assert abs(float(p_r.sum()) - 1.0) < 1e-10
    r, g = torch.meshgrid(GRID, GRID, indexing="ij")
    rg = torch.stack([r.flatten(), g.flatten(), torch.zeros(256 * 256, dtype=torch.float64)], 1)
    p_rg = logp(rg, 2).exp().reshape(256, 256)
    torch.testing.assert_close(p_rg.sum(dim=1), p_r, atol=1e-12, rtol=1e-9)
    for k in torch.randint(0, 256 * 256, (32,)).tolist():
        rgb = rg[k].repeat(256, 1)
        rgb[:, 2] = GRID
        total = logp(rgb, 3).exp().sum()
        torch.testing.assert_close(total, p_rg.flatten()[k], atol=1e-12, rtol=1e-9)


def test_nll_gradcheck_wrt_image():
    model = _tiny(blocks=2, channels=4, n_mix=2)
    torch.manual_seed(2)
    x = (0.1 + 0.8 * torch.rand(2, 3, 3, 4, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(model.nll, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_nll_shapes_units_and_errors():
    model = PixelCNNPrior(PriorConfig(channels=8, blocks=1, n_mix=2))
    for h, w in [(1, 1), (10, 10), (7, 13)]:
        x = torch.rand(3, 3, h, w)
        nll = model.nll(x)
        assert nll.shape == (3,) and torch.isfinite(nll).all()
        lp = model.log_prob(x)
        assert lp.shape == (3, h, w)
        torch.testing.assert_close(nll, -lp.flatten(1).sum(1) / (3 * h * w * math.log(2)))
    # values outside [0, 1] are scored (edge bins), and the likelihood term pulls them back into range
    assert torch.isfinite(model.nll(torch.full((1, 3, 4, 4), -0.5))).all()
    y = torch.tensor([-1.5, 1.5], requires_grad=True)
    logistic_bin_log_prob(y, torch.zeros(2), torch.zeros(2)).sum().backward()
    assert y.grad[0] > 0 > y.grad[1]
    big = PixelCNNPrior(pr.PRESETS["large"])  # the GPU configuration builds and runs
    assert big.num_parameters() > 10 * model.num_parameters()
    assert big.nll(torch.rand(1, 3, 5, 6)).shape == (1,)
    with pytest.raises(DiversevisError, match=r"\(N, 3, H, W\)"):
        model.nll(torch.rand(1, 1, 4, 4))
    with pytest.raises(DiversevisError):
        PriorConfig(kernel=4)


# -------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained_tiny() -> PixelCNNPrior:
    cfg = PriorConfig(
        channels=16,
        blocks=2,
        n_mix=3,
        patch_size=8,
        batch_size=16,
        steps=200,
        lr=5e-3,
        val_patches=128,
        eval_every=100,
    )
    return train_prior(cfg, device="cpu", progress=False)


def test_training_lowers_validation_bits_per_dim(trained_tiny):
    m = trained_tiny.metrics
    assert m["initial_bpd"] > 7.5  # an untrained model is about as good as uniform (8 bits/dim)
    assert m["val_bpd"] < 6.0 and m["train_bpd"] < 6.5
    assert m["steps"] == 200 and m["seed"] == 0 and m["torch"] == torch.__version__
    assert [row[0] for row in m["history"]] == [100, 200]
    assert not trained_tiny.training


def test_trained_prior_prefers_natural_patches_to_noise_of_same_contrast(trained_tiny):
    from diversevis.images.naturals import sample_patches

    nat = pr.quantize(sample_patches(12, 64, seed=12345))
    mean = nat.mean(dim=(2, 3), keepdim=True)
    rms = (nat - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    gen = torch.Generator().manual_seed(0)
    noise = (mean + rms * torch.randn(nat.shape, generator=gen)).clamp(0, 1)
    with torch.no_grad():
        nll_nat, nll_noise = trained_tiny.nll(nat), trained_tiny.nll(noise)
    assert nll_nat.mean() < nll_noise.mean() - 1.0
    assert (nll_nat < nll_noise).float().mean() > 0.9


# ---------------------------------------------------------------------------------------------- cache


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("DIVERSEVIS_CACHE", str(tmp_path))
    tiny = PriorConfig(channels=8, blocks=1, n_mix=2, patch_size=6, batch_size=4, steps=3, val_patches=8)
    monkeypatch.setitem(pr.PRESETS, "default", tiny)
    path = pr.prior_cache_path("default")
    assert path.parent == tmp_path / "prior" and not path.exists()
    with pytest.raises(DiversevisError, match="not cached"):
        load_prior("default", device="cpu", train_if_missing=False)

    first = load_prior("default", device="cpu", progress=False)  # trains and caches
    assert path.is_file()
    record = torch.load(path, weights_only=True)
    assert record["config"] == tiny.to_dict() and record["metrics"]["steps"] == 3
    assert set(record["metrics"]) >= {"train_bpd", "val_bpd", "seconds", "seed", "torch"}

    def no_training(*args, **kwargs):
        raise AssertionError("a cached prior must not be retrained")

    monkeypatch.setattr(prior_cache, "train_prior", no_training)  # where load_prior looks it up
    second = load_prior("default", device="cpu")
    assert second is not first and second.config == tiny and second.metrics == first.metrics
    assert not second.training and not any(p.requires_grad for p in second.parameters())
    x = torch.rand(2, 3, 9, 11, requires_grad=True)
    torch.testing.assert_close(second.nll(x), first.nll(x))
    second.nll(x).sum().backward()  # frozen weights, but gradients still reach the image
    assert x.grad is not None and x.grad.abs().sum() > 0

    # explicit files
    other = save_prior(second, tmp_path / "copy.pt")
    torch.testing.assert_close(load_prior(other, device="cpu").nll(x), first.nll(x))
    with pytest.raises(DiversevisError, match="unknown prior"):
        load_prior("defualt")
    # changing the config changes the cache file
    assert pr.prior_cache_path("default", tiny.replace(steps=4)) != path


def test_diverse_with_the_prior_makes_the_set_more_natural(trained_tiny):
    import diversevis as dv
    from diversevis.models.synthetic import cell_network

    net = cell_network("texture", size=12)
    kw = dict(n_images=3, diversity=0.1, norm=1.0, mei=False, seed=0, max_iter=150, patience=0)
    plain = dv.diverse(net, "response", 0, **kw)
    natural = dv.diverse(net, "response", 0, prior=trained_tiny, prior_weight=3e-3, **kw)
    with torch.no_grad():
        nll_plain = float(trained_tiny.nll(plain.images.clamp(0, 1)).mean())
        nll_prior = float(trained_tiny.nll(natural.images.clamp(0, 1)).mean())
    assert nll_prior < nll_plain - 0.1  # bits/dim (the fixed image norm bounds how natural it can get)
    assert natural.spec["prior_weight"] == 3e-3 and len(natural.spec["prior_nll_bits_per_dim"]) == 3
    with pytest.raises(dv.DiversevisError, match="prior_weight"):
        dv.diverse(net, "response", 0, prior_weight=-1.0, **kw)
