"""Occlusion sensitivity: a synthetic blob detector (known peak), closed-form map values, batching,
class targets, truncated forward passes, refusals and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from diversevis import DiversevisError, Network
from diversevis.cli import main
from diversevis.cli.occlusion import parse_fill
from diversevis.methods.classic.occlusion import occlusion, occlusion_grid, pixel_heatmap

BLOB = (20, 11)  # row, column of the bright blob


def _gauss(size: int, sigma: float, cy: float, cx: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    return torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2))


@pytest.fixture(scope="module")
def detector() -> Network:
    """A centred-blob detector: conv with a 9x9 Gaussian (sigma 2) on the image minus grey, then ReLU."""
    conv = nn.Conv2d(3, 1, 9, padding=4)
    with torch.no_grad():
        k = _gauss(9, 2.0, 4, 4)
        conv.weight.copy_((k / k.sum() / 3).expand(1, 3, 9, 9))
        conv.bias.fill_(-0.5 * float(conv.weight.sum()))  # grey 0.5 gives exactly 0
    return Network(nn.Sequential(conv, nn.ReLU()), name="blob")


@pytest.fixture(scope="module")
def blob_image() -> torch.Tensor:
    return (0.5 + 0.5 * _gauss(32, 2.0, *BLOB)).expand(3, 32, 32).contiguous()


def _f(net: Network, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.relu(net.activations(x[None], ["1"])["1"][0, 0]).sum())


def test_blob_detector_peaks_at_the_blob(detector, blob_image):
    res = occlusion(detector, blob_image, "1", 0, size=6, stride=2, progress=False)
    assert res.drop.shape == (14, 14) and res.spec["grid"] == [14, 14]
    cy, cx = res.peak_center
    assert abs(cy - BLOB[0]) <= 1 and abs(cx - BLOB[1]) <= 1
    assert res.metrics()["max_drop_fraction"] > 0.5
    # covering far-away grey background with grey changes (almost) nothing
    assert abs(float(res.drop[0, -1])) < 1e-3 * float(res.drop.max())
    assert res.heatmap.shape == (32, 32) and torch.isfinite(res.heatmap[:30, :30]).all()


@pytest.mark.parametrize("fill", ["grey", 0.2, (0.1, 0.9, 0.3)])
def test_map_value_is_baseline_minus_the_manually_occluded_image(detector, blob_image, fill):
    size, stride = 5, 3
    res = occlusion(detector, blob_image, "1", 0, size=size, stride=stride, fill=fill, progress=False)
    color = torch.tensor(
        [0.5] * 3 if fill == "grey" else [fill] * 3 if isinstance(fill, float) else list(fill)
    )
    baseline = _f(detector, blob_image)
    assert res.baseline == pytest.approx(baseline, rel=1e-6)
    for i, j in [(0, 0), (5, 2), (6, 3), (9, 9)]:
        x = blob_image.clone()
        x[:, i * stride : i * stride + size, j * stride : j * stride + size] = color.view(3, 1, 1)
        assert float(res.drop[i, j]) == pytest.approx(baseline - _f(detector, x), rel=1e-5, abs=1e-6)
        assert float(res.values[i, j]) == pytest.approx(_f(detector, x), rel=1e-5, abs=1e-6)


def test_batch_size_does_not_change_the_map(detector, blob_image):
    a = occlusion(detector, blob_image, "1", 0, size=7, stride=3, batch_size=1, progress=False)
    b = occlusion(detector, blob_image, "1", 0, size=7, stride=3, batch_size=7, progress=False)
    torch.testing.assert_close(a.drop, b.drop, atol=1e-5, rtol=1e-6)
    assert a.spec["forward_passes"] == b.spec["forward_passes"] == 9 * 9 + 1


def test_center_and_max_readouts(detector, blob_image):
    res = occlusion(detector, blob_image, "0", 0, size=4, stride=4, readout="max", progress=False)
    assert res.spec["target"]["map_position"] == list(BLOB)
    with torch.no_grad():
        a = detector.activations(blob_image[None], ["0"])["0"]
    assert res.baseline == pytest.approx(float(a[0, 0, BLOB[0], BLOB[1]]))
    res = occlusion(detector, blob_image, "0", 0, size=4, stride=4, readout="center", progress=False)
    assert res.spec["target"]["map_position"] == [15, 15]
    assert res.baseline == pytest.approx(float(a[0, 0, 15, 15]))


class _Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("the head ran")


def test_unit_target_never_runs_the_layers_above(blob_image):
    net = Network(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), _Boom()))
    res = occlusion(net, blob_image, "1", 1, size=8, stride=8, progress=False)
    assert res.drop.shape == (4, 4)


def test_class_target_uses_the_model_output(blob_image):
    torch.manual_seed(0)
    head = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    net = Network(head)
    res = occlusion(net, blob_image, class_index=2, size=8, stride=8, progress=False)
    x = blob_image.clone()
    x[:, 8:16, 16:24] = 0.5
    with torch.no_grad():
        expected = float(net(blob_image[None])[0, 2] - net(x[None])[0, 2])
    assert float(res.drop[1, 2]) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert res.spec["target"]["kind"] == "class" and len(res.spec["target"]["top5_unoccluded"]) == 3
    with pytest.raises(DiversevisError, match=r"0\.\.2"):
        occlusion(net, blob_image, class_index=3, progress=False)


def test_user_errors(detector, blob_image):
    with pytest.raises(DiversevisError, match="larger than the 32x32 image.*1..32"):
        occlusion(detector, blob_image, "1", 0, size=40, progress=False)
    with pytest.raises(DiversevisError, match="needs a target"):
        occlusion(detector, blob_image, "1", progress=False)
    with pytest.raises(DiversevisError, match="not both"):
        occlusion(detector, blob_image, "1", 0, class_index=1, progress=False)
    with pytest.raises(DiversevisError, match="class logits"):
        occlusion(detector, blob_image, class_index=0, progress=False)
    with pytest.raises(DiversevisError, match="readout"):
        occlusion(detector, blob_image, "1", 0, readout="mean", progress=False)
    with pytest.raises(DiversevisError, match="fill"):
        occlusion(detector, blob_image, "1", 0, fill="black", progress=False)
    with pytest.raises(DiversevisError, match="unknown image.*chelsea"):
        occlusion(detector, "kitten", "1", 0, progress=False)


def test_grid_and_pixel_heatmap_closed_form():
    assert occlusion_grid(10, 7, 4, 3) == ([0, 3, 6], [0, 3])
    drop = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    heat = pixel_heatmap(drop, 2, 1, 3, 3)
    assert heat[1, 1] == 2.5 and heat[0, 0] == 1.0 and heat[0, 1] == 1.5 and heat[2, 2] == 4.0
    heat = pixel_heatmap(drop, 2, 3, 6, 6)  # windows at 0 and 3: row/column 2 and 5 uncovered
    assert math.isnan(heat[2, 0]) and math.isnan(heat[0, 5]) and heat[4, 4] == 4.0


def test_save_writes_png_npz_json(detector, blob_image, tmp_path):
    res = occlusion(detector, blob_image, "1", 0, size=6, stride=4, progress=False)
    out = res.save(tmp_path / "occ")
    assert sorted(p.name for p in out.iterdir()) == ["occlusion.json", "occlusion.npz", "occlusion.png"]
    meta = json.loads((out / "occlusion.json").read_text())
    assert meta["spec"]["target"] == {
        "kind": "unit",
        "layer": "1",
        "layer_path": "1",
        "unit": 0,
        "readout": "sum",
    }
    assert meta["spec"]["image"]["source"] == "tensor" and "torch" in meta["spec"]["versions"]
    assert meta["metrics"]["peak"] == list(res.peak)
    with np.load(out / "occlusion.npz") as z:
        assert z["drop"].shape == (7, 7) and z["heatmap"].shape == (32, 32)


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_occlusion_on_vgg16(tmp_path, capsys):
    out = tmp_path / "occ"
    argv = ["occlusion", "-m", "vgg16", "-l", "conv2_1", "-u", "3", "--image", "coffee", "--image-size", "48"]
    rc = main([*argv, "--size", "16", "--stride", "16", "-q", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "3x3 occluder positions (16 px, stride 16), 10 forward passes" in text
    assert {p.name for p in out.iterdir()} == {"occlusion.json", "occlusion.npz", "occlusion.png"}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-l", "conv2_1", "-u", "3", "--size", "500"], "larger than the 48x48 image"),
        (["-u", "3"], "--unit needs --layer"),
        (["-l", "conv2_1", "--class-index", "3"], "drop --layer"),
        (["--class-index", "3"], "class logits"),
        (["-l", "conv2_1", "-u", "3", "--image", "kitten"], "astronaut"),
        (["-l", "conv2_1", "-u", "3", "--fill", "dark"], "--fill must be"),
    ],
)
def test_cli_occlusion_user_errors(tmp_path, capsys, extra, message):
    rc = main(["occlusion", "-m", "vgg16", "--image-size", "48", "-q", "-o", str(tmp_path / "x"), *extra])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cli_occlusion_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["occlusion", "-m", "vgg16", "-l", "conv2_1", "-u", "3", "--size", "0"])
    assert exc.value.code == 2 and "expected an integer >= 1" in capsys.readouterr().err


def test_parse_fill():
    assert parse_fill("Grey") == "grey" and parse_fill("mean") == "mean"
    assert parse_fill("0.3") == 0.3 and parse_fill("0.1,0.2,0.3") == [0.1, 0.2, 0.3]


def test_an_image_smaller_than_the_receptive_field_is_refused_with_the_size_to_use(vgg16_paper):
    from diversevis.methods.classic.occlusion import occlusion

    with pytest.raises(DiversevisError, match=r"16x16 px image is smaller .*receptive field 24 px"):
        occlusion(vgg16_paper, "chelsea", "conv3_1", 0, size=8, stride=4, image_size=16, progress=False)
