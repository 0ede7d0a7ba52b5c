"""Response retention under held-out transformations (method.md E.3): known answers on synthetic cells."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.images.naturals import DEFAULT_SCALES, _rescaled, _sample_locations, dataset_mean
from diversevis.methods import retention as ret
from diversevis.methods.exemplars import _match, top_patches
from diversevis.methods.retention import FAMILIES, RetentionResult, response_retention
from diversevis.models.synthetic import cell_network

K, POOL = 16, 512  # small enough for about a second per call on 2 cores


@pytest.fixture(scope="module")
def cells() -> dict[str, RetentionResult]:
    return {
        kind: response_retention(cell_network(kind, size=16), "response", 0, k=K, candidates=POOL)
        for kind in ("simple", "complex", "texture")
    }


# ------------------------------------------------------------------------------------ known answers


def test_complex_cell_keeps_its_response_under_phase_shifts_simple_cell_does_not(cells):
    simple, complex_ = cells["simple"], cells["complex"]
    assert complex_.phase >= 0.9
    assert all(complex_.per_transform[f"phase {d:+d}deg"] >= 0.9 for d in (90, 180, 270))
    # a linear cell's response to a half-cycle shift changes sign; its family mean is far below
    assert simple.per_transform["phase +180deg"] <= 0.0
    assert simple.phase <= 0.5
    assert complex_.phase - simple.phase >= 0.5


def test_texture_cell_keeps_its_response_under_translation_more_than_a_simple_cell(cells):
    simple, texture = cells["simple"], cells["texture"]
    assert texture.translation >= 0.8
    assert simple.translation <= 0.5
    assert texture.translation - simple.translation >= 0.3
    # the simple cell's Gabor varies along x: shifts along the stripes keep it, across them do not
    for px in (2, 4):
        along = simple.per_transform[f"shift {px}px up"], simple.per_transform[f"shift {px}px down"]
        across = simple.per_transform[f"shift {px}px left"], simple.per_transform[f"shift {px}px right"]
        assert min(along) > max(across)


def test_dominant_bin_alone_does_not_tell_phase_invariance_apart():
    # why phase_band defaults to inf: moving one low-frequency FFT bin of a natural patch lowers a
    # simple and a complex cell alike (documented in the module docstring)
    got = {
        kind: response_retention(
            cell_network(kind, size=16), "response", 0, k=K, candidates=POOL, phase_band=0.0
        ).phase
        for kind in ("simple", "complex")
    }
    assert abs(got["simple"] - got["complex"]) < 0.2


# ---------------------------------------------------------------------------------------- mechanics


def test_result_holds_every_transformation_and_the_family_means(cells):
    r = cells["complex"]
    t = len(r.transforms)
    assert r.per_patch.shape == (K, t) and r.activations.shape == (K,)
    counts = {f: r.families.count(f) for f in FAMILIES}
    assert counts == {"translation": 8, "phase": 3, "rotation": 4, "elastic": 4}
    per = r.per_transform
    for f in FAMILIES:
        cols = [per[n] for n, fam in zip(r.transforms, r.families) if fam == f]
        assert getattr(r, f) == pytest.approx(np.mean(cols))
    assert r.overall == pytest.approx(np.mean([getattr(r, f) for f in FAMILIES]))
    s = r.spec
    assert s["method"] == "retention" and s["k"] == K and s["candidates"] == POOL and s["seed"] == 0
    assert s["layer"] == "response" and s["unit"] == 0 and s["contrast"] == 0.5 and "versions" in s
    assert s["transforms"]["translation_px"] == [2, 4] and s["transforms"]["phase_band"] is None
    assert "RetentionResult(complex-cell response unit=0" in repr(r)


def test_originals_are_the_top_patches_and_shifted_crops_come_from_the_photograph():
    net = cell_network("simple", size=16)
    top = top_patches(net, "response", 0, k=K, candidates=POOL)
    locs = _sample_locations(16, POOL, None, DEFAULT_SCALES, 0)
    m = ret._margin(16)
    ctx, _ = ret._contexts(locs, top.indices, m)
    mu = torch.from_numpy(dataset_mean().astype(np.float32)).view(3, 1, 1)
    base = _match(ret._crop(ctx, m, 16), mu, top.spec["norm"])[0]
    torch.testing.assert_close(base, top.images, rtol=0, atol=1e-6)
    checked = 0
    for j, i in enumerate(int(v) for v in top.indices):
        img = _rescaled(None, *locs.sources[locs.src[i]])
        y, x = int(locs.ys[i]) + 4, int(locs.xs[i]) - 2  # 4 px down, 2 px left
        if y + 16 <= img.shape[0] and x >= 0:
            want = torch.from_numpy(np.ascontiguousarray(img[y : y + 16, x : x + 16])).permute(2, 0, 1)
            assert torch.equal(ret._crop(ctx[j], m, 16, 4, -2), want)
            checked += 1
    assert checked >= K // 2


@pytest.fixture(scope="module")
def whole_pool() -> RetentionResult:
    """The whole pool of 64 patches: a linear cell answers many natural patches below 0."""
    return response_retention(cell_network("simple", size=16), "response", 0, k=64, candidates=64)


def test_patches_that_do_not_drive_the_unit_are_excluded(whole_pool):
    r = whole_pool
    bad = r.activations <= 0
    assert 0 < bad.sum() < 64 and r.included == int((~bad).sum())
    assert np.isnan(r.per_patch[bad]).all() and np.isfinite(r.per_patch[~bad]).all()
    assert all(math.isfinite(getattr(r, f)) for f in (*FAMILIES, "overall"))


def test_same_seed_same_numbers_other_seed_other_numbers(cells):
    again = response_retention(cell_network("complex", size=16), "response", 0, k=K, candidates=POOL)
    np.testing.assert_array_equal(again.per_patch, cells["complex"].per_patch)
    other = response_retention(cell_network("complex", size=16), "response", 0, k=K, candidates=POOL, seed=1)
    assert not np.array_equal(other.per_patch, again.per_patch)


def _refuse(name):
    raise ValueError(f"{name} is not JSON")


def test_save_writes_valid_json(whole_pool, tmp_path):
    r = whole_pool
    r.save(tmp_path / "out")
    data = json.loads((tmp_path / "out" / "retention.json").read_text(), parse_constant=_refuse)
    assert data["metrics"]["phase"] == pytest.approx(r.phase)
    assert data["transforms"] == list(r.transforms) and len(data["per_patch"]) == 64
    excluded = [row for row in data["per_patch"] if row[0] is None]
    assert len(excluded) == 64 - r.included > 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["retention.json"]


def test_the_network_is_not_changed():
    net = cell_network("complex", size=16)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [m.training for m in net.modules()]
    response_retention(net, "response", 0, k=4, candidates=32)
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in net.modules()] == flags


# ---------------------------------------------------------------------------------------- bad input


class _NeverFires(nn.Module):
    """``-1 - <g, x>^2``: every patch drives it below 0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 8, bias=False)
        self.response = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.response(-1.0 - self.conv(x) ** 2)


