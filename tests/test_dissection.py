"""Network dissection (Bau et al. 2017): IoU, quantile thresholds, Broden loader, colour probe, CLI.

Known answers: a planted red detector on images with red squares has IoU 1 with the "red square"
concept when the quantile equals the squares' area; a random zero-mean filter is not a detector; a
hand-computed Broden directory gives the category-restricted IoU of NetDissect.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from diversevis.cli import main
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.methods.classic.concepts import (
    COLOR_NAMES,
    ArrayDataset,
    BrodenDataset,
    ColorProbe,
    decode_label_png,
    name_colors,
)
from diversevis.methods.classic.dissection import (
    ExactQuantile,
    HistogramQuantile,
    dissect,
    iou,
    quantile_threshold,
    unit_masks,
    upsample,
)

# ------------------------------------------------------------------------------------ pure functions


def test_iou_closed_form():
    out = iou(torch.tensor([2, 0, 3]), torch.tensor([4, 0, 3]), torch.tensor([3, 0, 3]))
    assert out.tolist() == pytest.approx([2 / 5, 0.0, 1.0])
    # broadcasting (U, C) intersections against (U, 1) and (1, C) areas
    inter = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    got = iou(inter, torch.tensor([[4.0], [4.0]]), torch.tensor([[2.0, 4.0]]))
    assert got.flatten().tolist() == pytest.approx([1 / 5, 2 / 6, 0.0, 1.0])


def test_quantile_threshold_closed_form():
    v = torch.arange(1, 11, dtype=torch.float32)[None]  # 1..10
    # P(v > T) = 0.1: numpy's linear (1 - q) quantile, position 0.9 * 9 = 8.1 -> 9 + 0.1 = 9.1
    assert float(quantile_threshold(v, 0.1)[0]) == pytest.approx(9.1)
    assert float(quantile_threshold(v, 0.5)[0]) == pytest.approx(5.5)


@pytest.mark.parametrize(("n", "q", "chunk"), [(1000, 0.005, 37), (999, 0.1, 100), (50, 0.3, 7), (2, 0.5, 1)])
def test_exact_streaming_quantile_equals_numpy(n, q, chunk):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((3, n)).astype(np.float32)
    est = ExactQuantile(3, n, q)
    for s in range(0, n, chunk):
        est.update(torch.from_numpy(x[:, s : s + chunk]))
    assert est.m == ExactQuantile.size(n, q) <= n
    np.testing.assert_allclose(
        est.threshold().numpy(), np.quantile(x.astype(np.float64), 1 - q, axis=1), rtol=1e-6
    )


def test_histogram_quantile_is_within_a_bin_of_numpy_even_when_the_range_grows():
    rng = np.random.default_rng(0)
    # later batches exceed the first batch's range (forces range doubling) and go below it
    batches = [rng.uniform(0, 1, (2, 500)), rng.uniform(-1, 5, (2, 2000)), rng.exponential(2.0, (2, 3000))]
    est = HistogramQuantile(2, 0.01, bins=1024)
    for b in batches:
        est.update(torch.from_numpy(b))
    allv = np.concatenate(batches, axis=1)
    ref = np.quantile(allv, 0.99, axis=1)
    width = est.width.numpy()
    assert np.all(np.abs(est.threshold().numpy() - ref) <= width + 1e-9)
    assert np.all(est.lo.numpy() + width * est.bins > allv.max(1))


def test_unit_masks_upsample_bilinearly_then_threshold():
    maps = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])  # (1, 2, 2): right column on
    up = upsample(maps, (4, 4))
    # align_corners=False: columns at x = -0.25, 0.25, 0.75, 1.25 in source pixels -> 0, .25, .75, 1
    assert up[0, 0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])
    m = unit_masks(maps, torch.tensor([0.5]), (4, 4))
    assert m.shape == (1, 4, 4) and m[0].sum() == 8 and bool(m[0, :, 2:].all())
    assert upsample(maps, (2, 2)) is maps


# ------------------------------------------------------------------------------------ colour naming


def test_colour_naming_of_pure_and_achromatic_pixels():
    rgb = np.array(
        [
            [1, 0, 0],
            [0, 1, 0],
            [0, 0, 1],
            [0, 0, 0],
            [1, 1, 1],
            [0.5, 0.5, 0.5],
            [1, 1, 0],
            [1, 0.5, 0],
            [0.55, 0.0, 0.0],
            [0.05, 0.05, 0.4],
        ],
        dtype=np.float32,
    )
    names = [COLOR_NAMES[i] for i in name_colors(rgb)]
    assert names == ["red", "green", "blue", "black", "white", "grey", "yellow", "orange", "red", "blue"]
    img = np.zeros((2, 3, 3), np.float32)
    img[..., 0] = 1
    assert name_colors(img).shape == (2, 3) and (name_colors(img) == COLOR_NAMES.index("red")).all()


def test_colour_probe_labels_every_pixel():
    probe = ColorProbe(16, max_images=3)
    assert len(probe) == 3 and [c.name for c in probe.concepts] == list(COLOR_NAMES)
    s = probe[0]
    assert s.image.shape == (16, 16, 3) and s.label_maps.shape == (1, 16, 16)
    assert s.label_maps.min() >= 1 and s.label_maps.max() <= len(COLOR_NAMES)
    assert s.categories == frozenset({"color"}) and probe.image_size(2) == (16, 16)
    with pytest.raises(DiversevisError, match="integer >= 8"):
        ColorProbe(4)


# ------------------------------------------------------------------------------- synthetic known answer


def _squares(n: int = 12, size: int = 32, side: int = 6, seed: int = 0) -> ArrayDataset:
    """Grey-noise images with one red and one green ``side``-px square at random places (left/right half)."""
    rng = np.random.default_rng(seed)
    imgs, maps = [], []
    for _ in range(n):
        img = np.repeat(rng.random((size, size, 1)).astype(np.float32), 3, axis=2)
        lab = np.zeros((size, size), np.int64)
        ry, rx = rng.integers(0, size - side + 1), rng.integers(0, size // 2 - side + 1)
        gy, gx = rng.integers(0, size - side + 1), size // 2 + rng.integers(0, size // 2 - side + 1)
        img[ry : ry + side, rx : rx + side] = (1, 0, 0)
        lab[ry : ry + side, rx : rx + side] = 1
        img[gy : gy + side, gx : gx + side] = (0, 1, 0)
        lab[gy : gy + side, gx : gx + side] = 2
        imgs.append(img)
        maps.append(lab)
    return ArrayDataset(imgs, maps, ["red square", "green square"], category="shape", name="squares")


def _squares_net(seed: int = 0) -> nn.Sequential:
    """Unit 0: planted red detector R - (G + B) / 2 (1 on red, 0 on grey, -0.5 on green); unit 1: random
    zero-mean 3x3 filter per input channel (0 on any uniform region)."""
    conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
    w = torch.zeros(2, 3, 3, 3)
    w[0, :, 1, 1] = torch.tensor([1.0, -0.5, -0.5])
    r = torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(seed))
    w[1] = r - r.mean(dim=(1, 2), keepdim=True)
    conv.weight.data = w
    return nn.Sequential(conv)


def test_planted_red_detector_gets_iou_one_and_a_random_unit_is_no_detector():
    ds = _squares()
    q = 36 / 1024  # the red squares' share of the pixels
    res = dissect(Network(_squares_net(), input_size=32), "0", ds, quantile=q)
    rows = res.rows()
    assert rows[0]["label"] == "red square" and rows[0]["category"] == "shape"
    assert rows[0]["iou"] == pytest.approx(1.0) and rows[0]["detector"]
    assert res.iou[0, 1] == 0.0  # never fires on green
    assert rows[1]["iou"] < 0.04 and not rows[1]["detector"]
    assert res.n_detectors == 1 and res.unique_detectors == 1
    assert res.detector_counts() == {"red square": 1}
    # the thresholds are numpy's quantiles of all activations
    net = Network(_squares_net(), input_size=32)
    x = torch.from_numpy(np.stack([ds[i].image for i in range(len(ds))])).permute(0, 3, 1, 2)
    with torch.no_grad():
        a = net.activations(x, ["0"])["0"].transpose(0, 1).reshape(2, -1).double().numpy()
    np.testing.assert_allclose(res.thresholds.numpy(), np.quantile(a, 1 - q, axis=1), rtol=1e-6)
    assert res.spec["quantile_method"] == "exact" and res.spec["positions"] == 12 * 32 * 32


def test_upsampled_maps_still_label_the_planted_unit_and_histogram_agrees():
    ds = _squares()
    net = Network(nn.Sequential(*_squares_net(), nn.AvgPool2d(2)), input_size=32)
    exact = dissect(net, "1", ds, units=[0], quantile=36 / 1024)
    hist = dissect(net, "1", ds, units=[0], quantile=36 / 1024, quantile_method="histogram")
    assert exact.rows()[0]["label"] == "red square" and exact.rows()[0]["iou"] > 0.5
    assert hist.spec["quantile_method"] == "histogram"
    assert hist.rows()[0]["label"] == "red square"
    assert hist.rows()[0]["iou"] == pytest.approx(exact.rows()[0]["iou"], abs=0.05)


def test_save_writes_table_plot_and_spec_atomically(tmp_path):
    res = dissect(Network(_squares_net(), input_size=32), "0", _squares(n=4), quantile=36 / 1024)
    out = res.save(tmp_path / "d")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["detectors.png", "dissection.json", "dissection.md", "iou.npz"]
    meta = json.loads((out / "dissection.json").read_text())
    assert meta["spec"]["quantile"] == pytest.approx(36 / 1024) and meta["spec"]["layer"] == "0"
    assert {"diversevis", "torch"} <= set(meta["spec"]["versions"])
    assert meta["summary"]["detectors"] == 1 and meta["units"][0]["label"] == "red square"
    assert "| 0 | red square | shape | 1.0000 | yes |" in (out / "dissection.md").read_text()
    with np.load(out / "iou.npz") as z:
        assert z["iou"].shape == (2, 2) and z["concept_ids"].tolist() == [1, 2]
    assert Image.open(out / "detectors.png").size[0] > 100


def test_bad_arguments_are_user_errors():
    net = Network(_squares_net(), input_size=32)
    ds = _squares(n=2)
    with pytest.raises(DiversevisError, match=r"quantile must be in \(0, 1\)"):
        dissect(net, "0", ds, quantile=0)
    with pytest.raises(DiversevisError, match="out of range"):
        dissect(net, "0", ds, units="0-5")
    with pytest.raises(DiversevisError, match="choose one of auto, exact, histogram"):
        dissect(net, "0", ds, quantile_method="approx")
    with pytest.raises(DiversevisError, match="unknown layer"):
        dissect(net, "conv9", ds)


# ------------------------------------------------------------------------------------- Broden format


def _png(path: Path, labels: np.ndarray) -> None:
    """Write a label map as Broden does: R = label % 256, G = label // 256."""
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    rgb[..., 0] = labels % 256
    rgb[..., 1] = labels // 256
    Image.fromarray(rgb).save(path)


