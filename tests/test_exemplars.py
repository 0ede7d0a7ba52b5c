"""Natural exemplars (the sampling baseline of claim iii): top patches, contrast matching, max-min subsets."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.objectives import pairwise_rms_matrix
from diversevis.core.result import Result
from diversevis.images.naturals import dataset_mean, sample_patches
from diversevis.methods.dfv import Problem
from diversevis.methods.exemplars import ExemplarSet, diverse_exemplars, greedy_max_min, top_patches
from diversevis.models.synthetic import cell_network


def _min_pair(dist: torch.Tensor) -> float:
    n = dist.shape[0]
    iu = torch.triu_indices(n, n, 1)
    return float(dist[iu[0], iu[1]].min())


def _mu() -> torch.Tensor:
    return torch.from_numpy(dataset_mean().astype(np.float32)).view(3, 1, 1)


@pytest.fixture(scope="module")
def u21_top(vgg16_paper):
    """Top 32 of 2048 contrast-matched natural patches for vgg16-paper conv3_1 unit 21 (24 px)."""
    return top_patches(vgg16_paper, "conv3_1", 21, k=32, candidates=2048, seed=0)


# --------------------------------------------------------------------------------------- greedy max-min


def test_greedy_max_min_closed_form():
    # points on a line (RMS distance in 1-D = |a - b|): 0 -> 10, then 3 and 7 tie at distance 3 -> lower
    # index first, then 7 (3 from {0, 3, 10}), then 1
    line = torch.tensor([0.0, 1.0, 3.0, 7.0, 10.0])[:, None]
    assert greedy_max_min(line, 5) == [0, 4, 2, 3, 1]
    assert greedy_max_min(line, 5, start=2) == [2, 4, 0, 3, 1]
    assert greedy_max_min(line, 3) == [0, 4, 2]
    # RMS over D = 2 duplicated coordinates is the same distance, so the same order
    assert greedy_max_min(line.repeat(1, 2), 5) == [0, 4, 2, 3, 1]
    # unit square corners and its centre
    sq = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5]])
    assert greedy_max_min(sq, 5) == [0, 3, 1, 2, 4]  # opposite corner, the two others, centre last
    assert greedy_max_min(sq, 5, start=4) == [4, 0, 1, 2, 3]  # all corners tie from the centre
    # duplicates: already selected rows are never selected again
    assert greedy_max_min(torch.ones(3, 4), 3, start=1) == [1, 0, 2]
    # higher-dimensional features are flattened per row
    assert greedy_max_min(line.view(5, 1, 1, 1), 2) == [0, 4]


def test_greedy_max_min_is_a_2_approximation_of_the_brute_force_optimum():
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        m, n = 9, 3 + trial % 3
        f = torch.randn(m, 4, generator=gen, dtype=torch.float64)
        dist = pairwise_rms_matrix(f)
        best = max(_min_pair(dist[list(s)][:, list(s)]) for s in itertools.combinations(range(m), n))
        for start in (0, trial % m):
            sel = greedy_max_min(f, n, start=start)
            assert len(set(sel)) == n and sel[0] == start
            got = _min_pair(dist[sel][:, sel])
            assert best / 2 - 1e-12 <= got <= best + 1e-12


# ------------------------------------------------------------------------------------------ top patches


def test_top_patches_are_sorted_and_match_recomputed_activations(vgg16_paper):
    top = top_patches(vgg16_paper, "conv2_1", 7, k=16, candidates=2048, seed=1)
    assert top.images.shape == (16, 3, 10, 10) and top.activations.shape == (16,)
    assert torch.all(top.activations[:-1] >= top.activations[1:])
    prob = Problem.build(
        vgg16_paper,
        "conv2_1",
        7,
        None,
        "max",
        contrast=0.5,
        norm=None,
        distance_layer=None,
        images_folder=None,
    )
    with torch.no_grad():
        again = prob.evaluate(top.images, need_features=False)[0]
        # the whole pool, contrast-matched by hand: the kept patches are its k best
        p = sample_patches(10, 2048, seed=1)
        d = p - _mu()
        x = 0.5 + prob.norm * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        pool = prob.evaluate(x, need_features=False)[0]
    torch.testing.assert_close(again, top.activations, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pool[top.indices], top.activations, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pool.topk(16).values, top.activations, rtol=1e-5, atol=1e-5)
    assert top.distances is None and math.isnan(top.min_distance)
    s = top.spec
    assert (s["model"], s["layer"], s["unit"], s["k"], s["candidates"], s["seed"]) == (
        "vgg16-paper",
        "conv2_1",
        7,
        16,
        2048,
        1,
    )
    assert s["match_contrast"] is True and s["norm"] == prob.norm and "torch" in s["versions"]


def test_match_contrast_sets_every_patch_norm(vgg16_paper):
    top = top_patches(vgg16_paper, "conv2_1", 7, k=16, candidates=512, seed=2, norm=1.5)
    raw = top_patches(vgg16_paper, "conv2_1", 7, k=16, candidates=512, seed=2, match_contrast=False)
    p = sample_patches(10, 512, seed=2)
    d = p[top.indices] - _mu()
    # x = 0.5 + norm * (p - mu) / ||p - mu||: the DFV contrast ||x - 0.5|| = norm, same direction as p - mu
    torch.testing.assert_close((top.images - 0.5).flatten(1).norm(dim=1), torch.full((16,), 1.5))
    torch.testing.assert_close(top.images - 0.5, 1.5 * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    torch.testing.assert_close(top.contrasts, d.flatten(1).norm(dim=1))
    assert top.spec["norm"] == 1.5 and top.spec["match_contrast"] is True
    # without matching the patches are the pool's own crops, bit for bit
    assert torch.equal(raw.images, p[raw.indices])
    assert raw.spec["match_contrast"] is False


def test_simple_cell_top_patches_correlate_with_its_gabor():
    net = cell_network("simple", size=16)
    top = top_patches(net, "response", 0, k=8, candidates=2048, norm=1.0, seed=0)
    g = net.module.response.weight[0].flatten()
    x = (top.images - 0.5).flatten(1)  # the cell sees the image minus grey
    cos = x @ g / (x.norm(dim=1) * g.norm())
    # at unit contrast the response <g, x - 0.5> is exactly the normalised dot product with the Gabor
    torch.testing.assert_close(top.activations, cos, rtol=1e-5, atol=1e-6)
    assert float(cos.min()) > 0.25
    # a random natural patch is nearly orthogonal to it; the kept ones are the pool's best matches
    p = sample_patches(16, 2048, seed=0)
    d = (p - _mu()).flatten(1)
    pool_cos = d @ g / (d.norm(dim=1) * g.norm())
    assert float(cos.min()) > 10 * float(pool_cos.abs().median())
    assert set(top.indices.tolist()) == set(pool_cos.topk(8).indices.tolist())


class _FlattensItsInput(nn.Module):
    """A model that calls ``.view`` across channels and pixels, so it cannot take channels-last input."""

    def __init__(self):
        super().__init__()
        self.response = nn.Conv2d(3, 2, 8)

    def forward(self, x):
        return self.response(x.view(x.shape[0], -1).view(x.shape))


def test_models_that_need_contiguous_input_still_work():
    net = Network(_FlattensItsInput(), input_size=8)
    top = top_patches(net, "response", 1, k=4, candidates=64, norm=1.0, batch=16, match_contrast=False)
    with torch.no_grad():
        pool = net(sample_patches(8, 64, seed=0))[:, 1].flatten()
    torch.testing.assert_close(top.activations, pool.topk(4).values)


# ------------------------------------------------------------------------------------ diverse exemplars


def test_diverse_subset_is_more_diverse_than_the_top_n(u21_top, vgg16_paper):
    for layer in ("conv2_2", None):
        div = diverse_exemplars(u21_top, 6, distance_layer=layer)
        assert div.images.shape == (6, 3, 24, 24) and div.distances.shape == (6, 6)
        assert div.spec["ranks"][0] == 0  # starts from the most activating exemplar
        assert len(set(div.indices.tolist())) == 6
        prob = Problem.build(
            vgg16_paper,
            "conv3_1",
            21,
            None,
            "max",
            contrast=0.5,
            norm=None,
            distance_layer=layer,
            images_folder=None,
        )
        with torch.no_grad():
            f = prob.evaluate(u21_top.images[:6])[1].flatten(1)
        top6 = _min_pair(pairwise_rms_matrix(f))
        assert div.min_distance > top6
        assert div.mean_distance >= div.min_distance


def test_distance_space_matches_dfv(u21_top, vgg16_paper):
    div = diverse_exemplars(u21_top, 6, distance_layer="conv2_2")
    assert div.spec["distance_layer"] == "conv2_2"
    prob = Problem.build(
        vgg16_paper,
        "conv3_1",
        21,
        None,
        "max",
        contrast=0.5,
        norm=None,
        distance_layer="conv2_2",
        images_folder=None,
    )
    with torch.no_grad():
        acts, feats = prob.evaluate(div.images)
        # independently: the rectified conv2_2 map of a 24 px input is 6 x 6, all of it over the image
        raw = torch.relu(vgg16_paper.activations(div.images, ["conv2_2"])["conv2_2"]).flatten(1)
    assert feats.shape[1:] == (128, 6, 6)
    torch.testing.assert_close(div.distances, pairwise_rms_matrix(feats.flatten(1)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        div.distances, torch.cdist(raw, raw) / raw.shape[1] ** 0.5, rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(acts, div.activations, rtol=1e-5, atol=1e-5)
    # pixel space is the image minus grey
    pix = diverse_exemplars(u21_top, 4, distance_layer="pixels")
    x = (pix.images - 0.5).flatten(1)
    torch.testing.assert_close(pix.distances, torch.cdist(x, x) / x.shape[1] ** 0.5, rtol=1e-4, atol=1e-5)


def test_min_ratio_keeps_only_strong_exemplars_and_as_result_saves(u21_top, tmp_path):
    mei = float(u21_top.activations[0]) / 0.9  # pretend the best exemplar reaches 90% of the MEI
    a = u21_top.activations
    assert float(a[9]) > float(a[10])
    thr = 0.5 * float(a[9] + a[10]) / mei  # exactly the 10 best are eligible
    div = diverse_exemplars(u21_top, 6, distance_layer="conv2_2", min_ratio=thr, mei_activation=mei)
    assert div.spec["eligible"] == 10 and max(div.spec["ranks"]) <= 9
    assert float(div.activations.min()) >= thr * mei
    res = div.as_result()
    assert isinstance(res, Result) and res.mei_activation == pytest.approx(mei)
    assert float(res.ratios[0]) == pytest.approx(0.9, rel=1e-5)
    assert res.min_distance == pytest.approx(div.min_distance)
    loaded = Result.load(res.save(tmp_path / "ex"))
    torch.testing.assert_close(loaded.images, div.images)
    meta = json.loads((tmp_path / "ex" / "result.json").read_text())
    assert meta["spec"]["method"] == "natural_exemplars" and meta["indices"] == div.indices.tolist()
    assert math.isnan(float(u21_top.as_result().distances[0, 1]))  # distances not computed yet


def test_bad_arguments_raise(vgg16_paper, u21_top):
    f = torch.randn(5, 3)
    for kw in ({"n": 6}, {"n": 0}, {"n": 2, "start": 5}, {"n": 2, "start": -1}):
        with pytest.raises(DiversevisError):
            greedy_max_min(f, **kw)
    with pytest.raises(DiversevisError):
        greedy_max_min(torch.randn(5), 2)
    for kw in (
        {"k": 0},
        {"k": 65, "candidates": 64},
        {"candidates": 0},
        {"batch": 0},
        {"seed": -1, "candidates": 8, "k": 2},
        {"norm": -1.0},
    ):
        with pytest.raises(DiversevisError):
            top_patches(vgg16_paper, "conv2_1", 7, **kw)
    with pytest.raises(DiversevisError):
        top_patches(vgg16_paper, "conv2_1", 10_000, k=2, candidates=8)  # unit out of range
    with pytest.raises(DiversevisError):
        top_patches(vgg16_paper, "conv9_9", 0, k=2, candidates=8)
    grey = Network(nn.Sequential(nn.Conv2d(1, 2, 5)), in_channels=1, input_size=16)
    with pytest.raises(DiversevisError, match="RGB"):
        top_patches(grey, "0", 0, k=2, candidates=8)
    with pytest.raises(DiversevisError):
        diverse_exemplars(u21_top, 33)  # more than k
    with pytest.raises(DiversevisError):
        diverse_exemplars(u21_top, 6, min_ratio=0.5)  # no MEI to compare with
    with pytest.raises(DiversevisError):
        diverse_exemplars(u21_top, 6, min_ratio=2.0, mei_activation=float(u21_top.activations[0]))
    with pytest.raises(DiversevisError):
        diverse_exemplars(u21_top, 6, distance_layer="conv9_9")
    orphan = ExemplarSet(u21_top.images, u21_top.activations, u21_top.indices, None, dict(u21_top.spec))
    with pytest.raises(DiversevisError):
        diverse_exemplars(orphan, 6)
