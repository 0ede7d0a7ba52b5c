"""Invariance manifolds: known answers on synthetic cells, the saved folder, arguments, the CLI, the user's model.

Known answers (``diversevis.models.synthetic``; 16 px, one channel, image norm 2):

* complex (energy-model) cell: a 1-D manifold is the Gabor phase circle. The phase of an image ``x`` is
  ``atan2(<g_90, x - 0.5>, <g_0, x - 0.5>)``; along the grid it must follow ``2 pi z`` up to a sign and an
  offset (rotational association ``max_s |mean exp(i (phase - s 2 pi z))| >= 0.9``), wind exactly once
  and keep every latent at the floor;
* simple cell: one phase only, so the manifold collapses (calibrated DI near 0);
* texture (position-invariant) cell: a 2-D manifold's images are translates of each other, by shifts
  that vary along both latent axes;
* against floor-mode DFV: the manifold's images at N evenly spaced latents are at least as diverse
  (mean pairwise RMS pixel distance) as a DFV set of N images at the same floor.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_user_model import LAYER, assert_unchanged, snapshot, train_mode_model

import diversevis as dv
from diversevis.cli import main
from diversevis.core.cppn import ImplicitGenerator
from diversevis.methods.diversity_index import set_distances
from diversevis.methods.manifold import contrastive_spread, grid_neighbours
from diversevis.methods.manifold_result import loop_latents
from diversevis.models.synthetic import cell_network, gabor

#: Small, fast settings for the 16 px synthetic cells (a few seconds on one core).
FAST = dict(norm=2.0, hidden=32, per_dim=12, max_iter=700, warmup=150, mei_restarts=2, seed=0)


def quadrature_pair(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The complex cell's orthonormal even and odd Gabors ``(1, size, size)`` (as ComplexCell builds them)."""
    g0 = gabor(size, channels=1, phase=0.0)
    g90 = gabor(size, channels=1, phase=math.pi / 2)
    g90 = g90 - (g90 * g0).sum() * g0
    return g0, g90 / g90.norm()


def gabor_phase(images: torch.Tensor) -> torch.Tensor:
    """``(P,)`` the phase of each image in the complex cell's quadrature plane."""
    g0, g90 = quadrature_pair(images.shape[-1])
    x = (images - 0.5).flatten(1)
    return torch.atan2(x @ g90.flatten(), x @ g0.flatten())


def rotational_association(phase: torch.Tensor, z: torch.Tensor) -> float:
    """``max_s |mean exp(i (phase - s 2 pi z))|``: 1 when phase = +-2 pi z + c (sign and offset free)."""
    t = 2 * math.pi * z
    return max(float(torch.polar(torch.ones_like(t), phase - s * t).mean().abs()) for s in (1, -1))


