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

__all__ = ["preconditioner_weights", "precondition", "fixed_norm", "image_hw", "PixelImage"]


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


def image_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of an image given by its side or by ``(height, width)``."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


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
    channels : int
        Channels of each image.
    size : int or (int, int)
        Side (the receptive-field size of the target unit) or ``(height, width)`` of each image.
    norm : float or torch.Tensor
        L2 norm of each image minus mean grey, in display units (scalar or ``(n,)``).
    precondition : bool
        Apply the 1/sqrt(f) gradient whitening.
    generator : torch.Generator, optional
        Source of the N(0, 1) initialisation (for reproducibility).
    clip : bool
        Clip the images to the display range ``[0, 1]`` after the norm step (straight-through gradient),
        so that the network sees what a saved PNG shows; the norm is then an upper bound.

    Calling the module returns the display-space images ``(n, channels, height, width)`` around grey 0.5.
    """

    def __init__(
        self,
        n: int,
        channels: int,
        size: int | tuple[int, int],
        norm: float | torch.Tensor,
        *,
        precondition: bool = True,
        generator: torch.Generator | None = None,
        device=None,
        clip: bool = False,
    ) -> None:
        super().__init__()
        self.clip = clip
        raw = torch.randn(n, channels, *image_hw(size), generator=generator)
        self.raw = nn.Parameter(raw.to(device))
        self.register_buffer("norm", torch.as_tensor(norm, dtype=torch.float32, device=device))
        self.use_precondition = precondition

    def forward(self) -> torch.Tensor:
        x = fixed_norm(self.raw, self.norm)
        if self.use_precondition:
            x = precondition(x)
        return straight_through_clamp(0.5 + x) if self.clip else 0.5 + x


# ------------------------------------------------------------------------------------------------------
# Lucid-style parametrisation for deep units: FFT image with a 1/f^d spectrum, colour decorrelation and a
# constraint to display space (sigmoid, or the paper's fixed L2 norm). Used by ``classic.actmax``.
# ------------------------------------------------------------------------------------------------------

__all__ += [
    "fft_frequencies",
    "fft_spectrum_scale",
    "FFTImage",
    "RawImage",
    "decorrelate_colors",
    "straight_through_clamp",
    "DecorrelatedImage",
    "CONSTRAINTS",
]

#: Ways to map an unconstrained image to display space ``[0, 1]`` (see :class:`DecorrelatedImage`).
CONSTRAINTS = ("sigmoid", "norm")


def fft_frequencies(
    height: int, width: int | None = None, *, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Radial spatial frequency of every bin of the ``rfft2`` half-spectrum.

    Parameters
    ----------
    height, width : int
        Image size in pixels (``width`` defaults to ``height``).

    Returns
    -------
    torch.Tensor
        ``(height, width // 2 + 1)``: ``sqrt(fy^2 + fx^2)`` in cycles per pixel, with ``fy`` from
        ``fftfreq(height)`` and ``fx`` from ``rfftfreq(width)`` (0 at DC, at most ``sqrt(0.5)``).
    """
    width = height if width is None else width
    fy = torch.fft.fftfreq(height, device=device, dtype=dtype)
    fx = torch.fft.rfftfreq(width, device=device, dtype=dtype)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def fft_spectrum_scale(
    height: int, width: int | None = None, *, decay_power: float = 1.0, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Amplitude scale of the FFT parametrisation: ``1 / max(|f|, 1 / max(height, width)) ** decay_power``.

    Natural images have amplitude spectra falling off as ``1/|f|``; scaling unit-variance Fourier
    coefficients by this factor makes the parametrised images (and Adam's steps on them) follow that
    spectrum. DC gets the value of the lowest non-zero frequency, ``max(height, width) ** decay_power``.

    Parameters
    ----------
    height, width : int
        Image size in pixels.
    decay_power : float
        Exponent ``d`` of the ``1/|f|^d`` fall-off (1 = natural-image amplitude spectrum; 0 = white).

    Returns
    -------
    torch.Tensor
        ``(height, width // 2 + 1)`` positive weights for the unshifted ``rfft2`` layout.
    """
    width = height if width is None else width
    f = fft_frequencies(height, width, device=device, dtype=dtype)
    return 1.0 / torch.clamp(f, min=1.0 / max(height, width)) ** decay_power


class FFTImage(nn.Module):
    """Images parametrised by their Fourier coefficients, scaled by :func:`fft_spectrum_scale`.

    ``forward()`` returns ``irfft2(c * scale, norm="ortho")`` for the complex coefficients ``c``
    (``(n, channels, height, width // 2 + 1)``, real and imaginary parts drawn from N(0, sd^2)). The
    output is an unconstrained image around 0 (no colour mixing, no squashing): feed it to
    :func:`decorrelate_colors` and a constraint (see :class:`DecorrelatedImage`).

    ``scale`` is :func:`fft_spectrum_scale` times the constant that makes coefficients with independent
    N(0, s^2) real and imaginary parts give pixels of variance exactly ``s^2`` (in expectation), whatever
    the size and ``decay_power``; so an Adam step of ``lr`` per coefficient changes the pixels by about
    ``lr`` (Lucid gets a similar effect with an empirical factor 1/4). By Parseval, the pixel variance is
    ``s^2 / (H W) * (4 * sum_interior scale^2 + sum_edge scale^2)``: an interior column of the half
    spectrum stands for two full-spectrum columns with power ``2 s^2 scale^2`` each, while ``irfft2``
    keeps only the Hermitian part (half the power) of the first column and, for even widths, of the last.

    With the orthonormal transform, a single coefficient ``a`` at horizontal frequency ``k`` (``0 < k <
    width/2``) gives the grating ``2 * scale * |a| * cos(2 pi k x / width + arg a) / sqrt(height * width)``.

    Parameters
    ----------
    n, channels, height : int
        Batch size, channels and height of the images.
    width : int, optional
        Width (default ``height``).
    decay_power : float
        Spectrum fall-off exponent.
    sd : float
        Standard deviation of the initial coefficients.
    generator : torch.Generator, optional
        Source of the initialisation.
    """

    def __init__(
        self,
        n: int,
        channels: int,
        height: int,
        width: int | None = None,
        *,
        decay_power: float = 1.0,
        sd: float = 0.01,
        generator: torch.Generator | None = None,
        device=None,
    ) -> None:
        super().__init__()
        width = height if width is None else width
        self.size = (height, width)
        shape = (n, channels, height, width // 2 + 1, 2)
        self.spectrum = nn.Parameter((sd * torch.randn(shape, generator=generator)).to(device))
        half = fft_spectrum_scale(height, width, decay_power=decay_power, dtype=torch.float64)
        weight = torch.full((width // 2 + 1,), 4.0, dtype=torch.float64)
        weight[0] = 1.0
        if width % 2 == 0:
            weight[-1] = 1.0
        gain = torch.sqrt((half**2 * weight).sum() / (height * width))
        self.register_buffer("scale", (half / gain).float().to(device))

    def forward(self) -> torch.Tensor:
        c = torch.view_as_complex(self.spectrum) * self.scale
        return torch.fft.irfft2(c, s=self.size, norm="ortho")


class RawImage(nn.Module):
    """Plain pixel parametrisation (the ablation of :class:`FFTImage`): a free ``(n, C, H, W)`` tensor.

    Initialised from N(0, sd^2); ``forward()`` returns it unchanged (an unconstrained image around 0).
    """

    def __init__(
        self,
        n: int,
        channels: int,
        height: int,
        width: int | None = None,
        *,
        sd: float = 0.01,
        generator: torch.Generator | None = None,
        device=None,
    ) -> None:
        super().__init__()
        width = height if width is None else width
        self.pixels = nn.Parameter(
            (sd * torch.randn(n, channels, height, width, generator=generator)).to(device)
        )

    def forward(self) -> torch.Tensor:
        return self.pixels


def decorrelate_colors(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Mix decorrelated colour channels into RGB: ``y[:, i] = sum_j matrix[i, j] * x[:, j]``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, 3, H, W)`` images in the decorrelated colour space.
    matrix : torch.Tensor
        ``(3, 3)`` colour matrix (e.g. :func:`diversevis.images.color.natural_color_matrix`).

    Returns
    -------
    torch.Tensor
        ``(N, 3, H, W)`` RGB images (same scale, around 0).
    """
    return torch.einsum("ij,njhw->nihw", matrix.to(x), x)


def straight_through_clamp(x: torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Clamp to ``[lo, hi]`` in the forward pass; pass the gradient unchanged (straight-through)."""
    return x + (x.clamp(lo, hi) - x).detach()


class DecorrelatedImage(nn.Module):
    """Lucid-style image: FFT (or pixel) parametrisation -> colour mixing -> constraint to ``[0, 1]``.

    Parameters
    ----------
    n, channels, size : int
        Number of images, channels and side in pixels.
    fft : bool
        Fourier parametrisation with a ``1/|f|^decay_power`` spectrum (:class:`FFTImage`); else free
        pixels (:class:`RawImage`).
    color_matrix : torch.Tensor, optional
        ``(3, 3)`` colour matrix (:func:`diversevis.images.color.natural_color_matrix`); ``None`` = no colour decorrelation.
    constraint : {"sigmoid", "norm"}
        ``"sigmoid"``: ``sigmoid(t)`` (grey at ``t = 0``); ``"norm"``: the paper's hard constraint,
        ``0.5 + norm * t / ||t||`` per image, clamped to ``[0, 1]`` with a straight-through gradient.
    norm : float, optional
        L2 norm of each image around grey (display units), for ``constraint="norm"``.
    decay_power, sd : float
        Spectrum fall-off and initial SD (see :class:`FFTImage`).
    generator : torch.Generator, optional
        Source of the initialisation.

    Calling the module returns display-space images ``(n, channels, size, size)`` in ``[0, 1]``.
    """

    def __init__(
        self,
        n: int,
        channels: int,
        size: int,
        *,
        fft: bool = True,
        color_matrix: torch.Tensor | None = None,
        constraint: str = "sigmoid",
        norm: float | None = None,
        decay_power: float = 1.0,
        sd: float = 0.01,
        generator: torch.Generator | None = None,
        device=None,
    ) -> None:
        super().__init__()
        if constraint not in CONSTRAINTS:
            raise ValueError(f"unknown constraint {constraint!r}; choose one of {', '.join(CONSTRAINTS)}")
        if constraint == "norm" and not (norm is not None and norm > 0):
            raise ValueError("constraint='norm' needs a positive norm")
        if color_matrix is not None and channels != 3:
            raise ValueError(f"colour decorrelation needs 3 channels, got {channels}")
        if fft:
            self.base = FFTImage(
                n, channels, size, decay_power=decay_power, sd=sd, generator=generator, device=device
            )
        else:
            self.base = RawImage(n, channels, size, sd=sd, generator=generator, device=device)
        if color_matrix is None:
            self.color_matrix = None
        else:
            self.register_buffer(
                "color_matrix", torch.as_tensor(color_matrix, dtype=torch.float32).to(device)
            )
        self.constraint = constraint
        self.norm = norm

    def forward(self) -> torch.Tensor:
        t = self.base()
        if self.color_matrix is not None:
            t = decorrelate_colors(t, self.color_matrix)
        if self.constraint == "sigmoid":
            return torch.sigmoid(t)
        return straight_through_clamp(0.5 + fixed_norm(t, self.norm))
