"""DGN-AM and PPGN through a generator trained here: known answers on synthetic cells, the shared code
update in closed form, matched-activation choice, argument errors, the user's model left alone, the CLI."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.methods.code_sampler import CodeProblem, _condition_step, sample_codes
from diversevis.methods.dgn_am import dgn_am
from diversevis.methods.generator_settings import DGN_AM, PPGN, CodeSamplerSettings
from diversevis.methods.ppgn import _choose, ppgn
from diversevis.methods.problem import Problem
from diversevis.models.synthetic import _quadrature_pair, cell_network, gabor


def _problem(net, layer="response", unit=0) -> Problem:
    return Problem.build(
        net, layer, unit, None, "max", contrast=0.5, norm=None, distance_layer=None, images_folder=None
    )


# ----------------------------------------------------------------------------- the update, closed form
def test_condition_step_has_mean_magnitude_of_its_size_per_chain():
    g = torch.randn(3, 4, 2, 2) * torch.tensor([1.0, 10.0, 0.01]).view(3, 1, 1, 1)
    step = _condition_step(g, 0.7)
    assert torch.allclose(step.abs().flatten(1).mean(1), torch.full((3,), 0.7), rtol=1e-5)
    assert torch.equal(torch.sign(step), torch.sign(g))


def test_condition_step_of_a_vanishing_gradient_is_zero_not_nan():
    step = _condition_step(torch.zeros(2, 3, 1, 1), 1.0)
    assert torch.equal(step, torch.zeros(2, 3, 1, 1))


def test_prior_alone_moves_a_code_to_its_dae_reconstruction(tiny_generator):
    """eps1 = sigma^2 and no condition, no noise, no decay: one update is h -> clip(R(h))."""
    gen = tiny_generator
    net = cell_network("simple", size=16)
    cp = CodeProblem.build(_problem(net), gen)
    h0 = gen.clip(
        gen.code_mean
        + gen.code_std * torch.randn(2, *gen.code_shape, generator=torch.Generator().manual_seed(0))
    )
    s = CodeSamplerSettings(chains=2, n_iter=1, eps2=0.0, eps1=gen.dae_sigma**2, eps3=0.0, decay=1.0)
    trace = sample_codes(cp, h0, s, eps1=gen.dae_sigma**2)
    with torch.no_grad():
        expected = gen.clip(gen.denoise(h0))
    assert torch.allclose(trace.codes, expected, atol=1e-5 * float(gen.upper.max()))


def test_codes_stay_in_the_natural_range_under_large_steps_and_noise(tiny_generator):
    gen = tiny_generator
    cp = CodeProblem.build(_problem(cell_network("complex", size=16)), gen)
    h0 = gen.code_mean.expand(3, *gen.code_shape).clone()
    s = CodeSamplerSettings(chains=3, n_iter=10, lr=50.0, lr_end=50.0, eps1=0.0, eps3=5.0, burn_in=0, every=1)
    trace = sample_codes(cp, h0, s, eps1=0.0)
    assert trace.samples.min() >= 0
    assert (trace.samples <= gen.upper.cpu()).all()
    assert trace.samples.shape[0] == 3 * 11 and trace.activations.shape == (11, 3)


# ---------------------------------------------------------------------------------- the unit's view
def test_the_unit_sees_the_centre_crop_at_the_meis_contrast(tiny_generator):
    gen = tiny_generator
    prob = _problem(cell_network("simple", size=16))
    cp = CodeProblem.build(prob, gen)
    full = torch.rand(2, 3, gen.config.size, gen.config.size)
    shown = cp.render(full)
    top = (gen.config.size - 16) // 2
    crop = full[:, :, top : top + 16, top : top + 16]
    assert torch.allclose((shown - 0.5).flatten(1).norm(dim=1), torch.full((2,), prob.norm), rtol=1e-5)
    centred = crop - crop.mean((1, 2, 3), keepdim=True)  # the luminance offset removed, colour kept
    cos = torch.nn.functional.cosine_similarity((shown - 0.5).flatten(1), centred.flatten(1))
    assert torch.allclose(cos, torch.ones(2), atol=1e-5)


def test_a_grey_network_sees_the_luminance_of_the_crop(tiny_generator):
    cp = CodeProblem.build(_problem(cell_network("simple", size=16, channels=1)), tiny_generator)
    assert cp.render(torch.rand(1, 3, tiny_generator.config.size, tiny_generator.config.size)).shape == (
        1,
        1,
        16,
        16,
    )


def test_a_receptive_field_larger_than_the_generator_names_the_size_to_train(tiny_generator):
    big = tiny_generator.config.size + 8
    with pytest.raises(DiversevisError, match=rf"--size {big}"):
        CodeProblem.build(_problem(cell_network("simple", size=big)), tiny_generator)


def test_a_two_channel_network_is_refused_with_the_reason(tiny_generator):
    with pytest.raises(DiversevisError, match="2-channel"):
        CodeProblem.build(_problem(cell_network("simple", size=16, channels=2)), tiny_generator)


# ------------------------------------------------------------------------------ known answers: cells
def test_dgn_am_on_a_simple_cell_finds_its_gabor(tiny_generator):
    """For a linear cell the ratio to the MEI is the cosine between the image and the Gabor."""
    net = cell_network("simple", size=16, wavelength=12.0)  # the tiny generator's images are blurry
    res = dgn_am(net, "response", 0, tiny_generator, seed=0)
    g = gabor(16, wavelength=12.0, channels=3).flatten()
    x = (res.images[0] - 0.5).flatten()
    pearson = float(torch.corrcoef(torch.stack([x, g]))[0, 1])
    assert float(res.ratios[0]) >= 0.6
    assert pearson >= 0.6
    assert res.generator_images.shape == (1, 3, tiny_generator.config.size, tiny_generator.config.size)


def test_ppgn_samples_of_a_complex_cell_are_strong_and_differ_in_phase(tiny_generator):
    net = cell_network("complex", size=16, wavelength=12.0)
    res = ppgn(net, "response", 0, tiny_generator, 6, min_ratio=0.3, seed=0)
    assert res.extra["matched"], res.extra
    assert float(res.ratios.min()) >= 0.3
    g0, g90 = (g.flatten() for g in _quadrature_pair(16, 3, wavelength=12.0))
    x = (res.images - 0.5).flatten(1)
    phase = torch.atan2(x @ g90, x @ g0)
    gaps = (phase[:, None] - phase[None, :]).remainder(2 * math.pi)
    gaps = torch.minimum(gaps, 2 * math.pi - gaps)
    assert float(gaps.max()) >= math.pi / 2  # at least a quarter cycle apart


# ----------------------------------------------------------------------- matched-activation choice
def test_matched_choice_keeps_only_samples_at_the_bar_and_spreads_them():
    acts = torch.tensor([1.0, 0.9, 0.95, 0.2, 0.99])
    feats = torch.tensor([[0.0], [5.0], [0.1], [100.0], [10.0]])
    pick, matched, eligible = _choose(acts, feats, 2, bar=0.85)
    assert matched and eligible == 4
    assert pick == [0, 4]  # the most active first, then the farthest of those at the bar (not 3)


def test_too_few_matched_samples_are_flagged_and_warned():
    acts = torch.tensor([1.0, 0.1, 0.3])
    with pytest.warns(RuntimeWarning, match="only 1 of 3"):
        pick, matched, eligible = _choose(acts, torch.zeros(3, 1), 2, bar=0.9)
    assert not matched and eligible == 1 and pick == [0, 2]


def test_unmatched_sets_are_chosen_at_the_level_n_chains_reach_not_from_one_chain():
    """Chain 0 holds the three most activating samples, all alike; chain 1 peaks at 0.6, chain 2 at 0.5.
    With n = 2 the bar drops to 0.6 (chain 1's best) and the set spreads over both chains."""
    acts = torch.tensor([0.9, 0.6, 0.5, 0.88, 0.2, 0.1, 0.87, 0.3, 0.2])
    chains = torch.arange(9) % 3
    feats = torch.tensor([[0.0], [9.0], [5.0], [0.1], [1.0], [1.0], [0.2], [1.0], [1.0]])
    with pytest.warns(RuntimeWarning):
        pick, matched, eligible = _choose(acts, feats, 2, bar=0.95, chains=chains)
    assert not matched and eligible == 0
    assert pick == [0, 1]


# --------------------------------------------------------------------------------- argument handling
@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["lr", "lr_end", "eps1", "eps2", "eps3", "decay", "chains", "n_iter", "every"]),
    value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 0), st.text(max_size=3)),
)
def test_bad_sampler_settings_raise_a_clear_error_never_another_exception(name, value):
    try:
        CodeSamplerSettings(**{name: value})
    except DiversevisError as exc:
        assert name in str(exc)


