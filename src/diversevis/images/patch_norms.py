"""Natural-patch norms: the contrast budget of diverse feature visualization.

DFV constrains every image to a fraction (the paper: 0.5) of the mean L2 norm of mean-subtracted natural
patches of the same shape: :func:`natural_patch_norm` measures it on the patches that
:mod:`diversevis.images.naturals` samples (RGB, or luminance for grayscale models; square or
``(height, width)``), caches it per image set, and :func:`natural_patch_rms` gives it per value.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diversevis.core.cache import atomic_write_json, cache_dir
from diversevis.core.errors import DiversevisError
from diversevis.images.naturals import (
    _CHUNK_VALUES,
    _DEFAULT_N,
    _DEFAULT_SEED,
    _METHOD_VERSION,
    DEFAULT_SCALES,
    _check_positive_int,
    _check_seed,
    _dataset_mean,
    _image_set,
    _image_set_id,
    _resolve_folder,
    _sample_locations,
)

__all__ = ["LUMINANCE", "natural_patch_norm", "natural_patch_rms"]


def _norm_cache_path(set_id: str, size: int | tuple[int, int], channels: int, n: int, seed: int) -> Path:
    shape = str(size) if isinstance(size, int) else f"{size[0]}x{size[1]}"
    gray = "_gray" if channels == 1 else ""
    name = (
        f"norm_{shape}{gray}.json"
        if (n, seed) == (_DEFAULT_N, _DEFAULT_SEED)
        else f"norm_{shape}{gray}_n{n}_seed{seed}.json"
    )
    return cache_dir() / "naturals" / set_id / name


def _read_norm_cache(path: Path, expected: dict) -> float | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in expected.items()):
        return None
    norm = data.get("norm")
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not math.isfinite(norm):
        return None
    return float(norm)


#: Luminance weights (ITU-R BT.601) of the grayscale patches used for 1-channel models.
LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _check_shape(size: int | Sequence[int], channels: int) -> tuple[int | tuple[int, int], int, int]:
    """``(size key, height, width)``: a side stays an int; ``(h, w)`` with ``h == w`` becomes the side."""
    if isinstance(size, (tuple, list)) and len(size) == 2:
        h, w = (_check_positive_int("size", v) for v in size)
    else:
        h = w = _check_positive_int("size", size)
    if channels not in (1, 3):
        raise DiversevisError(
            f"natural patch norms are for 3 (RGB) or 1 (luminance) channels, got {channels}"
        )
    return (h if h == w else (h, w)), h, w


def natural_patch_norm(
    size: int | tuple[int, int],
    *,
    channels: int = 3,
    folder: str | os.PathLike | None = None,
    n: int = _DEFAULT_N,
    seed: int = _DEFAULT_SEED,
) -> float:
    """Mean L2 norm of mean-subtracted natural image patches of a given size.

    Computes ``mean_i ||p_i - m||_2`` over ``n`` patches ``p_i`` drawn by :func:`sample_patches` (default
    ``scales``), where ``m`` is :func:`dataset_mean` broadcast over the patch and the norm runs over all
    ``channels * height * width`` values. Diverse feature visualization constrains each image's contrast
    to half of this value. A non-square ``(height, width)`` patch is the top-left part of a square patch
    of the larger side; 1-channel (grayscale) patches are the luminance :data:`LUMINANCE` of the RGB ones.

    The result is cached as JSON in ``cache_dir() / "naturals" / <image_set_id> / "norm_<size>.json"``
    (``norm_<h>x<w>`` for non-square sizes, ``_gray`` for one channel, ``_n<n>_seed<seed>`` for non-default
    ``n`` or ``seed``), holding ``norm``, ``rms_per_pixel``, ``n``, ``seed`` and ``scales``; later calls
    with the same arguments read it.

    Parameters
    ----------
    size : int or (int, int)
        Patch side, or ``(height, width)``, in pixels (>= 1).
    channels : {3, 1}
        RGB patches, or their luminance.
    folder : str or path-like, optional
        Image set, as in :func:`natural_images`.
    n : int
        Number of patches averaged (>= 1).
    seed : int
        Sampling seed.

    Returns
    -------
    float
        Mean patch norm in display units ([0, 1] per value).

    Raises
    ------
    DiversevisError
        As :func:`sample_patches`, or for a channel count other than 1 or 3.
    """
    key_size, h, w = _check_shape(size, channels)
    n = _check_positive_int("n", n)
    seed = _check_seed(seed)
    key = _resolve_folder(folder)
    set_id = _image_set_id(key)
    scales = list(DEFAULT_SCALES)
    expected = {"version": _METHOD_VERSION, "image_set_id": set_id, "size": key_size, "n": n, "seed": seed}
    if isinstance(key_size, tuple):
        expected["size"] = [h, w]
    if channels == 1:
        expected["channels"] = 1
    expected["scales"] = scales
    path = _norm_cache_path(set_id, key_size, channels, n, seed)
    cached = _read_norm_cache(path, expected)
    if cached is not None:
        return cached
    norms, mean = _patch_norms(key, h, w, channels, n, scales, seed)
    norm = float(norms.mean())
    record = dict(expected)
    record.update(
        norm=norm,
        rms_per_pixel=norm / math.sqrt(channels * h * w),
        norm_std=float(norms.std()),
        dataset_mean=[float(v) for v in np.atleast_1d(mean)],
        n_images=len(_image_set(key)),
        folder=key,
    )
    try:
        atomic_write_json(path, record)
    except OSError as exc:  # a read-only cache must not break the computation
        warnings.warn(
            f"could not cache natural patch norm in {str(path)!r}: {exc}", RuntimeWarning, stacklevel=2
        )
    return norm


def _patch_norms(
    key: str | None, h: int, w: int, channels: int, n: int, scales: list[float], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``(n,)`` norms of mean-subtracted ``h x w`` patches, and the mean subtracted."""
    side = max(h, w)
    locs = _sample_locations(side, n, key, scales, seed)
    mean = _dataset_mean(key).astype(np.float32)
    if channels == 1:
        mean = np.float32(mean @ LUMINANCE)
    chunk = max(1, _CHUNK_VALUES // (3 * side * side))
    norms = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        patches = locs.crop(start, stop)[:, :h, :w]
        diff = (patches @ LUMINANCE if channels == 1 else patches) - mean
        flat = np.ascontiguousarray(diff).reshape(stop - start, -1)
        norms[start:stop] = np.sqrt(np.einsum("ij,ij->i", flat, flat, dtype=np.float64))
    return norms, mean


def natural_patch_rms(
    size: int, *, folder: str | os.PathLike | None = None, n: int = _DEFAULT_N, seed: int = _DEFAULT_SEED
) -> float:
    """Root-mean-square contrast per value of natural patches: ``natural_patch_norm / sqrt(3 * size**2)``.

    Parameters
    ----------
    size, folder, n, seed
        As in :func:`natural_patch_norm`.

    Returns
    -------
    float
        RMS deviation from the dataset mean per pixel and channel, display units [0, 1] (multiply by 255
        to compare with the 0--255 tables of the reference implementation).
    """
    return natural_patch_norm(size, folder=folder, n=n, seed=seed) / math.sqrt(3 * size * size)
