"""The plateau stopping rule: stop once every watched quantity has stopped drifting."""

import pytest
import torch

from diversevis.core.plateau import plateaued, window_change


def test_window_change_is_the_difference_of_two_half_window_means():
    h = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 20.0]).view(6, 1, 1)
    change, recent = window_change(h, 4)
    # last two rows mean 15, the two before 3.5
    assert change.item() == pytest.approx(11.5)
    assert recent.item() == pytest.approx(15.0)


def test_a_flat_quantity_plateaus_and_a_rising_one_does_not():
    t = torch.arange(40.0)
    flat = torch.full_like(t, 5.0)
    rising = 5.0 + 0.01 * t  # 0.2 per half-window of 20 rows... drift 0.2 over window 40
    h = torch.stack([torch.stack([flat, flat], -1), torch.stack([flat, rising], -1)], 1)  # (T, G=2, K=2)
    done = plateaued(h, 40, rtol=0.01)
    assert done.tolist() == [True, False]  # 0.2 > 0.01 * 5.2


def test_noise_around_a_level_plateaus_once_averaged_over_half_windows():
    g = torch.Generator().manual_seed(0)
    h = 1.0 + 0.01 * torch.randn(200, 3, 1, generator=g)
    assert plateaued(h, 100, rtol=0.005).all()


def test_every_quantity_must_settle():
    h = torch.zeros(10, 1, 2)
    h[:, 0, 1] = torch.arange(10.0)
    assert not plateaued(h, 10, atol=0.1).any()
    assert plateaued(h[:, :, :1], 10, atol=0.1).all()


def test_too_short_a_history_and_non_finite_values_never_plateau():
    assert not plateaued(torch.zeros(3, 2, 1), 4).any()
    h = torch.zeros(8, 1, 1)
    h[-1] = float("nan")
    assert not plateaued(h, 8, atol=1.0).any()
    with pytest.raises(ValueError):
        window_change(torch.zeros(8, 1, 1), 1)
