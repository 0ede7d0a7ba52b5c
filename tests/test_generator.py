"""The DeePSiM-style generator prior (methods/generator) and ``diversevis train-generator``.

One "tiny" generator (vgg16 pool3 at 32 px, 300 steps) is trained once per module into a temporary cache
folder; the statements below are about it.
"""

from __future__ import annotations

import json

import pytest
import torch

import diversevis as dv
from diversevis.cli import main
from diversevis.core.errors import DiversevisError
from diversevis.methods import generator as G
from diversevis.methods.generator import cache as generator_cache

pytestmark = [pytest.mark.usefixtures("vgg16")]


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
    """The generator cache folder, pointed at a temporary directory for this module."""
    folder = tmp_path_factory.mktemp("generator-cache")
    mp = pytest.MonkeyPatch()
    mp.setattr(generator_cache, "_generator_dir", lambda: folder)
    yield folder
    mp.undo()


@pytest.fixture(scope="module")
def tiny(gen_dir):
    """The "tiny" preset, trained once (about 25 s on one core) and cached in ``gen_dir``."""
    return dv.load_generator("tiny", train=True, device="cpu", progress=False, log=None)


@pytest.fixture(scope="module")
def held_out(tiny):
    """Held-out patches ``(128, 3, 32, 32)`` and their codes."""
    net = G.feature_network(tiny.config)
    x = G.held_out_patches(tiny.config, 128)
    with torch.no_grad():
        return x, tiny.encode(net, x)


def test_the_trained_generator_is_cached_frozen_and_in_eval_mode(tiny, gen_dir):
    assert G.generator_cache_path("tiny").is_file()
    assert G.generator_cache_path("tiny").parent == gen_dir
    assert not tiny.training and not any(p.requires_grad for p in tiny.parameters())
    assert tiny.code_shape == (256, 4, 4)
    assert tiny.metrics["steps"] == 300 and tiny.metrics["seconds"] > 0


def test_it_reconstructs_held_out_patches_better_than_the_mean_patch(tiny):
    scores = dv.evaluate_generator(tiny, n=128)
    psnr, err = scores["psnr"], scores["feature_error"]
    assert psnr["generator"] > psnr["mean_patch"] + 2.0  # measured: 17.6 vs 12.6 dB
    assert err["generator"] < err["mean_patch"]
    sharp = scores["sharpness"]
    assert sharp["blur"] < 1.0 and sharp["mean_colour"] == 0.0  # the baselines are blurrier than the patch


def test_gradient_energy_scales_with_contrast_squared_and_ignores_flat_patches_and_checkerboards():
    from diversevis.methods.generator.training import gradient_energy

    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    mean = x.mean((2, 3), keepdim=True)
    torch.testing.assert_close(gradient_energy(mean + 0.5 * (x - mean)), 0.25 * gradient_energy(x))
    assert torch.all(gradient_energy(mean.expand_as(x)) == 0)
    i = torch.arange(16)
    checkerboard = ((i[:, None] + i[None, :]) % 2).float().expand(3, 3, 16, 16)  # transposed-conv artefact
    torch.testing.assert_close(gradient_energy(mean + 0.2 * checkerboard), torch.zeros(3))
    assert torch.all(gradient_energy(x) > 0)


def test_images_are_in_display_range_and_differentiable_in_the_code(tiny, held_out):
    _, h = held_out
    h = h[:4].clone().requires_grad_(True)
    img = tiny(h)
    shown = img.detach()
    assert img.shape == (4, 3, 32, 32) and 0 <= float(shown.min()) and float(shown.max()) <= 1
    img.sum().backward()
    assert h.grad is not None and float(h.grad.abs().sum()) > 0


def test_prior_grad_points_from_a_noisy_code_back_towards_the_clean_one(tiny, held_out):
    _, h = held_out
    noisy = h + tiny.dae_sigma * torch.randn(h.shape, generator=torch.Generator().manual_seed(1))
    step = tiny.prior_grad(noisy).flatten(1)
    back = (h - noisy).flatten(1)
    cos = torch.nn.functional.cosine_similarity(step, back, dim=1)
    assert float(cos.mean()) > 0.3 and float((cos > 0).float().mean()) > 0.95


def test_upper_bounds_nearly_all_held_out_natural_codes(tiny, held_out):
    _, h = held_out
    covered = (h <= tiny.upper).float().mean()  # mean + 3 std per element; the codes are heavy-tailed
    assert float(covered) >= 0.96  # measured: 97.7% (128 calibration patches, 128 held-out patches)
    assert torch.equal(tiny.clip(h * 10), torch.minimum(h * 10, tiny.upper))


def test_save_and_load_round_trip_bitwise(tiny, tmp_path):
    path = G.save_generator(tiny, tmp_path / "g.pt")
    record = torch.load(path, weights_only=True)
    assert record["config"] == tiny.config.to_dict()
    back = dv.load_generator(path)
    assert back.config == tiny.config and back.code_shape == tiny.code_shape
    assert back.metrics == record["metrics"] and back.dae_sigma == tiny.dae_sigma
    for key, value in tiny.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_the_same_seed_gives_the_same_weights():
    cfg = G.PRESETS["tiny"].replace(steps=3, val_patches=16)
    a, b = (G.train_generator(cfg, device="cpu", progress=False, log=None) for _ in range(2))
    c = G.train_generator(cfg.replace(seed=1), device="cpu", progress=False, log=None)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.decoder.net[0].weight, c.decoder.net[0].weight)


def test_unknown_preset_names_give_a_close_match():
    with pytest.raises(DiversevisError, match="Did you mean: tiny"):
        dv.load_generator("tinny")
    with pytest.raises(DiversevisError, match="Did you mean: default"):
        dv.train_generator("defualt")


def test_a_preset_not_trained_yet_names_the_command_that_trains_it(gen_dir):
    with pytest.raises(DiversevisError, match="diversevis train-generator --preset gpu"):
        dv.load_generator("gpu")


def test_cli_trains_caches_and_writes_the_files(gen_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train-generator", "--preset", "tiny", "--steps", "20", "--out", str(out), "-q"]) == 0
    assert {p.name for p in out.iterdir()} == {"generator.pt", "reconstructions.png", "metrics.json"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["spec"]["config"]["steps"] == 20
    assert set(metrics["evaluation"]["psnr"]) == {"generator", "mean_patch", "mean_colour", "blur"}
    cfg = G.PRESETS["tiny"].replace(steps=20)
    assert G.generator_cache_path("tiny", cfg).is_file()
    assert (out / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"
    assert "mean_colour" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "tinny"], "Did you mean: tiny"),
        (["--preset", "tiny", "--layer", "pool9"], "pool9"),
        (["--preset", "tiny", "--size", "20"], "powers of two"),
    ],
)
def test_cli_bad_arguments_exit_2_without_a_traceback(args, message, capsys):
    assert main(["train-generator", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_rejects_a_nonpositive_step_count():
    with pytest.raises(SystemExit) as stop:
        main(["train-generator", "--steps", "0"])
    assert stop.value.code == 2
