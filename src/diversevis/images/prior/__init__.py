"""Natural-image prior: a small PixelCNN++ trained on natural image patches.

Cadena et al. (2018) optionally add ``beta * NLL_prior(x)`` to the diverse-feature-visualization loss, where
the prior is a PixelCNN++ (Salimans et al. 2017), to keep the optimised images natural-looking. Their code
uses OpenAI's CIFAR-10 PixelCNN++ checkpoint, which cannot be downloaded here, so this module trains a small
PixelCNN++-style model on patches of the natural photographs bundled with installed packages
(:func:`diversevis.naturals.sample_patches`) and caches it.

The package is split by concept; every name is importable from here:

* :mod:`.config`: :class:`PriorConfig` and the :data:`PRESETS`;
* :mod:`.likelihood`: the discretised logistic mixture (:func:`logistic_bin_log_prob`,
  :func:`mixture_log_prob`, :func:`quantize`);
* :mod:`.network`: the masked convolutions and the :class:`PixelCNNPrior` network;
* :mod:`.training`: :func:`train_prior` and :func:`evaluate_prior`;
* :mod:`.cache`: :func:`save_prior`, :func:`load_prior` and :func:`prior_cache_path`.

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

from diversevis.images.prior.cache import _FORMAT as _FORMAT
from diversevis.images.prior.cache import _FORMAT_VERSION as _FORMAT_VERSION
from diversevis.images.prior.cache import _read_prior as _read_prior
from diversevis.images.prior.cache import load_prior, prior_cache_path, save_prior
from diversevis.images.prior.config import PRESETS, PriorConfig
from diversevis.images.prior.config import _resolve_config as _resolve_config
from diversevis.images.prior.likelihood import HALF_BIN as HALF_BIN
from diversevis.images.prior.likelihood import MIN_LOG_SCALE as MIN_LOG_SCALE
from diversevis.images.prior.likelihood import PARAMS_PER_MIX as PARAMS_PER_MIX
from diversevis.images.prior.likelihood import _split_params as _split_params
from diversevis.images.prior.likelihood import logistic_bin_log_prob, mixture_log_prob, quantize
from diversevis.images.prior.network import _LN2 as _LN2
from diversevis.images.prior.network import MaskedConv2d, PixelCNNPrior, causal_mask
from diversevis.images.prior.network import _GatedResidual as _GatedResidual
from diversevis.images.prior.training import _flip as _flip
from diversevis.images.prior.training import _patches as _patches
from diversevis.images.prior.training import _resolve_device as _resolve_device
from diversevis.images.prior.training import _val_seed as _val_seed
from diversevis.images.prior.training import evaluate_prior, train_prior

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
