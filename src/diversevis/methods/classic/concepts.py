"""Concept datasets for network dissection: a Broden-format loader and a colour probe.

A *concept dataset* is a sequence of :class:`Sample` (an RGB image plus pixel-level concept label maps
and image-level concept labels) with a list of :class:`Concept` (id, name, category). Three are provided:

* :class:`BrodenDataset` reads a directory in the format of Broden (Bau et al. 2017, NetDissect);
* :class:`ColorProbe` names the colour of every pixel of the bundled natural photos
  (:func:`diversevis.naturals.natural_images`) with :func:`name_colors`, giving 11 colour concepts;
* :class:`ArrayDataset` wraps in-memory images and label maps (synthetic sets, tests).

Broden format, as read here (NetDissect ``loadseg.py``; Broden itself is not shipped):

* ``index.csv``: header ``image,split,ih,iw,sh,sw,<category>,...`` (Broden: ``color, object, part,
  material, scene, texture``). ``image`` is the image path, ``ih, iw`` its size and ``sh, sw`` the size
  of its segmentations. Each category cell holds ``;``-separated entries: a PNG file name (a pixel-level
  label map) or an integer (an image-level label: the whole image shows that concept; Broden's
  ``scene`` and ``texture``). An empty cell means the category is not annotated for that image. Paths
  are relative to ``<root>/images/`` (Broden's layout), else to ``<root>``.
* label maps: PNGs whose pixel label is ``R + 256 * G`` (0 = unlabelled); ``B`` is ignored.
* ``label.csv``: ``number,name,category,...`` with ``category`` such as ``color(2148)`` or
  ``object(46);part(3)``; a concept's category is the one with the largest count. Number 0 (if listed)
  is the unlabelled background and is skipped.
* ``c_<category>.csv`` (``code,number,name,...``): used when ``label.csv`` is absent, the category being
  the file's name.

Colour naming (:func:`name_colors`): the 11 basic colour terms of Berlin & Kay (black, white, grey, red,
orange, yellow, green, blue, purple, pink, brown). A pixel is converted to CIELAB
(:func:`skimage.color.rgb2lab`, sRGB, D65). Pixels with chroma ``C* = sqrt(a*^2 + b*^2) < 12`` are
achromatic: black if ``L* < 25``, white if ``L* > 80``, grey otherwise. Every other pixel gets the term
of the nearest of a few sRGB prototypes per chromatic term (``COLOR_PROTOTYPES``) under the distance
``sqrt((0.5 dL*)^2 + da*^2 + db*^2)`` (lightness down-weighted so that light and dark shades of a hue
keep its name). It is a heuristic naming, not a psychophysical model; pure red, green and blue pixels
are named red, green and blue.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diversevis.core.errors import DiversevisError

__all__ = [
    "Concept",
    "Sample",
    "ConceptDataset",
    "ArrayDataset",
    "BrodenDataset",
    "ColorProbe",
    "COLOR_NAMES",
    "COLOR_PROTOTYPES",
    "name_colors",
    "decode_label_png",
]


@dataclass(frozen=True)
class Concept:
    """A concept: global label ``id`` (> 0), ``name`` and ``category`` (``"color"``, ``"object"`` ...)."""

    id: int
    name: str
    category: str


@dataclass
class Sample:
    """One annotated image.

    Attributes
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` float32 RGB in ``[0, 1]`` (display space).
    label_maps : numpy.ndarray
        ``(L, h, w)`` int64 concept ids per pixel, 0 = unlabelled; ``L >= 0`` layers (a pixel can carry
        several concepts, one per layer). ``(h, w)`` is the segmentation resolution.
    image_labels : tuple of int
        Concepts that cover the whole image.
    categories : frozenset of str
        Categories annotated in this image (the IoU of a concept of category ``g`` counts the unit's
        mask only over images annotated for ``g``, as NetDissect does).
    """

    image: np.ndarray
    label_maps: np.ndarray
    image_labels: tuple[int, ...]
    categories: frozenset[str]

    @property
    def mask_size(self) -> tuple[int, int]:
        """``(h, w)`` of the label maps."""
        return int(self.label_maps.shape[1]), int(self.label_maps.shape[2])


class ConceptDataset:
    """Base class: ``len(ds)``, ``ds[i] -> Sample``, ``ds.image_size(i) -> (H, W)``, ``ds.concepts``."""

    concepts: list[Concept]
    name: str = "dataset"

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def image_size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of image ``i`` (without decoding it when the format allows)."""
        return tuple(self[i].image.shape[:2])  # type: ignore[return-value]

    @property
    def categories(self) -> list[str]:
        """Categories of the concepts, in first-seen order."""
        return list(dict.fromkeys(c.category for c in self.concepts))

    def describe(self) -> dict:
        """JSON-serialisable description for run specs."""
        return {"name": self.name, "images": len(self), "concepts": len(self.concepts)}


# ----------------------------------------------------------------------------------------------- arrays


class ArrayDataset(ConceptDataset):
    """Images and label maps held in memory.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        ``(H, W, 3)`` RGB images in ``[0, 1]``.
    label_maps : sequence of numpy.ndarray
        Per image, ``(h, w)`` or ``(L, h, w)`` integer concept ids (0 = unlabelled).
    concepts : sequence of Concept or str
        The concepts; plain names get ids ``1, 2, ...`` and category ``category``.
    category : str
        Category of concepts given by name.
    name : str
        Name recorded in run specs.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        label_maps: Sequence[np.ndarray],
        concepts: Sequence[Concept | str],
        *,
        category: str = "concept",
        name: str = "arrays",
    ) -> None:
        if len(images) != len(label_maps):
            raise DiversevisError(f"got {len(images)} images but {len(label_maps)} label maps")
        self.images = [np.asarray(im, dtype=np.float32) for im in images]
        self.maps = []
        for m in label_maps:
            m = np.asarray(m, dtype=np.int64)
            self.maps.append(m[None] if m.ndim == 2 else m)
        self.concepts = [
            c if isinstance(c, Concept) else Concept(i + 1, str(c), category) for i, c in enumerate(concepts)
        ]
        self.name = name
        self._cats = frozenset(c.category for c in self.concepts)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Sample:
        return Sample(self.images[i], self.maps[i], (), self._cats)

    def image_size(self, i: int) -> tuple[int, int]:
        return tuple(self.images[i].shape[:2])  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- Broden

_BRODEN_FIXED = ("image", "split", "ih", "iw", "sh", "sw")
_CATEGORY_COUNT = re.compile(r"\s*([^()]+?)\s*\((\d+)\)\s*")


def decode_label_png(path: str | Path) -> np.ndarray:
    """Read a Broden label PNG: pixel label ``R + 256 * G`` (0 = unlabelled).

    Returns
    -------
    numpy.ndarray
        ``(h, w)`` int64 labels. A greyscale PNG is read as its values.
    """
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB") if im.mode not in ("L", "I", "I;16") else im)
    arr = arr.astype(np.int64)
    if arr.ndim == 2:
        return arr
    return arr[:, :, 0] + 256 * arr[:, :, 1]


def _primary_category(field: str) -> str:
    """``"object(46);part(3)"`` -> ``"object"``; ``"color"`` -> ``"color"``."""
    best, count = None, -1
    for part in field.split(";"):
        m = _CATEGORY_COUNT.fullmatch(part)
        if m and int(m.group(2)) > count:
            best, count = m.group(1), int(m.group(2))
    if best is None:
        best = field.split(";")[0].strip()
    return best or "-"


class BrodenDataset(ConceptDataset):
    """A Broden-format directory (see the module docstring for the format as read here).

    Parameters
    ----------
    root : str or Path
        Directory holding ``index.csv`` and ``label.csv`` (or ``c_<category>.csv`` files).
    categories : sequence of str, optional
        Keep only these categories (default: all columns of ``index.csv`` after the fixed ones).
    split : str, optional
        Keep only rows of this split (``train``/``val``) when ``index.csv`` has a ``split`` column.
    max_images : int, optional
        Use only the first rows.

    Raises
    ------
    DiversevisError
        If the directory, ``index.csv`` or the concept list is missing or malformed, or a category is
        unknown; the message names the file and the expected columns or the valid categories.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        categories: Sequence[str] | None = None,
        split: str | None = None,
        max_images: int | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DiversevisError(f"Broden dataset directory {str(self.root)!r} does not exist")
        index = self.root / "index.csv"
        if not index.is_file():
            raise DiversevisError(
                f"{str(self.root)!r} has no index.csv; a Broden-format directory needs index.csv with columns "
                "image,split,ih,iw,sh,sw,<category>... and label.csv (or c_<category>.csv)"
            )
        with index.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
        if "image" not in fields:
            raise DiversevisError(f"{str(index)!r} has no 'image' column (columns: {', '.join(fields)})")
        all_cats = [f for f in fields if f not in _BRODEN_FIXED]
        if not all_cats:
            raise DiversevisError(
                f"{str(index)!r} has no category columns after {', '.join(_BRODEN_FIXED)}; "
                "expected e.g. color,object,part,material,scene,texture"
            )
        if categories is None:
            cats = all_cats
        else:
            cats = [str(c) for c in categories]
            bad = [c for c in cats if c not in all_cats]
            if bad:
                raise DiversevisError(
                    f"unknown categor{'y' if len(bad) == 1 else 'ies'} {', '.join(bad)} in {str(index)!r}; "
                    f"valid: {', '.join(all_cats)}"
                )
        if split is not None and "split" in fields:
            rows = [r for r in rows if r.get("split") == split]
        if max_images is not None:
            rows = rows[: int(max_images)]
        if not rows:
            raise DiversevisError(
                f"{str(index)!r} lists no images" + (f" of split {split!r}" if split else "")
            )
        self.rows = rows
        self.category_columns = cats
        concepts = self._read_concepts(all_cats)
        self.concepts = [c for c in concepts if c.category in cats]
        if not self.concepts:
            raise DiversevisError(f"no concepts of categories {', '.join(cats)} in {str(self.root)!r}")
        self.name = f"broden:{self.root.name}"

    def _read_concepts(self, all_cats: list[str]) -> list[Concept]:
        label = self.root / "label.csv"
        out: dict[int, Concept] = {}
        if label.is_file():
            with label.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                need = {"number", "name"}
                if not need <= set(reader.fieldnames or []):
                    raise DiversevisError(
                        f"{str(label)!r} needs columns number,name,category (got {', '.join(reader.fieldnames or [])})"
                    )
                for r in reader:
                    num = int(r["number"])
                    if num <= 0:
                        continue
                    out[num] = Concept(num, r["name"], _primary_category(r.get("category") or "-"))
        else:
            for cat in all_cats:
                path = self.root / f"c_{cat}.csv"
                if not path.is_file():
                    continue
                with path.open(newline="", encoding="utf-8") as fh:
                    for r in csv.DictReader(fh):
                        num = int(r["number"])
                        if num > 0 and num not in out:
                            out[num] = Concept(num, r["name"], cat)
            if not out:
                raise DiversevisError(
                    f"{str(self.root)!r} has neither label.csv nor c_<category>.csv files naming the concepts"
                )
        return [out[n] for n in sorted(out)]

    def _path(self, name: str) -> Path:
        for base in (self.root / "images", self.root):
            p = base / name
            if p.is_file():
                return p
        raise DiversevisError(
            f"file {name!r} listed in index.csv is missing under {str(self.root / 'images')!r}"
        )

    def __len__(self) -> int:
        return len(self.rows)

    def image_size(self, i: int) -> tuple[int, int]:
        r = self.rows[i]
        if r.get("ih") and r.get("iw"):
            return int(r["ih"]), int(r["iw"])
        return tuple(self[i].image.shape[:2])  # type: ignore[return-value]

    def __getitem__(self, i: int) -> Sample:
        from PIL import Image

        r = self.rows[i]
        with Image.open(self._path(r["image"])) as im:
            image = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        if r.get("sh") and r.get("sw"):
            sh, sw = int(r["sh"]), int(r["sw"])
        else:
            sh, sw = image.shape[:2]
        maps, image_labels, annotated = [], [], set()
        for cat in self.category_columns:
            cell = (r.get(cat) or "").strip()
            if not cell:
                continue
            annotated.add(cat)
            for entry in cell.split(";"):
                entry = entry.strip()
                if not entry:
                    continue
                if entry.isdigit():
                    image_labels.append(int(entry))
                    continue
                m = decode_label_png(self._path(entry))
                if m.shape != (sh, sw):
                    raise DiversevisError(
                        f"label map {entry!r} is {m.shape[1]}x{m.shape[0]}, index.csv says sw x sh = {sw}x{sh}"
                    )
                maps.append(m)
        label_maps = np.stack(maps) if maps else np.zeros((0, sh, sw), dtype=np.int64)
        return Sample(image, label_maps, tuple(image_labels), frozenset(annotated))

    def describe(self) -> dict:
        return {
            **super().describe(),
            "root": str(self.root),
            "categories": self.category_columns,
        }


# ------------------------------------------------------------------------------------------ colour probe

#: The 11 basic colour terms, in the order of their concept ids 1..11 in :class:`ColorProbe`.
COLOR_NAMES = (
    "black",
    "white",
    "grey",
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
)

#: sRGB prototypes ([0, 1]) of the chromatic terms (achromatic terms are decided by chroma and lightness).
COLOR_PROTOTYPES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "red": ((0.8, 0.08, 0.08), (1.0, 0.0, 0.0), (0.55, 0.05, 0.05)),
    "orange": ((0.95, 0.55, 0.1), (1.0, 0.65, 0.3)),
    "yellow": ((0.95, 0.9, 0.15), (1.0, 1.0, 0.5)),
    "green": ((0.15, 0.6, 0.15), (0.0, 1.0, 0.0), (0.05, 0.3, 0.05), (0.5, 0.8, 0.4), (0.3, 0.5, 0.3)),
    "blue": ((0.1, 0.25, 0.85), (0.0, 0.0, 1.0), (0.05, 0.05, 0.4), (0.5, 0.7, 1.0), (0.0, 0.8, 0.9)),
    "purple": ((0.5, 0.15, 0.6), (0.8, 0.2, 0.8), (0.3, 0.1, 0.4)),
    "pink": ((0.95, 0.6, 0.75), (1.0, 0.75, 0.8), (0.9, 0.4, 0.6)),
    "brown": ((0.5, 0.3, 0.12), (0.35, 0.2, 0.1), (0.6, 0.45, 0.3)),
}

_CHROMA_MIN = 12.0
_BLACK_MAX_L = 25.0
_WHITE_MIN_L = 80.0
_L_WEIGHT = 0.5


@functools.cache
def _prototype_lab() -> tuple[np.ndarray, np.ndarray]:
    from skimage.color import rgb2lab

    names, rgb = [], []
    for name, protos in COLOR_PROTOTYPES.items():
        for p in protos:
            names.append(COLOR_NAMES.index(name))
            rgb.append(p)
    lab = rgb2lab(np.asarray(rgb, dtype=np.float64)[None])[0]
    return lab, np.asarray(names, dtype=np.int64)


def name_colors(rgb: np.ndarray) -> np.ndarray:
    """Name the colour of every pixel with one of the 11 basic colour terms.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(..., 3)`` sRGB values in ``[0, 1]`` (clipped).

    Returns
    -------
    numpy.ndarray
        ``(...)`` int64 index into :data:`COLOR_NAMES` (see the module docstring for the rule).
    """
    from skimage.color import rgb2lab

    rgb = np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0)
    shape = rgb.shape[:-1]
    lab = rgb2lab(rgb.reshape(1, -1, 3))[0]
    L, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    chroma = np.hypot(a, b)
    protos, proto_names = _prototype_lab()
    w = np.array([_L_WEIGHT, 1.0, 1.0])
    d = (((lab[:, None, :] - protos[None, :, :]) * w) ** 2).sum(-1)
    out = proto_names[d.argmin(1)]
    achrom = chroma < _CHROMA_MIN
    grey = np.where(L < _BLACK_MAX_L, 0, np.where(L > _WHITE_MIN_L, 1, 2))
    out = np.where(achrom, grey, out)
    return out.reshape(shape)


class ColorProbe(ConceptDataset):
    """Colour concepts on natural photos: every pixel labelled with its basic colour term.

    Each photo of :func:`diversevis.naturals.natural_images` is cut to its centred square, resized to
    ``size x size`` (Lanczos) and labelled per pixel with :func:`name_colors`; the label maps have the
    image's resolution. Concept ids are ``1 + COLOR_NAMES.index(name)``, category ``"color"``.

    Parameters
    ----------
    size : int
        Image side in pixels.
    folder : str or Path, optional
        Folder of photos (default: the bundled ones).
    max_images : int, optional
        Use only the first photos.
    """

    def __init__(
        self, size: int = 224, *, folder: str | Path | None = None, max_images: int | None = None
    ) -> None:
        from diversevis.images.naturals import natural_images

        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
            raise DiversevisError(f"colour probe image size must be an integer >= 8, got {size!r}")
        self.size = int(size)
        self.folder = folder
        photos = natural_images(folder)
        if max_images is not None:
            photos = photos[: int(max_images)]
        self._photos = photos
        self.concepts = [Concept(i + 1, n, "color") for i, n in enumerate(COLOR_NAMES)]
        self.name = "color-probe"
        self._cache: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self._photos)

    def image_size(self, i: int) -> tuple[int, int]:
        return self.size, self.size

    def __getitem__(self, i: int) -> Sample:
        if i not in self._cache:
            from PIL import Image

            arr = self._photos[i]
            h, w = arr.shape[:2]
            s = min(h, w)
            y0, x0 = (h - s) // 2, (w - s) // 2
            crop = np.ascontiguousarray(arr[y0 : y0 + s, x0 : x0 + s])
            img = np.empty((self.size, self.size, 3), dtype=np.float32)
            for c in range(3):
                ch = Image.fromarray(crop[:, :, c])
                img[:, :, c] = np.asarray(ch.resize((self.size, self.size), Image.Resampling.LANCZOS))
            np.clip(img, 0.0, 1.0, out=img)
            labels = name_colors(img) + 1
            self._cache[i] = Sample(img, labels[None], (), frozenset({"color"}))
        return self._cache[i]

    def describe(self) -> dict:
        return {
            **super().describe(),
            "size": self.size,
            "natural_images": str(self.folder) if self.folder else "bundled",
            "color_naming": "CIELAB: chroma < 12 achromatic (L<25 black, L>80 white, else grey); "
            "else nearest prototype, L weighted 0.5",
        }
