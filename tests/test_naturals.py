"""Tests of diversevis.images.naturals: natural images, patch sampling and the natural patch-norm statistic."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diversevis.core.errors import DiversevisError
from diversevis.images import naturals


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DIVERSEVIS_CACHE", str(cache))
    return cache


def _save_rgb(path: Path, rgb01: np.ndarray) -> None:
    """Save a float RGB (H, W, 3) image in [0, 1] as an 8-bit file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.asarray(rgb01) * 255).astype(np.uint8)).save(path)


def _constant(h: int, w: int, value: float) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.float64)


# ------------------------------------------------------------------------------------------------ images


def test_bundled_images_are_rgb_in_unit_range():
    images = naturals.natural_images()
    assert len(images) >= 8
    for img in images:
        assert isinstance(img, np.ndarray)
        assert img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 100
        assert img.dtype == np.float32
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
        assert float(img.std()) > 0.02  # real photos, not blank arrays
        assert not img.flags.writeable  # memoised arrays are protected from callers
    # memoised: the same arrays come back
    again = naturals.natural_images()
    assert all(a is b for a, b in zip(images, again, strict=True))
    # the colour photos are really colour, the grayscale ones are replicated
    labels = [name for name, _ in naturals._image_set(None)]
    by_label = dict(naturals._image_set(None))
    assert "skimage:astronaut" in labels and "skimage:camera" in labels
    astro, camera = by_label["skimage:astronaut"], by_label["skimage:camera"]
    assert astro.shape == (512, 512, 3) and float(np.abs(astro[..., 0] - astro[..., 2]).mean()) > 0.01
    assert np.array_equal(camera[..., 0], camera[..., 1]) and np.array_equal(camera[..., 0], camera[..., 2])

    mean = naturals.dataset_mean()
    assert mean.shape == (3,) and mean.dtype == np.float64
    assert np.all((mean > 0.15) & (mean < 0.75))
    set_id = naturals.image_set_id()
    assert len(set_id) == 12 and int(set_id, 16) >= 0 and set_id == naturals.image_set_id(None)


def test_bundled_skimage_photos_equal_skimage_data_loaders():
    # the bundled files are read with PIL (skipping skimage.io's import cost); they must decode to exactly
    # what skimage.data's offline loaders return
    import skimage.data

    by_label = dict(naturals._image_set(None))
    skimage_labels = [label for label in by_label if label.startswith("skimage:")]
    assert len(skimage_labels) == 13
    for label in skimage_labels:
        loaded = getattr(skimage.data, label.split(":", 1)[1])()
        if isinstance(loaded, tuple):  # stereo_motorcycle: (left, right, disparity)
            loaded = loaded[0]
        expected = np.asarray(loaded, dtype=np.float32) / 255.0
        if expected.ndim == 2:
            expected = np.repeat(expected[:, :, None], 3, axis=2)
        np.testing.assert_array_equal(by_label[label], expected[:, :, :3], err_msg=label)


def test_folder_images_are_read_recursively_sorted_and_converted(tmp_path):
    folder = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    rgb = rng.random((20, 30, 3))
    _save_rgb(folder / "b_rgb.png", rgb)
    gray = (rng.random((12, 10)) * 255).astype(np.uint8)
    Image.fromarray(gray).save(folder / "a_gray.bmp")
    rgba = (rng.random((8, 9, 4)) * 255).astype(np.uint8)
    (folder / "sub").mkdir()
    Image.fromarray(rgba, mode="RGBA").save(folder / "sub" / "c_rgba.PNG")
    deep = np.full((5, 6), 65535, dtype=np.uint16)
    deep[0, 0] = 0
    Image.fromarray(deep).save(folder / "sub" / "d_16bit.tif")
    (folder / "notes.txt").write_text("not an image")

    images = naturals.natural_images(folder)
    assert [img.shape for img in images] == [(12, 10, 3), (20, 30, 3), (8, 9, 3), (5, 6, 3)]
    assert all(img.dtype == np.float32 for img in images)
    np.testing.assert_allclose(images[0][..., 1], gray / 255.0, atol=1e-6)  # replicated grayscale
    np.testing.assert_allclose(images[1], np.round(rgb * 255) / 255, atol=1e-6)
    np.testing.assert_allclose(images[2], rgba[..., :3] / 255.0, atol=1e-6)  # alpha dropped
    assert images[3].max() == 1.0 and images[3][0, 0, 0] == 0.0  # 16-bit scaled by 65535
    # a str path and a Path to the same folder share the memoised set
    assert naturals.natural_images(str(folder))[0] is images[0]


