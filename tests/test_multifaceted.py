"""Multifaceted feature visualization (Nguyen et al. 2016): facets of a synthetic OR-unit, parts, CLI.

Known answer: a unit that fires for pattern A (a red blob) OR pattern B (a grey vertical grating), fed a
candidate set holding both among noise, has two facets; with k = 2 the clusters separate A from B and
each facet's visualization correlates with its own pattern, not the other.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from diversevis.cli import main
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.methods.classic.multifaceted import (
    UnitReadout,
    centre_biased_offsets,
    embed,
    facet_means,
    jitter_crop,
    kmeans_facets,
    multifaceted,
    total_variation,
)
from diversevis.methods.dfv import Problem
from diversevis.models.synthetic import cell_network, gabor

S = 16


def _templates() -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm, mutually orthogonal patterns: A a red-vs-cyan blob (chromatic), B a grey Gabor."""
    c = (S - 1) / 2
    y, x = torch.meshgrid(torch.arange(S) - c, torch.arange(S) - c, indexing="ij")
    blob = torch.exp(-(x**2 + y**2) / (2 * (S / 6) ** 2))
    a = blob[None] * torch.tensor([1.0, -0.5, -0.5]).view(3, 1, 1)
    return a / a.norm(), gabor(S, wavelength=5.0, theta=0.0)


class _ChannelMax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(1, keepdim=True)


class _OrUnit(nn.Module):
    """``max(<A, x - 0.5>, <B, x - 0.5>)``: layer ``detectors`` (2 channels), layer ``response`` (1)."""

    def __init__(self) -> None:
        super().__init__()
        a, b = _templates()
        self.detectors = nn.Conv2d(3, 2, S, bias=False)
        self.detectors.weight.data[0] = a
        self.detectors.weight.data[1] = b
        self.response = _ChannelMax()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.response(self.detectors(x))


def _or_net() -> Network:
    return Network(_OrUnit(), mean=[0.5] * 3, std=[1.0] * 3, name="or-unit", input_size=S)