def test_an_unknown_init_names_the_close_match():
    with pytest.raises(DiversevisError, match="natural"):
        CodeSamplerSettings(init="natral")


def test_more_samples_than_chains_is_an_error(tiny_generator):
    with pytest.raises(DiversevisError, match="chains"):
        ppgn(cell_network("complex", size=16), "response", 0, tiny_generator, 5, chains=4, mei=False)


def test_dgn_am_defaults_are_the_references():
    assert (DGN_AM.n_iter, DGN_AM.decay, DGN_AM.eps1, DGN_AM.eps3, DGN_AM.lr_end) == (
        200,
        0.99,
        0.0,
        0.0,
        0.0,
    )
    assert PPGN.eps1 is None and PPGN.eps3 > 0 and PPGN.decay == 1.0


# --------------------------------------------------------------------------------- the user's model
class _UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 5)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.out = nn.Conv2d(4, 2, 5)

    def forward(self, x):
        return self.out(self.relu(self.bn(self.conv(x))))


def test_the_users_model_is_left_unchanged_bitwise(tiny_generator):
    torch.manual_seed(0)
    module = _UserNet().train()
    module.conv.weight.requires_grad_(False)
    before = copy.deepcopy(module.state_dict())
    flags = [(n, p.requires_grad) for n, p in module.named_parameters()]
    net = Network(module, mean=[0.5] * 3, std=[0.25] * 3, input_size=16)
    dgn_am(net, "out", 1, tiny_generator, n_iter=5, restarts=2, mei=False)
    ppgn(net, "out", 1, tiny_generator, 2, chains=2, n_iter=5, burn_in=0, mei=False)
    assert module.training and module.relu.inplace
    assert [(n, p.requires_grad) for n, p in module.named_parameters()] == flags
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------------------ the CLI
def test_cli_ppgn_writes_pictures_and_json(tiny_generator_file, tmp_path):
    out = tmp_path / "ppgn"
    cmd = [sys.executable, "-m", "diversevis", "ppgn", "--model", "cell:complex", "--layer", "response",
           "--unit", "0", "--generator", str(tiny_generator_file), "--samples", "3", "--n-iter", "20",
           "--burn-in", "10", "--min-ratio", "0.3", "--out", str(out), "--quiet"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {"grid.png", "generator.png", "images.npz", "result.json"} <= {p.name for p in out.iterdir()}
    assert "PPGN" in done.stdout


def test_cli_dgn_am_without_a_trained_generator_says_how_to_train_one(tmp_path, monkeypatch):
    monkeypatch.setenv("DIVERSEVIS_CACHE", str(tmp_path / "empty-cache"))
    cmd = [sys.executable, "-m", "diversevis", "dgn-am", "--model", "cell:simple", "--layer", "response",
           "--unit", "0", "--generator", "default", "--out", str(tmp_path / "x"), "--quiet"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1  # the machine lacks the trained file; the request itself is fine
    assert "train-generator" in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------------- as a baseline
def test_ppgn_baseline_of_a_complex_cell_falls_short_of_dfvs_floor_and_says_so(tiny_generator):
    """Through a natural-image generator PPGN cannot hold a synthetic complex cell at DFV's floor: the
    comparison keeps its row, picks its most activating samples and flags the set as unmatched."""
    from diversevis.methods.baselines import compare_baselines

    cmp = compare_baselines(
        cell_network("complex", size=16, wavelength=12.0), "response", 0, n_images=4, floor=0.85,
        natural=False, gram=False, max_iter=300, ppgn=tiny_generator,
    )  # fmt: skip
    dfv, samples = cmp.row("dfv"), cmp.row("ppgn")
    assert cmp.extra["ppgn_matched"] is False and cmp.extra["ppgn_eligible"] < 4
    assert samples["mean_ratio"] < dfv["min_ratio"] - 0.2
    assert cmp.extra["ppgn_spec"]["method"] == "ppgn" and "ppgn" in cmp.markdown()
    assert cmp.gaps()["ppgn"] is not None
