"""The PixelCNN++-style network: causal masks, masked convolutions, gated residual stacks, :class:`PixelCNNPrior`.

See :mod:`diversevis.images.prior` for the two-stack (vertical / horizontal) design.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diversevis.core.errors import DiversevisError
from diversevis.images.prior.config import PRESETS, PriorConfig
from diversevis.images.prior.likelihood import PARAMS_PER_MIX, mixture_log_prob

__all__ = ["causal_mask", "MaskedConv2d", "PixelCNNPrior"]

_LN2 = math.log(2.0)


# ------------------------------------------------------------------------------------ masks, convolution


def causal_mask(kernel: int, kind: str) -> torch.Tensor:
    """Mask of a causal convolution kernel (1 = weight used).

    With ``c = kernel // 2`` the kernel centre, the kinds are:

    ``"A"``
        Rows above the centre, and the centre row left of the centre (excludes the centre): the first
        layer of the horizontal stack, whose output must not see the current pixel.
    ``"B"``
        ``"A"`` plus the centre: later horizontal layers, whose input already excludes the current pixel.
    ``"VA"``
        All rows strictly above the centre: the first layer of the vertical stack.
    ``"VB"``
        All rows up to and including the centre row: later vertical layers, whose input at row ``i``
        already only depends on rows ``< i``.

    Parameters
    ----------
    kernel : int
        Odd kernel side.
    kind : {"A", "B", "VA", "VB"}
        Mask type.

    Returns
    -------
    torch.Tensor
        ``(kernel, kernel)`` float32 mask of zeros and ones.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be odd and positive, got {kernel}")
    c = kernel // 2
    mask = torch.zeros(kernel, kernel)
    if kind in ("A", "B"):
        mask[:c, :] = 1.0
        mask[c, : c + (kind == "B")] = 1.0
    elif kind in ("VA", "VB"):
        mask[: c + (kind == "VB"), :] = 1.0
    else:
        raise ValueError(f"unknown mask kind {kind!r}; expected 'A', 'B', 'VA' or 'VB'")
    return mask


