"""Natural-image prior: a small PixelCNN++ trained on natural image patches.

Cadena et al. (2018) optionally add ``beta * NLL_prior(x)`` to the diverse-feature-visualization loss, where
the prior is a PixelCNN++ (Salimans et al. 2017), to keep the optimised images natural-looking. Their code
uses OpenAI's CIFAR-10 PixelCNN++ checkpoint, which cannot be downloaded here, so this module trains a small
PixelCNN++-style model on patches of the natural photographs bundled with installed packages
(:func:`diversevis.naturals.sample_patches`) and caches it.

Model
-----
An autoregressive model over the pixels in raster order (row by row, left to right) and, within a pixel,
over the channels R, G, B::

    p(x) = prod_ij p(x_ij^R | x_<ij) p(x_ij^G | x_ij^R, x_<ij) p(x_ij^B | x_ij^R, x_ij^G, x_<ij)

* Masked (causal) convolutions in two stacks, which avoids the "blind spot" of a plain stack of masked
  convolutions (van den Oord et al. 2016, "Conditional image generation with PixelCNN decoders"):

  - the *vertical* stack sees every pixel in the rows strictly above the current pixel (first layer: mask
    ``"VA"``, rows above the kernel centre; later layers: mask ``"VB"``, also the centre row, whose inputs
    already only see rows above);
  - the *horizontal* stack sees the rows above and the pixels to the left in the current row (first layer:
    mask ``"A"``, which excludes the current pixel; later layers: mask ``"B"``, which includes the current
    position of the stack, whose input already excludes the current pixel), plus the vertical stack at the
    same position through a 1x1 convolution.

  See :func:`causal_mask`. The output at pixel ``(i, j)`` therefore depends on all pixels before ``(i, j)``
  in raster order (within the receptive field) and on nothing else.
* Gated residual blocks in the style of PixelCNN++ (``x + a * sigmoid(b)`` with ELU non-linearities).
* The output is a discretised mixture of logistics over the 256 levels of each subpixel with the
  PixelCNN++ channel conditioning: the mean of G is shifted linearly by the actual value of R, the mean of
  B by R and G, and the mixture weights are shared by the three channels of a pixel (see
  :func:`mixture_log_prob`).
* Fully convolutional (zero padding, no down-sampling): it scores images of any size. A constant-one input
  channel lets the model tell the zero padding from black pixels (as in PixelCNN++).

Continuous relaxation
---------------------
Images are scored in PixelCNN++ units ``y = 2 x - 1`` in [-1, 1], where the 256 display levels ``k / 255``
are ``2 / 255`` apart. The probability of a subpixel value ``y`` is that of the bin ``[y - 1/255,
y + 1/255]`` under the logistic, with the first and last bins extended to -inf and +inf:
``F(y + 1/255) - F(y - 1/255)`` (``F`` = logistic CDF), ``F(y + 1/255)`` when ``y < -1 + 1/255`` and
``1 - F(y - 1/255)`` when ``y > 1 - 1/255``. The value is exact for images on the 256-level grid, and
``y`` is **not** rounded, so the NLL is differentiable with respect to the image (the diverse-feature
optimiser needs the gradient). The relaxation is smooth except at the two edge-bin cut-offs
``x = 0.5/255`` and ``x = 1 - 0.5/255``, where it jumps. Values outside [0, 1] fall into the edge bins,
whose log-likelihood keeps decreasing away from the range, so the gradient pulls such values back.

NLLs are in **bits per dimension**: ``-log2 p(x) / (3 H W)``; a uniform distribution over the 256 levels
scores 8 bits/dim.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diversevis.core.cache import atomic_save_torch, cache_dir
from diversevis.core.errors import DiversevisError, did_you_mean

__all__ = [
    "PriorConfig",
    "PRESETS",
    "PixelCNNPrior",
    "causal_mask",
    "MaskedConv2d",
    "logistic_bin_log_prob",
    "mixture_log_prob",
    "quantize",
    "train_prior",
    "evaluate_prior",
    "save_prior",
    "load_prior",
    "prior_cache_path",
]

#: Half the width of one of the 256 bins in PixelCNN++ units ([-1, 1]).
HALF_BIN = 1.0 / 255.0
#: Lower bound of the predicted log-scales (as in PixelCNN++).
MIN_LOG_SCALE = -7.0
#: Parameters per mixture component: 1 logit + 3 means + 3 log-scales + 3 channel coefficients.
PARAMS_PER_MIX = 10
_FORMAT = "diversevis-pixelcnn-prior"
#: Bumped whenever the model, the likelihood or the training procedure changes (invalidates the cache).
_FORMAT_VERSION = 1
_LN2 = math.log(2.0)


# ------------------------------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """Architecture and training settings of a :class:`PixelCNNPrior`.

    Attributes
    ----------
    channels : int
        Feature channels of both stacks.
    blocks : int
        Gated residual blocks per stack. Each holds two masked convolutions, so it extends the receptive
        field by ``2 * (kernel // 2)`` rows upwards (vertical stack) and columns leftwards (horizontal).
    kernel : int
        Side of the (odd) masked convolution kernels.
    n_mix : int
        Logistic mixture components per pixel.
    dropout : float
        Dropout probability inside the residual blocks in train mode (:func:`train_prior` and
        :func:`load_prior` return models in eval mode, which score without dropout; the reference code's
        prior kept dropout on while optimising images, a defect).
    patch_size : int
        Side in pixels of the natural training patches.
    batch_size : int
        Patches per Adam step.
    steps : int
        Adam steps.
    lr : float
        Initial learning rate; a cosine schedule decays it to ``lr * lr_final``.
    lr_final : float
        Final learning rate as a fraction of ``lr``.
    grad_clip : float
        Maximum gradient L2 norm (0 disables clipping).
    val_patches : int
        Held-out validation patches.
    eval_every : int
        Steps between validation evaluations (also the last step).
    flips : bool
        Random horizontal flips of the training patches (vertical flips are not used: natural images are
        not up-down symmetric).
    seed : int
        Seed of the initialisation, the training-patch stream, the flips and the validation patches.
    """

    channels: int = 32
    blocks: int = 4
    kernel: int = 3
    n_mix: int = 5
    dropout: float = 0.0
    patch_size: int = 16
    batch_size: int = 16
    steps: int = 1600
    lr: float = 3e-3
    lr_final: float = 0.05
    grad_clip: float = 10.0
    val_patches: int = 512
    eval_every: int = 200
    flips: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("channels", "blocks", "n_mix", "patch_size", "batch_size", "steps", "val_patches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DiversevisError(f"PriorConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.kernel, int) or self.kernel < 3 or self.kernel % 2 == 0:
            raise DiversevisError(f"PriorConfig.kernel must be an odd integer >= 3, got {self.kernel!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise DiversevisError(f"PriorConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.lr > 0 or not 0 < self.lr_final <= 1:
            raise DiversevisError(
                f"PriorConfig needs lr > 0 and 0 < lr_final <= 1, got {self.lr}, {self.lr_final}"
            )
        if self.eval_every < 1 or self.seed < 0 or self.grad_clip < 0:
            raise DiversevisError("PriorConfig needs eval_every >= 1, seed >= 0 and grad_clip >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dictionary of the settings (JSON- and ``weights_only``-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriorConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise DiversevisError(f"unknown PriorConfig fields: {', '.join(sorted(unknown))}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> PriorConfig:
        """Copy with some settings changed."""
        return dataclasses.replace(self, **changes)


#: Named configurations. ``"default"``: CPU-friendly (0.23 M parameters, 16 px patches, about 5 minutes on
#: one CPU core); ``"large"``: a GPU configuration (4.1 M parameters, 32 px patches, 20000 steps).
PRESETS: dict[str, PriorConfig] = {
    "default": PriorConfig(),
    "large": PriorConfig(
        channels=96,
        blocks=8,
        n_mix=10,
        dropout=0.1,
        patch_size=32,
        batch_size=32,
        steps=20000,
        lr=1e-3,
        val_patches=2048,
        eval_every=1000,
    ),
}


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


# ---------------------------------------------------------------------------------------- likelihood


def logistic_bin_log_prob(
    y: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, half_bin: float = HALF_BIN
) -> torch.Tensor:
    """Log-probability of the bin around ``y`` under a logistic, with open-ended edge bins (continuous relaxation).

    ``log(F(y + h) - F(y - h))`` with ``F`` the CDF of the logistic ``(mean, exp(log_scale))`` and
    ``h = half_bin``; ``log F(y + h)`` for ``y < -1 + h`` (lowest bin) and ``log(1 - F(y - h))`` for
    ``y > 1 - h`` (highest bin). ``y`` is not rounded. The difference of CDFs is evaluated stably as
    ``logsigmoid(a) + logsigmoid(-b) + log(1 - exp(b - a))`` with ``a, b = (y +- h - mean) / scale``.

    Parameters
    ----------
    y : torch.Tensor
        Values in PixelCNN++ units ([-1, 1] for display values in [0, 1]); any shape broadcasting with
        ``mean`` and ``log_scale``.
    mean, log_scale : torch.Tensor
        Logistic location (same units) and natural log of its scale.
    half_bin : float
        Half the bin width (``1/255`` for 256 levels in [-1, 1]).

    Returns
    -------
    torch.Tensor
        Log-probabilities in nats (broadcast shape). On the grid ``-1 + 2 k / 255`` they sum to 1 over
        ``k = 0..255`` (exp of them).
    """
    inv_scale = torch.exp(-log_scale)
    a = (y + half_bin - mean) * inv_scale
    b = (y - half_bin - mean) * inv_scale
    upper = F.logsigmoid(a)  # log F(y + h)
    lower = F.logsigmoid(-b)  # log (1 - F(y - h))
    mid = upper + lower + torch.log(-torch.expm1(b - a))
    return torch.where(y < -1.0 + half_bin, upper, torch.where(y > 1.0 - half_bin, lower, mid))


def _split_params(
    params: torch.Tensor, n_mix: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split network output ``(N, 10 M, H, W)`` into logits ``(N, M, H, W)`` and means, log-scales and
    coefficients ``(N, 3, M, H, W)`` (log-scales clamped at :data:`MIN_LOG_SCALE`, coefficients tanh'd)."""
    n, c, h, w = params.shape
    if c != PARAMS_PER_MIX * n_mix:
        raise ValueError(
            f"expected {PARAMS_PER_MIX * n_mix} parameter channels for {n_mix} mixtures, got {c}"
        )
    logits = params[:, :n_mix]
    rest = params[:, n_mix:].reshape(n, 3, 3, n_mix, h, w)
    means, log_scales, coeffs = rest.unbind(dim=1)
    return logits, means, torch.clamp(log_scales, min=MIN_LOG_SCALE), torch.tanh(coeffs)


def mixture_log_prob(y: torch.Tensor, params: torch.Tensor, n_mix: int, channels: int = 3) -> torch.Tensor:
    """Per-pixel log-likelihood under the PixelCNN++ discretised logistic mixture with channel conditioning.

    For component ``m`` the means are ``mu_R``, ``mu_G + c0 * y_R`` and ``mu_B + c1 * y_R + c2 * y_G``
    (``c = tanh`` of the predicted coefficients, ``y`` the actual values), and

        ``log p(y_ij) = logsumexp_m [ log pi_m + sum_c log P_m(y_ij^c) ]``

    with ``P_m`` from :func:`logistic_bin_log_prob`. With ``channels < 3`` the sum runs over the first
    ``channels`` channels only, which gives the marginal ``p(y^R)`` or ``p(y^R, y^G)`` of the pixel (the
    later channels are integrated out exactly).

    Parameters
    ----------
    y : torch.Tensor
        ``(N, 3, H, W)`` images in PixelCNN++ units ([-1, 1]).
    params : torch.Tensor
        ``(N, 10 * n_mix, H, W)`` network output: ``n_mix`` mixture logits, then means, log-scales and
        coefficients, each ``(3, n_mix)`` per pixel (channel-major).
    n_mix : int
        Mixture components ``M``.
    channels : {1, 2, 3}
        Leading channels included in the joint.

    Returns
    -------
    torch.Tensor
        ``(N, H, W)`` log-probabilities in nats.
    """
    if channels not in (1, 2, 3):
        raise ValueError(f"channels must be 1, 2 or 3, got {channels}")
    logits, means, log_scales, coeffs = _split_params(params, n_mix)
    yr, yg, yb = (y[:, c : c + 1] for c in range(3))  # (N, 1, H, W), broadcast over M
    mean_r = means[:, 0]
    mean_g = means[:, 1] + coeffs[:, 0] * yr
    mean_b = means[:, 2] + coeffs[:, 1] * yr + coeffs[:, 2] * yg
    cond_means = (mean_r, mean_g, mean_b)
    total = torch.log_softmax(logits, dim=1)
    for c, yc in enumerate((yr, yg, yb)[:channels]):
        total = total + logistic_bin_log_prob(yc, cond_means[c], log_scales[:, c])
    return torch.logsumexp(total, dim=1)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round display values ``x`` (in [0, 1]) to the 256-level grid ``k / 255`` (clamping to [0, 1])."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


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


# ------------------------------------------------------------------------------------------- training


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _flip(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip a random half of ``(N, 3, H, W)`` patches left-right."""
    do = torch.rand(batch.shape[0], generator=gen) < 0.5
    return torch.where(do[:, None, None, None], batch.flip(-1), batch)


def _patches(cfg: PriorConfig, n: int, seed: int, folder: str | os.PathLike | None) -> torch.Tensor:
    from diversevis.images.naturals import sample_patches

    return quantize(sample_patches(cfg.patch_size, n, folder=folder, seed=seed))


def _val_seed(seed: int) -> int:
    return seed * 10_000_019 + 7_777_777  # a stream far from the training seeds seed * 10_000_019 + step


@torch.no_grad()
def evaluate_prior(prior: PixelCNNPrior, x: torch.Tensor, batch_size: int = 256) -> float:
    """Mean NLL (bits/dim) of images in eval mode.

    Parameters
    ----------
    prior : PixelCNNPrior
        The model (its train/eval mode is restored afterwards).
    x : torch.Tensor
        ``(N, 3, H, W)`` display-space images in [0, 1].
    batch_size : int
        Images per forward pass.

    Returns
    -------
    float
        ``mean_n prior.nll(x)[n]`` in bits per dimension.
    """
    was_training = prior.training
    prior.eval()
    try:
        total = sum(float(prior.nll(x[i : i + batch_size]).sum()) for i in range(0, x.shape[0], batch_size))
    finally:
        prior.train(was_training)
    return total / x.shape[0]


def train_prior(
    config: PriorConfig | str | None = None,
    *,
    device: str | torch.device | None = None,
    steps: int | None = None,
    progress: bool = True,
    folder: str | os.PathLike | None = None,
) -> PixelCNNPrior:
    """Train a PixelCNN++ prior on natural image patches.

    Every step draws ``batch_size`` fresh patches with :func:`diversevis.naturals.sample_patches`
    (seed ``seed * 10000019 + step``), quantises them to the 256 display levels and flips a random half
    left-right; Adam minimises their NLL with a cosine learning-rate decay. ``val_patches`` patches from a
    separate seed stream are held out and scored every ``eval_every`` steps. They are different random
    crops of the *same* photographs, so the validation NLL measures fit to this image distribution, not
    generalisation to new photographs.

    Parameters
    ----------
    config : PriorConfig or str, optional
        Settings or a :data:`PRESETS` name (default ``"default"``).
    device : str or torch.device, optional
        Training device (default: CUDA if available, else CPU). The model stays there.
    steps : int, optional
        Override ``config.steps``.
    progress : bool
        Show a tqdm progress bar with the running training and the latest validation bits/dim.
    folder : str or path-like, optional
        Train on a folder of images instead of the bundled photos (see
        :func:`diversevis.naturals.natural_images`).

    Returns
    -------
    PixelCNNPrior
        The trained model in eval mode, with ``metrics``: ``train_bpd`` (mean over the last 10% of the
        steps), ``val_bpd`` (final), ``steps``, ``seconds``, ``seed``, ``torch``, ``device``,
        ``parameters``, ``image_set_id``, ``history`` (list of ``[step, train_bpd, val_bpd]``).
    """
    from diversevis.images.naturals import image_set_id

    cfg = _resolve_config(config)
    if steps is not None:
        cfg = cfg.replace(steps=steps)
    dev = _resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        prior = PixelCNNPrior(cfg)
    prior.to(dev).train()
    gen = torch.Generator().manual_seed(cfg.seed)
    val = _patches(cfg, cfg.val_patches, _val_seed(cfg.seed), folder)
    val_dev = val.to(dev)

    opt = torch.optim.Adam(prior.parameters(), lr=cfg.lr)

    def lr_factor(step: int) -> float:
        t = step / max(1, cfg.steps - 1)
        return cfg.lr_final + (1.0 - cfg.lr_final) * 0.5 * (1.0 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, desc="train prior", leave=False, dynamic_ncols=True)
    losses: list[float] = []
    history: list[list[float]] = []
    val_bpd = float("nan")
    t0 = time.perf_counter()
    try:
        for step in range(cfg.steps):
            batch = _patches(cfg, cfg.batch_size, cfg.seed * 10_000_019 + step, folder)
            if cfg.flips:
                batch = _flip(batch, gen)
            loss = prior.nll(batch.to(dev)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(prior.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.detach().item())
            last = step == cfg.steps - 1
            if (step + 1) % cfg.eval_every == 0 or last:
                val_bpd = evaluate_prior(prior, val_dev)
                recent = losses[-cfg.eval_every :]
                history.append([step + 1, sum(recent) / len(recent), val_bpd])
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or last:
                    window = losses[-50:]
                    bar.set_postfix(
                        train=f"{sum(window) / len(window):.3f}", val=f"{val_bpd:.3f}", refresh=False
                    )
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    tail = losses[-max(1, cfg.steps // 10) :]
    prior.eval()
    prior.metrics = {
        "train_bpd": sum(tail) / len(tail),
        "val_bpd": val_bpd,
        "initial_bpd": losses[0],
        "steps": cfg.steps,
        "seconds": seconds,
        "seed": cfg.seed,
        "torch": torch.__version__,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "parameters": prior.num_parameters(),
        "image_set_id": image_set_id(folder),
        "folder": None if folder is None else str(folder),
        "history": history,
    }
    return prior


# ---------------------------------------------------------------------------------------------- cache


def _resolve_config(config: PriorConfig | str | None) -> PriorConfig:
    if config is None:
        return PRESETS["default"]
    if isinstance(config, PriorConfig):
        return config
    if isinstance(config, str):
        if config not in PRESETS:
            raise DiversevisError(f"unknown prior preset {config!r}.{did_you_mean(config, PRESETS)}")
        return PRESETS[config]
    raise DiversevisError(f"config must be a PriorConfig or a preset name, got {type(config).__name__}")


def prior_cache_path(name: str = "default", config: PriorConfig | None = None) -> Path:
    """Cache file of a named prior: ``cache_dir() / "prior" / "<name>-<digest>.pt"``.

    Parameters
    ----------
    name : str
        Preset name.
    config : PriorConfig, optional
        Settings (default ``PRESETS[name]``). The 12-hex digest covers them, the file-format version and
        the natural image set, so changing any of them retrains instead of loading a stale model.

    Returns
    -------
    pathlib.Path
        The path (the file may not exist).
    """
    from diversevis.images.naturals import image_set_id

    cfg = config if config is not None else _resolve_config(name)
    key = json.dumps(
        {"v": _FORMAT_VERSION, "config": cfg.to_dict(), "images": image_set_id()}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "prior" / f"{name}-{digest}.pt"


def _plain(obj: Any) -> Any:
    """Convert metrics to types ``torch.load(weights_only=True)`` accepts (dict, list, str, int, float, None)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    # anything else as text, e.g. torch.__version__ (a str subclass that weights_only=True rejects)
    return str(obj)


def save_prior(prior: PixelCNNPrior, path: str | os.PathLike) -> Path:
    """Save weights, config and metrics atomically to a file readable with ``torch.load(weights_only=True)``.

    Parameters
    ----------
    prior : PixelCNNPrior
        The model.
    path : str or path-like
        Target file (parent folders are created).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    state = {k: v.detach().cpu().clone() for k, v in prior.state_dict().items()}
    record = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "config": prior.config.to_dict(),
        "metrics": _plain(prior.metrics),
        "state_dict": state,
    }
    return atomic_save_torch(path, record)


def _read_prior(path: Path, device: torch.device) -> PixelCNNPrior:
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DiversevisError(f"cannot read prior file {str(path)!r}: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != _FORMAT:
        raise DiversevisError(f"{str(path)!r} is not a diversevis prior file")
    if record.get("version") != _FORMAT_VERSION:
        raise DiversevisError(
            f"prior file {str(path)!r} has format version {record.get('version')}, expected {_FORMAT_VERSION}"
        )
    prior = PixelCNNPrior(PriorConfig.from_dict(record["config"]))
    prior.load_state_dict(record["state_dict"])
    prior.metrics = dict(record.get("metrics") or {})
    return prior.to(device)


def load_prior(
    name: str | os.PathLike = "default",
    device: str | torch.device | None = None,
    train_if_missing: bool = True,
    *,
    progress: bool = True,
) -> PixelCNNPrior:
    """Load a cached prior, training and caching it first if needed.

    Parameters
    ----------
    name : str or path-like
        A :data:`PRESETS` name (cached at :func:`prior_cache_path`), or the path of a file written by
        :func:`save_prior`.
    device : str or torch.device, optional
        Device of the returned model (default: CUDA if available, else CPU); also the training device.
    train_if_missing : bool
        Train (:func:`train_prior`) and cache a preset that is not cached yet; otherwise raise.
    progress : bool
        Progress bar while training.

    Returns
    -------
    PixelCNNPrior
        In eval mode with ``requires_grad=False`` parameters (gradients still flow to the images).

    Raises
    ------
    DiversevisError
        Unknown name, missing cache with ``train_if_missing=False``, or an unreadable file.
    """
    dev = _resolve_device(device)
    if isinstance(name, str) and name in PRESETS:
        path = prior_cache_path(name)
        if path.is_file():
            prior = _read_prior(path, dev)
        elif train_if_missing:
            prior = train_prior(name, device=dev, progress=progress)
            save_prior(prior, path)
        else:
            raise DiversevisError(
                f"prior {name!r} is not cached ({str(path)!r}); call load_prior({name!r}) or train_prior() to train it"
            )
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            hint = did_you_mean(str(name), PRESETS) if isinstance(name, str) else ""
            raise DiversevisError(
                f"unknown prior {str(name)!r}: neither a preset ({', '.join(PRESETS)}) nor a file.{hint}"
            )
        prior = _read_prior(path, dev)
    prior.eval()
    prior.requires_grad_(False)
    return prior
