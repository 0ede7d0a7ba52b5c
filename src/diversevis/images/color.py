"""Colour statistics of natural images: the RGB covariance and its square root.

The decorrelated colour space of activation maximisation (Olah et al. 2017) mixes three uncorrelated
channels into RGB with a matrix ``M`` such that ``M @ M.T`` is proportional to the natural colour
covariance; here ``M`` is measured on the bundled photographs (or a user folder), not hard-coded.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from diversevis.core.errors import DiversevisError
from diversevis.images.naturals import _resolve_folder, natural_images

__all__ = ["color_covariance", "color_sqrt", "natural_color_matrix"]


def color_covariance(images, *, per_image: bool = True) -> np.ndarray:
    """Covariance of RGB pixel values over a set of images.

    Parameters
    ----------
    images : iterable of numpy.ndarray
        ``(H, W, 3)`` arrays, display units ``[0, 1]``.
    per_image : bool
        ``True``: every image has the same weight (the moments are averaged over images, so one large
        photo does not dominate); ``False``: all pixels pooled with equal weight.

    Returns
    -------
    numpy.ndarray
        ``(3, 3)`` float64 covariance ``E[p p^T] - E[p] E[p]^T`` of the pixel colour ``p`` under the
        chosen weighting (the mean is the weighted mean over all images, so differences between the
        images' mean colours count as colour variance too). For a single image this is the population
        covariance of its pixels.
    """
    mean = np.zeros(3)
    second = np.zeros((3, 3))
    total = 0.0
    for img in images:
        p = np.asarray(img, dtype=np.float64).reshape(-1, 3)
        w = 1.0 if per_image else float(p.shape[0])
        mean += w * p.mean(0)
        second += w * (p.T @ p) / p.shape[0]
        total += w
    if total == 0:
        raise ValueError("need at least one image for a colour covariance")
    mean /= total
    second /= total
    return second - np.outer(mean, mean)


def color_sqrt(cov: np.ndarray, method: str = "svd") -> np.ndarray:
    """A square root ``M`` of a colour covariance, ``M @ M.T == cov``.

    Parameters
    ----------
    cov : numpy.ndarray
        ``(3, 3)`` symmetric positive semi-definite matrix.
    method : {"svd", "cholesky"}
        ``"svd"``: ``U diag(sqrt(s))`` from ``cov = U diag(s) U^T`` (columns are the principal colour
        axes scaled by their SDs, as Lucid's matrix; each axis signed so that its largest entry is
        positive); ``"cholesky"``: the lower-triangular factor.

    Returns
    -------
    numpy.ndarray
        ``(3, 3)`` float64 matrix ``M``; unit-variance uncorrelated colour channels ``z`` become
        ``M z`` with covariance ``cov``.
    """
    cov = np.asarray(cov, dtype=np.float64)
    if method == "svd":
        u, s, _ = np.linalg.svd(cov)
        # fix the sign of each principal axis (largest-magnitude entry positive) for a unique answer
        signs = np.sign(u[np.abs(u).argmax(0), np.arange(u.shape[1])])
        return u * signs[None, :] * np.sqrt(np.clip(s, 0.0, None))[None, :]
    if method == "cholesky":
        return np.linalg.cholesky(cov)
    raise ValueError(f"unknown method {method!r}; choose svd or cholesky")


def _is_grey(img: np.ndarray) -> bool:
    return bool(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]))


@lru_cache(maxsize=8)
def _natural_color_matrix(folder: str | None, method: str) -> tuple[tuple[float, ...], ...]:
    imgs = [im for im in natural_images(folder) if not _is_grey(im)]
    if not imgs:
        raise DiversevisError("colour decorrelation needs colour images; the image set holds only grey ones")
    m = color_sqrt(color_covariance(imgs), method)
    m = m / np.linalg.norm(m, axis=0).max()
    return tuple(tuple(float(v) for v in row) for row in m)


def natural_color_matrix(folder=None, *, method: str = "svd") -> torch.Tensor:
    """Colour-decorrelation matrix measured on natural images.

    The RGB covariance of the natural photographs (:func:`diversevis.images.naturals.natural_images`: the
    bundled scikit-image / scikit-learn / matplotlib photos, or ``folder``; grey images are left out, as
    their channels are identical) is factored by :func:`color_sqrt` and divided by its largest column
    norm, so that a unit-variance decorrelated channel gives RGB channels of variance at most 1. This
    replaces the hard-coded ImageNet matrix of Lucid with one that is reproducible from the images
    the library ships with.

    Parameters
    ----------
    folder : str or path-like, optional
        Image folder (default: the bundled photos).
    method : {"svd", "cholesky"}
        Square root used.

    Returns
    -------
    torch.Tensor
        ``(3, 3)`` float32 matrix ``M`` with ``M @ M.T`` proportional to the natural colour covariance.
    """
    return torch.tensor(_natural_color_matrix(_resolve_folder(folder), method), dtype=torch.float32)
