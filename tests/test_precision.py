"""Reduced-precision forward passes: the same answers as fp32, and nothing leaks out of the block."""

from __future__ import annotations

import math

import pytest
import torch

import diversevis as dv
from diversevis.core.optimize import optimize
from diversevis.core.precision import check_precision, precision_context
from diversevis.models.synthetic import cell_network


def test_unknown_precisions_are_refused_with_the_choices():
    assert check_precision("bf16") == "bf16"
    with pytest.raises(dv.DiversevisError, match=r"'fp16'.*fp32, tf32, bf16"):
        check_precision("fp16")
    with pytest.raises(dv.DiversevisError, match="bf16"):
        dv.mei(cell_network("simple", size=8), "response", 0, precision="bfloat16", max_iter=2)


def test_tf32_flags_are_set_inside_the_block_and_restored_after():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with precision_context("cuda", "tf32"):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        with precision_context("cpu", "tf32"):  # no TF32 on CPUs: nothing changes
            assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_bf16_runs_the_convolution_in_bf16_but_the_loop_stays_fp32():
    conv = torch.nn.Conv2d(3, 1, 3)
    x = torch.nn.Parameter(torch.randn(2, 3, 8, 8))
    seen = []

    def loss_fn(images):
        y = conv(images)
        seen.append(y.dtype)
        return -y.mean()

    class P(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.x = x

        def forward(self):
            return self.x

    res = optimize(P(), loss_fn, max_iter=3, patience=0, precision="bf16")
    assert seen == [torch.bfloat16] * 3
    assert res.images.dtype == torch.float32 and x.dtype == torch.float32
    assert math.isfinite(res.best_loss)


def test_bf16_finds_the_same_complex_cell_set():
    """bf16 rounds the forward pass to 8 mantissa bits; the diverse set must not change materially."""
    net = cell_network("complex", size=16)
    kw = dict(n_images=6, diversity=1.0, norm=1.0, seed=0)
    ref = dv.diverse(net, "response", 0, **kw)
    low = dv.diverse(net, "response", 0, precision="bf16", **kw)
    assert low.spec["precision"] == "bf16" and ref.spec["precision"] == "fp32"
    assert float(low.ratios.min()) >= 0.95  # still every image at the maximum (measured in fp32)
    assert low.min_distance == pytest.approx(ref.min_distance, rel=0.1)


def _record_forward_state(net: torch.nn.Module) -> tuple[list[tuple[bool, bool, bool, torch.dtype]], object]:
    """Record (matmul TF32 flag, cuDNN TF32 flag, autocast on, output dtype) at every call of the first conv."""
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    seen: list[tuple[bool, bool, bool, torch.dtype]] = []

    def hook(module, inputs, output):
        seen.append(
            (
                torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32,
                torch.is_autocast_enabled(output.device.type),
                output.dtype,
            )
        )

    return seen, conv.register_forward_hook(hook)


@pytest.fixture()
def tf32_flags_off():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_tf32_on_cpu_is_recorded_and_is_exactly_fp32(tf32_flags_off):
    """precision.py: TF32 exists only on CUDA; elsewhere it is the same as fp32. On a CPU a tf32 run is
    recorded as tf32, sets no global flag, runs no autocast, and gives bit-for-bit the fp32 answer."""
    net = cell_network("complex", size=16)
    kw = dict(n_images=4, diversity=1.0, norm=1.0, seed=0, max_iter=60, mei_restarts=1, device="cpu")
    ref = dv.diverse(net, "response", 0, **kw)
    seen, handle = _record_forward_state(net)
    try:
        tf = dv.diverse(net, "response", 0, precision="tf32", **kw)
    finally:
        handle.remove()
    assert tf.spec["precision"] == "tf32" and ref.spec["precision"] == "fp32"
    assert seen and set(seen) == {(False, False, False, torch.float32)}
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.equal(tf.images, ref.images)
    assert torch.equal(tf.activations, ref.activations)
    assert tf.min_distance == ref.min_distance


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="TF32 flags act on CUDA only (the CPU case is tested above)"
)
def test_tf32_on_cuda_sets_the_flags_during_the_forward_pass_and_restores_them(tf32_flags_off):
    net = cell_network("complex", size=16)
    seen, handle = _record_forward_state(net)
    try:
        res = dv.diverse(
            net,
            "response",
            0,
            n_images=4,
            diversity=1.0,
            norm=1.0,
            seed=0,
            max_iter=20,
            mei_restarts=1,
            precision="tf32",
            device="cuda",
        )
    finally:
        handle.remove()
    assert res.spec["precision"] == "tf32"
    assert seen and all(matmul and cudnn for matmul, cudnn, _, _ in seen)  # on inside the optimisation
    assert {(a, dt) for _, _, a, dt in seen} == {(False, torch.float32)}  # and no autocast
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32  # restored
