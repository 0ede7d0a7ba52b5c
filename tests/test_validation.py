"""Requests that make no sense are refused before any work; one channel's overflow stays in that channel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diversevis as dv


def two_convs() -> dv.Network:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU()).eval()
    return dv.Network(model, input_size=5)


def test_a_distance_layer_after_the_target_is_refused():
    net = two_convs()
    assert net.runs_after("2", "0") and not net.runs_after("0", "2")
    with pytest.raises(dv.DiversevisError, match="distance layer '2' comes after the target layer '0'"):
        dv.diverse(net, "0", 1, distance_layer="2", norm=1.0)
    res = dv.diverse(net, "2", 1, distance_layer="1", norm=1.0, max_iter=3, mei=False)  # lower: fine
    assert res.spec["distance_layer"] == "1"


def test_an_infinite_activation_in_one_channel_does_not_poison_another_unit():
    conv = nn.Conv2d(3, 2, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[1].fill_(3e38)  # finite weights whose sum over a grey image overflows to +inf
        conv.weight[0, :, 1, 1] = 1.0
    net = dv.Network(nn.Sequential(conv), input_size=3)
    assert torch.isinf(net.activations(torch.full((1, 3, 3, 3), 0.5), ["0"])["0"][0, 1]).all()
    m = dv.mei(net, "0", 0, norm=1.0, max_iter=20, restarts=1)
    assert torch.isfinite(m.activations).all() and m.mei_activation > 0
