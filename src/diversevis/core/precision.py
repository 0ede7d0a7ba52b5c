"""Numerical precision of the optimisation loop: fp32 (default), TF32 matmuls/convs, bf16 autocast.

The image, its parametrisation, Adam and all bookkeeping stay in float32 in every mode; only the
network's forward pass (and with it the gradient it sends back) runs in reduced precision. TF32 exists
on NVIDIA GPUs from Ampere on; elsewhere it is the same as fp32. bf16 autocast works on CPUs and GPUs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from diversevis.core.errors import DiversevisError, did_you_mean

__all__ = ["PRECISIONS", "check_precision", "precision_context"]

#: The precisions every optimisation accepts.
PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise a clear error."""
    if precision not in PRECISIONS:
        raise DiversevisError(
            f"unknown precision {precision!r}.{did_you_mean(str(precision), PRECISIONS)} "
            f"Choose from {', '.join(PRECISIONS)}"
        )
    return precision


@contextlib.contextmanager
def precision_context(device: torch.device | str, precision: str = "fp32") -> Iterator[None]:
    """Run the enclosed forward pass at ``precision`` on ``device``.

    Parameters
    ----------
    device : torch.device or str
        Where the network runs.
    precision : {"fp32", "tf32", "bf16"}
        ``fp32``: nothing changes. ``tf32``: CUDA matmuls and cuDNN convolutions may use TF32 (10-bit
        mantissa inputs, fp32 accumulation) inside the block; the global flags are restored after it.
        ``bf16``: ``torch.autocast`` to bfloat16 (convolutions and matmuls in bf16, reductions in fp32).
    """
    check_precision(precision)
    device = torch.device(device)
    if precision == "fp32":
        yield
    elif precision == "tf32":
        if device.type != "cuda":
            yield
            return
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    else:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
