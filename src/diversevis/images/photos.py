"""One photograph to analyse: a bundled sample photo by name, or an image file, as a display-space tensor.

Shared by the image-based classic methods (DeconvNet projections, occlusion maps) and their CLIs. The
bundled photos are the ones :mod:`diversevis.naturals` measures its statistics on (scikit-image's
astronaut, chelsea, coffee, ...; scikit-learn's china and flower; matplotlib's grace_hopper); they are
read from the installed packages, never downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from diversevis.core.checks import SIDE_MAX, integer
from diversevis.core.errors import DiversevisError, did_you_mean
from diversevis.images.naturals import IMAGE_EXTENSIONS, _read_image_file, bundled_photo_files

__all__ = ["photo_names", "load_photo", "square_resize"]

#: Short names accepted besides the labels' suffixes.
_EXTRA_NAMES = {
    "motorcycle": "stereo_motorcycle",
    "ihc": "immunohistochemistry",
    "hubble": "hubble_deep_field",
}


def _bundled_files() -> dict[str, Path]:
    """Short name (``chelsea``) -> file of every bundled photo that is installed."""
    return {label.split(":", 1)[1]: path for label, path in bundled_photo_files().items()}


def photo_names() -> list[str]:
    """Names of the bundled photos that can be loaded here (``astronaut``, ``chelsea``, ``coffee``, ...)."""
    return list(_bundled_files())


def square_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side to ``size`` (anti-aliased bicubic) and crop the centre square.

    Parameters
    ----------
    image : torch.Tensor
        ``(C, H, W)`` display-space image.
    size : int
        Output side in pixels (>= 1).

    Returns
    -------
    torch.Tensor
        ``(C, size, size)`` float32, clipped to ``[0, 1]``.
    """
    size = integer("image size", size, 1, SIDE_MAX)
    _, h, w = image.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = torch.nn.functional.interpolate(
        image[None].float(), size=(nh, nw), mode="bicubic", align_corners=False, antialias=True
    )[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top : top + size, left : left + size].clamp(0.0, 1.0).contiguous()


def load_photo(name_or_path: str | os.PathLike, size: int | None = None) -> tuple[torch.Tensor, str]:
    """Load a bundled photo (by name) or an image file as a display-space tensor.

    Parameters
    ----------
    name_or_path : str or path-like
        A bundled photo's name (``chelsea``, ``astronaut``, ``coffee``, ... see :func:`photo_names`;
        ``skimage:chelsea`` works too), or the path of an image file (PNG, JPEG, ...).
    size : int, optional
        Resize the short side to ``size`` and crop the centre square (:func:`square_resize`); ``None``
        keeps the native resolution.

    Returns
    -------
    image : torch.Tensor
        ``(3, H, W)`` float32 RGB in ``[0, 1]`` (grayscale replicated, alpha dropped).
    source : str
        ``"photo:<name>"`` or ``"file:<absolute path>"`` (for run specs).

    Raises
    ------
    DiversevisError
        For an unknown name (the message lists the bundled names), a missing or unreadable file, or a bad
        ``size``.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        try:
            arr = _read_image_file(path)
        except Exception as exc:
            raise DiversevisError(f"cannot read image file {text!r}: {exc}") from None
        source = f"file:{path.resolve()}"
    else:
        files = _bundled_files()
        name = text.split(":", 1)[1] if text.startswith(("skimage:", "sklearn:", "matplotlib:")) else text
        name = _EXTRA_NAMES.get(name, name)
        if name not in files:
            looks_like_file = os.sep in text or Path(text).suffix.lower() in IMAGE_EXTENSIONS
            what = "image file does not exist" if looks_like_file else "unknown image"
            raise DiversevisError(
                f"{what}: {text!r}.{did_you_mean(name, files)} Give a path to an image file or one of the "
                f"bundled photos: {', '.join(files)}"
            )
        arr = _read_image_file(files[name])
        source = f"photo:{name}"
    image = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()
    if size is not None:
        image = square_resize(image, size)
    return image, source
