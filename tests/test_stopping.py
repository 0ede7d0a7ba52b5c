"""The plateau stopping rule in the shared loop and in DFV: a run ends once the quantities it watches
(activations relative to the MEI, diversity) stop drifting, per group, and not before a floor-mode
set has met its floor; the EMA rule stays available."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diversevis as dv
from diversevis.core.errors import DiversevisError
from diversevis.core.optimize import Watched, optimize, optimize_groups
from diversevis.methods.settings import PLATEAU, DiverseSettings, MEISettings
from diversevis.models.synthetic import cell_network


class Rows(nn.Module):
    """``n`` numbers as a parametrisation (shape ``(n, 1, 1, 1)``)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.zeros(n, 1, 1, 1))

    def forward(self) -> torch.Tensor:
        return self.x


def _steps():
    """A loss function's step counter (the loss functions below depend on the step, not on x)."""
    return {"i": 0}


def test_a_group_whose_watched_values_are_flat_stops_after_one_window_the_other_runs_on():
    step = _steps()

    def loss_fn(x: torch.Tensor) -> Watched:
        t = float(step["i"])
        step["i"] += 1
        flat = torch.tensor([1.0, 2.0])
        rising = torch.tensor([1.0 + 0.1 * t, 2.0])  # group 1's first quantity never settles
        return Watched(x.view(2, 2).sum(1), torch.stack([flat, rising]))

    res = optimize_groups(Rows(4), loss_fn, groups=2, max_iter=60, stop="plateau", window=10, rtol=0.01)
    assert (res[0].n_iter, res[0].stopped_early) == (10, True)  # settled at the first full window
    assert (res[1].n_iter, res[1].stopped_early) == (60, False)
    assert res[0].watched.shape == (10, 2) and res[1].watched.shape == (60, 2)


def test_compacted_groups_stop_on_their_own_plateau_like_the_full_batch():
    def run(compact: bool):
        seen: list[int] = []

        def loss_fn(x: torch.Tensor, groups: torch.Tensor | None = None) -> Watched:
            g = torch.arange(3) if groups is None else groups
            seen.append(len(g))
            y = x.view(-1, 2)
            # group g's value settles at exp(-t / tau_g): the slower, the later it plateaus
            target = torch.tensor([1.0, 2.0, 3.0])[g]
            return Watched(((y - target.view(-1, 1)) ** 2).sum(1), y.mean(1, keepdim=True).detach() + 1.0)

        fn = loss_fn if compact else (lambda x: loss_fn(x))
        kw = dict(groups=3, max_iter=300, lr=0.1, stop="plateau", window=20, rtol=1e-3)
        return optimize_groups(Rows(6), fn, compact=compact, **kw), seen

    full, _ = run(False)
    small, sizes = run(True)
    n = [r.n_iter for r in full]
    assert n[0] < n[2] < 300  # each group on its own clock
    assert [r.n_iter for r in small] == n and min(sizes) < 6  # finished groups left the batch
    for a, b in zip(full, small):
        assert torch.equal(a.images, b.images)


def test_a_group_that_is_not_ready_runs_on_though_its_values_are_flat():
    step = _steps()

    def loss_fn(x: torch.Tensor) -> Watched:
        i = step["i"]
        step["i"] += 1
        return Watched(x.sum() * 0 + 1.0, torch.ones(1), ready=torch.tensor([i >= 30]))

    res = optimize(Rows(1), loss_fn, max_iter=100, stop="plateau", window=10, rtol=0.0)
    assert res.n_iter == 31  # flat from the start, allowed to stop from step 30 on


def test_the_loss_is_watched_when_the_loss_function_reports_nothing():
    res = optimize(Rows(1), lambda x: x.sum() * 0 + 5.0, max_iter=100, stop="plateau", window=8)
    assert res.n_iter == 8 and res.watched.shape == (8, 1)
    ema = optimize(Rows(1), lambda x: x.sum() * 0 + 5.0, max_iter=100, patience=20)
    assert ema.n_iter == 22 and ema.watched is None  # the EMA rule as before


