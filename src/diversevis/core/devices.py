"""Devices: a ``device=`` argument checked against what this machine's torch has."""

from __future__ import annotations

import torch

from diversevis.core.errors import DiversevisError, EnvironmentProblem

__all__ = ["check_device"]


def check_device(device: str | torch.device | None) -> torch.device | None:
    """The :class:`torch.device` for ``device`` (``None`` stays ``None``: wherever the model is).

    Raises
    ------
    DiversevisError
        A name torch does not know (``"banana"``): a usage error.
    EnvironmentProblem
        A known device this machine does not have (``"cuda"`` without CUDA, a GPU index out of range,
        ``"mps"`` off Apple silicon), with the fix.
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DiversevisError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise EnvironmentProblem(f"{device!r}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise EnvironmentProblem(
                f"{device!r}: this machine has {torch.cuda.device_count()} CUDA device(s) (0..N-1)"
            )
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise EnvironmentProblem(f"{device!r}: MPS is not available on this machine; use --device cpu")
    return dev
