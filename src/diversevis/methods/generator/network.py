"""The feature-inverting generator ``G(h)`` and the denoising autoencoder ``R(h)`` on its codes: :class:`ImageGenerator`.

See :mod:`diversevis.methods.generator` for the method.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.methods.generator.config import PRESETS, GeneratorConfig

__all__ = ["ImageGenerator", "feature_network", "code_shape_of"]

_SLOPE = 0.2  # leaky-ReLU slope of the decoder and the DAE
_MIN_CHANNELS = 32


def feature_network(config: GeneratorConfig, device: str | torch.device | None = None) -> Network:
    """The frozen feature network ``E`` of a configuration (``config.model`` from the zoo).

    Parameters
    ----------
    config : GeneratorConfig
        The settings; ``config.model`` is the zoo spec.
    device : str or torch.device, optional
        Where to put it (default: CPU).

    Returns
    -------
    Network
        Eval mode, frozen weights.
    """
    from diversevis.models.zoo import load_model

    return load_model(config.model, device=device)


def code_shape_of(config: GeneratorConfig, net: Network | None = None) -> tuple[int, int, int]:
    """Shape ``(C, h, w)`` of the code ``E(x)[code_layer]`` of a ``size x size`` image.

    Parameters
    ----------
    config : GeneratorConfig
        The settings.
    net : Network, optional
        The feature network (default: :func:`feature_network` of ``config``).

    Raises
    ------
    DiversevisError
        If the layer gives no output at ``size`` px, or ``size / h`` is not a power of two.
    """
    net = net if net is not None else feature_network(config)
    shape = net.output_shape(config.code_layer, config.size)
    if len(shape) != 3:
        raise DiversevisError(
            f"{config.model} layer {config.code_layer!r} gives no spatial code for a {config.size}px input "
            f"(output shape {shape}); use a larger --size or an earlier --layer"
        )
    c, h, w = (int(s) for s in shape)
    ratio = config.size / h
    if h != w or ratio < 1 or 2 ** round(math.log2(ratio)) != ratio:
        raise DiversevisError(
            f"the generator upsamples by powers of two: {config.size}px over a {h}x{w} code of "
            f"{config.code_layer!r} is not one; choose another --size or --layer"
        )
    return c, h, w


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.LeakyReLU(_SLOPE)]


class _Decoder(nn.Module):
    """``(N, C, h, w)`` code (divided by its scale) -> ``(N, 3, size, size)`` logits.

    Two 3x3 convolutions at the code's resolution, then per 2x upsampling stage a 4x4 stride-2 transposed
    convolution and a 3x3 convolution (channels halve per stage, at least 32), then a 3x3 convolution to RGB.
    """

    def __init__(self, code_channels: int, stages: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv(code_channels, width), *_conv(width, width)]
        c = width
        for _ in range(stages):
            c_out = max(c // 2, _MIN_CHANNELS)
            layers += [nn.ConvTranspose2d(c, c_out, 4, stride=2, padding=1), nn.LeakyReLU(_SLOPE)]
            layers += _conv(c_out, c_out)
            c = c_out
        layers.append(nn.Conv2d(c, 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class _CodeDAE(nn.Module):
    """Residual denoiser of scaled codes, the same at every position: ``z + f(z)``, ``f`` a 1x1-convolution MLP.

    ``f``: ``C -> width`` (leaky ReLU) ``-> C``, the last layer zero-initialised (``R`` starts as the identity).
    A per-position MLP learns the codes' element-wise structure (many exact zeros after the ReLU) far faster
    than 3x3 convolutions, which did not reduce the denoising error at all in a short measurement.
    """

    def __init__(self, code_channels: int, width: int) -> None:
        super().__init__()
        last = nn.Conv2d(width, code_channels, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(nn.Conv2d(code_channels, width, 1), nn.LeakyReLU(_SLOPE), last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.net(z)


class ImageGenerator(nn.Module):
    """DeePSiM-style image generator ``G(h)`` inverting a feature code, with a DAE ``R(h)`` on the codes.

    Parameters
    ----------
    config : GeneratorConfig, optional
        Architecture and training settings (default ``PRESETS["default"]``).
    code_shape : tuple of int, optional
        ``(C, h, w)`` of the code; default: measured on ``config.model`` (:func:`code_shape_of`).

    Attributes
    ----------
    config : GeneratorConfig
        The settings.
    metrics : dict
        Training metrics stored with the weights (empty for an untrained model): ``seconds``, ``steps``,
        ``train_pixel_mse``, ``val_psnr``, ``dae_relative_error``, ...
    upper : torch.Tensor
        ``code_shape`` buffer: the clip bound ``U`` of every code element, mean + 3 std of that element
        over held-out natural patches (DGN-AM clips ``h`` to ``[0, U]``).
    code_mean, code_std : torch.Tensor
        ``code_shape`` buffers: per-element mean and std of the held-out natural codes.
    code_scale : torch.Tensor
        Scalar buffer: the std of all elements of the held-out codes together (inputs are divided by it).

    Notes
    -----
    Models returned by :func:`train_generator` and :func:`load_generator` are in eval mode with frozen
    parameters; gradients still flow to the code ``h``.
    """

    def __init__(
        self, config: GeneratorConfig | None = None, code_shape: tuple[int, int, int] | None = None
    ) -> None:
        super().__init__()
        cfg = config if config is not None else PRESETS["default"]
        self.config = cfg
        shape = tuple(int(s) for s in (code_shape if code_shape is not None else code_shape_of(cfg)))
        if len(shape) != 3:
            raise DiversevisError(f"code_shape must be (C, h, w), got {shape}")
        self._code_shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.metrics: dict[str, Any] = {}
        c, h, _ = shape
        stages = round(math.log2(cfg.size / h))
        self.decoder = _Decoder(c, stages, cfg.width)
        self.dae = _CodeDAE(c, cfg.dae_width)
        self.register_buffer("upper", torch.ones(shape))
        self.register_buffer("code_mean", torch.zeros(shape))
        self.register_buffer("code_std", torch.ones(shape))
        self.register_buffer("code_scale", torch.tensor(1.0))
        self.register_buffer("dae_sigma_t", torch.tensor(float(cfg.dae_noise)))

    @property
    def code_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the codes ``h`` that :meth:`forward` takes."""
        return self._code_shape

    @property
    def dae_sigma(self) -> float:
        """Absolute std of the Gaussian noise the DAE was trained with (``dae_noise * code_scale``)."""
        return float(self.dae_sigma_t)

    def num_parameters(self) -> int:
        """Number of weights of the decoder and the DAE."""
        return sum(p.numel() for p in self.parameters())

    def _check(self, h: torch.Tensor) -> torch.Tensor:
        if not isinstance(h, torch.Tensor) or tuple(h.shape[1:]) != self.code_shape or h.ndim != 4:
            shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise DiversevisError(
                f"the generator takes codes (N, {', '.join(map(str, self.code_shape))}), got {shape}"
            )
        return h.to(device=self.code_scale.device, dtype=self.code_scale.dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Images of codes.

        Parameters
        ----------
        h : torch.Tensor
            ``(N, C, h, w)`` codes (``code_shape``), in the units of ``E(x)``.

        Returns
        -------
        torch.Tensor
            ``(N, 3, size, size)`` display-space RGB in [0, 1] (a sigmoid output); differentiable in ``h``.
        """
        h = self._check(h)
        return torch.sigmoid(self.decoder(h / self.code_scale))

    def denoise(self, h: torch.Tensor) -> torch.Tensor:
        """The DAE's reconstruction ``R(h)``, same shape and units as ``h`` ``(N, C, h, w)``."""
        h = self._check(h)
        return self.dae(h / self.code_scale) * self.code_scale

    def prior_grad(self, h: torch.Tensor) -> torch.Tensor:
        """PPGN prior gradient ``(R(h) - h) / dae_sigma**2``, an estimate of ``d log p(h) / dh`` ``(N, C, h, w)``."""
        h = self._check(h)
        return (self.denoise(h) - h) / self.dae_sigma_t**2

    def encode(self, net: Network, images: torch.Tensor) -> torch.Tensor:
        """Codes of images: ``relu(E(images)[code_layer])``.

        Parameters
        ----------
        net : Network
            The feature network of ``config.model`` (see :func:`feature_network`).
        images : torch.Tensor
            ``(N, 3, size, size)`` display-space RGB in [0, 1].

        Returns
        -------
        torch.Tensor
            ``(N, C, h, w)`` codes (``code_shape``) on ``net``'s device.
        """
        layer = self.config.code_layer
        return torch.relu(net.activations(images, [layer])[layer])

    def clip(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` clipped element-wise to ``[0, upper]`` (DGN-AM's range constraint), same shape."""
        return torch.minimum(h.clamp_min(0.0), self.upper.to(h))
