"""Reduced-precision forward passes: the same answers as fp32, and nothing leaks out of the block."""

from __future__ import annotations

import math

import pytest
import torch

import diversevis as dv
from diversevis.core.optimize import optimize
from diversevis.core.precision import PRECISIONS, check_precision, precision_context
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


@pytest.mark.parametrize("precision", [p for p in PRECISIONS if p != "fp32"])
def test_reduced_precision_finds_the_same_complex_cell_set(precision):
    """bf16 rounds the forward pass to 8 mantissa bits; the diverse set must not change materially."""
    net = cell_network("complex", size=16)
    kw = dict(n_images=6, diversity=1.0, norm=1.0, seed=0)
    ref = dv.diverse(net, "response", 0, **kw)
    low = dv.diverse(net, "response", 0, precision=precision, **kw)
    assert low.spec["precision"] == precision and ref.spec["precision"] == "fp32"
    assert float(low.ratios.min()) >= 0.95  # still every image at the maximum (measured in fp32)
    assert low.min_distance == pytest.approx(ref.min_distance, rel=0.1)
