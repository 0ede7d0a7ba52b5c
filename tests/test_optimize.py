"""The shared optimisation loop: EMA early stopping, best iterate, callbacks, limits."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from diversevis.core.optimize import optimize


class Scalar(nn.Module):
    """A single number as a 'parametrisation' (shape (1, 1, 1, 1))."""

    def __init__(self, v: float = 0.0) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.full((1, 1, 1, 1), v))

    def forward(self) -> torch.Tensor:
        return self.x


def test_constant_loss_stops_after_patience_plus_one_non_improving_steps():
    # ema_0 = L_0 is the minimum; every later step fails to improve; stop when bad > patience
    res = optimize(Scalar(), lambda x: 0 * x.sum() + 1.0, max_iter=1000, patience=5)
    assert res.n_iter == 5 + 2
    assert res.stopped_early
    assert len(res.history) == res.n_iter


def test_ema_follows_the_reference_recursion():
    seen = []
    losses = [4.0, 2.0, 3.0, 1.0]
    step = {"i": 0}

    def loss_fn(x):
        v = losses[step["i"]]
        step["i"] += 1
        return 0 * x.sum() + v

    optimize(Scalar(), loss_fn, max_iter=4, patience=0, callbacks=[lambda s: seen.append(s.ema)])
    ema = [4.0]
    for v in losses[1:]:
        ema.append(0.9 * ema[-1] + 0.1 * v)
    assert torch.allclose(torch.tensor(seen), torch.tensor(ema))


def test_returns_the_best_iterate_not_the_last():
    # Adam with a constant gradient moves x by exactly lr per step: x_t = -t.
    # The loss is x for 5 steps (decreasing to -4), then -x (positive): the best is step 4, x = -4.
    step = {"i": 0}

    def loss_fn(x):
        sign = 1.0 if step["i"] < 5 else -1.0
        step["i"] += 1
        return sign * x.sum()

    res = optimize(Scalar(), loss_fn, lr=1.0, max_iter=20, patience=0)
    assert res.best_step == 4
    assert abs(res.best_loss + 4.0) < 1e-4
    assert abs(float(res.images) + 4.0) < 1e-4
    assert res.n_iter == 20 and not res.stopped_early


def test_callback_returning_true_stops_the_run():
    res = optimize(
        Scalar(), lambda x: (x - 3).pow(2).sum(), max_iter=100, patience=0, callbacks=[lambda s: s.step >= 9]
    )
    assert res.n_iter == 10 and res.stopped_early


def test_patience_zero_runs_max_iter():
    res = optimize(Scalar(), lambda x: 0 * x.sum() + 1.0, max_iter=30, patience=0)
    assert res.n_iter == 30 and not res.stopped_early


def test_check_every_delays_stopping_but_not_the_best_iterate():
    res1 = optimize(Scalar(), lambda x: (x - 3).pow(2).sum(), max_iter=300, patience=10, check_every=1)
    res7 = optimize(Scalar(), lambda x: (x - 3).pow(2).sum(), max_iter=300, patience=10, check_every=7)
    assert res7.n_iter >= res1.n_iter and res7.n_iter - res1.n_iter < 7
    assert res7.best_loss <= res1.best_loss


def test_groups_stop_independently():
    from diversevis.core.optimize import optimize_groups

    class Four(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.x = nn.Parameter(torch.zeros(4, 1, 1, 1))

        def forward(self) -> torch.Tensor:
            return self.x

    # group 0 (images 0-1) has a constant loss and freezes after patience + 2 iterations; group 1 keeps improving
    res = optimize_groups(
        Four(),
        lambda x: torch.stack([0 * x[:2].sum() + 1.0, (x[2:] - 50).pow(2).sum()]),
        groups=2,
        max_iter=60,
        patience=5,
    )
    assert (res[0].n_iter, res[0].stopped_early, len(res[0].history)) == (7, True, 7)
    assert (res[1].n_iter, res[1].stopped_early) == (60, False)
    assert res[1].images.shape == (2, 1, 1, 1) and float(res[1].images.mean()) > 10  # moved towards 50


def test_compact_drops_frozen_groups_from_the_batch_without_changing_results():
    from diversevis.core.optimize import optimize_groups

    class Rows(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.x = nn.Parameter(torch.linspace(-1, 1, 6).view(6, 1, 1, 1))
            self.register_buffer("scale", torch.arange(1.0, 7.0))  # per-row buffer, sliced with the rows

        def forward(self) -> torch.Tensor:
            return self.x * self.scale.view(-1, 1, 1, 1)

    targets = torch.tensor([0.0, 3.0, -7.0])
    batch_sizes: list[int] = []

    def per_group(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        # group 0's loss is constant: it freezes first; groups 1 and 2 keep improving for a while
        t = targets[groups].view(-1, 1)
        loss = (x.view(-1, 2) - t).pow(2).sum(1)
        return torch.where(groups == 0, 0 * loss + 1.0, loss)

    def compacted(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        batch_sizes.append(len(x))
        return per_group(x, groups)

    kw = dict(groups=3, max_iter=80, patience=5, lr=0.1)
    full = optimize_groups(Rows(), lambda x: per_group(x, torch.arange(3)), **kw)
    small = optimize_groups(Rows(), compacted, compact=True, **kw)
    assert batch_sizes[0] == 6 and min(batch_sizes) < 6  # group 0 left the batch once frozen
    for a, b in zip(full, small):
        assert torch.equal(a.images, b.images)
        assert (a.n_iter, a.best_step) == (b.n_iter, b.best_step)
        np.testing.assert_array_equal(a.history, b.history)
