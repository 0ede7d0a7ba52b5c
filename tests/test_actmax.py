"""Activation maximisation: FFT/colour parametrisation, random transforms, redirected ReLU, known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from diversevis.cli import main
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.params import (
    DecorrelatedImage,
    FFTImage,
    decorrelate_colors,
    fft_frequencies,
    fft_spectrum_scale,
)
from diversevis.core.transforms import (
    AffineDraw,
    RandomTransforms,
    affine_matrices,
    apply_affine,
    draw_affine,
)
from diversevis.images.color import color_covariance, color_sqrt, natural_color_matrix
from diversevis.methods.classic.actmax import (
    RedirectedReLU,
    actmax,
    read_target,
    redirected_relu,
    redirected_relu_grad,
)
from diversevis.models.synthetic import cell_network, gabor


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: on a shared, oversubscribed CPU two OpenMP threads run these ~10x slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


# ------------------------------------------------------------------------------------ FFT parametrisation


def test_fft_spectrum_scale_closed_form():
    s = fft_spectrum_scale(16, 20, decay_power=1.0)
    assert s.shape == (16, 11)
    # DC takes the lowest frequency's value, 1 / (1 / max(h, w))
    assert math.isclose(float(s[0, 0]), 20.0, rel_tol=1e-6)
    # horizontal frequency k/20, vertical k/16
    assert math.isclose(float(s[0, 4]), 20 / 4, rel_tol=1e-6)
    assert math.isclose(float(s[4, 0]), 16 / 4, rel_tol=1e-6)
    f = math.hypot(3 / 16, 5 / 20)
    assert math.isclose(float(s[3, 5]), 1 / f, rel_tol=1e-6)
    # decay power 2 squares it; 0 is white
    assert torch.allclose(fft_spectrum_scale(16, 20, decay_power=2.0), s**2)
    assert torch.equal(fft_spectrum_scale(8, decay_power=0.0), torch.ones(8, 5))
    assert float(fft_frequencies(8).max()) == pytest.approx(math.sqrt(0.5))


def test_fft_image_shape_and_single_coefficient_grating():
    h, w, k = 8, 12, 3
    p = FFTImage(2, 3, h, w)
    assert p().shape == (2, 3, h, w)
    with torch.no_grad():
        p.spectrum.zero_()
        p.spectrum[0, 1, 0, k] = torch.tensor([0.6, -0.8])  # a = 0.6 - 0.8i, |a| = 1
    img = p().detach()
    x = torch.arange(w, dtype=torch.float32)
    amp = 2 * float(p.scale[0, k]) / math.sqrt(h * w)
    expected = amp * torch.cos(2 * math.pi * k * x / w + math.atan2(-0.8, 0.6))
    assert torch.allclose(img[0, 1], expected.expand(h, w), atol=1e-6)
    assert img[0, 0].abs().max() == 0 and img[1].abs().max() == 0


@pytest.mark.parametrize(("h", "w", "decay"), [(16, 16, 1.0), (15, 21, 1.0), (12, 10, 1.5), (12, 12, 0.0)])
def test_fft_image_gives_pixel_variance_of_its_coefficients(h, w, decay):
    p = FFTImage(1, 1, h, w, decay_power=decay)
    ratio = p.scale / fft_spectrum_scale(h, w, decay_power=decay)
    assert torch.allclose(ratio, ratio[0, 0].expand_as(ratio))  # the 1/f shape is kept
    # coefficients with SD s give pixels with SD s, whatever the size and spectrum
    g = torch.Generator().manual_seed(0)
    x = FFTImage(4000, 1, h, w, decay_power=decay, sd=0.5, generator=g)().detach()
    assert float(x.pow(2).mean()) == pytest.approx(0.25, rel=0.05)
    if decay == 0:  # white: interior half-spectrum columns carry 4 s^2, the 1 or 2 edge columns s^2
        edge = 2 if w % 2 == 0 else 1
        interior = w // 2 + 1 - edge
        assert float(ratio[0, 0]) == pytest.approx(math.sqrt(w / (4 * interior + edge)), rel=1e-6)


def test_fft_image_spectrum_is_coefficients_times_scale():
    torch.manual_seed(0)
    p = FFTImage(1, 1, 16, 16, sd=1.0)
    img = p().detach()
    spec = torch.fft.rfft2(img, norm="ortho")[0, 0]
    want = torch.view_as_complex(p.spectrum.detach())[0, 0] * p.scale
    # bins that are not their own conjugate (DC / Nyquist rows and columns lose the imaginary part)
    inner = (slice(1, 8), slice(1, 8))
    assert torch.allclose(spec[inner], want[inner], atol=1e-4)


# ------------------------------------------------------------------------------------ colour decorrelation


def test_color_sqrt_reproduces_covariance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    cov = a @ a.T + 0.1 * np.eye(3)
    for method in ("svd", "cholesky"):
        m = color_sqrt(cov, method)
        assert np.allclose(m @ m.T, cov, atol=1e-10)
    assert np.allclose(np.triu(color_sqrt(cov, "cholesky"), 1), 0)
    with pytest.raises(ValueError):
        color_sqrt(cov, "eig")


def test_color_covariance_single_image_is_pixel_covariance():
    rng = np.random.default_rng(1)
    img = rng.random((5, 7, 3))
    assert np.allclose(color_covariance([img]), np.cov(img.reshape(-1, 3).T, bias=True))
    # per-image weighting: duplicating an image does not change the answer
    other = rng.random((2, 2, 3))
    assert np.allclose(color_covariance([img, other]), color_covariance([img, img, other, other]))


def test_natural_color_matrix_is_square_root_of_natural_covariance():
    from diversevis.images.naturals import natural_images

    m = natural_color_matrix().double().numpy()
    colour = [im for im in natural_images() if not np.array_equal(im[..., 0], im[..., 1])]
    cov = color_covariance(colour)
    c = np.linalg.norm(m, axis=0).max()
    assert c == pytest.approx(1.0)
    # M M^T is the covariance up to the normalising factor (the largest column norm of sqrt(cov))
    k = np.linalg.norm(color_sqrt(cov), axis=0).max()
    assert np.allclose(m @ m.T * k**2, cov, atol=1e-6)
    # natural colours are strongly correlated: the first principal axis is a near-grey "luminance" axis
    assert np.all(m[:, 0] > 0) and np.linalg.norm(m[:, 0]) == pytest.approx(1.0)


def test_decorrelated_image_constraints():
    m = natural_color_matrix()
    x = torch.randn(2, 3, 4, 4)
    assert torch.allclose(decorrelate_colors(x, torch.eye(3)), x)
    assert torch.allclose(decorrelate_colors(x, m)[:, :, 1, 2], x[:, :, 1, 2] @ m.T, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    sig = DecorrelatedImage(2, 3, 16, color_matrix=m, generator=g)().detach()
    assert sig.shape == (2, 3, 16, 16) and float(sig.min()) > 0 and float(sig.max()) < 1
    assert abs(float(sig.mean()) - 0.5) < 0.05  # starts near grey
    nrm = DecorrelatedImage(2, 3, 16, color_matrix=m, constraint="norm", norm=2.0, generator=g)().detach()
    assert torch.allclose((nrm - 0.5).flatten(1).norm(dim=1), torch.tensor([2.0, 2.0]), atol=1e-4)


# ------------------------------------------------------------------------------------------ transforms


def test_transforms_are_drawn_independently_per_image():
    g = torch.Generator().manual_seed(0)
    tf = RandomTransforms(pad=4, jitter=6, scale=(0.9, 1.1), rotate=10)
    x = torch.rand(1, 3, 16, 16).expand(8, -1, -1, -1)
    y = tf(x, g)
    assert y.shape == (8, 3, 24, 24)
    d = tf.last
    assert len({tuple(s) for s in d.shift.tolist()}) > 1
    assert len(set(d.scale.tolist())) == 8 and len(set(d.angle.tolist())) == 8
    assert d.shift.abs().max() <= 6 and torch.all(d.shift == d.shift.round())
    assert float(d.angle.abs().max()) <= math.radians(10) and 0.9 <= float(d.scale.min())
    # identical inputs, different outputs
    assert not torch.allclose(y[0], y[1])


def test_transforms_identity_when_ranges_are_zero():
    x = torch.rand(3, 3, 10, 12)
    tf = RandomTransforms(pad=0, jitter=0, scale=(1, 1), rotate=0)
    assert torch.equal(tf(x), x)
    d = draw_affine(3)
    assert torch.allclose(apply_affine(x, affine_matrices(d, 10, 12)), x, atol=1e-6)
    padded = RandomTransforms(pad=2, jitter=0, scale=(1, 1), rotate=0)(x)
    assert padded.shape == (3, 3, 14, 16) and torch.equal(padded[:, :, 2:-2, 2:-2], x)
    assert torch.all(padded[:, :, 0] == 0.5)


def test_affine_shift_and_rotation_are_exact():
    x = torch.rand(2, 1, 6, 8)
    d = AffineDraw(torch.tensor([[2.0, 0.0], [0.0, -1.0]]), torch.ones(2), torch.zeros(2))
    y = apply_affine(x, affine_matrices(d, 6, 8))
    assert torch.allclose(y[0, :, :, 2:], x[0, :, :, :-2], atol=1e-6)  # 2 px right
    assert torch.allclose(y[0, :, :, :2], torch.full_like(y[0, :, :, :2], 0.5))  # grey fill
    assert torch.allclose(y[1, :, :-1], x[1, :, 1:], atol=1e-6)  # 1 px up
    sq = torch.rand(1, 1, 6, 6)
    r = AffineDraw(torch.zeros(1, 2), torch.ones(1), torch.tensor([math.pi / 2]))
    rot = apply_affine(sq, affine_matrices(r, 6, 6))
    # content turns clockwise on screen (y down): the top-left corner goes to the top-right
    assert torch.allclose(rot, torch.rot90(sq, k=-1, dims=(2, 3)), atol=1e-5)


# ------------------------------------------------------------------------------------- redirected ReLU


def test_redirected_relu_grad_closed_form():
    x = torch.tensor([[-1.0, 2.0, -3.0], [-1.0, -2.0, -3.0]])
    g = torch.tensor([[-1.0, 1.0, 1.0], [-1.0, 1.0, -2.0]])
    out = redirected_relu_grad(x, g)
    # sample 0 has a live unit: plain ReLU gradient; sample 1 is dead: upward pushes pass
    assert torch.equal(out, torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, -2.0]]))
    xr = x.clone().requires_grad_(True)
    y = redirected_relu(xr)
    assert torch.equal(y, torch.relu(x))
    y.backward(g)
    assert torch.equal(xr.grad, out)


def _dead_net() -> Network:
    """A unit behind a ReLU that is dead at grey: relu(mean(x) - 0.6) read by a 1x1 conv."""
    c1 = nn.Conv2d(3, 1, 1)
    c2 = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        c1.weight.fill_(1 / 3)
        c1.bias.fill_(-0.6)
        c2.weight.fill_(1.0)
        c2.bias.zero_()
    return Network(nn.Sequential(c1, nn.ReLU(), c2), name="dead", input_size=8)


def test_redirected_relu_revives_a_grey_unit_and_restores_the_model():
    net = _dead_net()
    relus_before = [m for m in net.module.modules() if isinstance(m, nn.ReLU)]
    kw = dict(size=8, transforms=False, decorrelate=False, max_iter=40, patience=0, lr=0.1)
    x = torch.full((1, 3, 8, 8), 0.5, requires_grad=True)
    net.activations(x, ["2"])["2"][0, 0, 4, 4].backward()
    assert float(x.grad.abs().max()) == 0  # plain ReLU: no gradient at grey
    plain = actmax(net, "2", 0, **kw)
    assert float(plain.activations[0]) == 0 and plain.spec["grey_activation"] == 0
    red = actmax(net, "2", 0, redirect_relu=10, **kw)
    assert float(red.activations[0]) > 0.2
    assert red.spec["redirected_relus"] == 1
    # the model is unchanged: same modules, no hooks left
    assert [m for m in net.module.modules() if isinstance(m, nn.ReLU)] == relus_before
    assert all(not m._forward_hooks for m in net.module.modules())


def test_redirected_relu_hooks_are_removed_on_exceptions():
    net = _dead_net()
    with pytest.raises(RuntimeError, match="boom"):
        with RedirectedReLU(net.module) as r:
            assert r.n_relus == 1
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in net.module.modules())


# ----------------------------------------------------------------------------------- known answers


def test_read_target_logits_and_maps():
    a = torch.arange(24.0).view(2, 3, 2, 2)
    assert torch.equal(read_target(a, 1, "center", index=0), a[:, 1, 0, 0])
    assert torch.equal(read_target(a, 2, "channel"), a[:, 2].mean((1, 2)))
    logits = torch.randn(4, 10)
    assert torch.equal(read_target(logits, 7, "center"), logits[:, 7])


@pytest.mark.parametrize("fft", [True, False])
def test_actmax_of_simple_cell_is_its_gabor(fft):
    net = cell_network("simple")
    res = actmax(
        net,
        "response",
        n_images=2,
        size=16,
        fft=fft,
        constraint="norm",
        norm=3.0,
        pad=2,
        jitter=1,
        scale=(1.0, 1.0),
        rotate=0,
        max_iter=120,
        patience=0,
    )
    g = gabor(16)
    for img in res.images:
        assert _corr(img - 0.5, g) > 0.9
    # the optimum of <g, x> at norm 3 is 3
    assert float(res.activations.min()) > 2.5
    assert res.images.shape == (2, 3, 16, 16)


def test_actmax_logit_layer_and_result_spec(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    )
    with torch.no_grad():
        model[4].weight[3] = 1.0  # class 3 = summed rectified contrast energy: rises with any edge
    net = Network(model, name="tiny", input_size=16)
    res = actmax(net, "4", 3, size=16, pad=2, jitter=2, max_iter=30, patience=0, seed=1)
    assert float(res.activations[0]) > res.spec["grey_activation"] + 0.1
    again = actmax(net, "4", 3, size=16, pad=2, jitter=2, max_iter=30, patience=0, seed=1)
    assert torch.equal(res.images, again.images)  # same seed, same result
    s = res.spec
    for key in (
        "model",
        "layer",
        "unit",
        "lr",
        "max_iter",
        "seed",
        "transforms",
        "color_matrix",
        "versions",
        "n_iter",
    ):
        assert key in s
    assert s["method"] == "actmax" and s["unit"] == 3 and s["transforms"]["jitter"] == 2
    out = res.save(tmp_path / "run")
    assert {p.name for p in out.iterdir()} >= {"grid.png", "images.npz", "result.json"}
    meta = json.loads((out / "result.json").read_text())
    assert meta["spec"]["layer"] == "4" and meta["metrics"]["n_iter"] == 30
    with pytest.raises(DiversevisError, match="class index in 0..4"):
        actmax(net, "4", None, size=16, max_iter=1)
    with pytest.raises(DiversevisError, match="valid: 0..4"):
        actmax(net, "4", 5, size=16, max_iter=1)


def test_actmax_rejects_bad_requests():
    net = cell_network("simple")
    with pytest.raises(DiversevisError, match="no output for a 8px image"):
        actmax(net, "response", size=8, max_iter=1)
    with pytest.raises(DiversevisError, match="objective"):
        actmax(net, "response", size=16, objective="sum", max_iter=1)
    with pytest.raises(DiversevisError, match="constraint"):
        actmax(net, "response", size=16, constraint="tanh", max_iter=1)


def test_actmax_real_vgg16_unit_rises_above_grey(vgg16):
    res = actmax(vgg16, "conv5_1", 7, size=64, pad=4, jitter=4, max_iter=20, patience=0)
    grey = res.spec["grey_activation"]
    act = float(res.activations[0])
    assert act > grey + 50 and act > 2 * abs(grey)


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_actmax_writes_files(tmp_path, capsys):
    out = tmp_path / "am"
    rc = main(
        ["actmax", "--model", "cell:simple", "--layer", "response", "--size", "16", "--pad", "2", "--jitter", "1",
         "--max-iter", "20", "--quiet", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    assert (out / "grid.png").is_file() and (out / "images.npz").is_file()
    meta = json.loads((out / "result.json").read_text())
    assert meta["spec"]["method"] == "actmax" and meta["spec"]["unit"] == 0
    text = capsys.readouterr().out
    assert "activation" in text and "grey image" in text and str(out / "grid.png") in text


def test_cli_actmax_bad_layer_and_unit_exit_2(tmp_path, capsys):
    rc = main(["actmax", "--model", "cell:simple", "--layer", "respons", "-q", "--out", str(tmp_path / "x")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown layer 'respons'" in err and "response" in err
    rc = main(
        [
            "actmax",
            "--model",
            "cell:simple",
            "--layer",
            "response",
            "--unit",
            "4",
            "-q",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 2 and "valid: 0..0" in capsys.readouterr().err