def test_image_set_id_depends_on_content_not_location(tmp_path):
    a = tmp_path / "a"
    _save_rgb(a / "x.png", _constant(16, 16, 0.25))
    _save_rgb(a / "y" / "z.png", _constant(16, 20, 0.75))
    b = tmp_path / "b"
    shutil.copytree(a, b)
    c = tmp_path / "c"
    shutil.copytree(a, c)
    _save_rgb(c / "x.png", _constant(16, 16, 0.5))  # same names and shapes, other pixels
    ids = [naturals.image_set_id(p) for p in (a, b, c)]
    assert ids[0] == ids[1]
    assert ids[2] != ids[0]
    assert ids[0] != naturals.image_set_id()


# ---------------------------------------------------------------------------------------------- sampling


def test_sample_patches_is_deterministic_per_seed():
    p0 = naturals.sample_patches(16, 64, seed=0)
    assert p0.shape == (64, 3, 16, 16) and p0.dtype == torch.float32
    assert float(p0.min()) >= 0.0 and float(p0.max()) <= 1.0
    assert torch.equal(p0, naturals.sample_patches(16, 64, seed=0))
    p1 = naturals.sample_patches(16, 64, seed=1)
    assert not torch.equal(p0, p1)
    # the patches are varied natural crops, not repeats of one region
    flat = p0.reshape(64, -1)
    assert torch.unique(flat, dim=0).shape[0] >= 60  # (a few may be uniform black sky or background)
    assert float(flat.std(dim=1).mean()) > 0.02
    # the first patches do not depend on how many are drawn after them
    assert torch.equal(naturals.sample_patches(16, 8, seed=0), p0[:8])


def test_sample_patches_crops_exact_regions_at_full_scale(tmp_path):
    # a 1-pixel checkerboard: every full-resolution patch holds exactly half ones, and deviates from the
    # set's mean (0.5) by exactly 0.5 in every value, so its norm is 0.5 * sqrt(3 * size**2)
    folder = tmp_path / "checker"
    yy, xx = np.mgrid[:32, :40]
    board = ((yy + xx) % 2).astype(np.float64)
    _save_rgb(folder / "board.png", np.repeat(board[..., None], 3, axis=2))
    np.testing.assert_allclose(naturals.dataset_mean(folder), [0.5, 0.5, 0.5])
    size = 6
    patches = naturals.sample_patches(size, 50, folder=folder, scales=(1.0,), seed=3)
    assert patches.shape == (50, 3, size, size)
    assert torch.all(patches.sum(dim=(1, 2, 3)) == 3 * size * size / 2)
    # every patch is a real crop of the board (checks alternate in both directions)
    assert torch.all(patches[:, :, 1:, :] + patches[:, :, :-1, :] == 1)
    assert torch.all(patches[:, :, :, 1:] + patches[:, :, :, :-1] == 1)
    norms = torch.linalg.vector_norm((patches - 0.5).reshape(50, -1), dim=1)
    # (torch.allclose: torch.testing.assert_close would import torch.distributed, ~1 s)
    assert torch.allclose(norms, torch.full((50,), 0.5 * math.sqrt(3 * size * size)))
    # both parities of crop origin occur (the crop position is random, not fixed)
    assert len({float(p[0, 0, 0]) for p in patches}) == 2


def test_sample_patches_uses_all_scales_that_fit(tmp_path):
    # a horizontal ramp: downsampling keeps a patch's mean value but shrinks its horizontal gradient, so the
    # gradient tells which scale a patch came from
    folder = tmp_path / "ramp"
    ramp = np.tile(np.linspace(0.0, 1.0, 256)[None, :, None], (256, 1, 3))
    _save_rgb(folder / "ramp.png", ramp)
    patches = naturals.sample_patches(8, 300, folder=folder, seed=0).numpy()
    slope = (patches[:, 0, :, -1] - patches[:, 0, :, 0]).mean(axis=1) / 7 * 255  # levels per pixel
    # a step of 1 pixel advances 1, 2 or 4 levels of the original ramp at scales 1, 0.5, 0.25
    found = {s: int(np.sum(np.abs(slope - s) < 0.35)) for s in (1, 2, 4)}
    assert all(count > 50 for count in found.values()), found
    assert sum(found.values()) == 300
    # a patch too large for the coarser scales only comes from the ones where it fits
    big = naturals.sample_patches(100, 40, folder=folder, seed=0).numpy()
    slope = (big[:, 0, :, -1] - big[:, 0, :, 0]).mean(axis=1) / 99 * 255
    assert np.all((np.abs(slope - 1) < 0.1) | (np.abs(slope - 2) < 0.1))
    assert np.any(np.abs(slope - 2) < 0.1) and np.any(np.abs(slope - 1) < 0.1)