def windings(phase: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Turns of a closed loop of phases (wrapped steps summed, last -> first included) and the steps."""
    steps = torch.remainder(torch.roll(phase, -1) - phase + math.pi, 2 * math.pi) - math.pi
    return float(steps.sum()) / (2 * math.pi), steps


@pytest.fixture(scope="module")
def complex_manifold():
    return dv.manifold(
        cell_network("complex", size=16, channels=1), "response", 0, dim=1, **FAST, calibrate=False
    )


def test_complex_cell_manifold_winds_once_around_phase(complex_manifold):
    m = complex_manifold
    phase = gabor_phase(m.images)
    turns, steps = windings(phase)
    assert round(turns) in (1, -1) and abs(abs(turns) - 1) < 1e-4
    assert bool((steps > 0).all()) or bool((steps < 0).all())  # monotone: every step the same way round
    assert rotational_association(phase, m.latents[:, 0]) >= 0.9


def test_complex_cell_manifold_holds_every_latent_at_the_floor(complex_manifold):
    m = complex_manifold
    assert m.floor_holds and m.spec["floor_holds"]
    assert m.min_ratio >= 0.85 - 0.005 and m.mean_ratio >= 0.9 - 0.005
    assert torch.allclose(m.ratios, m.activations / m.mei_activation)
    # the generator between grid points drives the unit as well (the jittered grid trains the continuum)
    with torch.no_grad():
        between = m.generator.render(m.latents + 0.5 / m.per_dim)
    g0, g90 = quadrature_pair()
    x = (between - 0.5).flatten(1)
    energy = (x @ g0.flatten()) ** 2 + (x @ g90.flatten()) ** 2
    assert float((energy / m.mei_activation).min()) >= 0.8


@pytest.mark.slow
def test_complex_cell_manifold_is_as_diverse_as_a_complex_cell():
    m = dv.manifold(cell_network("complex", size=16, channels=1), "response", 0, dim=1, **FAST)
    assert m.di is not None and m.di >= 0.7


@pytest.mark.slow
def test_simple_cell_manifold_collapses():
    m = dv.manifold(cell_network("simple", size=16, channels=1), "response", 0, dim=1, **FAST)
    assert m.floor_holds
    assert m.di is not None and abs(m.di) <= 0.25
    # no phase freedom: every image keeps the cell's one phase
    g0 = gabor(16, channels=1, phase=0.0).flatten()
    cos = (m.images - 0.5).flatten(1) @ g0 / (m.images - 0.5).flatten(1).norm(dim=1)
    assert float(cos.min()) >= 0.85 - 0.01


@pytest.mark.slow
def test_manifold_images_at_evenly_spaced_latents_are_as_diverse_as_a_floor_mode_dfv_set(complex_manifold):
    """Same measure for both: mean pairwise RMS pixel distance of N = 4 images at the same floors.
    Tolerance: the manifold may fall short of DFV by at most 5 %."""
    net = cell_network("complex", size=16, channels=1)
    n = 4
    idx = torch.arange(n) * (complex_manifold.per_dim // n)
    ours = set_distances(complex_manifold.images[idx])["pixel_mean"]
    dfv = dv.diverse(net, "response", 0, n_images=n, floor=0.85, mean_floor=0.9, norm=2.0, mei_restarts=2,
                     seed=0, calibrate=False)  # fmt: skip
    assert dfv.spec["floor_holds"]
    theirs = set_distances(dfv.images)["pixel_mean"]
    assert ours >= 0.95 * theirs, (ours, theirs)


def _translation(a: np.ndarray, b: np.ndarray) -> tuple[tuple[int, int], float]:
    """The circular shift ``(dy, dx)`` that best maps ``a`` onto ``b`` and the normalised correlation there."""
    a, b = a - a.mean(), b - b.mean()
    xc = np.real(np.fft.ifft2(np.fft.fft2(b) * np.conj(np.fft.fft2(a))))
    dy, dx = np.unravel_index(np.argmax(xc), xc.shape)
    return (int(dy), int(dx)), float(xc.max() / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.slow
def test_texture_cell_2d_manifold_spans_translations():
    """The texture cell (a vertical-stripe Gabor energy, wavelength 4 px, pooled over positions) is
    invariant to translation; for its optimal stimulus, a grating, translation is a shift along the
    carrier, i.e. the grating's phase (vertical shifts leave a vertical grating unchanged, so they
    cannot show). One latent axis of the torus must translate the grating once round its period on
    every line of the grid, and the grid's images must be translates of each other."""
    net = cell_network("texture", size=16, channels=1)
    kw = {**FAST, "per_dim": 8, "hidden": 64, "warmup": 400, "max_iter": 1500}
    m = dv.manifold(net, "response", 0, dim=2, **kw, calibrate=False)
    assert m.floor_holds
    x = (m.images[:, 0] - 0.5).flatten(1)
    col = torch.arange(16, dtype=torch.float32).repeat(16)  # the x coordinate of each pixel
    phase = torch.atan2(x @ torch.sin(2 * math.pi * col / 4), x @ torch.cos(2 * math.pi * col / 4))
    grid = phase.view(m.per_dim, m.per_dim)  # [i, j]: latent (i / per_dim, j / per_dim)
    turns = {axis: [windings(line)[0] for line in (grid if axis == 1 else grid.T)] for axis in (0, 1)}
    translating = [a for a in (0, 1) if all(abs(abs(t) - 1) < 1e-3 for t in turns[a])]
    assert translating, turns
    imgs = m.images[:, 0].numpy()
    peaks = [_translation(imgs[0], y)[1] for y in imgs]
    assert np.median(peaks) >= 0.6  # translates of one texture (circular shifts: the edges differ)