def test_one_tolerance_per_watched_quantity():
    step = _steps()

    def loss_fn(x: torch.Tensor) -> Watched:
        t = float(step["i"])
        step["i"] += 1
        return Watched(x.sum() * 0, torch.tensor([1.0, 1.0 + 0.01 * t]))  # 2nd drifts 0.1 per half-window

    loose = optimize(Rows(1), loss_fn, max_iter=50, stop="plateau", window=20, rtol=(0.0, 0.2))
    step["i"] = 0
    tight = optimize(Rows(1), loss_fn, max_iter=50, stop="plateau", window=20, rtol=(0.0, 0.01))
    assert (loose.n_iter, tight.n_iter) == (20, 50)
    with pytest.raises(ValueError, match="3 tolerances for 2 watched quantities"):
        optimize(Rows(1), loss_fn, max_iter=50, stop="plateau", window=20, rtol=(0.1, 0.1, 0.1))


def test_plateau_window_zero_runs_max_iter():
    res = optimize(Rows(1), lambda x: x.sum() * 0 + 1.0, max_iter=30, stop="plateau", window=0)
    assert res.n_iter == 30 and not res.stopped_early


@pytest.fixture(scope="module")
def complex_cell():
    return cell_network("complex", size=16)


def test_plateau_ends_an_mei_that_has_settled_long_before_the_ema_rule_does(complex_cell):
    # the energy cell's MEI creeps towards rho^2 = 1 for ~1000 steps at a constant learning rate,
    # a tail in which the EMA loss keeps reaching new minima
    kw = dict(norm=1.0, restarts=2, seed=0, max_iter=400)
    ema = dv.mei(complex_cell, "response", 0, stop="ema", **kw)
    pl = dv.mei(complex_cell, "response", 0, **kw)
    assert pl.spec["stop"] == "plateau" and pl.spec["n_iter"] * 3 < ema.spec["n_iter"]
    assert pl.mei_activation == pytest.approx(ema.mei_activation, rel=0.002)


def test_plateau_ends_a_settled_diverse_set_earlier_with_the_same_ratios_and_distances(complex_cell):
    mei = dv.mei(complex_cell, "response", 0, norm=1.0, seed=0)
    kw = dict(n_images=6, diversity=1.0, norm=1.0, seed=0, mei=mei, calibrate=False)
    ema = dv.diverse(complex_cell, "response", 0, stop="ema", **kw)
    pl = dv.diverse(complex_cell, "response", 0, **kw)
    assert pl.spec["n_iter"] < 0.75 * ema.spec["n_iter"]
    assert torch.allclose(pl.ratios.sort().values, ema.ratios.sort().values, rtol=0.002)
    assert pl.min_distance == pytest.approx(ema.min_distance, rel=0.01)


def test_floor_mode_stops_only_after_the_floor_is_met(complex_cell):
    mei = dv.mei(complex_cell, "response", 0, norm=1.0, seed=0)
    kw = dict(n_images=6, norm=1.0, seed=0, mei=mei, calibrate=False, floor=0.85)
    # a window so short that the values look flat within a few steps of the start
    res = dv.diverse(
        complex_cell, "response", 0, plateau_window=4, plateau_rtol=1.0, plateau_rtol_diversity=1.0, **kw
    )
    assert res.spec["floor_holds"] and float(res.ratios.min()) >= 0.85 - 0.005


@pytest.mark.parametrize("diversity", [0.0, 0.5])  # the activations alone; and with the diversity
def test_batched_units_stop_each_on_its_own_plateau_like_one_unit_runs(vgg16_paper, diversity):
    kw = dict(n_images=3, diversity=diversity, seed=0, mei=False, calibrate=False, max_iter=400)
    batch = dv.diverse_units(vgg16_paper, "conv1_2", [1, 4], **kw)
    for u, b in zip([1, 4], batch):
        one = dv.diverse(vgg16_paper, "conv1_2", u, **kw)
        assert b.spec["n_iter"] == one.spec["n_iter"] < 400
        assert torch.equal(b.images, one.images)
    assert batch[0].spec["n_iter"] != batch[1].spec["n_iter"]


