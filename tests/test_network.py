"""``Network``: names, truncated forward, hooks, normalisation, layer table and placement.

Synthetic modules with known answers wherever the real model does not matter; the real VGG-16
(``vgg16_paper``: VALID, ``vgg16``: padded) for the layer table and the placement of conv3_1.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diversevis import DiversevisError, LayerNotFoundError, Network, as_network
from diversevis.core.errors import EnvironmentProblem
from diversevis.models.vgg16_onnx import build_vgg_features
from diversevis.models.zoo import VGGFeatures, vgg_aliases

SMALL_CFG = [4, 4, "M", 8, 8, "M", 8, 8, 8, "M"]  # VGG-16's first three blocks, narrow


class Boom(nn.Module):
    """A layer that must never run."""

    def forward(self, x):
        raise AssertionError("a layer after the requested ones was called")


class Counter(nn.Module):
    """Identity that counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def small_vgg(padding: int = 0) -> Network:
    torch.manual_seed(0)
    return Network(
        VGGFeatures(build_vgg_features(SMALL_CFG, padding=padding)),
        aliases=vgg_aliases(SMALL_CFG),
        name="small-vgg",
        input_size=32,
    )


def all_hooks(module: nn.Module) -> list:
    return [h for m in module.modules() for h in m._forward_hooks.values()]


# ----------------------------------------------------------------------------- names
def test_resolve_accepts_aliases_and_dot_paths():
    net = small_vgg()
    assert net.resolve("conv3_1") == "features.10"
    assert net.resolve("pool1") == "features.4"
    assert net.resolve("features.10") == "features.10"
    assert net.display_name("features.10") == "conv3_1"
    assert net.display_name("conv3_1") == "conv3_1"
    assert net.layer_module("conv3_1") is net.module.features[10]


def test_resolve_finds_nested_dot_paths_without_aliases():
    net = Network(nn.Sequential(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()), nn.Conv2d(2, 1, 1)))
    assert net.resolve("0.1") == "0.1"
    assert net.display_name("0.1") == "0.1"
    assert isinstance(net.layer_module("0.1"), nn.ReLU)


def test_unknown_layer_error_suggests_close_matches():
    net = small_vgg()
    with pytest.raises(LayerNotFoundError) as exc:
        net.resolve("conv3_l")
    msg = str(exc.value)
    assert msg.startswith("unknown layer 'conv3_l'")  # plain message, not KeyError's repr
    suggested = msg.split("Did you mean: ", 1)[1].split("?", 1)[0].split(", ")
    assert "conv3_1" in suggested
    assert isinstance(exc.value, KeyError) and isinstance(exc.value, DiversevisError)


def test_non_string_layer_is_a_layer_error():
    with pytest.raises(LayerNotFoundError, match="strings"):
        small_vgg().resolve(3)


def test_alias_to_a_missing_module_is_rejected():
    with pytest.raises(DiversevisError, match="not a module"):
        Network(nn.Sequential(nn.Conv2d(3, 1, 3)), aliases={"conv9_9": "7"})


# --------------------------------------------------------------------------- forward
def test_truncated_forward_never_calls_later_layers():
    seq = nn.Sequential(nn.Conv2d(3, 2, 3), Counter(), nn.ReLU(), Boom(), Boom())
    net = Network(seq)
    out = net.activations(torch.rand(2, 3, 8, 8), ["1", "0"])
    assert list(out) == ["1", "0"]  # exactly the requested layers, in the order asked
    assert out["0"].shape == (2, 2, 6, 6)
    assert seq[1].calls == 1


def test_truncated_forward_stops_after_the_deepest_requested_layer():
    seq = nn.Sequential(nn.Conv2d(3, 2, 3), Counter(), Counter(), Counter())
    net = Network(seq)
    net.activations(torch.rand(1, 3, 8, 8), ["2"])
    assert [seq[i].calls for i in (1, 2, 3)] == [1, 1, 0]


def test_alias_and_path_of_one_layer_both_come_back():
    net = small_vgg()
    out = net.activations(torch.rand(1, 3, 32, 32), ["conv1_2", "features.2"])
    assert list(out) == ["conv1_2", "features.2"]
    assert out["conv1_2"] is out["features.2"]


def test_hooks_are_removed_after_a_normal_call():
    net = small_vgg()
    net.activations(torch.rand(1, 3, 32, 32), ["conv1_1", "conv2_2"])
    assert all_hooks(net) == []


