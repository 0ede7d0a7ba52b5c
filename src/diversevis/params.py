"""Image parametrisations.

The paper's parametrisation (method.md A.3-A.4): a raw variable ``V`` of shape ``(N, C, H, W)`` drawn
from N(0, 1), mapped to images with a hard L2-norm constraint

    x_i = 0.5 + precondition(rho_i * V_i / ||V_i||_2)

where ``rho_i`` is the contrast (L2 norm of the image minus mean grey, in display units) and
``precondition`` is the identity in the forward pass and whitens the gradient in the backward pass by
scaling its Fourier amplitude with ``1 / sqrt(|f|)`` (normalised to mean 1). Adam then runs on ``V``.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

__all__ = ["preconditioner_weights", "precondition", "fixed_norm", "PixelImage"]


def preconditioner_weights(
    height: int, width: int | None = None, *, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Fourier weights of the 1/sqrt(f) gradient preconditioner.

    ``t_k = min(k, n - k)``, ``w[u, v] = 1 / max(1, (t_u^2 + t_v^2)^(1/4))``, returned as ``w / mean(w)``.

    Parameters
    ----------
    height, width : int
        Image size in pixels (``width`` defaults to ``height``).

    Returns
    -------
    torch.Tensor
        ``(height, width)`` real weights, mean 1, for the unshifted ``fft2`` layout.
    """
    width = height if width is None else width

    def folded(n: int) -> torch.Tensor:
        k = torch.arange(n, device=device, dtype=dtype)
        return torch.minimum(k, n - k)

    tu, tv = folded(height), folded(width)
    w = 1.0 / torch.clamp((tu[:, None] ** 2 + tv[None, :] ** 2) ** 0.25, min=1.0)
    return w / w.mean()


@lru_cache(maxsize=64)
def _half_spectrum_weights(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # w is symmetric under v -> width - v, so the rfft2 half-spectrum needs only columns 0 .. width // 2
    return preconditioner_weights(height, width, device=device, dtype=dtype)[:, : width // 2 + 1].contiguous()


class _Precondition(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        h, w = g.shape[-2:]
        weights = _half_spectrum_weights(h, w, g.device, g.dtype)
        return torch.fft.irfft2(torch.fft.rfft2(g) * weights, s=(h, w))


def precondition(x: torch.Tensor) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient's 2-D spectrum by the 1/sqrt(f) weights.

    Parameters
    ----------
    x : torch.Tensor
        Images ``(..., H, W)``.
    """
    return _Precondition.apply(x)


def fixed_norm(v: torch.Tensor, norm: torch.Tensor | float) -> torch.Tensor:
    """Scale each image of ``v`` (``(N, ...)``) to L2 norm ``norm`` (scalar or ``(N,)``)."""
    n = v.flatten(1).norm(dim=1).clamp_min(1e-12)
    norm = torch.as_tensor(norm, dtype=v.dtype, device=v.device)
    scale = norm / n if norm.dim() == 0 else norm.reshape(-1) / n
    return v * scale.view(-1, *([1] * (v.dim() - 1)))


class PixelImage(nn.Module):
    """Norm-constrained pixel images with a preconditioned gradient (the paper's parametrisation).

    Parameters
    ----------
    n : int
        Number of images.
    channels, size : int
        Channels and side of each image (the receptive-field size of the target unit).
    norm : float or torch.Tensor
        L2 norm of each image minus mean grey, in display units (scalar or ``(n,)``).
    precondition : bool
        Apply the 1/sqrt(f) gradient whitening.
    generator : torch.Generator, optional
        Source of the N(0, 1) initialisation (for reproducibility).

    Calling the module returns the display-space images ``(n, channels, size, size)`` around grey 0.5.
    """

    def __init__(
        self,
        n: int,
        channels: int,
        size: int,
        norm: float | torch.Tensor,
        *,
        precondition: bool = True,
        generator: torch.Generator | None = None,
        device=None,
    ) -> None:
        super().__init__()
        raw = torch.randn(n, channels, size, size, generator=generator)
        self.raw = nn.Parameter(raw.to(device))
        self.register_buffer("norm", torch.as_tensor(norm, dtype=torch.float32, device=device))
        self.use_precondition = precondition

    def forward(self) -> torch.Tensor:
        x = fixed_norm(self.raw, self.norm)
        if self.use_precondition:
            x = precondition(x)
        return 0.5 + x