def test_the_run_spec_records_the_rule_and_its_resolved_parameters(complex_cell):
    kw = dict(n_images=3, norm=1.0, seed=0, calibrate=False, max_iter=5)
    lam = dv.diverse(complex_cell, "response", 0, mei=False, **kw)
    assert (lam.spec["stop"], lam.spec["plateau_window"], lam.spec["plateau_rtol"]) == (
        "plateau",
        *PLATEAU["lambda"][:2],
    )
    assert lam.spec["plateau_rtol_diversity"] == PLATEAU["lambda"][2]
    flo = dv.diverse(complex_cell, "response", 0, mei=1.0, floor=0.85, plateau_rtol=0.01, **kw)
    assert (flo.spec["plateau_window"], flo.spec["plateau_rtol"]) == (PLATEAU["floor"][0], 0.01)
    m = dv.mei(complex_cell, "response", 0, norm=1.0, max_iter=5, stop="ema", patience=7)
    assert (m.spec["stop"], m.spec["patience"], m.spec["plateau_window"]) == ("ema", 7, PLATEAU["mei"][0])


def test_the_loop_gets_the_modes_plateau_defaults_unless_given():
    lam, flo = DiverseSettings().loop(), DiverseSettings(floor=0.85).loop()
    assert (lam["stop"], lam["window"], lam["rtol"]) == ("plateau", 50, (0.0015, 0.0015, 0.02))
    assert (flo["window"], flo["rtol"]) == (200, (0.005, 0.005, 0.005))
    assert DiverseSettings().loop("floor")["window"] == 200  # the DI's floor-mode reference cells
    given = DiverseSettings(floor=0.85, plateau_window=30, plateau_rtol_diversity=0.1).loop()
    assert (given["window"], given["rtol"]) == (30, (0.005, 0.005, 0.1))
    assert MEISettings().loop()["window"] == 50 and MEISettings().loop()["rtol"] == 0.0015


def test_the_mei_of_a_set_follows_the_sets_rule():
    s = DiverseSettings(stop="ema", plateau_window=80, plateau_rtol=0.01)
    m = s.mei_settings(1.0)
    assert (m.stop, m.plateau_window, m.plateau_rtol) == ("ema", 80, 0.01)
    assert DiverseSettings().mei_settings(1.0).plateau_window == PLATEAU["mei"][0]  # its own default


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(stop="plateu"), "unknown stop rule 'plateu'; choose one of ema, plateau"),
        (dict(stop=None), "unknown stop rule None"),
        (dict(plateau_window=1), "plateau_window must be 0 .* or an integer >= 2, got 1"),
        (dict(plateau_window=-3), "plateau_window must be an integer"),
        (dict(plateau_window=2.5), "plateau_window must be an integer"),
        (dict(plateau_rtol=-0.1), "plateau_rtol must be a finite number >= 0"),
        (dict(plateau_rtol=float("nan")), "plateau_rtol must be a finite number"),
        (dict(plateau_rtol_diversity=-1), "plateau_rtol_diversity must be a finite number >= 0"),
    ],
)
def test_bad_stop_settings_name_the_argument_and_the_rule(bad, message):
    with pytest.raises(DiversevisError, match=message):
        DiverseSettings(**bad)
    if "plateau_rtol_diversity" not in bad:
        with pytest.raises(DiversevisError, match=message):
            MEISettings(**bad)


def test_the_loop_refuses_a_bad_rule():
    with pytest.raises(DiversevisError, match="unknown stop rule 'never'"):
        optimize(Rows(1), lambda x: x.sum(), stop="never")
    with pytest.raises(DiversevisError, match="window must be 0"):
        optimize(Rows(1), lambda x: x.sum(), stop="plateau", window=1)
    with pytest.raises(DiversevisError, match="rtol must be a finite number >= 0"):
        optimize(Rows(1), lambda x: x.sum(), stop="plateau", rtol=(0.1, -1.0))