def test_hooks_are_removed_when_the_forward_raises():
    class Fails(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    seq = nn.Sequential(nn.Conv2d(3, 2, 3), Fails(), nn.ReLU())
    net = Network(seq)
    with pytest.raises(RuntimeError, match="boom"):
        net.activations(torch.rand(1, 3, 8, 8), ["0", "2"])
    assert all_hooks(net) == []


def test_hooks_are_removed_when_a_layer_is_not_reached():
    class SkipsLast(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(3, 1, 1)
            self.unused = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.used(x)

    net = Network(SkipsLast())
    with pytest.raises(DiversevisError, match="not reached"):
        net.activations(torch.rand(1, 3, 4, 4), ["used", "unused"])
    assert all_hooks(net) == []


def test_hooks_are_removed_when_the_input_is_too_small():
    net = small_vgg()
    assert net.output_shape("conv3_1", 8) == ()  # the conv raises inside the forward
    assert all_hooks(net) == []


def test_a_layer_without_output_names_the_models_own_reason():
    net = Network(small_vgg().module, aliases=vgg_aliases(SMALL_CFG), input_size=8)
    with pytest.raises(
        DiversevisError, match=r"no output for a 3-channel 8px input \(the model raised: .*size"
    ):
        net.channels("conv3_1")


def test_running_out_of_memory_is_an_environment_problem_not_a_too_small_input():
    class Oom(nn.Module):
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20 GiB")

    net = Network(nn.Sequential(nn.Conv2d(3, 2, 3), Oom()))
    with pytest.raises(EnvironmentProblem, match="out of memory.*smaller"):
        net.output_shape("1", 16)


def test_inplace_relus_are_off_during_a_forward_only_and_captures_are_pre_relu():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    seq = nn.Sequential(conv, nn.ReLU(inplace=True), nn.Conv2d(4, 1, 1))
    net = Network(seq)
    assert seq[1].inplace is True  # the user's flag is left alone
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    out = net.activations(x, ["0", "1"], normalize=False)
    assert seq[1].inplace is True
    assert (out["0"] < 0).any()  # the later ReLU did not overwrite the captured conv output
    torch.testing.assert_close(out["0"], conv(x), rtol=0, atol=0)
    torch.testing.assert_close(out["1"], torch.relu(conv(x)), rtol=0, atol=0)


def test_network_runs_the_module_in_eval_mode_with_frozen_weights_and_restores_it():
    seq = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Dropout(0.5))
    seq.train()
    net = Network(seq)
    seen = []
    seq[1].register_forward_hook(lambda m, i, o: seen.append((m.training, seq[0].weight.requires_grad)))
    x = torch.rand(4, 3, 6, 6, requires_grad=True)
    out = net(x)
    assert seen == [(False, False)]  # eval mode and frozen weights inside the forward
    assert seq.training and seq[1].training and all(p.requires_grad for p in seq.parameters())
    out.sum().backward()  # the graph built inside treats the weights as constants
    assert x.grad is not None and seq[0].weight.grad is None
    torch.testing.assert_close(net(x), net(x))  # no dropout noise


# --------------------------------------------------------------------- normalisation
def test_normalize_is_x_minus_mean_over_std():
    mean, std = [0.1, 0.5, 0.9], [0.5, 0.25, 2.0]
    net = Network(nn.Sequential(nn.Identity()), mean=mean, std=std)
    x = torch.rand(2, 3, 4, 5)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(net.normalize(x), expected)
    torch.testing.assert_close(net(x), expected)  # the module sees the normalised image
    torch.testing.assert_close(net.activations(x, ["0"])["0"], expected)
    torch.testing.assert_close(net.activations(x, ["0"], normalize=False)["0"], x)


def test_default_normalisation_is_the_identity():
    net = Network(nn.Sequential(nn.Identity()))
    x = torch.rand(1, 3, 2, 2)
    assert torch.equal(net.normalize(x), x)


@pytest.mark.parametrize("module", ["conv", None, torch.zeros(3)])
def test_network_rejects_non_modules(module):
    with pytest.raises(DiversevisError, match="nn.Module"):
        Network(module)


@pytest.mark.parametrize(
    "kw",
    [
        {"mean": [0.5, 0.5]},
        {"std": [1.0]},
        {"mean": [0.5] * 4, "std": [1.0] * 4},
        {"mean": [0.5], "std": [1.0, 1.0], "in_channels": 1},
    ],
)
def test_network_rejects_mean_and_std_of_the_wrong_length(kw):
    with pytest.raises(DiversevisError, match="one per input channel"):
        Network(nn.Identity(), **kw)


@pytest.mark.parametrize("std", [[1.0, 0.0, 1.0], [1.0, -1.0, 1.0]])
def test_network_rejects_non_positive_std(std):
    with pytest.raises(DiversevisError, match="positive"):
        Network(nn.Identity(), std=std)


def test_as_network_accepts_a_plain_module():
    seq = nn.Sequential(nn.Conv2d(3, 2, 3))
    net = as_network(seq)
    assert isinstance(net, Network) and net.module is seq
    assert net.mean.flatten().tolist() == [0.0, 0.0, 0.0]
    assert net.std.flatten().tolist() == [1.0, 1.0, 1.0]
    assert as_network(net) is net


def test_as_network_rejects_other_objects():
    with pytest.raises(DiversevisError, match="expected a Network"):
        as_network(42)


# ------------------------------------------------------------------ shapes and table
def test_output_shape_of_a_valid_conv_and_empty_when_too_small():
    net = Network(nn.Sequential(nn.Conv2d(3, 5, 5), nn.MaxPool2d(2)))
    assert net.output_shape("0", 9) == (5, 5, 5)
    assert net.output_shape("1", (9, 12)) == (5, 2, 4)
    assert net.output_shape("0", 4) == ()
    assert net.channels("0") == 5


def test_channels_of_a_layer_without_output_is_a_user_error():
    net = Network(nn.Sequential(nn.Conv2d(3, 5, 5)), input_size=3)
    with pytest.raises(DiversevisError, match="no output"):
        net.channels("0")


def test_vgg16_paper_output_shape_is_empty_below_the_receptive_field(vgg16_paper):
    assert vgg16_paper.output_shape("conv3_1", 24) == (256, 1, 1)
    assert vgg16_paper.output_shape("conv3_1", 23) == ()


VGG16_PAPER_ROWS = {  # alias: (path, type, shape at 224 px, RF, stride)
    "conv1_1": ("features.0", "Conv2d", (64, 222, 222), 3, 1),
    "relu1_1": ("features.1", "ReLU", (64, 222, 222), 3, 1),
    "conv1_2": ("features.2", "Conv2d", (64, 220, 220), 5, 1),
    "pool1": ("features.4", "MaxPool2d", (64, 110, 110), 6, 2),
    "conv2_1": ("features.5", "Conv2d", (128, 108, 108), 10, 2),
    "conv2_2": ("features.7", "Conv2d", (128, 106, 106), 14, 2),
    "pool2": ("features.9", "MaxPool2d", (128, 53, 53), 16, 4),
    "conv3_1": ("features.10", "Conv2d", (256, 51, 51), 24, 4),
    "conv3_2": ("features.12", "Conv2d", (256, 49, 49), 32, 4),
    "conv3_3": ("features.14", "Conv2d", (256, 47, 47), 40, 4),
    "pool3": ("features.16", "MaxPool2d", (256, 23, 23), 44, 8),
    "conv4_1": ("features.17", "Conv2d", (512, 21, 21), 60, 8),
}


def test_list_layers_of_vgg16_paper(vgg16_paper):
    rows = vgg16_paper.list_layers()
    by_alias = {r.alias: r for r in rows}
    for alias, (path, typ, shape, rf, stride) in VGG16_PAPER_ROWS.items():
        r = by_alias[alias]
        assert (r.name, r.type, r.shape, r.rf, r.stride) == (path, typ, shape, rf, stride), alias
    names = [r.name for r in rows if r.name.startswith("features.")]
    assert names == [f"features.{i}" for i in range(31)]  # execution order


def test_list_layers_at_another_input_size():
    net = small_vgg()
    rows = {r.alias: r for r in net.list_layers(48)}
    assert rows["conv3_1"].shape == (8, 7, 7)
    assert rows["conv3_1"].rf == 24


def test_list_layers_for_a_small_input_lists_the_layers_that_fit():
    net = small_vgg()
    rows = {r.alias: r for r in net.list_layers(24)}  # conv3_1 is 1x1, conv3_2 does not fit
    assert rows["conv3_1"].shape == (8, 1, 1)
    assert rows["conv3_1"].rf == 24


# ------------------------------------------------------------------------- placement
def test_vgg16_paper_conv3_1_image_is_the_whole_canvas(vgg16_paper):
    p = vgg16_paper.placement("conv3_1")
    assert (p.image_size, p.canvas_size, p.offset, p.unit_index, p.misalignment) == (24, 24, 0, 0, 0.0)


def test_padded_vgg16_conv3_1_unit_is_centred_on_the_image(vgg16):
    p = vgg16.placement("conv3_1")
    rf = vgg16.receptive_field("conv3_1")
    assert p.image_size == 24 == rf.size
    assert p.misalignment == 0.0
    assert rf.center(p.unit_index) == p.offset + (p.image_size - 1) / 2
    assert p.offset >= 0 and p.offset + p.image_size <= p.canvas_size
    assert vgg16.output_shape("conv3_1", p.canvas_size)[1] > p.unit_index


def test_padded_vgg16_conv3_1_unit_reads_only_the_image(vgg16):
    """Changing the grey margin around the image leaves the chosen unit untouched; the image does not."""
    p = vgg16.placement("conv3_1")
    a, r, s, i = p.offset, p.image_size, p.canvas_size, p.unit_index
    gen = torch.Generator().manual_seed(0)
    canvas = torch.full((1, 3, s, s), 0.5)
    canvas[:, :, a : a + r, a : a + r] = torch.rand(1, 3, r, r, generator=gen)
    noisy = torch.rand(1, 3, s, s, generator=gen)
    noisy[:, :, a : a + r, a : a + r] = canvas[:, :, a : a + r, a : a + r]
    corner = canvas.clone()
    corner[:, :, a, a] += 0.5
    with torch.no_grad():
        unit = [vgg16.activations(c, ["conv3_1"])["conv3_1"][0, :, i, i] for c in (canvas, noisy, corner)]
    torch.testing.assert_close(unit[1], unit[0], rtol=1e-5, atol=1e-4)
    assert (unit[2] - unit[0]).abs().max() > 1e-2  # the image's corner pixel is inside the RF
