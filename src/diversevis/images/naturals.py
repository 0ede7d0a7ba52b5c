"""Natural-image statistics: the contrast budget of diverse feature visualization.

Cadena et al. (2018) constrain the L2 contrast of every optimised image to a fraction (one half) of the
mean L2 norm of natural image patches of the same size. Their reference code ships a table of such norms
measured on ImageNet (RMS per pixel of about 62--67 on a 0--255 scale for patches of 3--250 px, growing
slowly with size, i.e. about 0.24--0.26 in [0, 1] units). We cannot download ImageNet at run time, so this
module measures the same statistic on natural photographs that ship with installed packages (or on any
folder of images the user points at).

All images are in *display space*: float RGB in [0, 1], channels last for numpy arrays
(``(H, W, 3)``) and channels first for torch tensors (``(N, 3, size, size)``).

Sampling scheme (used by :func:`sample_patches` and :func:`natural_patch_norm`): for every patch, pick an
image uniformly among the images that can hold a patch of the requested size, pick a scale uniformly among
that image's usable scales (an image downsampled by ``s`` must be at least ``size`` pixels high and wide),
then pick a uniformly random ``size x size`` crop of the downsampled image. Picking images uniformly (rather
than proportionally to their area) keeps a few very large, atypical photos (the retina fundus image, the
Hubble deep field) from dominating the statistics.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from diversevis.core.errors import DiversevisError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_SCALES",
    "natural_images",
    "bundled_photo_files",
    "image_set_id",
    "dataset_mean",
    "sample_patches",
    "natural_patch_norm",
    "natural_patch_rms",
]

#: File extensions (lower case) read from a user-supplied image folder.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: Downsampling factors of the multi-scale patch sampler (1.0 = full resolution).
DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.5, 0.25)

#: Bumped whenever the sampling scheme or the statistic changes, so stale cache files are recomputed.
_METHOD_VERSION = 1
_DEFAULT_N = 4096
_DEFAULT_SEED = 0
#: Patches are cropped in chunks of at most this many float32 values when computing norms.
_CHUNK_VALUES = 16 * 1024 * 1024

# (label, package, path of the file relative to the package directory). The scikit-image entries are the
# files that ``skimage.data.<label>()`` reads (``stereo_motorcycle()[0]`` for the motorcycle) from its own
# distribution, never through pooch; they are read here with PIL, which decodes them to the same arrays
# without importing ``skimage.io``. Files that are absent (e.g. an skimage that stops shipping them, or an
# optional package that is not installed) are skipped, so loading never touches the network.
_BUNDLED_PHOTOS: tuple[tuple[str, str, str], ...] = (
    ("skimage:astronaut", "skimage", "data/astronaut.png"),
    ("skimage:chelsea", "skimage", "data/chelsea.png"),
    ("skimage:coffee", "skimage", "data/coffee.png"),
    ("skimage:rocket", "skimage", "data/rocket.jpg"),
    ("skimage:hubble_deep_field", "skimage", "data/hubble_deep_field.jpg"),
    ("skimage:retina", "skimage", "data/retina.jpg"),
    ("skimage:immunohistochemistry", "skimage", "data/ihc.png"),
    ("skimage:stereo_motorcycle", "skimage", "data/motorcycle_left.png"),
    ("skimage:camera", "skimage", "data/camera.png"),
    ("skimage:coins", "skimage", "data/coins.png"),
    ("skimage:grass", "skimage", "data/grass.png"),
    ("skimage:gravel", "skimage", "data/gravel.png"),
    ("skimage:brick", "skimage", "data/brick.png"),
    ("sklearn:china", "sklearn", "datasets/images/china.jpg"),
    ("sklearn:flower", "sklearn", "datasets/images/flower.jpg"),
    ("matplotlib:grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)


# ----------------------------------------------------------------------------------------------- loading


def _to_display_rgb(arr: np.ndarray) -> np.ndarray:
    """Convert an image array to float32 RGB ``(H, W, 3)`` in [0, 1].

    Integer arrays are divided by the maximum of their dtype (``uint8`` by 255, ``uint16`` by 65535),
    boolean arrays map to {0, 1}, float arrays are clipped to [0, 1]. Grayscale ``(H, W)`` or ``(H, W, 1)``
    is replicated to three channels; an alpha channel (``(H, W, 2)`` or ``(H, W, 4)``) is dropped.
    """
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"not an image array: shape {arr.shape}")
    if arr.shape[2] in (2, 4):  # drop alpha
        arr = arr[:, :, :-1]
    if arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        out = arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
    else:
        out = np.clip(arr.astype(np.float32), 0.0, 1.0)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out, dtype=np.float32)


def _read_image_file(path: Path) -> np.ndarray:
    """Read one image file with PIL as float32 RGB ``(H, W, 3)`` in [0, 1] (first frame only)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode.startswith("I;16"):  # 16-bit grayscale
            arr = np.asarray(im).astype(np.float32) / 65535.0
        elif mode == "I":  # 32-bit integer grayscale: assume 16-bit range if it exceeds 8 bits
            raw = np.asarray(im).astype(np.float32)
            arr = raw / (65535.0 if raw.max(initial=0) > 255 else 255.0)
        elif mode == "F":  # float grayscale: assumed to be in [0, 1] already
            arr = np.asarray(im, dtype=np.float32)
        elif mode in ("RGB", "L"):
            arr = np.asarray(im)
        elif mode in ("RGBA", "LA"):
            arr = np.asarray(im)  # alpha dropped by _to_display_rgb
        elif mode in ("P", "PA"):
            arr = np.asarray(im.convert("RGBA"))
        else:  # 1, CMYK, YCbCr, LAB, HSV, ...
            arr = np.asarray(im.convert("RGB"))
    return _to_display_rgb(arr)