def test_a_unit_no_patch_drives_is_a_clear_error():
    net = Network(_NeverFires(), mean=[0.5] * 3, std=[1.0] * 3, name="never", input_size=8)
    with pytest.raises(DiversevisError, match="none of the top 4 natural patches drives"):
        response_retention(net, "response", 0, k=4, candidates=16)


BAD = [
    ("k", 0, "k must be an integer >= 1"),
    ("k", 1.5, "k must be an integer"),
    ("k", True, "k must be an integer"),
    ("k", 65, "exceeds candidates=64"),
    ("candidates", 0, "candidates must be an integer >= 1"),
    ("contrast", 0.0, "contrast must be a finite number > 0"),
    ("contrast", math.inf, "contrast must be a finite number"),
    ("contrast", "half", "contrast must be a finite number"),
    ("norm", -1.0, "norm must be a finite number > 0"),
    ("norm", math.nan, "norm must be a finite number"),
    ("seed", -1, "seed must be an integer in"),
    ("seed", 2**63, "seed must be an integer in"),
    ("phase_band", -0.1, "band"),
    ("phase_band", True, "band"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_bad_arguments_are_named(name, value, message):
    kw = {"k": 4, "candidates": 64, name: value}
    with pytest.raises(DiversevisError, match=message.replace("(", r"\(")):
        response_retention(cell_network("simple", size=16), "response", 0, **kw)


@settings(max_examples=30, deadline=None)
@given(st.one_of(st.floats(max_value=0.0), st.just(math.inf), st.just(math.nan)))
def test_any_non_positive_or_non_finite_contrast_is_refused(contrast):
    with pytest.raises(DiversevisError, match="contrast"):
        response_retention(cell_network("simple", size=16), "response", 0, contrast=contrast)


@pytest.mark.parametrize(("layer", "unit"), [("respnse", 0), ("response", 3)])
def test_bad_target_is_refused(layer, unit):
    with pytest.raises(DiversevisError):
        response_retention(cell_network("simple", size=16), layer, unit, k=4, candidates=16)


def test_a_uniform_patch_has_no_phase_retention_but_keeps_the_others():
    from diversevis.methods.retention import _phase_batch

    grating = 0.5 + 0.2 * torch.cos(torch.arange(8.0) * 2 * math.pi / 4).expand(3, 8, 8)
    uniform = torch.full((3, 8, 8), 0.7)
    out = _phase_batch(torch.stack([grating, uniform]), math.pi, band=math.inf)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()
