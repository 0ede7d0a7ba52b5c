"""The model zoo: specs, VGG aliases, Gatys normalisation, ``file:`` and ``torchvision:`` models.

Gatys normalisation (method.md A.2) rescales every conv channel so that its mean post-ReLU activation over
natural images is 1, compensating in the next layer's input weights; since ReLU and max pooling are
positively homogeneous, every layer's output is then the original output divided by a positive scale per
channel. Those two closed forms are what the tests check.
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

from diversevis import DiversevisError, ModelNotFoundError, Network, list_models, load_model
from diversevis.models.vgg16_onnx import CAFFE_MEAN_RGB, VGG16_CFG, build_vgg_features
from diversevis.models.zoo import _natural_inputs, gatys_normalize, vgg_aliases


def channel_scale(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Least-squares ``c`` per channel (dim 1) with ``y ~ c * x``."""
    dims = [d for d in range(x.dim()) if d != 1]
    return (x * y).sum(dims) / (x * x).sum(dims).clamp_min(1e-30)


def max_relative_residual(x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest per-channel ``||y - c x|| / ||y||`` for the best per-channel ``c``."""
    c = channel_scale(x, y)
    shape = [1, -1] + [1] * (x.dim() - 2)
    dims = [d for d in range(x.dim()) if d != 1]
    res = (y - c.view(shape) * x).pow(2).sum(dims).sqrt() / y.pow(2).sum(dims).sqrt().clamp_min(1e-30)
    return float(res.max())


def post_relu_channel_means(outs: list[torch.Tensor]) -> torch.Tensor:
    """Mean of ``relu(out)`` per channel over all images and positions (pooled as Gatys does)."""
    total = sum(torch.relu(o).sum(dim=(0, 2, 3)) for o in outs)
    count = sum(o.shape[0] * o.shape[2] * o.shape[3] for o in outs)
    return total / count


# ------------------------------------------------------------------------------ specs
def test_list_models_names_the_offline_specs():
    models = list_models()
    for spec in ("vgg16", "vgg16-paper", "cell:simple", "cell:complex", "cell:texture"):
        assert spec in models and models[spec]
    models.clear()  # a copy: the zoo's table is untouched
    assert "vgg16-paper" in list_models()


@pytest.mark.parametrize("kind", ["simple", "complex", "texture"])
def test_load_model_builds_each_synthetic_cell(kind):
    net = load_model(f"cell:{kind}", device="cpu")
    assert isinstance(net, Network)
    assert net.name == f"{kind}-cell" and net.in_channels == 3 and net.input_size == 16
    assert net.output_shape("response", 16) == (1, 1, 1)
    torch.testing.assert_close(net.normalize(torch.full((1, 3, 2, 2), 0.5)), torch.zeros(1, 3, 2, 2))


def test_unknown_model_suggests_the_close_match():
    with pytest.raises(ModelNotFoundError) as exc:
        load_model("vgg16paper")
    msg = str(exc.value)
    assert "unknown model 'vgg16paper'" in msg
    assert "vgg16-paper" in msg.split("Did you mean: ", 1)[1].split("?", 1)[0].split(", ")


def test_unknown_cell_lists_the_cells():
    with pytest.raises(ModelNotFoundError, match="choose one of simple, complex, texture"):
        load_model("cell:hypercomplex")


@pytest.mark.parametrize("spec", ["", None, 16])
def test_empty_or_non_string_spec_is_rejected(spec):
    with pytest.raises(ModelNotFoundError, match="non-empty string"):
        load_model(spec)


# ---------------------------------------------------------------------------- aliases
def test_vgg16_aliases_follow_torchvision_indices():
    a = vgg_aliases(VGG16_CFG)
    expected = {"conv1_1": "features.0", "relu1_1": "features.1", "conv1_2": "features.2"}
    expected |= {"pool1": "features.4", "conv2_1": "features.5", "conv2_2": "features.7"}
    expected |= {"pool2": "features.9", "conv3_1": "features.10", "relu3_1": "features.11"}
    expected |= {"conv4_1": "features.17", "conv5_3": "features.28", "pool5": "features.30"}
    assert {k: a[k] for k in expected} == expected
    assert len(a) == 13 + 13 + 5
    assert sorted(a.values(), key=lambda p: int(p.split(".")[1])) == [f"features.{i}" for i in range(31)]


def test_vgg16_aliases_point_at_the_right_module_types():
    feats = build_vgg_features(VGG16_CFG, padding=0)
    for alias, path in vgg_aliases(VGG16_CFG).items():
        module = feats[int(path.split(".")[1])]
        kind = {"conv": nn.Conv2d, "relu": nn.ReLU, "pool": nn.MaxPool2d}[alias[:4]]
        assert isinstance(module, kind), alias


# --------------------------------------------------------------- Gatys normalisation
def tiny_features(dead_channel: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3), nn.ReLU()
    ).requires_grad_(False)
    with torch.no_grad():
        seq[0].bias.add_(0.3)  # keep the units alive on random inputs
        seq[3].bias.add_(0.3)
        if dead_channel:
            seq[0].bias[0] = -100.0
    return seq


def tiny_images() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(1, 3, h, w, generator=gen) for h, w in ((12, 12), (10, 16), (14, 11))]


def conv_outputs(seq: nn.Sequential, images: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Pre-ReLU outputs of every conv of ``seq`` for each image."""
    per_conv: list[list[torch.Tensor]] = [[] for m in seq if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for x in images:
            k = 0
            for m in seq:
                x = m(x)
                if isinstance(m, nn.Conv2d):
                    per_conv[k].append(x)
                    k += 1
    return per_conv


def test_gatys_normalize_makes_every_channel_mean_one():
    seq, images = tiny_features(), tiny_images()
    before = conv_outputs(seq, images)
    means = gatys_normalize(seq, images)
    after = conv_outputs(seq, images)
    for outs in after:
        m = post_relu_channel_means(outs)
        live = m > 0
        assert int(live.sum()) >= len(m) - 1
        torch.testing.assert_close(m[live], torch.ones(int(live.sum())), atol=1e-4, rtol=0)
    assert bool((post_relu_channel_means(after[0]) > 0).all())  # no unit of the first layer is dead
    assert len(means) == 2
    assert means[0] == pytest.approx(float(post_relu_channel_means(before[0]).mean()), rel=1e-5)


def test_gatys_normalize_leaves_dead_channels_alone():
    seq = tiny_features(dead_channel=True)
    w0, b0 = seq[0].weight[0].clone(), seq[0].bias[0].clone()
    gatys_normalize(seq, tiny_images())
    assert torch.equal(seq[0].weight[0], w0) and torch.equal(seq[0].bias[0], b0)
    m = post_relu_channel_means(conv_outputs(seq, tiny_images())[0])
    assert m[0] == 0 and torch.allclose(m[1:], torch.ones(3), atol=1e-4)


def test_gatys_normalize_scales_the_first_layer_per_channel():
    seq, images = tiny_features(), tiny_images()
    orig = copy.deepcopy(seq)
    gatys_normalize(seq, images)
    s = post_relu_channel_means(conv_outputs(orig, images)[0])
    torch.testing.assert_close(seq[0].weight, orig[0].weight / s.view(-1, 1, 1, 1))
    torch.testing.assert_close(seq[0].bias, orig[0].bias / s)


def test_gatys_normalize_preserves_the_function_up_to_a_positive_scale_per_channel():
    seq, images = tiny_features(), tiny_images()
    orig = copy.deepcopy(seq)
    gatys_normalize(seq, images)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        new, old = seq(x), orig(x)
    assert (channel_scale(new, old) > 0).all()
    assert max_relative_residual(new, old) < 1e-4


# ------------------------------------------------------------------- the real VGG-16
def test_vgg16_and_vgg16_paper_share_input_space_and_aliases(vgg16_paper, vgg16):
    for net in (vgg16_paper, vgg16):
        torch.testing.assert_close(net.mean.flatten(), torch.tensor(CAFFE_MEAN_RGB) / 255.0)
        torch.testing.assert_close(net.std.flatten(), torch.full((3,), 1 / 255.0))
        assert net.aliases == vgg_aliases(VGG16_CFG)
    assert (vgg16_paper.name, vgg16.name) == ("vgg16-paper", "vgg16")
    assert vgg16_paper.layer_module("conv1_1").padding == (0, 0)
    assert vgg16.layer_module("conv1_1").padding == (1, 1)


def test_vgg16_paper_conv3_1_channels_have_mean_activation_one_on_the_natural_images(vgg16_paper):
    outs = []
    with torch.no_grad():
        for x in _natural_inputs(None):
            outs.append(vgg16_paper.activations(x, ["conv3_1"], normalize=False)["conv3_1"])
    m = post_relu_channel_means(outs)
    live = m > 0
    assert int(live.sum()) > 200  # not vacuous: almost every unit responds to natural images
    torch.testing.assert_close(m[live], torch.ones(int(live.sum())), atol=1e-3, rtol=0)


def test_vgg16_and_vgg16_paper_conv1_1_differ_by_padding_and_channel_scale(vgg16_paper, vgg16):
    w_paper = vgg16_paper.layer_module("conv1_1").weight
    w_vgg = vgg16.layer_module("conv1_1").weight
    s = (w_paper * w_vgg).sum((1, 2, 3)) / (w_paper * w_paper).sum((1, 2, 3))
    assert (s > 0).all()
    torch.testing.assert_close(w_vgg, w_paper * s.view(-1, 1, 1, 1), rtol=1e-5, atol=1e-6)
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        valid = vgg16_paper.activations(x, ["conv1_1"])["conv1_1"]
        padded = vgg16.activations(x, ["conv1_1"])["conv1_1"]
    assert valid.shape == (1, 64, 22, 22) and padded.shape == (1, 64, 24, 24)
    torch.testing.assert_close(valid, padded[:, :, 1:-1, 1:-1] / s.view(1, -1, 1, 1), rtol=1e-4, atol=1e-3)


def test_vgg16_and_vgg16_paper_conv1_2_differ_by_padding_and_channel_scale(vgg16_paper, vgg16):
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        valid = vgg16_paper.activations(x, ["conv1_2"])["conv1_2"]
        padded = vgg16.activations(x, ["conv1_2"])["conv1_2"][:, :, 2:-2, 2:-2]
    assert valid.shape == padded.shape == (1, 64, 20, 20)
    assert (channel_scale(valid, padded) > 0).all()
    assert max_relative_residual(valid, padded) < 1e-4


# ------------------------------------------------------------------------ file: specs
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script/load are deprecated
def test_torchscript_file_is_refused_with_a_clear_message(tmp_path):
    # TorchScript submodules cannot carry forward hooks, so no layer could be read: say so up front
    module = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(inplace=True), nn.Conv2d(2, 1, 3))
    path = tmp_path / "tiny.pt"
    torch.jit.script(module).save(str(path))
    with pytest.raises(DiversevisError, match="TorchScript"):
        load_model(f"file:{path}")
    with pytest.raises(DiversevisError, match="TorchScript"):
        Network(torch.jit.script(module))


def test_pickled_module_needs_allow_pickle(tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Conv2d(2, 1, 3))
    path = tmp_path / "pickled.pt"
    torch.save(module, path)
    with pytest.raises(DiversevisError, match="allow_pickle=True") as exc:
        load_model(f"file:{path}")
    assert "--allow-pickle" in str(exc.value)
    net = load_model(f"file:{path}", allow_pickle=True)
    assert isinstance(net, Network) and net.name == "file:pickled.pt"
    x = torch.rand(1, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(net(x), module(x))  # identity normalisation


def test_state_dict_file_is_explained(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(nn.Conv2d(3, 2, 3).state_dict(), path)
    with pytest.raises(DiversevisError, match="holds a state_dict"):
        load_model(f"file:{path}")


def test_file_holding_something_else_is_rejected(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(DiversevisError, match="holds a list, not a model"):
        load_model(f"file:{path}")


def test_missing_model_file_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(f"file:{tmp_path / 'nope.pt'}")


def test_unreadable_model_file_is_a_user_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"hello world")  # neither a zip archive nor a pickle
    with pytest.raises(DiversevisError, match="is not a PyTorch checkpoint"):
        load_model(f"file:{path}")


def test_corrupt_model_file_is_not_reported_as_a_pickle(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"\x80\x02not a torch file at all")  # a pickle header, then garbage
    with pytest.raises(DiversevisError, match="cannot read model file") as exc:
        load_model(f"file:{path}")
    assert "pickled Python objects" not in str(exc.value)


# ----------------------------------------------------------------- torchvision: specs
def test_torchvision_spec_without_torchvision_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    with pytest.raises(ModelNotFoundError) as exc:
        load_model("torchvision:vgg19")
    msg = str(exc.value)
    assert "torchvision:vgg19 needs torchvision" in msg
    assert "pip install 'diversevis[torchvision]'" in msg