def bundled_photo_files() -> dict[str, Path]:
    """Label (``skimage:astronaut``) -> file of every bundled photo installed here, in a fixed order.

    The files are located without importing their (optional, slow-to-import) packages.
    """
    out: dict[str, Path] = {}
    for label, package, rel_path in _BUNDLED_PHOTOS:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):  # pragma: no cover
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        for pkg_dir in spec.submodule_search_locations:
            path = Path(pkg_dir) / rel_path
            if path.is_file():
                out[label] = path
                break
    return out


def _load_default_set() -> list[tuple[str, np.ndarray]]:
    """The photos bundled with installed packages that need no download (see :func:`natural_images`)."""
    out: list[tuple[str, np.ndarray]] = []
    for label, path in bundled_photo_files().items():
        try:
            out.append((label, _read_image_file(path)))
        except Exception as exc:  # pragma: no cover - corrupt installation
            warnings.warn(f"skipping natural image {label}: {exc}", RuntimeWarning, stacklevel=3)
    if not out:  # pragma: no cover - scikit-image is a hard dependency and ships these files
        raise DiversevisError(
            "no bundled natural images could be loaded (expected scikit-image's sample photos); "
            "pass folder=<a folder of .png/.jpg images>"
        )
    return out


def _resolve_folder(folder: str | os.PathLike | None) -> str | None:
    """Return the memoisation key of an image set: ``None`` for the default set, else the resolved path."""
    if folder is None:
        return None
    return str(Path(folder).expanduser().resolve())


def _folder_error(folder: str, problem: str) -> DiversevisError:
    exts = ", ".join(IMAGE_EXTENSIONS)
    return DiversevisError(f"image folder {folder!r} {problem}; expected a folder of image files ({exts})")


