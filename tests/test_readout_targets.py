"""Any output is a target: readout neurons and logits on grayscale, non-square inputs; any dtype.

The system-identification-style model below has the shape of a neural predictive model: a 1-channel
36x64 stimulus, a convolutional core and a readout to 20 neurons ((B, 20) output). Two neurons are
planted with known answers: an energy-model complex cell (phase invariant) and a simple cell.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import diversevis as dv
from diversevis.models.synthetic import gabor

H, W, K = 36, 64, 13  # stimulus, Gabor size
ROW, COL = 11, 25  # position of the planted neurons in the core's (24, 52) map


class ReadoutModel(nn.Module):
    """Core: a quadrature pair of Gabors (+ 2 random filters); readout: 20 neurons ``(B, 20)``.

    Neuron 0 is an energy model of the pair at (ROW, COL) (complex cell), neuron 1 a rectified linear
    filter there (simple cell), neurons 2-19 random linear readouts of the rectified core.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        g0 = gabor(K, channels=1, wavelength=6.0, phase=0.0)
        g90 = gabor(K, channels=1, wavelength=6.0, phase=math.pi / 2)
        g90 = g90 - (g90 * g0).sum() * g0
        self.core = nn.Conv2d(1, 4, K, bias=False)
        with torch.no_grad():
            self.core.weight[0] = g0
            self.core.weight[1] = g90 / g90.norm()
        self.others = nn.Linear(4 * (H - K + 1) * (W - K + 1), 18)
        self.readout = nn.Identity()  # the (B, 20) output layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.core(x)
        at = f[:, :2, ROW, COL]
        complex_cell = (at**2).sum(1, keepdim=True)
        simple_cell = torch.relu(at[:, :1])
        return self.readout(torch.cat([complex_cell, simple_cell, self.others(torch.relu(f).flatten(1))], 1))


@pytest.fixture(scope="module")
def readout_net():
    model = ReadoutModel().eval().requires_grad_(False)
    return dv.Network(model, mean=[0.5], std=[0.25], in_channels=1, input_size=(H, W))


def _phase(model: ReadoutModel, images: torch.Tensor) -> np.ndarray:
    """Phase of each image in the planted quadrature pair, in radians."""
    x = (images - 0.5) / 0.25
    f = model.core(x)[:, :2, ROW, COL]
    return torch.atan2(f[:, 1], f[:, 0]).numpy()


def test_readout_neuron_is_optimised_on_the_whole_grayscale_nonsquare_input(readout_net):
    res = dv.diverse(readout_net, "readout", 0, n_images=4, diversity=1.0, norm=2.0, max_iter=300, seed=0)
    assert res.images.shape == (4, 1, H, W)
    assert res.spec["image_size"] == [H, W] or res.spec["image_size"] == (H, W)
    assert float(res.ratios.min()) >= 0.9  # every image drives the planted complex cell


def test_complex_readout_neuron_diverse_set_spreads_over_phase(readout_net):
    res = dv.diverse(readout_net, "readout", 0, n_images=4, diversity=1.0, norm=2.0, max_iter=300, seed=0)
    p = np.sort(_phase(readout_net.module, res.images) % (2 * np.pi))
    gaps = np.diff(np.concatenate([p, [p[0] + 2 * np.pi]]))
    assert gaps.max() < 0.5 * 2 * np.pi  # no half of the phase circle left empty


def test_simple_readout_neuron_mei_is_its_filter_at_one_phase(readout_net):
    m = dv.mei(readout_net, "readout", 1, norm=2.0, max_iter=300, restarts=2)
    phase = _phase(readout_net.module, m.images)[0]
    assert abs(math.remainder(phase, 2 * math.pi)) < 0.2  # the planted filter's own phase (0)
    assert m.mei_activation > 0


def test_grayscale_model_has_a_natural_contrast(readout_net):
    res = dv.mei(readout_net, "readout", 0, contrast=0.5, max_iter=5, restarts=1)
    from diversevis.images.naturals import natural_patch_norm

    expected = 0.5 * natural_patch_norm((H, W), channels=1)
    assert res.spec["norm"] == pytest.approx(expected)
    assert float((res.images - 0.5).flatten(1).norm(dim=1)[0]) == pytest.approx(expected, rel=1e-4)


def test_logit_after_global_pooling_is_a_target():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
    ).eval()
    net = dv.Network(model, input_size=32)
    m = dv.mei(net, "4", 2, norm=3.0, max_iter=30, restarts=1)
    assert m.images.shape == (1, 3, 32, 32)
    grey = float(net(torch.full((1, 3, 32, 32), 0.5))[0, 2])
    assert m.mei_activation > grey  # the optimisation raised the logit
    pooled = dv.mei(net, "2", 1, norm=3.0, max_iter=5, restarts=1)  # (B, 8, 1, 1): the pooled map
    assert pooled.images.shape == (1, 3, 32, 32)