def _candidates(n: int = 40, noise: int = 200, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` noisy A patches, ``n`` noisy B patches (random strengths), ``noise`` low-contrast noise."""
    g = torch.Generator().manual_seed(seed)
    a, b = _templates()

    def amp(m: int) -> torch.Tensor:
        return (1.5 + torch.rand(m, generator=g)).view(m, 1, 1, 1)

    pa = 0.5 + amp(n) * a + 0.03 * torch.randn(n, 3, S, S, generator=g)
    pb = 0.5 + amp(n) * b + 0.03 * torch.randn(n, 3, S, S, generator=g)
    pn = 0.5 + 0.05 * torch.randn(noise, 3, S, S, generator=g)
    kind = np.array([0] * n + [1] * n + [2] * noise)
    return torch.cat([pa, pb, pn]).clamp(0, 1), kind


def _corr(x: torch.Tensor, t: torch.Tensor) -> float:
    v = (x - 0.5).flatten()
    return float(v @ t.flatten() / (v.norm() * t.norm()))


# -------------------------------------------------------------------------------------- the known answer


@pytest.fixture(scope="module")
def or_result():
    patches, _ = _candidates()
    return multifaceted(
        _or_net(), "response", 0, k=2, top=60, patches=patches, embed_layer="detectors", max_iter=60, lr=0.05
    )


def test_or_unit_facets_separate_a_from_b(or_result):
    a, b = _templates()
    res = or_result
    assert res.k == 2 and sum(res.sizes) == 60
    # which pattern each top patch is: the top 60 are all A or B patches (noise fires far less)
    kind = np.array([0 if _corr(p, a) > _corr(p, b) else 1 for p in res.patches])
    assert min(_corr(p, a) if k == 0 else _corr(p, b) for p, k in zip(res.patches, kind)) > 0.8
    assert {0, 1} == set(kind.tolist())
    for f in range(2):
        members = kind[res.members(f)]
        assert len(set(members.tolist())) == 1  # each cluster is pure
    assert set(kind[res.members(0)]) != set(kind[res.members(1)])


def test_or_unit_each_facet_visualization_matches_its_own_pattern(or_result):
    a, b = _templates()
    res = or_result
    kind = np.array([0 if _corr(p, a) > _corr(p, b) else 1 for p in res.patches])
    for f in range(2):
        own, other = (a, b) if kind[res.members(f)[0]] == 0 else (b, a)
        vis = res.visualizations[f]
        assert _corr(vis, own) > 0.4 and abs(_corr(vis, other)) < 0.1
        assert float(vis.min()) >= 0.0 and float(vis.max()) <= 1.0
        # optimisation drives the unit beyond the mean image and the best exemplar
        assert res.activations[f] > res.mean_activations[f]
        assert res.activations[f] > res.patch_activations.max()


def test_result_saves_grid_npz_and_full_spec(or_result, tmp_path):
    out = or_result.save(tmp_path / "mf", n_show=4)
    assert sorted(p.name for p in out.iterdir()) == ["facets.npz", "grid.png", "result.json"]
    meta = json.loads((out / "result.json").read_text())
    spec = meta["spec"]
    for key in (
        "model",
        "layer",
        "unit",
        "k",
        "embed_layer",
        "seed",
        "lr",
        "tv",
        "jitter",
        "window",
        "n_mean",
    ):
        assert key in spec
    assert spec["k"] == 2 and spec["embed_layer"] == "detectors" and spec["cluster_sizes"] == or_result.sizes
    assert len(spec["activations"]) == 2 and {"diversevis", "torch"} <= set(spec["versions"])
    assert meta["metrics"]["sizes"] == or_result.sizes
    with np.load(out / "facets.npz") as z:
        assert z["visualizations"].shape == (2, 3, S, S) and z["labels"].shape == (60,)
        assert z["loss_history"].shape == (60, 2)
    w, h = Image.open(out / "grid.png").size
    assert w > 6 * 80 and h > 2 * 80  # 2 rows of 4 members + mean + facet


def test_facet_term_keeps_each_visualization_in_its_facet():
    a, b = _templates()
    patches, _ = _candidates(n=20, noise=40)
    res = multifaceted(
        _or_net(),
        "response",
        0,
        k=2,
        top=30,
        patches=patches,
        embed_layer="detectors",
        max_iter=20,
        facet_weight=1.0,
    )
    assert res.spec["facet_weight"] == 1.0
    corr = sorted((_corr(v, a), _corr(v, b)) for v in res.visualizations)
    assert corr[0][1] > 0.4 > abs(corr[0][0]) and corr[1][0] > 0.4 > abs(corr[1][1])


# -------------------------------------------------------------------------------------------- the parts


def test_total_variation_closed_form():
    x = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    assert float(total_variation(x, eps=0.0)[0]) == pytest.approx(1.0)
    x = torch.zeros(2, 3, 5, 5)
    x[1, :, :, 2:] = 1.0  # vertical edge between columns 1 and 2: |dx| = 1 at 4 of the 4x4 positions
    tv = total_variation(x, eps=0.0)
    assert float(tv[0]) == 0.0 and float(tv[1]) == pytest.approx(4 / 16)


def test_centre_biased_offsets_and_jitter_crop():
    g = torch.Generator().manual_seed(0)
    off = centre_biased_offsets(4000, 5, 0.3, generator=g)
    assert off.min() >= 0 and off.max() <= 10 and off.float().mean().item() == pytest.approx(5, abs=0.1)
    assert (off == 5).float().mean() > 0.1 and (off == 5).float().mean() > (off == 0).float().mean()
    assert (centre_biased_offsets(3, 4, 0.0) == 4).all()
    assert (centre_biased_offsets(3, 0, 0.3) == 0).all()
    x = torch.rand(2, 3, 6, 6)
    assert torch.equal(jitter_crop(x, torch.tensor([[2, 2], [2, 2]]), 2), x)
    shifted = jitter_crop(x, torch.tensor([[0, 2], [4, 2]]), 2)
    assert torch.equal(shifted[0, :, 2:], x[0, :, :4]) and (shifted[0, :, :2] == 0.5).all()  # moved down
    assert torch.equal(shifted[1, :, :4], x[1, :, 2:]) and (shifted[1, :, 4:] == 0.5).all()  # moved up


def test_kmeans_facets_orders_by_size_and_refuses_too_many_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal([5, 0], 0.1, (7, 2)), rng.normal([0, 5], 0.1, (12, 2))])
    labels, dist = kmeans_facets(x, 2, seed=0)
    assert labels[:7].tolist() == [1] * 7 and labels[7:].tolist() == [0] * 12  # larger cluster first
    assert dist.shape == (19,) and dist.max() < 0.1
    with pytest.raises(DiversevisError, match="k=3 exceeds the number of distinct"):
        kmeans_facets(np.ones((5, 2)).tolist() + [[0, 1]], 3)
    with pytest.raises(DiversevisError, match="k=30 exceeds the number of patches"):
        kmeans_facets(x, 30)
    labels, _ = kmeans_facets(x, 2, pca=1, normalize=False, seed=0)
    assert len(set(labels[:7])) == 1 and labels[0] != labels[-1]


def test_facet_means_average_the_members_closest_to_the_centroid():
    images = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 3, 2, 2)
    labels = np.array([0, 0, 0, 1, 1])
    dist = np.array([0.3, 0.1, 0.2, 0.5, 0.4])
    means, members = facet_means(images, labels, dist, n_mean=2)
    assert [m.tolist() for m in members] == [[1, 2, 0], [4, 3]]
    assert means[:, 0, 0, 0].tolist() == pytest.approx([1.5, 3.5])


def test_readout_matches_problem_and_handles_other_sizes():
    net = cell_network("simple")
    x = torch.rand(3, 3, 16, 16)
    prob = Problem.build(
        net, "response", 0, None, "max", contrast=1.0, norm=1.0, distance_layer=None, images_folder=None
    )
    assert torch.allclose(UnitReadout(net, "response", 0)(x), prob.evaluate(x, need_features=False)[0])
    # a smaller image is centred in grey; a larger one is read at its centre position
    small = UnitReadout(net, "response", 0, 12)
    assert small.size == 12 and small.pad == (2, 2, 2, 2)
    assert torch.allclose(
        small(x[:, :, 2:14, 2:14]),
        UnitReadout(net, "response", 0)(
            torch.nn.functional.pad(x[:, :, 2:14, 2:14], (2, 2, 2, 2), value=0.5)
        ),
    )
    big = UnitReadout(net, "response", 0, 20)
    assert big.index == (2, 2) and big(torch.rand(2, 3, 20, 20)).shape == (2,)


def test_embed_pixels_and_pooled_layers():
    net = _or_net()
    x = torch.rand(4, 3, S, S)
    assert embed(net, x, "pixels").shape == (4, 3 * S * S)
    f = embed(net, x, "detectors", batch=3)
    assert f.shape == (4, 2) and (f >= 0).all()
    with pytest.raises(DiversevisError, match="choose one of mean, max, flatten"):
        embed(net, x, "detectors", pool="median")


def test_natural_patches_run_end_to_end_on_a_cell():
    net = cell_network("simple")
    # the cell's own layer has one channel: unit-norm embeddings there all coincide
    with pytest.raises(DiversevisError, match="distinct embedded patches"):
        multifaceted(net, "response", 0, k=2, top=12, candidates=96, max_iter=1)
    res = multifaceted(
        net, "response", 0, k=2, top=12, candidates=96, n_mean=3, max_iter=3, batch=32, embed_layer="pixels"
    )
    assert res.k == 2 and res.patches.shape == (12, 3, 16, 16) and sum(res.sizes) == 12
    assert res.spec["patch_source"] == "natural" and res.spec["embed_layer"] == "pixels"
    acts = res.patch_activations
    assert torch.all(acts[:-1] >= acts[1:])  # sorted, descending
    # a chosen patch size goes through the same read-out
    res2 = multifaceted(
        net, "response", 0, k=2, top=8, candidates=48, patch_size=12, max_iter=2, embed_layer="pixels"
    )
    assert res2.visualizations.shape == (2, 3, 12, 12) and res2.spec["rf_size"] == 16


def test_bad_arguments_are_user_errors():
    net = _or_net()
    patches, _ = _candidates(n=4, noise=4)
    with pytest.raises(DiversevisError, match="k=5 exceeds the number of top patches"):
        multifaceted(net, "response", 0, k=5, top=4, patches=patches)
    with pytest.raises(DiversevisError, match="top=20 exceeds the number of given patches"):
        multifaceted(net, "response", 0, k=2, top=20, patches=patches)
    with pytest.raises(DiversevisError, match="exceeds the number of candidates"):
        multifaceted(net, "response", 0, k=2, top=20, candidates=10)
    with pytest.raises(DiversevisError, match="choose one of mean, max, flatten"):
        multifaceted(net, "response", 0, k=2, top=4, patches=patches, pool="sum")
    with pytest.raises(DiversevisError, match="out of range"):
        multifaceted(net, "response", 3, k=2, top=4, patches=patches)


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_multifaceted_writes_the_result(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["multifaceted", "-m", "cell:simple", "-l", "response", "-u", "0", "--k", "2", "--top", "8"]
    rc = main(
        argv + ["--candidates", "48", "--max-iter", "2", "--n-mean", "2", "--embed-layer", "pixels", "-q"]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "2 facets of 8 top patches" in out and "facet 1:" in out
    d = tmp_path / "runs" / "simple-cell_response_u0_multifaceted"
    assert json.loads((d / "result.json").read_text())["spec"]["k"] == 2


def test_cli_multifaceted_errors_exit_2(capsys):
    base = ["multifaceted", "-m", "cell:simple", "-l", "response", "-u", "0"]
    assert main(base + ["--k", "9", "--top", "4", "-q"]) == 2
    err = capsys.readouterr().err
    assert "k=9 exceeds the number of top patches (4)" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(base + ["--k", "0"])
    assert exc.value.code == 2