@functools.cache
def _image_set(key: str | None) -> tuple[tuple[str, np.ndarray], ...]:
    """Load (once per process) the named images of the set identified by ``key`` (read-only arrays)."""
    if key is None:
        items = _load_default_set()
    else:
        root = Path(key)
        if not root.exists():
            raise _folder_error(key, "does not exist")
        if not root.is_dir():
            raise _folder_error(key, "is not a directory")
        files = sorted(
            (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        items = []
        for path in files:
            try:
                items.append((path.relative_to(root).as_posix(), _read_image_file(path)))
            except Exception as exc:
                warnings.warn(f"skipping unreadable image {str(path)!r}: {exc}", RuntimeWarning, stacklevel=3)
        if not items:
            found = f"contains no readable images ({len(files)} candidate files could not be read)"
            raise _folder_error(key, found if files else "contains no image files")
    for _, arr in items:
        arr.flags.writeable = False
    return tuple(items)


def natural_images(folder: str | os.PathLike | None = None) -> list[np.ndarray]:
    """Return the natural photographs used to measure patch statistics.

    Parameters
    ----------
    folder : str or path-like, optional
        ``None`` (default): the photos that ship with installed packages and need no download:
        scikit-image's astronaut, chelsea, coffee, rocket, hubble_deep_field, retina,
        immunohistochemistry, the left view of stereo_motorcycle, and the grayscale camera, coins, grass,
        gravel and brick (replicated to three channels); plus scikit-learn's ``china.jpg`` and
        ``flower.jpg`` and matplotlib's ``grace_hopper.jpg`` when those packages are installed.
        Otherwise a folder searched recursively for ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``,
        ``.tiff`` and ``.webp`` files (sorted by relative path, read with PIL; unreadable files are skipped
        with a warning).

    Returns
    -------
    list of numpy.ndarray
        One ``(H, W, 3)`` float32 array per image: RGB in [0, 1] (display space), alpha dropped,
        grayscale replicated. The arrays are memoised per process (keyed by the resolved folder) and
        are read-only; copy them before modifying.

    Raises
    ------
    DiversevisError
        If ``folder`` does not exist, is not a directory, or holds no readable image; the message names
        the folder and the accepted extensions.
    """
    return [arr for _, arr in _image_set(_resolve_folder(folder))]


@functools.cache
def _image_set_id(key: str | None) -> str:
    h = hashlib.sha256()
    h.update(b"default" if key is None else b"folder")
    for name, arr in _image_set(key):
        h.update(f"\n{name}:{arr.shape[0]}x{arr.shape[1]}\n".encode())
        h.update(hashlib.sha256(arr.data).digest())
    return h.hexdigest()[:12]


def image_set_id(folder: str | os.PathLike | None = None) -> str:
    """Return a short stable identifier of an image set (used as a cache key).

    Parameters
    ----------
    folder : str or path-like, optional
        As in :func:`natural_images`.

    Returns
    -------
    str
        12 hexadecimal characters of a SHA-256 over the image names (labels of the bundled photos, or
        paths relative to ``folder``), their shapes and a digest of their decoded pixels. It does not
        depend on where the folder lives, only on its contents.
    """
    return _image_set_id(_resolve_folder(folder))


@functools.cache
def _dataset_mean(key: str | None) -> np.ndarray:
    total = np.zeros(3, dtype=np.float64)
    count = 0
    for _, arr in _image_set(key):
        total += arr.reshape(-1, 3).sum(axis=0, dtype=np.float64)
        count += arr.shape[0] * arr.shape[1]
    mean = total / count
    mean.flags.writeable = False
    return mean


def dataset_mean(folder: str | os.PathLike | None = None) -> np.ndarray:
    """Return the per-channel mean of an image set.

    Parameters
    ----------
    folder : str or path-like, optional
        As in :func:`natural_images`.

    Returns
    -------
    numpy.ndarray
        ``(3,)`` float64 RGB mean over all pixels of all images (so larger images weigh more), display
        units [0, 1].
    """
    return _dataset_mean(_resolve_folder(folder)).copy()


# ---------------------------------------------------------------------------------------------- sampling


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    try:
        out = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise DiversevisError(f"scales must be a sequence of numbers in (0, 1], got {scales!r}") from None
    if not out or any(not (0.0 < s <= 1.0) or not math.isfinite(s) for s in out):
        raise DiversevisError(f"scales must be a non-empty sequence of numbers in (0, 1], got {scales!r}")
    return out


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DiversevisError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DiversevisError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _scaled_shape(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


@functools.cache
def _rescaled(key: str | None, index: int, scale: float) -> np.ndarray:
    """Image ``index`` of set ``key`` downsampled by ``scale`` (anti-aliased Lanczos, clipped to [0, 1])."""
    arr = _image_set(key)[index][1]
    h, w = _scaled_shape(arr.shape, scale)
    if (h, w) == arr.shape[:2]:
        return arr
    from PIL import Image

    out = np.empty((h, w, 3), dtype=np.float32)
    for c in range(3):
        chan = Image.fromarray(np.ascontiguousarray(arr[:, :, c]))
        out[:, :, c] = np.asarray(chan.resize((w, h), Image.Resampling.LANCZOS))
    np.clip(out, 0.0, 1.0, out=out)
    out.flags.writeable = False
    return out


@dataclasses.dataclass(frozen=True)
class _Locations:
    """Where the patches of one sampling call come from: source (image, scale) and top-left corners."""

    key: str | None  #: image-set key (see _resolve_folder)
    sources: list[tuple[int, float]]  #: (image index, scale) per source id
    src: np.ndarray  #: (n,) int64 source id per patch
    ys: np.ndarray  #: (n,) int64 top row per patch, in the rescaled image
    xs: np.ndarray  #: (n,) int64 left column per patch, in the rescaled image
    size: int  #: patch side in pixels

    def crop(self, start: int, stop: int) -> np.ndarray:
        """Patches ``start:stop`` as a float32 ``(stop - start, size, size, 3)`` array."""
        s = self.size
        out = np.empty((stop - start, s, s, 3), dtype=np.float32)
        for i in range(start, stop):
            img = _rescaled(self.key, *self.sources[self.src[i]])
            y, x = self.ys[i], self.xs[i]
            out[i - start] = img[y : y + s, x : x + s]
        return out


def _sample_locations(size: int, n: int, key: str | None, scales: Sequence[float], seed: int) -> _Locations:
    size = _check_positive_int("size", size)
    n = _check_positive_int("n", n)
    scales = _check_scales(scales)
    seed = _check_seed(seed)
    images = _image_set(key)
    # usable (image, scale) pairs, grouped by image
    per_image: list[list[tuple[int, float]]] = []
    largest = 0
    for idx, (_, arr) in enumerate(images):
        usable = []
        for s in dict.fromkeys(scales):  # unique, order kept
            h, w = _scaled_shape(arr.shape, s)
            largest = max(largest, min(h, w))
            if h >= size and w >= size:
                usable.append((idx, s))
        if usable:
            per_image.append(usable)
    if not per_image:
        where = "the bundled natural images" if key is None else f"the images in {key!r}"
        raise DiversevisError(
            f"patch size {size} is larger than every image of {where} at scales {list(scales)}; "
            f"the largest possible patch size is {largest}"
        )
    sources = [pair for usable in per_image for pair in usable]
    first = np.cumsum([0] + [len(u) for u in per_image[:-1]])
    counts = np.array([len(u) for u in per_image])

    # one row of 4 uniforms per patch (image, scale, row, column): the first k patches of a call do not
    # depend on how many are drawn after them
    u = np.random.default_rng(seed).random((n, 4))
    img_pick = np.minimum((u[:, 0] * len(per_image)).astype(np.int64), len(per_image) - 1)
    scale_pick = np.minimum((u[:, 1] * counts[img_pick]).astype(np.int64), counts[img_pick] - 1)
    src = first[img_pick] + scale_pick
    heights = np.array([_scaled_shape(images[i][1].shape, s)[0] for i, s in sources])
    widths = np.array([_scaled_shape(images[i][1].shape, s)[1] for i, s in sources])
    ys = np.minimum((u[:, 2] * (heights[src] - size + 1)).astype(np.int64), heights[src] - size)
    xs = np.minimum((u[:, 3] * (widths[src] - size + 1)).astype(np.int64), widths[src] - size)
    return _Locations(key, sources, src, ys, xs, size)


def sample_patches(
    size: int,
    n: int,
    *,
    folder: str | os.PathLike | None = None,
    scales: Sequence[float] = DEFAULT_SCALES,
    seed: int = 0,
) -> torch.Tensor:
    """Sample random multi-scale square crops of natural images.

    For each patch an image is picked uniformly among the images that can hold it, then a scale ``s``
    uniformly among that image's usable ``scales`` (the image downsampled by ``s`` with anti-aliased
    Lanczos resampling must be at least ``size`` pixels high and wide), then a uniformly random crop.

    Parameters
    ----------
    size : int
        Patch side in pixels (>= 1).
    n : int
        Number of patches (>= 1).
    folder : str or path-like, optional
        Image set, as in :func:`natural_images`.
    scales : sequence of float
        Downsampling factors in (0, 1]; 1.0 is full resolution.
    seed : int
        Seed of the :class:`numpy.random.Generator`; the result is a deterministic function of
        ``(size, n, image set, scales, seed)``.

    Returns
    -------
    torch.Tensor
        ``(n, 3, size, size)`` float32 RGB patches in [0, 1] (display space).

    Raises
    ------
    DiversevisError
        If ``size`` or ``n`` is not a positive integer, ``scales`` is invalid, the folder is bad (see
        :func:`natural_images`), or ``size`` exceeds every image at every scale (the message names the
        largest possible size).
    """
    locs = _sample_locations(size, n, _resolve_folder(folder), scales, seed)
    patches = locs.crop(0, int(n))
    return torch.from_numpy(patches).permute(0, 3, 1, 2).contiguous()


# The contrast statistics live in diversevis.images.patch_norms (imported at the end of this module).
from diversevis.images.patch_norms import natural_patch_norm, natural_patch_rms  # noqa: E402
