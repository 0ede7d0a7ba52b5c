"""Network inversion (Mahendran & Vedaldi): regularisers in closed form, exact recovery, CLI."""

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
from diversevis.core.result import Result
from diversevis.methods.classic.inversion import (
    InversionResult,
    alpha_norm,
    bundled_image_names,
    invert,
    load_image,
    relative_feature_error,
    tv_norm,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: on a shared, oversubscribed CPU two OpenMP threads run tiny models ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _mixing_net() -> Network:
    """A 1x1 convolution with an invertible colour-mixing matrix (det != 0), input centred on grey."""
    conv = nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight[:, :, 0, 0] = torch.tensor([[1.0, 0.5, 0.2], [-0.3, 1.0, 0.4], [0.1, -0.6, 1.0]])
    return Network(nn.Sequential(conv), mean=[0.5] * 3, std=[1.0] * 3, name="mix", input_size=16)


# ------------------------------------------------------------------------------------------- closed forms


def test_alpha_norm_closed_form():
    x = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]]])
    assert float(alpha_norm(x, 6)) == pytest.approx(1 + 64 + 0.5**6)
    assert float(alpha_norm(x, 1)) == pytest.approx(3.5)
    per = alpha_norm(torch.cat([x, 2 * x]), 2, reduce=False)
    assert torch.allclose(per, torch.tensor([5.25, 21.0]))


def test_tv_norm_closed_form():
    # x = [[0, 1, 3], [2, 2, 2], [0, 0, 5]]: differences at the four pixels with right and lower neighbours
    x = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0], [0.0, 0.0, 5.0]])[None, None]
    # (0,0): dx=1 dy=2 -> 5; (0,1): dx=2 dy=1 -> 5; (1,0): dx=0 dy=-2 -> 4; (1,1): dx=0 dy=-2 -> 4
    assert float(tv_norm(x, 2)) == pytest.approx(18.0)
    assert float(tv_norm(x, 1)) == pytest.approx(2 * math.sqrt(5) + 2 + 2)
    assert float(tv_norm(x, 4)) == pytest.approx(25 + 25 + 16 + 16)
    # summed over channels, per image without reduction
    two = torch.cat([x, x], 1)
    assert torch.allclose(tv_norm(torch.cat([two, 0 * two]), 2, reduce=False), torch.tensor([36.0, 0.0]))
    # a linear ramp a*i + b*j has TV (a^2 + b^2)^(beta/2) per pixel of the (H-1)(W-1) grid
    i, j = torch.meshgrid(torch.arange(5.0), torch.arange(6.0), indexing="ij")
    ramp = (0.3 * i + 0.4 * j)[None, None]
    assert float(tv_norm(ramp, 1)) == pytest.approx(4 * 5 * 0.5, rel=1e-5)


def test_regularisers_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: alpha_norm(t, 6), (x,))
    assert torch.autograd.gradcheck(lambda t: alpha_norm(t, 3, reduce=False), (x,))
    assert torch.autograd.gradcheck(lambda t: tv_norm(t, 2), (x,))
    assert torch.autograd.gradcheck(lambda t: tv_norm(t, 1, eps=1e-6), (x,))
    phi0 = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    y = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: relative_feature_error(t, phi0), (y,))


def test_relative_feature_error():
    phi0 = torch.tensor([[3.0, 4.0]])
    assert torch.allclose(
        relative_feature_error(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), phi0), torch.tensor([0.0, 1.0])
    )


# ------------------------------------------------------------------------------------------------ images