@pytest.fixture
def broden(tmp_path) -> Path:
    """Two 4x4 images. Image a: colour and object annotated; image b: scene only. In both, R = 1 on the
    top-left 2x2 block. Colour 'red' (5) covers that block plus one pixel in a; object 'car' (300, which
    needs the G byte) covers a's bottom row; scene 'street' (7) is an image-level label of b."""
    root = tmp_path / "broden"
    (root / "images" / "set").mkdir(parents=True)
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2, :2, 0] = 255
    Image.fromarray(img).save(root / "images" / "set" / "a.png")
    Image.fromarray(img).save(root / "images" / "set" / "b.png")
    red = np.zeros((4, 4), np.int64)
    red[:2, :2] = 5
    red[2, 0] = 5
    _png(root / "images" / "set" / "a_color.png", red)
    car = np.zeros((4, 4), np.int64)
    car[3, :] = 300
    _png(root / "images" / "set" / "a_object.png", car)
    with (root / "index.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "split", "ih", "iw", "sh", "sw", "color", "object", "scene"])
        w.writerow(["set/a.png", "train", 4, 4, 4, 4, "set/a_color.png", "set/a_object.png", ""])
        w.writerow(["set/b.png", "train", 4, 4, 4, 4, "", "", "7"])
    with (root / "label.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        w.writerow([0, "-", "-", 0, 0, ""])
        w.writerow([5, "red-c", "color(2)", 2, 0.1, ""])
        w.writerow([7, "street-s", "scene(1)", 1, 1.0, ""])
        w.writerow([300, "car", "object(3);part(1)", 4, 0.2, ""])
    return root


def test_broden_loader_reads_the_tiny_directory(broden):
    ds = BrodenDataset(broden)
    assert len(ds) == 2 and ds.image_size(0) == (4, 4)
    assert [(c.id, c.name, c.category) for c in ds.concepts] == [
        (5, "red-c", "color"),
        (7, "street-s", "scene"),
        (300, "car", "object"),
    ]
    a, b = ds[0], ds[1]
    assert a.image.shape == (4, 4, 3) and a.image[0, 0, 0] == 1.0 and a.image[3, 3, 0] == 0.0
    assert a.label_maps.shape == (2, 4, 4) and a.categories == frozenset({"color", "object"})
    assert (a.label_maps[0] == 5).sum() == 5 and (a.label_maps[1] == 300).sum() == 4
    assert b.label_maps.shape == (0, 4, 4) and b.image_labels == (7,) and b.categories == frozenset({"scene"})
    assert decode_label_png(broden / "images" / "set" / "a_object.png")[3, 0] == 300
    only = BrodenDataset(broden, categories=["color"])
    assert [c.name for c in only.concepts] == ["red-c"] and only[1].categories == frozenset()


def test_broden_concepts_from_c_files_when_label_csv_is_missing(broden):
    (broden / "label.csv").unlink()
    (broden / "c_color.csv").write_text("code,number,name,frequency,coverage\n1,5,red-c,2,0.1\n")
    (broden / "c_scene.csv").write_text("code,number,name,frequency,coverage\n1,7,street-s,1,1.0\n")
    ds = BrodenDataset(broden)
    assert [(c.id, c.category) for c in ds.concepts] == [(5, "color"), (7, "scene")]


def test_broden_errors_name_the_problem(broden, tmp_path):
    with pytest.raises(DiversevisError, match="has no index.csv"):
        BrodenDataset(tmp_path)
    with pytest.raises(DiversevisError, match="does not exist"):
        BrodenDataset(tmp_path / "nowhere")
    with pytest.raises(DiversevisError, match="valid: color, object, scene"):
        BrodenDataset(broden, categories=["colour"])
    (broden / "images" / "set" / "a_object.png").unlink()
    with pytest.raises(DiversevisError, match="'set/a_object.png'.*missing"):
        BrodenDataset(broden)[0]


def _r_channel_net() -> Network:
    conv = nn.Conv2d(3, 1, 1, bias=False)
    conv.weight.data = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return Network(nn.Sequential(conv), input_size=4)


def test_dissection_of_the_broden_directory_closed_form(broden):
    # 32 values, 8 ones -> T = numpy quantile 0.75 = 0.25 -> M = the two 2x2 blocks.
    res = dissect(_r_channel_net(), "0", broden, quantile=0.25, iou_threshold=0.3)
    assert float(res.thresholds[0]) == pytest.approx(0.25)
    by_name = dict(zip([c.name for c in res.concepts], res.iou[0].tolist()))
    # colour: only image a is colour-annotated, so |M| = 4 there: 4 / (4 + 5 - 4)
    assert by_name["red-c"] == pytest.approx(0.8)
    # scene (image-level, only image b): 4 / (4 + 16 - 4)
    assert by_name["street-s"] == pytest.approx(0.25)
    assert by_name["car"] == 0.0
    assert res.rows()[0]["label"] == "red-c" and res.rows()[0]["detector"]


# --------------------------------------------------------------------------------------------- CLI


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_dissects_a_file_model_on_a_broden_directory(capsys, tmp_path, broden):
    path = tmp_path / "rnet.pt"
    torch.save(_r_channel_net().module, path)
    out = tmp_path / "out"
    rc, stdout, err = _run(
        capsys,
        "dissect",
        *("--model", f"file:{path}", "--allow-pickle", "--layer", "0"),
        *("--dataset", str(broden), "--quantile", "0.25", "--out", str(out), "--quiet"),
    )
    assert rc == 0, err
    assert "1 detectors" in stdout and "red-c 1" in stdout
    meta = json.loads((out / "dissection.json").read_text())
    assert meta["units"][0]["label"] == "red-c" and meta["units"][0]["iou"] == pytest.approx(0.8)


def test_cli_default_colour_probe_and_default_out_dir(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, stdout, err = _run(
        capsys,
        "dissect",
        "--model",
        "cell:simple",
        "--layer",
        "response",
        "--size",
        "24",
        "--max-images",
        "3",
        "-q",
    )
    assert rc == 0, err
    assert "color-probe (3 images, 11 concepts)" in stdout
    assert (tmp_path / "runs" / "simple-cell_response_dissect" / "dissection.json").is_file()


def test_cli_errors_exit_2(capsys, tmp_path):
    rc, out, err = _run(
        capsys, "dissect", "--model", "cell:simple", "--layer", "response", "--dataset", str(tmp_path)
    )
    assert rc == 2 and "has no index.csv" in err and "Traceback" not in err
    rc, out, err = _run(
        capsys, "dissect", "-m", "cell:simple", "-l", "response", "--units", "3-4", "--size", "16"
    )
    assert rc == 2 and "out of range" in err
    rc, out, err = _run(capsys, "dissect", "-m", "cell:simple", "-l", "response", "--categories", "color")
    assert rc == 2 and "needs --dataset" in err
    with pytest.raises(SystemExit) as exc:
        main(["dissect", "-m", "cell:simple", "-l", "response", "--quantile", "2"])
    assert exc.value.code == 2
    assert "expected a number in (0, 1)" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- real run


def test_vgg16_conv1_2_units_detect_colours(vgg16):
    res = dissect(vgg16, "conv1_2", size=64)
    assert res.spec["n_images"] >= 10 and len(res.units) == 64
    colours = set(COLOR_NAMES)
    detected = [r["label"] for r in res.rows() if r["detector"]]
    assert detected and set(detected) <= colours
    assert any(lab not in ("black", "white", "grey") for lab in detected)  # a chromatic colour unit