def test_the_spread_term_prefers_a_circle_to_a_fold():
    t = torch.arange(12) / 12
    circle = torch.stack([torch.cos(2 * math.pi * t), torch.sin(2 * math.pi * t)], 1)
    fold = torch.stack(
        [torch.cos(math.pi * (1 - (2 * t - 1).abs())), torch.sin(math.pi * (1 - (2 * t - 1).abs()))], 1
    )
    pos = grid_neighbours(1, 12)
    assert contrastive_spread(circle, pos, 0.3) < contrastive_spread(fold, pos, 0.3)


def test_grid_neighbours_are_periodic_on_a_loop_and_a_torus():
    loop = grid_neighbours(1, 5)
    assert loop[0].nonzero().flatten().tolist() == [1, 4]
    torus = grid_neighbours(2, 4)
    assert torus.sum(1).tolist() == [4] * 16 and torus[0].nonzero().flatten().tolist() == [1, 3, 4, 12]
    assert torch.equal(torus, torus.T) and not bool(torus.diagonal().any())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    net = cell_network("complex", size=8, channels=1)
    m = dv.manifold(net, "response", 0, dim=2, norm=1.0, per_dim=3, hidden=8, max_iter=20, warmup=5,
                    mei_restarts=1, calibrate=False)  # fmt: skip
    out = tmp_path_factory.mktemp("manifold")
    return m, m.save(out)


def test_a_saved_manifold_folder_has_exactly_the_documented_files(saved):
    m, out = saved
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    frames = [f"frames/{i:03d}.png" for i in range(9)]
    assert files == sorted(
        ["manifold.json", "generator.pt", "images.npz", "contact_sheet.png", "loop.gif", *frames]
    )
    doc = json.loads((out / "manifold.json").read_text())
    keys = {"spec", "dim", "per_dim", "latents", "activations", "ratios", "mei_activation", "floor", "mean_floor",
            "floor_holds", "min_ratio", "mean_ratio", "di", "frames", "contact_sheet", "animation", "generator",
            "seconds"}  # fmt: skip
    assert set(doc) == keys
    assert doc["frames"] == frames and doc["dim"] == 2 and doc["per_dim"] == 3
    assert doc["latents"][4] == [pytest.approx(1 / 3), pytest.approx(1 / 3)]  # row-major: 1 * 3 + 1
    for key in ("model", "layer", "unit", "floor", "temperature", "seed", "versions", "n_iter"):
        assert key in doc["spec"]


def test_saved_frames_are_upscaled_and_the_loop_animates_each_axis(saved):
    from PIL import Image

    m, out = saved
    with Image.open(out / "frames" / "000.png") as im:
        assert min(im.size) >= 96 and im.size[0] % 8 == 0
    with Image.open(out / "loop.gif") as gif:
        assert gif.n_frames == 48 * 2
    z = loop_latents(2, 4).tolist()  # each axis in turn, the other at 0
    assert z == [[0, 0], [0.25, 0], [0.5, 0], [0.75, 0], [0, 0], [0, 0.25], [0, 0.5], [0, 0.75]]


def test_a_saved_manifold_reloads_and_its_generator_redraws_the_grid(saved):
    m, out = saved
    blob = torch.load(out / "generator.pt", weights_only=True)
    assert set(blob) == {"config", "state"}
    back = dv.load_manifold(out)
    assert torch.equal(back.images, m.images) and torch.equal(back.ratios, m.ratios)
    with torch.no_grad():
        assert torch.equal(ImplicitGenerator.load(out / "generator.pt").render(back.latents), m.images)
    assert back.floor_holds == m.floor_holds and back.dim == 2


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(dim=3), "dim must be 1"),
        (dict(dim=0), "dim must be 1"),
        (dict(floor=0.0), "floor"),
        (dict(floor=1.5), "floor"),
        (dict(floor=0.9, mean_floor=0.8), "mean_floor"),
        (dict(per_dim=2), "per_dim"),
        (dict(temperature=0.0), "temperature"),
    ],
)
def test_bad_arguments_are_clear_errors(kw, words):
    with pytest.raises(dv.DiversevisError, match=words):
        dv.manifold(
            cell_network("complex", size=8, channels=1), "response", 0, max_iter=2, calibrate=False, **kw
        )


