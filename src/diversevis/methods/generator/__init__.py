"""Generator prior for DGN-AM and PPGN: a DeePSiM-style feature-inverting image generator with a DAE on its codes.

DGN-AM (Nguyen et al. 2016) does activation maximisation in the code space of a fixed image generator ``G``,
and PPGN (Nguyen et al. 2017) adds a learned prior on that code. Both use the DeePSiM generator of
Dosovitskiy & Brox (2016), "Generating images with perceptual similarity metrics based on deep networks",
trained to invert CaffeNet's fc6 features. Those weights cannot be downloaded here, so this package trains
a generator of the same kind on the natural photographs bundled with installed packages
(:func:`diversevis.images.naturals.sample_patches`) and caches it.

The package is split by concept; every name is importable from here:

* :mod:`.config`: :class:`GeneratorConfig` and the :data:`PRESETS`;
* :mod:`.network`: :class:`ImageGenerator` (the decoder ``G`` and the DAE ``R``), :func:`feature_network`;
* :mod:`.training`: :func:`train_generator` and :func:`evaluate_generator`;
* :mod:`.cache`: :func:`save_generator`, :func:`load_generator` and :func:`generator_cache_path`.

Model
-----
* **Code.** ``h = E(x) = relu(net.activations(x)[code_layer])`` for a frozen feature network ``E`` (the
  padded ImageNet VGG-16, ``pool4``: 512 x 4 x 4 for a 64 px patch).
* **Generator.** ``G(h)``: a decoder of 3x3 convolutions and 4x4 stride-2 transposed convolutions
  (leaky ReLUs) from the code's resolution up to ``size`` px, with a sigmoid output in display space [0, 1].
* **DeePSiM losses.** For natural patches ``x`` (random multi-scale crops, random left-right flips)::

      L = pixel_weight * mean (G(E(x)) - x)^2
        + feature_weight * sum_l mean (C_l(G(E(x))) - C_l(x))^2 / mean C_l(x)^2
        + adversarial_weight * softplus(-D(G(E(x))))

  where ``C_l`` are comparator layers of the same frozen network (``feature_layers``) and ``D`` is a small
  patch discriminator trained on the non-saturating GAN loss (only when ``adversarial_weight > 0``;
  DeePSiM conditions its discriminator on the features as well, ours sees the image only). Adam, cosine
  learning-rate decay.
* **DAE and the PPGN prior gradient.** A residual convolutional denoiser ``R`` is trained in the same loop on
  ``h + n``, ``n ~ N(0, sigma^2)`` with ``sigma = dae_noise * std(h)`` (``dae_sigma``), to output ``h``. For a
  Gaussian-corruption DAE, ``(R(h) - h) / sigma^2`` estimates ``d log p_sigma(h) / dh`` (Alain & Bengio 2014),
  the prior term of PPGN's sampler (:meth:`ImageGenerator.prior_grad`).
* **Clip range U.** ``upper``: per code element, mean + 3 std of the code over held-out natural patches, as
  the DGN-AM reference's ``act_range/3x`` files; DGN-AM clips ``h`` to ``[0, U]`` after every step
  (:meth:`ImageGenerator.clip`).

What differs from the originals
-------------------------------
* Code: VGG-16 ``pool4`` (a 512 x 4 x 4 spatial map at 64 px), not CaffeNet ``fc6`` (a 4096-d vector);
  images 64 x 64 px, not 256 px (cropped to 227).
* Training data: a few thousand random crops of ~16 bundled photographs (several scales), not ImageNet;
  the held-out patches are other crops of the *same* photographs.
* Training length: minutes on a CPU, not days on GPUs; the discriminator is off by default: measured on
  the default preset, weight 0.01 makes reconstructions sharper (gradient energy 0.21 vs 0.12 of the
  patches') but worse (18.3 vs 20.3 dB PSNR, code error 0.97 vs 0.82) and lowers DGN-AM's reach.
* The PPGN DAE of the original is a fully connected network on fc6; ours is convolutional on the pool4 map.
"""

from __future__ import annotations

from diversevis.methods.generator.cache import generator_cache_path, load_generator, save_generator
from diversevis.methods.generator.config import PRESETS, GeneratorConfig
from diversevis.methods.generator.config import _resolve_config as _resolve_config
from diversevis.methods.generator.network import ImageGenerator, code_shape_of, feature_network
from diversevis.methods.generator.training import (
    evaluate_generator,
    gaussian_blur,
    held_out_patches,
    train_generator,
)

__all__ = [
    "GeneratorConfig",
    "PRESETS",
    "ImageGenerator",
    "feature_network",
    "code_shape_of",
    "train_generator",
    "evaluate_generator",
    "held_out_patches",
    "gaussian_blur",
    "save_generator",
    "load_generator",
    "generator_cache_path",
]
