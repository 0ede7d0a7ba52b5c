"""DFV on the real pretrained VGG-16 (offline ImageNet weights)."""

from __future__ import annotations

import json

import torch

import diversevis as dv
from diversevis.methods.dfv import Problem


def test_conv3_1_unit_21_diverse_set_stays_near_the_mei(vgg16_paper, tmp_path):
    m = dv.mei(vgg16_paper, "conv3_1", 21, seed=0)
    weak = dv.diverse(vgg16_paper, "conv3_1", 21, diversity=0.01, distance_layer="conv2_2", mei=m, seed=0)
    res = dv.diverse(
        vgg16_paper, "conv3_1", 21, n_images=6, diversity=1.0, distance_layer="conv2_2", mei=m, seed=0
    )
    assert res.images.shape == (6, 3, 24, 24)
    assert float(res.ratios.min()) >= 0.8
    # a stronger diversity weight buys a more diverse set (in conv2_2 space) at a small cost in activation
    assert res.min_distance > 2 * weak.min_distance
    assert float(res.activations.mean()) < float(weak.activations.mean())
    # the contrast is half the natural-patch norm: about 31 grey levels RMS per pixel, as in the paper
    rms = res.spec["norm"] / (3 * 24 * 24) ** 0.5 * 255
    assert 25 < rms < 38
    out = res.save(tmp_path / "u21")
    meta = json.loads((out / "result.json").read_text())
    assert meta["spec"]["model"] == "vgg16-paper" and meta["spec"]["layer"] == "conv3_1"
    assert meta["spec"]["distance_layer"] == "conv2_2" and meta["spec"]["layer_path"] == "features.10"
    assert meta["metrics"]["min_ratio"] >= 0.8


def test_truncated_forward_never_runs_layers_above_the_target(vgg16_paper):
    calls = []
    later = [vgg16_paper.layer_module(n) for n in ("conv3_2", "conv4_1", "pool5")]
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in later]
    try:
        dv.diverse(vgg16_paper, "conv3_1", 21, distance_layer="conv2_2", max_iter=3, mei=False)
    finally:
        for h in handles:
            h.remove()
    assert calls == []


def test_padded_vgg16_reads_the_unit_whose_receptive_field_is_the_image(vgg16):
    prob = Problem.build(
        vgg16,
        "conv2_1",
        7,
        None,
        "max",
        contrast=0.5,
        norm=None,
        distance_layer="conv1_2",
        images_folder=None,
    )
    p = prob.placement
    rf = vgg16.receptive_field("conv2_1")
    assert (rf.size, rf.stride) == (10, 2)
    assert p.image_size == 10 and p.misalignment == 0
    assert 0 <= p.offset and p.offset + p.image_size <= p.canvas_size
    assert rf.center(p.unit_index) == p.offset + (p.image_size - 1) / 2
    torch.manual_seed(0)
    img = 0.5 + 0.2 * torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        a, _ = prob.evaluate(img, need_features=False)
        # The same image in a larger canvas of random clutter, shifted by 4 strides: the unit 4 places
        # further along must respond exactly the same, whatever lies outside the image.
        shift = 4 * rf.stride
        for seed in (1, 2):
            big = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(seed))
            o = p.offset + shift
            big[..., o : o + 10, o : o + 10] = img
            j = p.unit_index + 4
            b = vgg16.activations(big, ["conv2_1"])["conv2_1"][:, 7, j, j]
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)
        # ... while a change inside the image does change it
        big[..., o, o] += 0.5
        c = vgg16.activations(big, ["conv2_1"])["conv2_1"][:, 7, j, j]
    assert not torch.allclose(a, c, rtol=1e-5, atol=1e-4)


def test_padded_vgg16_diverse_run_reaches_its_mei(vgg16):
    res = dv.diverse(vgg16, "conv2_1", 7, n_images=4, diversity=0.05, distance_layer="conv1_2", seed=0)
    assert res.images.shape == (4, 3, 10, 10)
    assert float(res.ratios.min()) >= 0.8


def test_channels_last_gives_the_same_activations_and_diverse_set(vgg16_paper):
    import copy

    net = copy.deepcopy(vgg16_paper)
    x = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    ref = net.activations(x, ["conv2_2", "conv3_1"])
    net.use_channels_last()
    w = net.layer_module("conv1_1").weight
    assert net.channels_last and w.is_contiguous(memory_format=torch.channels_last)
    cl = net.activations(x, ["conv2_2", "conv3_1"])
    for k in ref:
        torch.testing.assert_close(cl[k], ref[k], rtol=1e-4, atol=1e-4)
    kw = dict(n_images=3, diversity=0.5, distance_layer="conv1_2", seed=1, max_iter=60, patience=0, mei=False)
    a = dv.diverse(vgg16_paper, "conv2_1", 5, **kw)
    b = dv.diverse(net, "conv2_1", 5, **kw)
    assert torch.allclose(a.activations, b.activations, rtol=0.02)
    assert net.use_channels_last(False).channels_last is False and w.is_contiguous()
