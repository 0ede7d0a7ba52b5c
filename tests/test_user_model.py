"""The user's model is theirs: every method leaves it exactly as it found it, and runs it in eval mode."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import diversevis as dv
from diversevis.core.network import evaluating
from diversevis.methods.dfv_units import diverse_units

LAYER = "4"  # the second conv (pre-ReLU), receptive field 5 px


def train_mode_model() -> nn.Module:
    """A small conv net in train mode with BatchNorm (non-trivial running stats), Dropout and in-place ReLUs."""
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Dropout2d(0.3),
        nn.Conv2d(8, 4, 3),
        nn.ReLU(inplace=True),
    )
    with torch.no_grad():
        m(torch.rand(16, 3, 12, 12))  # train-mode pass: BN running statistics move off their defaults
    m[4].bias.requires_grad_(False)  # a mixed requires_grad pattern the user chose
    return m


def snapshot(m: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in m.state_dict().items()},
        "training": [(n, s.training) for n, s in m.named_modules()],
        "requires_grad": [(n, p.requires_grad) for n, p in m.named_parameters()],
        "inplace": [(n, s.inplace) for n, s in m.named_modules() if hasattr(s, "inplace")],
        "device_dtype": [(p.device, p.dtype) for p in m.parameters()],
        "grads": [p.grad for p in m.parameters()],
    }


def assert_unchanged(before: dict, m: nn.Module) -> None:
    after = snapshot(m)
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k  # bitwise: BN running stats included
    for key in ("training", "requires_grad", "inplace", "device_dtype"):
        assert after[key] == before[key], key
    assert all(g is None for g in after["grads"])  # no gradient left on the user's weights


QUICK = dict(norm=1.0, max_iter=15, seed=0)

RUNS = {
    "diverse": lambda m: dv.diverse(m, LAYER, 1, n_images=3, diversity=0.5, mei_restarts=2, **QUICK),
    "mei": lambda m: dv.mei(m, LAYER, 1, restarts=2, **QUICK),
    "diverse_units": lambda m: diverse_units(m, LAYER, [0, 1], n_images=2, mei_restarts=2, **QUICK),
    "shift_test": lambda m: dv.shift_test(m, LAYER, 1, mei=1.0, norm=1.0, max_iter=10),
    "phase_test": lambda m: dv.phase_test(m, LAYER, 1, norm=1.0, mei=1.0, orientations=4, frequencies=3),
    "actmax": lambda m: dv.actmax(m, LAYER, 1, max_iter=10, transforms=False),
    "deconvnet": lambda m: dv.deconvnet(m, LAYER, 1, torch.rand(3, 16, 16)),
    "occlusion": lambda m: dv.occlusion(m, torch.rand(3, 16, 16), LAYER, 1, size=4, stride=4),
}


@pytest.mark.parametrize("method", sorted(RUNS))
def test_a_train_mode_model_is_left_bitwise_unchanged(method):
    m = train_mode_model()
    before = snapshot(m)
    RUNS[method](m)
    assert_unchanged(before, m)


def test_a_network_reused_after_model_train_still_runs_in_eval_mode():
    """Results on a train-mode model equal those on its eval-mode copy: no dropout, BN running stats."""
    m = train_mode_model()
    ref = copy.deepcopy(m).eval()
    net = dv.Network(m)
    first = dv.diverse(net, LAYER, 1, n_images=3, mei=False, **QUICK)
    m.train()  # the user goes back to training between two calls
    again = dv.diverse(net, LAYER, 1, n_images=3, mei=False, **QUICK)
    expected = dv.diverse(ref, LAYER, 1, n_images=3, mei=False, **QUICK)
    torch.testing.assert_close(first.images, expected.images, rtol=0, atol=0)
    torch.testing.assert_close(again.images, expected.images, rtol=0, atol=0)
    torch.testing.assert_close(again.activations, expected.activations, rtol=0, atol=0)


def test_evaluating_restores_the_flags_also_after_an_error():
    m = train_mode_model()
    before = snapshot(m)
    with pytest.raises(RuntimeError, match="inside"):
        with evaluating(m):
            assert not m.training and not m[2].inplace and not m[0].weight.requires_grad
            raise RuntimeError("inside")
    assert_unchanged(before, m)