# -------------------------------------------------------------------------------------------- statistics


def test_patch_norm_matches_closed_form_on_constant_and_checkerboard_folder(tmp_path):
    # a constant set: every patch equals the dataset mean -> norm 0 at every scale
    flat = tmp_path / "flat"
    _save_rgb(flat / "gray.png", _constant(40, 48, 100 / 255))
    _save_rgb(flat / "gray2.png", _constant(30, 30, 100 / 255))
    np.testing.assert_allclose(naturals.dataset_mean(flat), [100 / 255] * 3, rtol=1e-6)
    assert naturals.natural_patch_norm(5, folder=flat, n=200) == pytest.approx(0.0, abs=1e-4)
    assert naturals.natural_patch_rms(5, folder=flat, n=200) == pytest.approx(0.0, abs=1e-5)

    # one black and one white image of equal area: the mean is 0.5 gray and every patch, from either image
    # and at any scale, is 0.5 away from it in each of its 3 * size**2 values
    bw = tmp_path / "black_white"
    _save_rgb(bw / "black.png", _constant(40, 40, 0.0))
    _save_rgb(bw / "white.png", _constant(40, 40, 1.0))
    np.testing.assert_allclose(naturals.dataset_mean(bw), [0.5, 0.5, 0.5])
    for size in (1, 4, 10):
        expected = 0.5 * math.sqrt(3 * size * size)
        assert naturals.natural_patch_norm(size, folder=bw, n=300) == pytest.approx(expected, rel=1e-5)
        assert naturals.natural_patch_rms(size, folder=bw, n=300) == pytest.approx(0.5, rel=1e-5)

    # unequal areas: black 64x64 and white 32x32 -> mean 1024 / 5120 = 0.2; a black patch is 0.2 away
    # from it per value, a white one 0.8 away; the norm is the mix given by which image each patch came from
    uneq = tmp_path / "unequal"
    _save_rgb(uneq / "black.png", _constant(64, 64, 0.0))
    _save_rgb(uneq / "white.png", _constant(32, 32, 1.0))
    np.testing.assert_allclose(naturals.dataset_mean(uneq), [0.2, 0.2, 0.2])
    size, n = 6, 500
    patches = naturals.sample_patches(size, n, folder=uneq, seed=7)
    white = (patches.mean(dim=(1, 2, 3)) > 0.5).double().mean().item()
    assert 0.35 < white < 0.65  # images are picked uniformly, not by area
    expected = math.sqrt(3 * size * size) * (0.8 * white + 0.2 * (1 - white))
    assert naturals.natural_patch_norm(size, folder=uneq, n=n, seed=7) == pytest.approx(expected, rel=1e-5)


def test_patch_norm_equals_mean_norm_of_sampled_patches(tmp_path):
    folder = tmp_path / "noise"
    rng = np.random.default_rng(1)
    _save_rgb(folder / "a.png", rng.random((50, 70, 3)) ** 2)
    _save_rgb(folder / "b.jpg", rng.random((64, 40, 3)))
    size, n, seed = 9, 128, 5
    patches = naturals.sample_patches(size, n, folder=folder, seed=seed).double()
    mean = torch.from_numpy(naturals.dataset_mean(folder)).view(1, 3, 1, 1)
    expected = torch.linalg.vector_norm((patches - mean).reshape(n, -1), dim=1).mean().item()
    got = naturals.natural_patch_norm(size, folder=folder, n=n, seed=seed)
    assert got == pytest.approx(expected, rel=1e-5)
    assert naturals.natural_patch_rms(size, folder=folder, n=n, seed=seed) == pytest.approx(
        got / math.sqrt(3 * size * size)
    )


def test_natural_patch_rms_is_in_natural_range_and_grows_slowly_with_size():
    # Cadena et al.'s ImageNet table: RMS/pixel 62-67 of 255 (0.24-0.26) for 3..250 px patches. The bundled
    # photos give about 0.235 (size 3) to 0.245 (size 48), stable to ~0.003 across seeds.
    sizes = (3, 14, 24, 48)
    rms = [naturals.natural_patch_rms(size) for size in sizes]
    for size, value in zip(sizes, rms, strict=True):
        assert 0.20 < value < 0.30, (size, value)
    for smaller, larger in zip(rms, rms[1:], strict=False):
        assert larger > smaller - 0.005  # monotone up to sampling noise
    assert 1.0 < rms[-1] / rms[0] < 1.12  # grows, but slowly
    norm = naturals.natural_patch_norm(24)
    assert norm == pytest.approx(rms[2] * math.sqrt(3 * 24 * 24))


