"""Random image transforms for transformation-robust feature visualisation (Lucid's recipe).

Activation maximisation of deep units produces high-frequency adversarial patterns unless the image has
to work under small random changes of viewpoint. :class:`RandomTransforms` pads each image with grey,
then applies one random affine warp per image: an integer translation (jitter), an isotropic scale and a
rotation, all drawn *independently for every image of the batch* (Lucent draws one shift and one angle
for the whole batch) and applied in a single ``grid_sample`` call with per-image matrices.

Geometry: in pixel coordinates centred on the image, the content moves by ``u -> s R(angle) u + shift``
(``y`` points down the rows, so a positive angle turns the content clockwise on screen). Pixels that
come from outside the padded image are filled with grey.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AffineDraw", "draw_affine", "affine_matrices", "apply_affine", "RandomTransforms"]


@dataclass
class AffineDraw:
    """Per-image transform parameters.

    Attributes
    ----------
    shift : torch.Tensor
        ``(N, 2)`` translation ``(dx, dy)`` of the content in pixels (right, down).
    scale : torch.Tensor
        ``(N,)`` isotropic scale factors.
    angle : torch.Tensor
        ``(N,)`` rotation angles in radians.
    """

    shift: torch.Tensor
    scale: torch.Tensor
    angle: torch.Tensor


def draw_affine(
    n: int,
    *,
    jitter: int = 0,
    scale: tuple[float, float] = (1.0, 1.0),
    rotate: float = 0.0,
    generator: torch.Generator | None = None,
) -> AffineDraw:
    """Draw independent random transforms for ``n`` images (on the CPU).

    Parameters
    ----------
    n : int
        Number of images.
    jitter : int
        Shifts are integers drawn uniformly from ``[-jitter, jitter]`` pixels, independently in x and y.
    scale : (float, float)
        Scale factors are drawn uniformly from ``[scale[0], scale[1]]``.
    rotate : float
        Angles are drawn uniformly from ``[-rotate, rotate]`` degrees.
    generator : torch.Generator, optional
        Random source (for reproducibility).

    Returns
    -------
    AffineDraw
    """
    lo, hi = scale
    if jitter < 0 or rotate < 0 or not 0 < lo <= hi:
        raise ValueError(
            f"need jitter >= 0, rotate >= 0 and 0 < scale[0] <= scale[1], got {jitter}, {rotate}, {scale}"
        )
    if jitter > 0:
        shift = torch.randint(-jitter, jitter + 1, (n, 2), generator=generator).float()
    else:
        shift = torch.zeros(n, 2)
    s = lo + (hi - lo) * torch.rand(n, generator=generator) if hi > lo else torch.full((n,), float(lo))
    a = (2 * torch.rand(n, generator=generator) - 1) * math.radians(rotate) if rotate > 0 else torch.zeros(n)
    return AffineDraw(shift=shift, scale=s, angle=a)


def affine_matrices(draw: AffineDraw, height: int, width: int) -> torch.Tensor:
    """``affine_grid`` matrices (``align_corners=False``) for the transforms of :func:`draw_affine`.

    The content map ``u -> s R u + t`` (pixel coordinates centred on the image) is inverted, since
    ``affine_grid`` maps *output* coordinates to the *input* coordinates they sample, and converted to
    normalised coordinates (``x_norm = x_px * 2 / width``, ``y_norm = y_px * 2 / height``).

    Parameters
    ----------
    draw : AffineDraw
        ``N`` transforms.
    height, width : int
        Image size in pixels.

    Returns
    -------
    torch.Tensor
        ``(N, 2, 3)`` float32 matrices.
    """
    c, s = torch.cos(draw.angle), torch.sin(draw.angle)
    inv = 1.0 / draw.scale
    # inverse linear part in pixel coordinates: R(-angle) / scale
    a = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2) * inv[:, None, None]
    t = -(a @ draw.shift[:, :, None])[:, :, 0]
    d = torch.tensor([2.0 / width, 2.0 / height])
    theta = torch.empty(len(draw.scale), 2, 3)
    theta[:, :, :2] = d[None, :, None] * a / d[None, None, :]
    theta[:, :, 2] = d[None, :] * t
    return theta


def apply_affine(x: torch.Tensor, theta: torch.Tensor, *, fill: float = 0.5) -> torch.Tensor:
    """Warp each image with its own matrix (bilinear), filling uncovered pixels with ``fill``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, H, W)`` images.
    theta : torch.Tensor
        ``(N, 2, 3)`` matrices from :func:`affine_matrices`.
    fill : float
        Value of pixels sampled from outside the image (grey).

    Returns
    -------
    torch.Tensor
        ``(N, C, H, W)``; integer shifts without scale or rotation move pixels exactly.
    """
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


class RandomTransforms(nn.Module):
    """Grey padding followed by one random translation, scale and rotation per image.

    Parameters
    ----------
    pad : int
        Grey border added on every side first (the output is ``2 * pad`` pixels larger).
    jitter : int
        Maximum integer shift in pixels.
    scale : (float, float)
        Range of scale factors.
    rotate : float
        Maximum rotation in degrees.
    fill : float
        Grey level of the padding.

    Calling ``transforms(x, generator)`` returns the transformed batch; the parameters of the last draw
    are kept in ``last`` (``None`` for the identity).
    """

    def __init__(
        self,
        pad: int = 12,
        jitter: int = 8,
        scale: tuple[float, float] = (0.9, 1.1),
        rotate: float = 10.0,
        fill: float = 0.5,
    ) -> None:
        super().__init__()
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        draw_affine(1, jitter=jitter, scale=scale, rotate=rotate)  # validate the ranges
        self.pad = int(pad)
        self.jitter = int(jitter)
        self.scale = (float(scale[0]), float(scale[1]))
        self.rotate = float(rotate)
        self.fill = float(fill)
        self.last: AffineDraw | None = None

    @property
    def is_affine_identity(self) -> bool:
        """Whether every drawn warp is the identity (zero ranges)."""
        return self.jitter == 0 and self.scale == (1.0, 1.0) and self.rotate == 0

    def spec(self) -> dict[str, object]:
        """The settings, for run specs."""
        return {"pad": self.pad, "jitter": self.jitter, "scale": list(self.scale), "rotate": self.rotate}

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, value=self.fill)
        if self.is_affine_identity:
            self.last = None
            return x
        draw = draw_affine(
            x.shape[0], jitter=self.jitter, scale=self.scale, rotate=self.rotate, generator=generator
        )
        self.last = draw
        return apply_affine(x, affine_matrices(draw, x.shape[-2], x.shape[-1]), fill=self.fill)
