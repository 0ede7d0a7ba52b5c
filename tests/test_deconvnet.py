"""DeconvNet projections (Zeiler & Fergus): known answers on tiny nets, refusals, and a real VGG-16 run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diversevis import DiversevisError, Network
from diversevis.cli import main
from diversevis.cli.deconv import parse_position
from diversevis.methods.classic.deconvnet import deconv_top_patches, deconvnet, project, rf_box, unpool


def _masked(a: torch.Tensor, unit: int, position: str) -> torch.Tensor:
    """Keep channel ``unit`` of ``a`` (only its argmax per image for 'max'), then rectify."""
    m = torch.zeros_like(a)
    if position == "all":
        m[:, unit] = a[:, unit]
    else:
        for i in range(a.shape[0]):
            flat = int(a[i, unit].flatten().argmax())
            y, x = divmod(flat, a.shape[-1])
            m[i, unit, y, x] = a[i, unit, y, x]
    return torch.relu(m)


# ------------------------------------------------------------------------------------ known answers


@pytest.mark.parametrize("position", ["max", "all"])
def test_one_conv_layer_is_its_transposed_convolution(position):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 5, stride=2, padding=1)
    net = Network(nn.Sequential(conv), mean=[0.5, 0.4, 0.3], std=[0.25, 0.5, 0.2])
    x = torch.rand(2, 3, 18, 18)
    proj, pos, acts = project(net, "0", 2, x, position)
    with torch.no_grad():
        a = conv(net.normalize(x))  # (2, 4, 8, 8); (8 - 1) * 2 - 2 + 5 = 17, so output_padding = 1
        expected = F.conv_transpose2d(
            _masked(a, 2, position), conv.weight, stride=2, padding=1, output_padding=1
        )
    expected = expected / net.std  # transpose of the input normalisation
    assert proj.shape == x.shape
    torch.testing.assert_close(proj, expected, atol=1e-6, rtol=0)
    flat = a[:, 2].flatten(1).argmax(1)
    assert pos.tolist() == [[int(f) // 8, int(f) % 8] for f in flat]
    torch.testing.assert_close(acts, a[:, 2].flatten(1).max(1).values)


def test_given_position_projects_that_activation_only():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 2, 3)
    net = Network(nn.Sequential(conv, nn.ReLU()))
    x = torch.rand(1, 3, 8, 8)
    proj, pos, acts = project(net, "1", 1, x, (2, 3))
    with torch.no_grad():
        a = torch.relu(conv(x))
    m = torch.zeros_like(a)
    m[0, 1, 2, 3] = a[0, 1, 2, 3]
    torch.testing.assert_close(proj, F.conv_transpose2d(m, conv.weight), atol=1e-6, rtol=0)
    assert pos.tolist() == [[2, 3]] and float(acts[0]) == pytest.approx(float(a[0, 1, 2, 3]))
    # the support is the 3x3 receptive field of (2, 3)
    support = proj.abs().sum(1)[0] > 0
    assert support[2:5, 3:6].all() == (a[0, 1, 2, 3] > 0) and support.sum() <= 9


def test_unpooling_puts_values_at_the_switches_only():
    x = torch.tensor(
        [[1.0, 5.0, 2.0, 0.0], [3.0, 4.0, 8.0, 7.0], [0.0, 9.0, 1.0, 1.0], [6.0, 2.0, 3.0, 10.0]]
    ).view(1, 1, 4, 4)
    net = Network(nn.Sequential(nn.MaxPool2d(2)), in_channels=1)
    proj, pos, acts = project(net, "0", 0, x, "all")
    expected = torch.zeros(1, 1, 4, 4)
    for (y, x_), v in {(0, 1): 5.0, (1, 2): 8.0, (2, 1): 9.0, (3, 3): 10.0}.items():
        expected[0, 0, y, x_] = v
    torch.testing.assert_close(proj, expected, atol=0, rtol=0)
    assert pos.tolist() == [[1, 1]] and float(acts[0]) == 10.0
    # the strongest position alone
    proj, _, _ = project(net, "0", 0, x, "max")
    assert torch.nonzero(proj[0, 0]).tolist() == [[3, 3]] and float(proj[0, 0, 3, 3]) == 10.0


def test_unpool_matches_max_unpool2d_and_sums_overlapping_switches():
    torch.manual_seed(2)
    a = torch.randn(2, 3, 6, 6)
    p, idx = F.max_pool2d(a, 2, 2, return_indices=True)
    s = torch.randn_like(p)
    torch.testing.assert_close(
        unpool(s, idx, a.shape), F.max_unpool2d(s, idx, 2, 2, output_size=a.shape[-2:])
    )
    # overlapping 3x3/2 windows: a central maximum is every window's switch, the values add up
    b = torch.zeros(1, 1, 5, 5)
    b[0, 0, 2, 2] = 1.0
    p, idx = F.max_pool2d(b, 3, 2, return_indices=True)
    assert (idx == 12).all()
    out = unpool(torch.ones_like(p), idx, b.shape)
    assert float(out[0, 0, 2, 2]) == 4.0 and float(out.sum()) == 4.0


def test_chain_conv_relu_pool_conv_by_hand():
    torch.manual_seed(3)
    c1, c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, dilation=2)
    pool = nn.MaxPool2d(2)
    net = Network(nn.Sequential(c1, nn.ReLU(), pool, nn.Dropout(), c2, nn.Identity()), std=[0.5] * 3)
    x = torch.rand(1, 3, 15, 15)
    proj, _, _ = project(net, "5", 4, x, "max")
    with torch.no_grad():
        h1 = torch.relu(c1(net.normalize(x)))  # (1, 4, 15, 15)
        p, idx = F.max_pool2d(h1, 2, return_indices=True)  # (1, 4, 7, 7)
        a = c2(p)  # (1, 5, 3, 3)
        s = F.conv_transpose2d(_masked(a, 4, "max"), c2.weight, dilation=2)  # (1, 4, 7, 7)
        s = torch.relu(F.max_unpool2d(s, idx, 2, output_size=(15, 15)))  # row/column 14: no switch
        expected = F.conv_transpose2d(s, c1.weight, padding=1) / 0.5
    torch.testing.assert_close(proj, expected, atol=1e-6, rtol=0)


def test_batchnorm_is_folded_as_its_per_channel_scale():
    torch.manual_seed(4)
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    bn.running_var.uniform_(0.5, 2.0)
    bn.running_mean.uniform_(-1, 1)
    bn.weight.data.uniform_(0.5, 1.5)
    net = Network(nn.Sequential(conv, bn).eval())  # the expected value below uses the running stats
    x = torch.rand(1, 3, 7, 7)
    proj, _, _ = project(net, "1", 1, x, "all")
    with torch.no_grad():
        a = bn(conv(x))
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(1, -1, 1, 1)
        expected = F.conv_transpose2d(_masked(a, 1, "all") * scale, conv.weight)
    torch.testing.assert_close(proj, expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ refusals


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


class _InplaceResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.conv(x)
        y += x  # same tensor object as the conv's output: only its version counter tells
        return self.relu(y)


@pytest.mark.parametrize("block", [_Residual, _InplaceResidual])
def test_residual_block_is_refused_by_type_and_path(block):
    net = Network(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Sequential(block()), nn.Conv2d(3, 2, 3)))
    x = torch.rand(1, 3, 10, 10)
    with pytest.raises(DiversevisError, match=rf"{block.__name__} \(not a chain.*\) at 1\.0"):
        project(net, "2", 0, x)
    project(net, "0", 0, x)  # below the block it works


def test_unsupported_leaves_are_all_named():
    net = Network(nn.Sequential(nn.Conv2d(3, 3, 3), nn.AvgPool2d(2), nn.LeakyReLU(), nn.Conv2d(3, 2, 1)))
    with pytest.raises(DiversevisError) as exc:
        project(net, "3", 0, torch.rand(1, 3, 10, 10))
    msg = str(exc.value)
    assert "AvgPool2d at 1" in msg and "LeakyReLU at 2" in msg and "Supported:" in msg
    with pytest.raises(DiversevisError, match="padding_mode='reflect'"):
        project(
            Network(nn.Sequential(nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect"))),
            "0",
            0,
            torch.rand(1, 3, 6, 6),
        )


class _Noop(nn.Module):
    def forward(self, x):
        return x


def test_a_leaf_returning_its_input_counts_as_identity():
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 2, 3)
    x = torch.rand(1, 3, 8, 8)
    plain = project(Network(nn.Sequential(conv, nn.ReLU())), "1", 1, x)[0]
    torch.testing.assert_close(
        project(Network(nn.Sequential(_Noop(), conv, _Noop(), nn.ReLU())), "3", 1, x)[0], plain
    )


def test_bad_unit_position_and_layer_output():
    net = Network(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()))
    x = torch.rand(1, 3, 6, 6)
    with pytest.raises(DiversevisError, match=r"0\.\.1"):
        project(net, "0", 5, x)
    with pytest.raises(DiversevisError, match="outside"):
        project(net, "0", 0, x, (4, 0))
    with pytest.raises(DiversevisError, match="position must be"):
        project(net, "0", 0, x, "centre")
    with pytest.raises(DiversevisError, match=r"\(N, C, h, w\)"):
        project(net, "1", 0, x)


# --------------------------------------------------------------------------------------- real VGG-16


def test_vgg16_conv3_1_projection_lies_in_the_receptive_field(vgg16, tmp_path):
    res = deconvnet(vgg16, "conv3_1", 21, "chelsea", size=128)
    rf = vgg16.receptive_field("conv3_1")
    (y, x), (t, left, b, r) = res.positions[0].tolist(), res.rf_boxes[0].tolist()
    assert (t, left, b, r) == rf_box(rf, y, x, 128, 128)
    assert res.projections.abs().max() > 0 and float(res.activations[0]) > 0
    assert float(res.energy_fraction[0]) > 0.999
    # the energy's centroid sits near the centre of the receptive field
    e = res.projections[0].pow(2).sum(0)
    ys, xs = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    cy, cx = float((e * ys).sum() / e.sum()), float((e * xs).sum() / e.sum())
    assert abs(cy - rf.center(y)) < rf.size / 4 and abs(cx - rf.center(x)) < rf.size / 4
    # the whole channel spreads over the image
    spread = deconvnet(vgg16, "conv3_1", 21, res.images[0], position="all")
    assert float(spread.energy_fraction[0]) < float(res.energy_fraction[0])

    out = res.save(tmp_path / "run")
    assert sorted(p.name for p in out.iterdir()) == ["deconv.json", "deconv.npz", "deconv.png"]
    meta = json.loads((out / "deconv.json").read_text())
    s = meta["spec"]
    assert (s["model"], s["layer"], s["unit"], s["position"]) == ("vgg16", "conv3_1", 21, "max")
    assert s["source"] == {"kind": "photo", "image": "photo:chelsea", "size": 128}
    assert "torch" in s["versions"] and meta["metrics"]["positions"] == [[y, x]]
    with np.load(out / "deconv.npz") as z:
        assert z["projections"].shape == (1, 3, 128, 128) and z["rf_boxes"].tolist() == [[t, left, b, r]]


def test_vgg16_top_patches_with_projections(vgg16, tmp_path):
    res = deconv_top_patches(vgg16, "conv3_1", 21, k=3, candidates=128)
    r = vgg16.receptive_field("conv3_1").size
    assert res.images.shape == res.projections.shape == (3, 3, r, r)
    assert (res.activations[:-1] >= res.activations[1:]).all() and (res.activations > 0).all()
    assert (res.projections.flatten(1).abs().max(1).values > 0).all()
    assert res.spec["source"]["kind"] == "top_patches" and len(res.spec["source"]["indices"]) == 3
    res.save(tmp_path / "top")
    assert (tmp_path / "top" / "deconv.png").stat().st_size > 0


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_deconv_writes_the_files(tmp_path, capsys):
    out = tmp_path / "dc"
    rc = main(
        [
            "deconv",
            "-m",
            "vgg16",
            "-l",
            "conv2_1",
            "-u",
            "3",
            "--image",
            "astronaut",
            "--image-size",
            "64",
            "-o",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0
    assert "DeconvNet projection of photo:astronaut (64x64 px)" in text and "energy inside" in text
    assert {p.name for p in out.iterdir()} == {"deconv.json", "deconv.npz", "deconv.png"}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--image", "kitten"], "chelsea"),
        (["--image", "chelsea", "--position", "3"], "--position must be"),
        (["--top", "3", "--position", "all"], "--image only"),
    ],
)
def test_cli_deconv_user_errors(tmp_path, capsys, extra, message):
    rc = main(["deconv", "-m", "vgg16", "-l", "conv2_1", "-u", "3", "-o", str(tmp_path / "x"), *extra])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and message in err and err.startswith("diversevis: error: ")
    assert not (tmp_path / "x").exists()


def test_parse_position():
    assert (
        parse_position("max") == "max"
        and parse_position(" ALL ") == "all"
        and parse_position("3,4") == (3, 4)
    )
    with pytest.raises(DiversevisError):
        parse_position("-1,2")