class MaskedConv2d(nn.Conv2d):
    """``kernel x kernel`` convolution with "same" zero padding whose weights are masked by :func:`causal_mask`.

    The forward pass convolves with the masked kernel cropped to the bounding box of the mask (e.g. the
    upper ``(kernel // 2 + 1) x kernel`` part for ``"B"`` and ``"VB"``) and pads the input asymmetrically,
    which gives the same result as the full masked kernel with less work.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, kind: str) -> None:
        super().__init__(in_channels, out_channels, kernel, padding=0)
        self.kind = kind
        mask = causal_mask(kernel, kind)
        rows = torch.nonzero(mask.sum(1)).flatten()
        cols = torch.nonzero(mask.sum(0)).flatten()
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
        c = kernel // 2
        self._crop = (slice(r0, r1 + 1), slice(c0, c1 + 1))
        self._pad = (c - c0, c1 - c, c - r0, r1 - c)  # left, right, top, bottom (F.pad order)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = self._crop
        weight = (self.weight * self.mask.to(self.weight.dtype))[:, :, rows, cols]
        return F.conv2d(F.pad(x, self._pad), weight, self.bias)


class _GatedResidual(nn.Module):
    """PixelCNN++ gated residual block: ``x + a * sigmoid(b)``, ``(a, b) = conv(elu(conv(elu(x)) + 1x1(elu(aux))))``."""

    def __init__(self, channels: int, kernel: int, kind: str, aux: bool, dropout: float) -> None:
        super().__init__()
        self.conv1 = MaskedConv2d(channels, channels, kernel, kind)
        self.aux = nn.Conv2d(channels, channels, 1) if aux else None
        self.conv2 = MaskedConv2d(channels, 2 * channels, kernel, kind)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.elu(x))
        if self.aux is not None and aux is not None:
            h = h + self.aux(F.elu(aux))
        h = self.conv2(self.dropout(F.elu(h)))
        a, b = h.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


# --------------------------------------------------------------------------------------------- model


class PixelCNNPrior(nn.Module):
    """PixelCNN++-style natural-image prior (see the module docstring for the model and the relaxation).

    Parameters
    ----------
    config : PriorConfig, optional
        Architecture (and training) settings; :data:`PRESETS` ``["default"]`` if omitted.

    Attributes
    ----------
    config : PriorConfig
        The settings.
    metrics : dict
        Training metrics (empty for an untrained model): ``train_bpd``, ``val_bpd``, ``steps``,
        ``seconds``, ``seed``, ``torch``, ``parameters``, ``image_set_id``, ``history``, ...

    Notes
    -----
    Use :meth:`nll` to score images; it expects display-space images in [0, 1] and is differentiable with
    respect to them. A prior returned by :func:`load_prior` is in eval mode with frozen parameters.
    """

    def __init__(self, config: PriorConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else PRESETS["default"]
        self.config = cfg
        self.metrics: dict[str, Any] = {}
        c, k = cfg.channels, cfg.kernel
        self.v_in = MaskedConv2d(4, c, k, "VA")
        self.h_in = MaskedConv2d(4, c, k, "A")
        self.v_blocks = nn.ModuleList(
            _GatedResidual(c, k, "VB", False, cfg.dropout) for _ in range(cfg.blocks)
        )
        self.h_blocks = nn.ModuleList(_GatedResidual(c, k, "B", True, cfg.dropout) for _ in range(cfg.blocks))
        self.out = nn.Conv2d(c, PARAMS_PER_MIX * cfg.n_mix, 1)

    @property
    def n_mix(self) -> int:
        """Mixture components per pixel."""
        return self.config.n_mix

    def num_parameters(self) -> int:
        """Number of trainable weights (masked-out kernel entries included)."""
        return sum(p.numel() for p in self.parameters())

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise DiversevisError(f"the prior scores RGB images (N, 3, H, W) in [0, 1], got {shape}")
        ref = self.out.weight
        return x.to(device=ref.device, dtype=ref.dtype)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Mixture parameters of every pixel given the pixels before it.

        Parameters
        ----------
        y : torch.Tensor
            ``(N, 3, H, W)`` images in PixelCNN++ units ([-1, 1]).

        Returns
        -------
        torch.Tensor
            ``(N, 10 * n_mix, H, W)``; the values at ``(i, j)`` depend only on the pixels before ``(i, j)``
            in raster order (see :func:`mixture_log_prob` for the layout).
        """
        ones = torch.ones_like(y[:, :1])
        z = torch.cat([y, ones], dim=1)
        v = self.v_in(z)
        h = self.h_in(z) + v
        for vb, hb in zip(self.v_blocks, self.h_blocks):
            v = vb(v)
            h = hb(h, v)
        return self.out(F.elu(h))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel log-probability of display-space images.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, 3, H, W)`` RGB in [0, 1] (display space; not rounded, see the module docstring).

        Returns
        -------
        torch.Tensor
            ``(N, H, W)`` ``log p(x_ij | x_<ij)`` in nats (joint over the three channels).
        """
        y = 2.0 * self._check(x) - 1.0
        return mixture_log_prob(y, self(y), self.n_mix)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood in bits per dimension.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, 3, H, W)`` RGB in [0, 1] (display space), any ``H, W``. Differentiable with respect to
            ``x`` (continuous relaxation of the 256-level likelihood; see the module docstring).

        Returns
        -------
        torch.Tensor
            ``(N,)`` ``-log2 p(x) / (3 H W)``; 8 bits/dim is a uniform distribution over 256 levels.
            Multiply by ``3 H W ln 2`` for the summed NLL in nats used by the reference code's ``beta``.
        """
        lp = self.log_prob(x)
        return -lp.flatten(1).sum(dim=1) / (3 * lp.shape[1] * lp.shape[2] * _LN2)