def test_load_image_inputs(tmp_path):
    from PIL import Image

    arr = (np.arange(4 * 6 * 3) % 256).astype(np.uint8).reshape(4, 6, 3)
    t = load_image(arr)
    assert t.shape == (3, 4, 6) and torch.allclose(t, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert torch.allclose(load_image(tmp_path / "a.png"), t)
    assert torch.equal(load_image(t), t)
    assert load_image(t, 2).shape == (3, 2, 2)  # shorter side 4 -> 2, centre crop
    assert load_image(t, channels=1).shape == (1, 4, 6)
    assert "astronaut" in bundled_image_names()
    ast = load_image("astronaut", 32)
    assert ast.shape == (3, 32, 32) and 0 <= float(ast.min()) and float(ast.max()) <= 1
    with pytest.raises(DiversevisError, match="bundled photos: .*astronaut"):
        load_image("no_such_photo")
    with pytest.raises(DiversevisError, match=r"\(3, H, W\)"):
        load_image(torch.rand(2, 5, 5))


# --------------------------------------------------------------------------------------------- recovery


def test_inversion_through_invertible_layer_recovers_image(tmp_path):
    net = _mixing_net()
    target = load_image("astronaut", 16)
    res = invert(net, "0", target, lambda_alpha=0, lambda_tv=0, max_iter=200, patience=0)
    assert isinstance(res, InversionResult) and isinstance(res, Result)
    x0 = target - target.mean((1, 2), keepdim=True)
    rel = float((res.reconstruction - target).norm() / x0.norm())
    assert rel < 0.05
    assert res.spec["image_relative_error"] == pytest.approx(rel, rel=1e-4)
    assert res.spec["feature_error"] < 1e-4
    assert torch.equal(res.target, target)
    out = res.save(tmp_path / "inv")
    meta = json.loads((out / "result.json").read_text())
    assert (
        meta["spec"]["method"] == "invert" and meta["metrics"]["feature_error"] == res.spec["feature_error"]
    )
    assert (out / "grid.png").is_file() and (out / "images.npz").is_file()
    assert Result.load(out).images.shape == (2, 3, 16, 16)


def test_tv_prior_smooths_a_non_invertible_layer():
    # a 2x2 average pool forgets the fine detail; the TV prior fills it in smoothly (no checkerboard)
    net = Network(nn.Sequential(nn.AvgPool2d(2)), mean=[0.5] * 3, std=[1.0] * 3, name="pool", input_size=16)
    target = load_image("astronaut", 16)
    common = dict(lambda_alpha=0, max_iter=150, patience=0, precondition=False, init_sd=0.2)
    rough = invert(net, "0", target, lambda_tv=0, **common)
    smooth = invert(net, "0", target, lambda_tv=1e-3, **common)
    assert smooth.spec["feature_error"] < 0.01
    assert float(tv_norm(smooth.reconstruction[None], 2)) < 0.5 * float(
        tv_norm(rough.reconstruction[None], 2)
    )
    assert smooth.spec["image_rms_error"] < rough.spec["image_rms_error"]


def test_invert_rejects_bad_requests():
    net = _mixing_net()
    with pytest.raises(DiversevisError, match="unknown layer"):
        invert(net, "conv9", torch.rand(3, 8, 8), max_iter=1)
    with pytest.raises(DiversevisError, match="lambda_tv must be a finite number >= 0"):
        invert(net, "0", torch.rand(3, 8, 8), lambda_tv=-1, max_iter=1)
    with pytest.raises(DiversevisError, match="all zero"):
        invert(net, "0", torch.full((3, 8, 8), 0.5), max_iter=1)


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_invert_writes_files(tmp_path, capsys):
    out = tmp_path / "inv"
    rc = main(
        ["invert", "--model", "cell:texture", "--layer", "quadrature", "--image", "chelsea", "--size", "16",
         "--max-iter", "20", "--quiet", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    meta = json.loads((out / "result.json").read_text())
    assert meta["spec"]["image"] == "chelsea" and meta["spec"]["image_size"] == [16, 16]
    assert meta["spec"]["n_iter"] == 20
    text = capsys.readouterr().out
    assert "feature error" in text and str(out / "grid.png") in text


def test_cli_invert_errors_exit_2(tmp_path, capsys):
    rc = main(
        [
            "invert",
            "--model",
            "cell:simple",
            "--layer",
            "respnse",
            "--image",
            "astronaut",
            "-q",
            "-o",
            str(tmp_path),
        ]
    )
    assert rc == 2 and "unknown layer 'respnse'" in capsys.readouterr().err
    rc = main(
        [
            "invert",
            "--model",
            "cell:simple",
            "--layer",
            "response",
            "--image",
            "nope.png",
            "-q",
            "-o",
            str(tmp_path),
        ]
    )
    assert rc == 2 and "bundled photos" in capsys.readouterr().err