def test_a_float64_model_is_run_in_float64_with_float32_results():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 5)).double().eval()
    net = dv.Network(model, input_size=5)
    m = dv.mei(net, "0", 1, norm=1.0, max_iter=20, restarts=1)
    assert m.images.dtype == torch.float32 and torch.isfinite(m.activations).all()
    w, b = model[0].weight[1].detach().float(), float(model[0].bias[1])
    assert m.mei_activation == pytest.approx(float((m.images[0] * w).sum()) + b, rel=1e-4)  # identity norm
    assert model[0].weight.dtype == torch.float64  # the user's model keeps its dtype


def test_a_torch_compile_wrapper_is_unwrapped():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    compiled = torch.compile(model)
    net = dv.Network(compiled, input_size=8)
    assert net.module is model
    assert net.resolve("0") == "0"  # no "_orig_mod." prefix needed


def test_a_channel_mismatch_names_the_channels_and_the_fix():
    model = nn.Sequential(nn.Conv2d(1, 4, 3))
    with pytest.raises(dv.DiversevisError, match=r"takes 1-channel inputs.*in_channels=1.*--in-channels 1"):
        dv.mei(model, "0", 0, norm=1.0)


def test_a_fixed_size_model_names_its_input_size():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with pytest.raises(dv.DiversevisError, match=r"224px input.*input_size=\(H, W\)"):
        dv.mei(dv.Network(model), "2", 0, norm=1.0)
    m = dv.mei(dv.Network(model, input_size=8), "2", 0, norm=1.0, max_iter=3, restarts=1)
    assert m.images.shape == (1, 3, 8, 8)


def test_a_layer_with_a_huge_receptive_field_is_refused():
    layers = []
    for _ in range(6):
        layers += [nn.Conv2d(3, 3, 15, padding=7), nn.MaxPool2d(2)]
    net = dv.Network(nn.Sequential(*layers), input_size=256)
    with pytest.raises(dv.DiversevisError, match=r"receptive field \(more than 512px\).*earlier layer"):
        dv.mei(net, "10", 0, norm=1.0)


def test_resnet18_layout_receptive_fields_match_the_analytic_values():
    from layouts import ResNet18

    torch.manual_seed(0)
    net = dv.Network(ResNet18().eval(), input_size=224)
    expected = {"conv1": 7, "maxpool": 11, "layer1": 43, "layer2": 99, "layer3": 211, "layer4": 435}
    assert {name: net.receptive_field(name).size for name in expected} == expected
    assert net.pre_activation("layer1") == "layer1.1.bn2"  # the block output is rectified
    assert net.pre_activation("layer1.1.bn2") is None
    logits = dv.mei(net, "fc", 3, norm=5.0, max_iter=5, restarts=1)
    assert logits.images.shape == (1, 3, 224, 224)


def test_phase_test_of_readout_neurons_uses_their_effective_field(readout_net):
    cx = dv.phase_test(readout_net, "readout", 0, norm=2.0, orientations=8, frequencies=8, mei_restarts=2)
    top, left = cx.spec["window"]
    size = cx.spec["image_size"]
    h, w = (size, size) if isinstance(size, int) else size
    assert top <= ROW + K // 2 < top + h and left <= COL + K // 2 < left + w  # around the planted filter
    assert h * w < H * W / 4  # much smaller than the screen
    assert cx.label == "complex-like" and cx.f1_f0 < 0.3
    simple = dv.phase_test(readout_net, "readout", 1, norm=2.0, orientations=8, frequencies=8, mei_restarts=2)
    assert simple.label == "simple-like" and simple.f1_f0 > 1.2


def test_the_shift_test_refuses_a_readout_vector(readout_net):
    with pytest.raises(dv.DiversevisError, match="no spatial units"):
        dv.shift_test(readout_net, "readout", 0, norm=2.0, mei=1.0)


def test_rectified_simple_readout_neuron_has_no_dead_images(readout_net):
    """Neuron 1 is relu(<g, x>): half of the random starts give exactly 0; none stays dead."""
    res = dv.diverse(readout_net, "readout", 1, n_images=6, diversity=0.5, norm=2.0, max_iter=300, seed=0)
    assert "dead_images" not in res.spec and float(res.ratios.min()) > 0.8
    assert res.spec.get("dead_starts_redrawn", 0) >= 1  # some starts were dead and redrawn


def test_a_model_returning_a_dict_is_fine_for_inner_layers():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 5)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            f = self.conv(x)
            return {"features": f, "logits": self.head(f.mean((2, 3)))}

    torch.manual_seed(0)
    net = dv.Network(TwoHeads().eval(), input_size=5)
    assert dv.mei(net, "conv", 1, norm=1.0, max_iter=10, restarts=1).mei_activation > 0
    assert dv.mei(net, "head", 0, norm=1.0, max_iter=10, restarts=1).images.shape == (1, 3, 5, 5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_take_inputs_in_their_dtype(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 5)).to(dtype).eval()
    net = dv.Network(model, input_size=5)
    try:
        m = dv.mei(net, "0", 1, norm=1.0, max_iter=10, restarts=1)
    except dv.DiversevisError as exc:  # a CPU build without half convolutions says so
        pytest.skip(str(exc))
    assert m.images.dtype == torch.float32 and math.isfinite(m.mei_activation)
    assert model[0].weight.dtype == dtype
