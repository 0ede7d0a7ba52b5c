"""An implicit image generator: (pixel coordinates, periodic latent) -> image.

The parametrisation of invariance manifolds (method.md E.2; Baroni et al. 2023, LAMINR): a small
multilayer perceptron with sine activations (a SIREN-type CPPN) maps every pixel's coordinates and a
latent ``z`` in ``[0, 1)^dim`` to the pixel's value. The latent enters through a periodic embedding
(``cos 2 pi k z``, ``sin 2 pi k z``), so ``z = 0`` and ``z = 1`` give the same image and a 1-D
manifold can close into a circle (a 2-D one into a torus). Each image is scaled to a fixed L2 norm
around mean grey 0.5, as :class:`~diversevis.core.params.PixelImage` does.

Because the coordinates are an input, an affine map of the coordinates moves, rotates and scales the
whole manifold (:func:`affine_coords`): that is how one unit's manifold is aligned to another's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from diversevis.core.params import fixed_norm, image_hw

__all__ = ["ImplicitGenerator", "pixel_coords", "latent_grid", "periodic_embedding", "affine_coords"]


def pixel_coords(size: int | tuple[int, int], *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates ``(H, W, 2)`` as (x, y), the longer side spanning ``[-1, 1]``.

    Non-square images keep square pixels: the shorter side spans ``[-s, s]`` with ``s = short / long``.
    """
    h, w = image_hw(size)
    scale = max(h, w)
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5 - h / 2) * (2.0 / scale)
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5 - w / 2) * (2.0 / scale)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def latent_grid(dim: int, per_dim: int, *, device=None) -> torch.Tensor:
    """An even grid of latents ``(per_dim ** dim, dim)`` in ``[0, 1)^dim`` (row-major, last dim fastest)."""
    if dim < 1 or per_dim < 1:
        raise ValueError(f"dim and per_dim must be >= 1, got {dim} and {per_dim}")
    axis = torch.arange(per_dim, device=device, dtype=torch.float32) / per_dim
    mesh = torch.meshgrid(*([axis] * dim), indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)


def periodic_embedding(z: torch.Tensor, harmonics: int = 1) -> torch.Tensor:
    """``(B, dim)`` latents in ``[0, 1)`` -> ``(B, 2 * dim * harmonics)``: cos and sin of ``2 pi k z``."""
    k = torch.arange(1, harmonics + 1, device=z.device, dtype=z.dtype)
    angle = 2 * math.pi * z[:, :, None] * k  # (B, dim, harmonics)
    return torch.cat([angle.cos(), angle.sin()], dim=2).flatten(1)


def affine_coords(coords: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Apply ``c -> matrix @ c + shift`` to coordinates ``(..., 2)`` (``matrix (2, 2)``, ``shift (2,)``)."""
    return coords @ matrix.T + shift


class _Sine(nn.Module):
    def __init__(self, n_in: int, n_out: int, w0: float, first: bool, generator: torch.Generator) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        bound = 1.0 / n_in if first else math.sqrt(6.0 / n_in) / w0  # SIREN initialisation
        with torch.no_grad():
            self.linear.weight.copy_(torch.rand(n_out, n_in, generator=generator) * 2 * bound - bound)
            self.linear.bias.copy_(torch.rand(n_out, generator=generator) * 2 * bound - bound)
        self.w0 = w0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * self.linear(x))


class ImplicitGenerator(nn.Module):
    """A CPPN: ``(x, y, embed(z)) -> pixel``, every image at a fixed L2 norm around grey 0.5.

    Parameters
    ----------
    channels : int
        Channels of each image.
    size : int or (int, int)
        Image side or ``(height, width)``, in pixels.
    dim : int
        Latent dimension (1: a loop, 2: a torus).
    norm : float
        L2 norm of each image minus mean grey, in display units (the unit's contrast).
    hidden, depth : int
        Width and number of hidden sine layers.
    w0 : float
        Frequency of the first sine layer, in radians per unit of coordinate (the image's longer side
        spans 2 units); sets the finest detail the initial generator draws.
    harmonics : int
        Harmonics of the periodic latent embedding.
    seed : int
        Seed of the initial weights.

    Calling the module renders the latents in the buffer ``latents`` (set it with
    :meth:`set_latents`) and returns display-space images ``(B, channels, H, W)``.
    """

    def __init__(
        self,
        channels: int,
        size: int | tuple[int, int],
        dim: int,
        norm: float,
        *,
        hidden: int = 64,
        depth: int = 3,
        w0: float = 8.0,
        harmonics: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"the latent dimension must be >= 1, got {dim}")
        self.config: dict[str, Any] = dict(
            channels=channels, size=list(image_hw(size)), dim=dim, norm=float(norm),
            hidden=hidden, depth=depth, w0=w0, harmonics=harmonics, seed=seed,
        )  # fmt: skip
        g = torch.Generator().manual_seed(seed)
        n_in = 2 + 2 * dim * harmonics
        layers = [_Sine(n_in, hidden, w0, True, g)]
        layers += [_Sine(hidden, hidden, 1.0, False, g) for _ in range(depth - 1)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, channels)
        with torch.no_grad():
            bound = math.sqrt(6.0 / hidden)
            self.head.weight.copy_(torch.rand(channels, hidden, generator=g) * 2 * bound - bound)
            self.head.bias.zero_()
        self.register_buffer("coords", pixel_coords(size))
        self.register_buffer("latents", latent_grid(dim, 8))

    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    def set_latents(self, z: torch.Tensor) -> None:
        """Latents ``(B, dim)`` in ``[0, 1)`` that :meth:`forward` renders."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"latents must be (B, {self.dim}), got {tuple(z.shape)}")
        self.latents = z.to(self.coords.device, torch.float32)

    def render(self, z: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``(B, C, H, W)`` of latents ``z (B, dim)`` on ``coords (H, W, 2)`` (default: the pixels)."""
        coords = self.coords if coords is None else coords
        h, w, _ = coords.shape
        b = z.shape[0]
        emb = periodic_embedding(z.to(coords.dtype), int(self.config["harmonics"]))
        x = torch.cat([coords.expand(b, h, w, 2), emb[:, None, None, :].expand(b, h, w, emb.shape[1])], dim=3)
        out = self.head(self.body(x)).permute(0, 3, 1, 2)  # (B, C, H, W)
        return 0.5 + fixed_norm(out, self.config["norm"])

    def forward(self) -> torch.Tensor:
        return self.render(self.latents)

    def save(self, path) -> None:
        """Write the configuration and weights to ``path`` (a ``torch.save`` dict of tensors and numbers)."""
        torch.save({"config": self.config, "state": self.state_dict()}, path)

    @classmethod
    def load(cls, path, map_location="cpu") -> ImplicitGenerator:
        """A generator written by :meth:`save` (read with ``weights_only=True``)."""
        blob = torch.load(path, map_location=map_location, weights_only=True)
        cfg = dict(blob["config"])
        cfg["size"] = tuple(cfg["size"])
        gen = cls(**cfg)
        state = blob["state"]
        gen.latents = state["latents"].clone()  # the saved grid may differ in size
        gen.load_state_dict(state)
        return gen
