"""Floor-mode DFV: maximise diversity with every image at >= floor x the MEI (methods/floor.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import diversevis as dv
from diversevis.cli import main
from diversevis.methods.floor import FLOOR_TOLERANCE, FloorConstraint, floor_report
from diversevis.models.synthetic import cell_network

NORM = 2.0


@pytest.fixture(scope="module")
def complex_cell():
    net = cell_network("complex", size=12)
    return net, dv.mei(net, "response", 0, norm=NORM, restarts=2)


# ------------------------------------------------------------------ the augmented Lagrangian itself
def test_penalty_is_zero_above_the_floor_and_quadratic_below_it_with_no_multiplier():
    fc = FloorConstraint(0.8, torch.tensor([2.0]), 2, rho=10.0, margin=0.0)
    fc.d0[:] = 1.0
    d, g = torch.tensor([1.0]), torch.tensor([0])
    above = torch.tensor([[0.9, 0.95]])
    assert fc.lagrangian(above, d, g).item() == pytest.approx(-1.0)  # -D / D_0 only
    below = torch.tensor([[0.5, 0.95]])  # violation 0.3
    assert fc.lagrangian(below, d, g).item() == pytest.approx(-1.0 + 10.0 * 0.3**2 / 2)
    assert fc.merit(below, d, g).item() == pytest.approx(-1.0 + fc.merit_weight * 0.3**2)


def test_the_loop_sees_the_merit_and_follows_the_lagrangians_gradient():
    fc = FloorConstraint(0.85, torch.tensor([1.0]), 2, rho=10.0)
    fc.mu[:] = 0.5
    a = torch.tensor([[0.6, 0.95]], requires_grad=True)
    d = torch.tensor([0.3], requires_grad=True)
    loss = fc.loss(torch.zeros(2, 1, 1, 1), a, d, torch.tensor([0]))
    ga, gd = torch.autograd.grad(loss.sum(), (a, d))
    fc2 = FloorConstraint(0.85, torch.tensor([1.0]), 2, rho=10.0)
    fc2.mu[:], fc2.d0[:] = 0.5, fc.d0
    a2, d2 = a.detach().requires_grad_(), d.detach().requires_grad_()
    ea, ed = torch.autograd.grad(fc2.lagrangian(a2, d2, torch.tensor([0])).sum(), (a2, d2))
    torch.testing.assert_close((ga, gd), (ea, ed))
    assert loss.item() == pytest.approx(fc2.merit(a2, d2, torch.tensor([0])).item())


def test_multipliers_grow_while_an_image_is_below_the_floor_and_never_go_negative():
    fc = FloorConstraint(0.8, torch.tensor([1.0]), 2, eta=1.0, margin=0.0)
    x, d, g = torch.zeros(2, 1, 2, 2), torch.tensor([1.0]), torch.tensor([0])
    fc.loss(x, torch.tensor([[0.5, 0.9]]), d, g)
    assert fc.mu[0].tolist() == pytest.approx([0.3, 0.0])
    fc.loss(x, torch.tensor([[0.6, 0.9]]), d, g)
    assert fc.mu[0].tolist() == pytest.approx([0.5, 0.0])
    fc.loss(x, torch.tensor([[1.0, 1.0]]), d, g)
    assert fc.mu[0].tolist() == pytest.approx([0.3, 0.0])


def test_gradient_of_the_penalty_matches_finite_differences():
    torch.manual_seed(0)
    fc = FloorConstraint(0.85, torch.tensor([1.5], dtype=torch.float64), 3, rho=7.0)
    a = torch.tensor([[1.0, 1.4, 1.2]], dtype=torch.float64, requires_grad=True)

    fc.mu[:] = torch.tensor([[0.2, 0.0, 1.0]])
    fc.d0[:] = 1.0

    def f(a):
        return fc.lagrangian(a / 1.5, torch.tensor([0.5], dtype=torch.float64), torch.tensor([0]))

    assert torch.autograd.gradcheck(f, (a,))


def test_the_most_diverse_feasible_iterate_is_kept_not_the_last_one():
    fc = FloorConstraint(0.8, torch.tensor([1.0]), 2, margin=0.0)
    g = torch.tensor([0])
    first, second, third = (torch.full((2, 1, 2, 2), v) for v in (1.0, 2.0, 3.0))
    fc.loss(first, torch.tensor([[0.9, 0.9]]), torch.tensor([1.0]), g)  # feasible, D = 1
    fc.loss(second, torch.tensor([[0.9, 0.9]]), torch.tensor([0.5]), g)  # feasible, less diverse
    fc.loss(third, torch.tensor([[0.5, 0.9]]), torch.tensor([9.0]), g)  # most diverse, infeasible
    images, found = fc.images(0)
    assert found and torch.equal(images, first)


def _run_worst_image(fc: FloorConstraint, worst_ratios) -> None:
    """Feed two groups' steps: group 0's worst image follows ``worst_ratios``, group 1 stays feasible."""
    x = torch.zeros(4, 1, 2, 2)
    for r in worst_ratios:
        a = torch.tensor([[float(r), 0.95], [0.95, 0.95]])
        fc.loss(x, a, torch.tensor([1.0, 1.0]), torch.tensor([0, 1]))


def test_a_set_whose_worst_image_stalls_below_the_floor_is_told_more_iterations_will_not_help():
    fc = FloorConstraint(0.85, torch.tensor([1.0, 1.0]), 2, margin=0.0)
    _run_worst_image(fc, [0.5 + 0.3 * min(t, 99) / 99 for t in range(400)])  # rises to 0.8 by step 100
    why = fc.why_not_found(0)
    assert "stalled" in why and "0.800" in why and "last rose at step" in why and "another seed" in why
    assert fc.images(1)[1] and not fc.images(0)[1]
    rep = floor_report(torch.tensor([0.8, 0.95]), 0.85, None, found=False, why=why)
    assert rep["floor_failure"].endswith(why)


def test_a_set_still_rising_at_the_last_step_is_told_to_raise_max_iter():
    fc = FloorConstraint(0.85, torch.tensor([1.0, 1.0]), 2, margin=0.0)
    _run_worst_image(fc, [0.5 + 0.3 * t / 399 for t in range(400)])  # still rising at step 400
    why = fc.why_not_found(0)
    assert "still rising at step 400" in why and "raise max_iter" in why and "stalled" not in why


def test_floor_report_holds_within_the_tolerance_and_says_why_when_not():
    ok = floor_report(torch.tensor([0.85 - FLOOR_TOLERANCE / 2, 0.9]), 0.85, None, found=True)
    assert ok["floor_holds"] and "floor_failure" not in ok
    bad = floor_report(torch.tensor([0.70, 0.9]), 0.85, 0.9, found=False)
    assert not bad["floor_holds"] and "min ratio 0.700" in bad["floor_failure"]
    assert "raise max_iter" in bad["floor_failure"]


# ------------------------------------------------------------------ floor mode on known cells
def test_every_image_of_a_complex_cells_floor_set_is_at_the_floor(complex_cell):
    net, mei = complex_cell
    res = dv.diverse(net, "response", 0, n_images=4, floor=0.85, norm=NORM, mei=mei)
    ratios = torch.tensor(res.metrics()["ratios"])
    assert res.spec["mode"] == "floor" and res.spec["floor_holds"] is True
    assert float(ratios.min()) >= 0.85 - FLOOR_TOLERANCE
    # four images on the cell's phase circle: evenly spaced phases are 90 degrees apart,
    # RMS distance sqrt(2) * rho / sqrt(P) (the floor's slack may only add to it)
    quarter_turn = math.sqrt(2) * NORM / math.sqrt(res.images[0].numel())
    assert float(res.min_distance) >= 0.97 * quarter_turn


def test_floor_set_is_as_diverse_as_the_best_lambda_set_at_the_same_min_ratio(complex_cell):
    net, mei = complex_cell
    floor = dv.diverse(net, "response", 0, n_images=4, floor=0.85, norm=NORM, mei=mei)
    floor_min = min(floor.metrics()["ratios"])
    best = 0.0
    for lam in (10.0, 25.0, 60.0):  # the grid spans the paper-like regime and the collapse past it
        r = dv.diverse(net, "response", 0, n_images=4, diversity=lam, norm=NORM, mei=mei)
        if min(r.metrics()["ratios"]) >= floor_min:
            best = max(best, float(r.min_distance))
    assert best > 0 and float(floor.min_distance) >= 0.95 * best


def test_a_simple_cells_floor_set_stays_in_the_cone_around_its_filter():
    net = cell_network("simple", size=12)
    res = dv.diverse(net, "response", 0, n_images=4, floor=0.85, norm=NORM)
    assert res.spec["floor_holds"] is True
    # a linear unit at norm rho: ratio = cos(angle to the filter) >= 0.85, so no two images are
    # further apart than the cone's chord 2 rho sin(2 acos(0.85) / 2) = 2 rho sqrt(1 - 0.85^2)
    chord = 2 * NORM * math.sqrt(1 - 0.85**2) / math.sqrt(res.images[0].numel())
    assert float(res.distances.max()) <= chord * 1.01


def test_batched_floor_sets_equal_the_one_unit_sets():
    net = dv.load_model("vgg16-paper")
    batched = dv.diverse_units(net, "conv1_2", [1, 4], n_images=3, floor=0.85, max_iter=120, mei_restarts=1)
    alone = dv.diverse(net, "conv1_2", 4, n_images=3, floor=0.85, max_iter=120, mei_restarts=1)
    torch.testing.assert_close(batched[1].images, alone.images)
    assert all(r.spec["floor_holds"] for r in batched)


# ------------------------------------------------------------------ never silent
def test_floor_mode_without_the_mei_is_refused():
    with pytest.raises(dv.DiversevisError, match="floor mode .* needs the MEI"):
        dv.diverse(cell_network("simple", size=9), "response", 0, floor=0.85, norm=1.0, mei=False)


def test_a_floor_not_reached_in_time_is_reported_and_warned_not_silent():
    net = cell_network("complex", size=9)
    with pytest.warns(RuntimeWarning, match="below the floor 0.85"):
        res = dv.diverse(net, "response", 0, n_images=3, floor=0.85, norm=1.0, mei=1.0, max_iter=2)
    assert res.spec["floor_holds"] is False and "raise max_iter" in res.spec["floor_failure"]


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"floor": 0.0}, "floor must be a finite number > 0"),
        ({"floor": 1.2}, "floor must be a finite number > 0 and <= 1"),
        ({"floor": math.nan}, "floor must be a finite number"),
        ({"mean_floor": 0.9}, "mean_floor .* needs a floor"),
        ({"floor": 0.9, "mean_floor": 0.85}, "mean_floor .* needs a floor at or below it"),
    ],
)
def test_bad_floors_are_refused(kw, match):
    with pytest.raises(dv.DiversevisError, match=match):
        dv.diverse(cell_network("simple", size=9), "response", 0, norm=1.0, **kw)


def test_cli_floor_mode_says_the_floor_holds(tmp_path, capsys):
    argv = ["diverse", "-m", "cell:complex", "-l", "response", "-u", "0", "--images", "3", "--norm", "2",
            "--floor", "0.85", "--mean-floor", "0.87", "--max-iter", "300", "--mei-restarts", "1", "--quiet", "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "floor 0.85, mean floor 0.87: holds for every image" in out


def test_with_display_range_the_png_holds_the_floor_that_the_unclipped_set_loses(tmp_path):
    net = cell_network("complex", size=12)  # at norm 6 the images need pixels outside [0, 1]
    kw = dict(n_images=4, floor=0.85, norm=6.0, calibrate=False, max_iter=400)
    free = dv.diverse(net, "response", 0, **kw)
    shown = free.shown_activations / free.mei_activation
    assert free.spec["floor_holds"] and shown.min() < 0.75  # the optimised set holds, its picture not
    kept = dv.diverse(net, "response", 0, display_range=True, **kw)
    shown = kept.shown_activations / kept.mei_activation
    assert kept.spec["floor_holds"] and kept.spec["display_range"] is True
    assert kept.images.min() >= 0 and kept.images.max() <= 1 and kept.metrics()["clipped_fraction"] == 0
    assert kept.mei_image.min() >= 0 and kept.mei_image.max() <= 1  # the MEI it is held to: clipped too
    assert shown.min() >= 0.85 - FLOOR_TOLERANCE
    argv = ["diverse", "-m", "cell:complex", "-l", "response", "-u", "0", "--images", "3", "--norm", "2",
            "--floor", "0.85", "--display-range", "--max-iter", "300", "--mei-restarts", "1", "--quiet",
            "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 0
    spec = json.loads((tmp_path / "r" / "result.json").read_text())["spec"]
    assert spec["display_range"] is True