def test_an_unknown_layer_is_a_clear_error():
    with pytest.raises(dv.LayerNotFoundError, match="conv9"):
        dv.manifold(cell_network("complex", size=8, channels=1), "conv9", 0, norm=1.0)


def test_the_users_model_is_left_unchanged_bitwise():
    m = train_mode_model()
    before = snapshot(m)
    dv.manifold(m, LAYER, 1, norm=1.0, per_dim=3, hidden=8, max_iter=12, warmup=4, mei_restarts=1,
                calibrate=False)  # fmt: skip
    assert_unchanged(before, m)


def test_cli_manifold_writes_the_folder_and_the_page(tmp_path, capsys):
    out = tmp_path / "m"
    argv = ["manifold", "--model", "cell:complex", "--layer", "response", "--unit", "0", "--dim", "1",
            "--per-dim", "4", "--hidden", "8", "--max-iter", "15", "--warmup", "4", "--mei-restarts", "1",
            "--no-calibrate", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert (out / "manifold.json").is_file() and (out / "loop.gif").is_file()
    assert len(list((out / "frames").glob("*.png"))) == 4
    assert (out / "index.html").is_file()
    assert "manifold dim 1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra",
    [["--dim", "3"], ["--floor", "1.5"], ["--per-dim", "0"], ["--layer", "nope"]],
)
def test_cli_manifold_usage_errors_exit_2_without_a_traceback(tmp_path, capsys, extra):
    argv = ["manifold", "--model", "cell:complex", "--layer", "response", "--unit", "0", "--max-iter", "2",
            "--quiet", "--out", str(tmp_path / "m"), *extra]  # fmt: skip
    try:
        status = main(argv)
    except SystemExit as e:  # argparse
        status = e.code
    assert status == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error" in err
    assert not (tmp_path / "m" / "manifold.json").exists()


def test_the_same_seed_gives_the_same_manifold_on_cpu():
    net = cell_network("complex", size=8, channels=1)
    kw = dict(dim=1, norm=1.0, per_dim=4, hidden=8, max_iter=15, warmup=4, mei_restarts=1, calibrate=False)
    with pytest.warns(RuntimeWarning, match="below the floor"):  # 15 steps do not reach it
        a = dv.manifold(net, "response", 0, seed=3, **kw)
        b = dv.manifold(net, "response", 0, seed=3, **kw)
        c = dv.manifold(net, "response", 0, seed=4, **kw)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.spec["seed"] == 3 and not a.floor_holds and "floor_failure" in a.spec


@pytest.mark.slow
def test_jitter_trains_the_continuum_between_coarse_grid_points():
    """On a coarse grid (6 latents) the latents between grid points drive the unit only because each
    step moves the grid by a random offset (without it the loop drops to ~0.1 between grid points)."""
    net = cell_network("complex", size=16, channels=1)
    m = dv.manifold(net, "response", 0, dim=1, **{**FAST, "per_dim": 6}, calibrate=False)
    z = torch.arange(120, dtype=torch.float32).view(-1, 1) / 120
    with torch.no_grad():
        a = net.activations(m.generator.render(z), ["response"])["response"].flatten()
    assert float((a / m.mei_activation).min()) >= 0.7


def test_a_unit_nothing_drives_is_a_clear_error():
    dead = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3))
    with torch.no_grad():
        dead[0].weight.zero_()
        dead[0].bias.fill_(-1.0)  # -1 for every image: the MEI is -1
    net = dv.Network(dead, mean=[0.5], std=[1.0], in_channels=1, input_size=8)
    with pytest.raises(dv.DiversevisError, match="unit 0: the MEI.s activation is -1 <= 0"):
        dv.manifold(net, "0", 0, norm=1.0, max_iter=2, mei_restarts=1)