def test_patch_norm_is_cached_and_reused(tmp_path, _private_cache):
    folder = tmp_path / "noise"
    rng = np.random.default_rng(2)
    _save_rgb(folder / "a.png", rng.random((40, 40, 3)))
    set_id = naturals.image_set_id(folder)
    norm = naturals.natural_patch_norm(8, folder=folder)
    path = _private_cache / "naturals" / set_id / "norm_8.json"
    assert path.is_file()
    record = json.loads(path.read_text())
    assert record["norm"] == pytest.approx(norm)
    assert record["rms_per_pixel"] == pytest.approx(norm / math.sqrt(3 * 64))
    assert (record["n"], record["seed"], record["scales"]) == (4096, 0, [1.0, 0.5, 0.25])
    assert not list(path.parent.glob("*.tmp"))  # written atomically, no leftovers

    # tamper with the cached value: a later call with the same arguments must return it
    record["norm"] = 123.0
    path.write_text(json.dumps(record))
    assert naturals.natural_patch_norm(8, folder=folder) == 123.0
    assert naturals.natural_patch_rms(8, folder=folder) == pytest.approx(123.0 / math.sqrt(3 * 64))
    # other arguments use other files and are not affected
    other = naturals.natural_patch_norm(8, folder=folder, n=100, seed=1)
    assert other == pytest.approx(norm, rel=0.1)
    assert (path.parent / "norm_8_n100_seed1.json").is_file()
    # a corrupt cache file is recomputed and rewritten
    path.write_text("{not json")
    assert naturals.natural_patch_norm(8, folder=folder) == pytest.approx(norm)
    assert json.loads(path.read_text())["norm"] == pytest.approx(norm)


# ------------------------------------------------------------------------------------------------ errors


def test_bad_folder_errors_name_the_problem(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(DiversevisError, match="does not exist") as info:
        naturals.natural_images(missing)
    assert str(missing) in str(info.value) and ".png" in str(info.value) and ".jpg" in str(info.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DiversevisError, match="no image files") as info:
        naturals.natural_patch_norm(4, folder=empty)
    assert str(empty) in str(info.value) and ".webp" in str(info.value)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "fake.png").write_bytes(b"this is not a png")
    with pytest.warns(RuntimeWarning, match="fake.png"):
        with pytest.raises(DiversevisError, match="no readable images") as info:
            naturals.sample_patches(4, 2, folder=broken)
    assert str(broken) in str(info.value)

    a_file = tmp_path / "image.png"
    _save_rgb(a_file, _constant(8, 8, 0.5))
    with pytest.raises(DiversevisError, match="not a directory"):
        naturals.image_set_id(a_file)

    small = tmp_path / "small"
    _save_rgb(small / "a.png", _constant(40, 50, 0.3))
    _save_rgb(small / "b.png", _constant(30, 90, 0.6))
    with pytest.raises(DiversevisError, match="largest possible patch size is 40"):
        naturals.sample_patches(41, 4, folder=small)
    with pytest.raises(DiversevisError, match="largest possible patch size is 20"):
        naturals.sample_patches(21, 4, folder=small, scales=(0.5,))
    assert naturals.sample_patches(40, 2, folder=small).shape == (2, 3, 40, 40)
    with pytest.raises(DiversevisError, match="largest possible patch size"):
        naturals.natural_patch_norm(10_000)  # bundled set


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 0, "n": 4}, "size"),
        ({"size": 4, "n": 0}, "n must"),
        ({"size": 2.5, "n": 4}, "size"),
        ({"size": 4, "n": 4, "scales": ()}, "scales"),
        ({"size": 4, "n": 4, "scales": (1.0, 1.5)}, "scales"),
        ({"size": 4, "n": 4, "scales": (0.0,)}, "scales"),
        ({"size": 4, "n": 4, "seed": -1}, "seed"),
    ],
)
def test_bad_sampling_arguments_raise_user_errors(tmp_path, kwargs, match):
    folder = tmp_path / "ok"
    _save_rgb(folder / "a.png", _constant(16, 16, 0.5))
    with pytest.raises(DiversevisError, match=match):
        naturals.sample_patches(folder=folder, **kwargs)
    if "scales" not in kwargs:
        with pytest.raises(DiversevisError, match=match):
            naturals.natural_patch_norm(
                kwargs["size"], folder=folder, n=kwargs["n"], seed=kwargs.get("seed", 0)
            )
