"""Response retention: does a unit keep its response to its natural exemplars under transformations that
diverse feature visualisation never optimised for? (method.md E.3, "our own validation")

:func:`response_retention` takes the unit's top ``k`` natural patches at the DFV contrast
(:func:`~diversevis.methods.exemplars.top_patches`, ``match_contrast=True``) and reads the unit (pre-ReLU,
exactly as :func:`diversevis.diverse` does) on transformed copies, each again at matched contrast
(``0.5 + rho * (p - mu) / ||p - mu||`` as for the originals, so ``||x - 0.5||_2 = rho``):

* **translation**: 1/8 and 1/4 of the receptive field (at least 1 px) up, down, left and right, cropped
  from the source photograph (the pool locations are known); only a window that leaves the photograph is
  reflected at its border (``spec["reflected_contexts"]`` counts those patches);
* **phase**: the phase of the patch's dominant grating component moved by pi/2, pi and 3 pi/2
  (:func:`shift_dominant_phase` with ``band=phase_band``; see below);
* **rotation**: -20, -10, +10, +20 degrees about the patch centre (bilinear);
* **elastic**: 4 seeded smooth random displacement fields (Gaussian-filtered noise, RMS 1.5 px,
  smoothing ``max(2, rf / 8)`` px).

Spatial transforms act on a crop of the photograph around the patch (``rf + 2 * margin`` px) and keep its
centre, so rotations show no grey corners; the phase shift acts on the matched patch itself.

The retention of a transformation is the mean over patches of ``p(T x) / p(x)`` over the patches with
``p(x) > 0``: 1 for an invariance, less for a loss, negative when the response changes sign (a linear unit
under a half-cycle phase shift); it may exceed 1. A family's retention is the mean of its
transformations', ``overall`` the mean of the four families.

Why ``phase_band=inf``. Natural patches have a ~1/f spectrum, so their strongest FFT bin is usually one of
the lowest frequencies and holds a small share of the energy: moving that bin alone (``phase_band=0``)
barely touches what an oriented unit sees, and lowers a linear (simple) and an energy (complex) cell alike
(16 px synthetic cells, 16 of 512 patches, pi: 0.73 and 0.74). By default every bin on the dominant
frequency's side of the origin moves (the phase of all the structure along the dominant orientation, a
Hilbert-type shift): then the complex cell keeps 0.99 and the simple cell falls to -0.68 at pi.

>>> from diversevis.methods.retention import response_retention
>>> r = response_retention("vgg16-paper", "conv2_1", 3, k=32, candidates=2048)
>>> r.translation, r.phase, r.rotation, r.elastic, r.overall
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diversevis.core.cache import atomic_write_json, output_dir
from diversevis.core.checks import SEED_MAX, finite, integer
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.spec import common_spec
from diversevis.images.naturals import (
    DEFAULT_SCALES,
    _Locations,
    _rescaled,
    _resolve_folder,
    _sample_locations,
    dataset_mean,
)
from diversevis.methods.exemplars import _match, top_patches
from diversevis.methods.mei_phase import _check_band, dominant_frequency, shift_dominant_phase
from diversevis.methods.problem import Problem, _prepare

__all__ = ["FAMILIES", "dominant_frequency", "shift_dominant_phase", "RetentionResult", "response_retention"]

#: The four families of held-out transformations, in report order.
FAMILIES: tuple[str, ...] = ("translation", "phase", "rotation", "elastic")
#: Translations as fractions of the receptive-field side, each in the four :data:`DIRECTIONS`.
SHIFTS: tuple[float, ...] = (1 / 8, 1 / 4)
#: (name, dy, dx) of the shift directions (rows grow downwards).
DIRECTIONS = (("up", -1, 0), ("down", 1, 0), ("left", 0, -1), ("right", 0, 1))
#: Phase shifts of the dominant grating component, radians.
PHASE_SHIFTS: tuple[float, ...] = (math.pi / 2, math.pi, 3 * math.pi / 2)
#: Rotations about the patch centre, degrees.
ROTATIONS: tuple[float, ...] = (-20.0, -10.0, 10.0, 20.0)
#: RMS displacement of the elastic deformations (pixels) and how many are drawn.
ELASTIC_AMPLITUDE, ELASTIC_DRAWS = 1.5, 4
#: Patches per forward pass.
BATCH = 256


# ------------------------------------------------------------------------------- spatial transforms


def _margin(size: int) -> int:
    """Context around the patch that every spatial transform needs (pixels per side)."""
    a = math.radians(max(abs(r) for r in ROTATIONS))
    rot = math.ceil(size / 2 * (abs(math.cos(a)) + abs(math.sin(a)) - 1)) + 1
    return max(max(1, round(max(SHIFTS) * size)), rot, math.ceil(3 * ELASTIC_AMPLITUDE) + 1)


def _contexts(locs: _Locations, order: Tensor, margin: int) -> tuple[Tensor, int]:
    """``(k, 3, s + 2m, s + 2m)`` crops of the photographs around the pool patches ``order`` (display
    space) and how many of them had to be reflected at a photograph's border."""
    s, m = locs.size, margin
    out = np.empty((len(order), s + 2 * m, s + 2 * m, 3), dtype=np.float32)
    reflected = 0
    for j, i in enumerate(int(v) for v in order):
        img = _rescaled(locs.key, *locs.sources[locs.src[i]])
        y0, x0 = int(locs.ys[i]) - m, int(locs.xs[i]) - m
        y1, x1 = y0 + s + 2 * m, x0 + s + 2 * m
        h, w = img.shape[:2]
        pads = ((max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w)), (0, 0))
        crop = img[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
        if any(p for pair in pads[:2] for p in pair):
            reflected += 1
            crop = np.pad(crop, pads, mode="reflect")
        out[j] = crop
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), reflected


def _crop(ctx: Tensor, margin: int, size: int, dy: int = 0, dx: int = 0) -> Tensor:
    """The ``size x size`` window of context crops, ``(dy, dx)`` pixels off their centre."""
    top, left = margin + dy, margin + dx
    return ctx[..., top : top + size, left : left + size]


def _resample(ctx: Tensor, grid: Tensor) -> Tensor:
    return F.grid_sample(ctx, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def rotate(ctx: Tensor, degrees: float) -> Tensor:
    """``(N, C, S, S)`` images rotated by ``degrees`` about their centre (bilinear, reflected edges;
    positive angles turn the image clockwise on screen, rows growing downwards)."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0]])
    theta = theta.to(ctx).expand(ctx.shape[0], 2, 3)
    return _resample(ctx, F.affine_grid(theta, list(ctx.shape), align_corners=False))


def _gaussian_kernel(sigma: float) -> Tensor:
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def displacement_field(
    n: int, side: int, amplitude: float, sigma: float, generator: torch.Generator
) -> Tensor:
    """``(n, 2, side, side)`` smooth random displacements ``(dy, dx)`` in pixels.

    White noise filtered by a Gaussian of ``sigma`` px (separable, reflected edges), each field scaled to
    an RMS displacement ``sqrt(mean(dy^2 + dx^2)) = amplitude``.
    """
    noise = torch.randn(n * 2, 1, side, side, generator=generator)
    g = _gaussian_kernel(min(sigma, (side - 1) / 3))
    r = len(g) // 2
    noise = F.conv2d(F.pad(noise, (r, r, 0, 0), mode="reflect"), g.view(1, 1, 1, -1))
    noise = F.conv2d(F.pad(noise, (0, 0, r, r), mode="reflect"), g.view(1, 1, -1, 1))
    field = noise.view(n, 2, side, side)
    rms = field.pow(2).sum(1).mean((1, 2)).sqrt().clamp_min(1e-12)
    return field * (amplitude / rms).view(n, 1, 1, 1)


def elastic(ctx: Tensor, field: Tensor) -> Tensor:
    """``(N, C, S, S)`` images warped by ``(N, 2, S, S)`` pixel displacements ``(dy, dx)``: output pixel
    ``p`` samples the input at ``p + field(p)`` (bilinear, reflected edges)."""
    n, _, h, w = ctx.shape
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).to(ctx).expand(n, 2, 3)
    grid = F.affine_grid(eye, [n, 1, h, w], align_corners=False)
    shift = torch.stack((field[:, 1] * (2.0 / w), field[:, 0] * (2.0 / h)), dim=-1)
    return _resample(ctx, grid + shift.to(ctx))


# --------------------------------------------------------------------------------- the transformations


@dataclass(frozen=True)
class _Step:
    """One transformation: ``fn(contexts (k, 3, S, S), matched patches (k, 3, s, s)) -> images``; the
    images are contrast-matched already when ``matched``, else raw crops matched afterwards."""

    family: str
    name: str
    fn: Callable[[Tensor, Tensor], Tensor]
    matched: bool


def _phase_shift_or_nan(p: Tensor, dphi: float, band: float) -> Tensor:
    """:func:`shift_dominant_phase`, or nan pixels for a patch without a movable grating component
    (a uniform patch): its phase retention is undefined and left out of the family's mean."""
    try:
        return shift_dominant_phase(p, dphi, band=band)
    except DiversevisError:
        return torch.full_like(p, math.nan)


def _phase_batch(patches: Tensor, dphi: float, band: float) -> Tensor:
    """:func:`shift_dominant_phase` of every patch, rescaled to the patch's own norm around grey."""
    out = torch.stack([_phase_shift_or_nan(p, dphi, band) for p in patches])
    d0 = (patches - 0.5).flatten(1).norm(dim=1)
    d = (out - 0.5).flatten(1).norm(dim=1).clamp_min(1e-30)
    return 0.5 + (out - 0.5) * (d0 / d).view(-1, 1, 1, 1)


def _elastic_sigma(size: int) -> float:
    """Smoothing of the elastic displacement fields, pixels."""
    return max(2.0, size / 8)


def _steps(size: int, margin: int, k: int, seed: int, band: float) -> list[_Step]:
    """Every held-out transformation of the four families, in report order."""
    steps = []
    for frac in SHIFTS:
        px = max(1, round(frac * size))
        for where, dy, dx in DIRECTIONS:
            fn = lambda c, p, dy=dy * px, dx=dx * px: _crop(c, margin, size, dy, dx)  # noqa: E731
            steps.append(_Step("translation", f"shift {px}px {where}", fn, False))
    for dphi in PHASE_SHIFTS:
        fn = lambda c, p, dphi=dphi: _phase_batch(p, dphi, band)  # noqa: E731
        steps.append(_Step("phase", f"phase {math.degrees(dphi):+.0f}deg", fn, True))
    for deg in ROTATIONS:
        fn = lambda c, p, deg=deg: _crop(rotate(c, deg), margin, size)  # noqa: E731
        steps.append(_Step("rotation", f"rotate {deg:+.0f}deg", fn, False))
    gen = torch.Generator().manual_seed(seed)
    for i in range(ELASTIC_DRAWS):
        field = displacement_field(k, size + 2 * margin, ELASTIC_AMPLITUDE, _elastic_sigma(size), gen)
        fn = lambda c, p, field=field: _crop(elastic(c, field), margin, size)  # noqa: E731
        steps.append(_Step("elastic", f"elastic #{i + 1}", fn, False))
    return steps


def _responses(prob: Problem, images: Tensor) -> np.ndarray:
    """Pre-ReLU target values ``(N,)`` (float64) of display-space images, :data:`BATCH` at a time."""
    net = prob.net
    out = []
    with torch.no_grad():
        for i in range(0, len(images), BATCH):
            x = images[i : i + BATCH].to(net.device, torch.float32)
            out.append(prob.evaluate(x, need_features=False)[0].double().cpu())
    values = torch.cat(out).numpy()
    if not np.isfinite(values).all():
        raise DiversevisError(
            f"{net.name} returned non-finite responses to transformed natural patches: check the model for "
            "nan/inf weights or activations, or lower the contrast"
        )
    return values


def _ratios(
    prob: Problem, steps: list[_Step], ctx: Tensor, base: Tensor, match: Callable, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The original responses ``p(x)`` ``(k,)`` and the ``(k, T)`` ratios ``p(T x) / p(x)`` (nan rows
    for the patches with ``p(x) <= 0``)."""
    from tqdm.auto import tqdm

    r0 = _responses(prob, base)
    ok = r0 > 0
    out = np.full((len(base), len(steps)), np.nan)
    for j, step in enumerate(tqdm(steps, desc="retention", disable=not progress, leave=False)):
        x = step.fn(ctx, base)
        x = x if step.matched else match(x)
        defined = torch.isfinite(x.flatten(1)).all(1).numpy()  # nan: transformation undefined there
        r = _responses(prob, torch.where(torch.from_numpy(defined).view(-1, 1, 1, 1), x, 0.5))
        rows = ok & defined
        out[rows, j] = r[rows] / r0[rows]
    return r0, out


def _column_means(values: np.ndarray) -> np.ndarray:
    """Mean of each column over its non-nan rows (nan for an all-nan column), without warnings."""
    ok = ~np.isnan(values)
    total = np.where(ok, values, 0.0).sum(0)
    return np.where(ok.sum(0) > 0, total / np.maximum(ok.sum(0), 1), np.nan)


# ------------------------------------------------------------------------------------------ the result


@dataclass(frozen=True, eq=False)
class RetentionResult:
    """How much of a unit's response to its top natural patches survives held-out transformations.

    Attributes
    ----------
    translation, phase, rotation, elastic : float
        Retention of each family (mean of its transformations' mean ratios ``p(T x) / p(x)``).
    overall : float
        Mean of the four family retentions.
    transforms, families : tuple of str
        ``(T,)`` name and family of each transformation, in the columns' order.
    per_patch : numpy.ndarray
        ``(k, T)`` ratios ``p(T x) / p(x)``; rows of excluded patches (``p(x) <= 0``) are nan.
    activations : numpy.ndarray
        ``(k,)`` pre-ReLU responses to the original contrast-matched patches, in ``top_patches`` order.
    spec : dict
        Model, layer, unit, k, candidates, contrast, norm, seed, the transformations, versions, ...
    """

    translation: float
    phase: float
    rotation: float
    elastic: float
    overall: float
    transforms: tuple[str, ...]
    families: tuple[str, ...]
    per_patch: np.ndarray
    activations: np.ndarray
    spec: dict[str, Any]

    @classmethod
    def build(cls, per_patch: np.ndarray, steps: list[_Step], r0: np.ndarray, spec: dict) -> RetentionResult:
        """Summarise ``(k, T)`` ratios into family retentions and their mean."""
        cols = _column_means(per_patch)
        fam = np.array([s.family for s in steps])
        fams = {f: float(cols[fam == f].mean()) for f in FAMILIES}
        return cls(
            **fams,
            overall=float(np.mean(list(fams.values()))),
            transforms=tuple(s.name for s in steps),
            families=tuple(fam.tolist()),
            per_patch=per_patch,
            activations=r0,
            spec=spec,
        )

    @property
    def per_transform(self) -> dict[str, float]:
        """Retention of each transformation (name -> mean ratio over the included patches)."""
        return {n: float(v) for n, v in zip(self.transforms, _column_means(self.per_patch))}

    @property
    def included(self) -> int:
        """Number of patches with a positive original response (the others are excluded)."""
        return int((self.activations > 0).sum())

    def metrics(self) -> dict[str, Any]:
        """The headline numbers as plain Python values (nan becomes ``None``)."""
        out = {f: getattr(self, f) for f in (*FAMILIES, "overall")}
        out["per_transform"] = self.per_transform
        return {**_nan_to_none(out), "included": self.included, "k": len(self.activations)}

    def save(self, directory: str | Path) -> Path:
        """Write ``retention.json`` (spec, metrics, transforms, activations, per-patch ratios) atomically."""
        out = output_dir(directory)
        data = {
            "spec": self.spec,
            "metrics": self.metrics(),
            "transforms": list(self.transforms),
            "families": list(self.families),
            "activations": self.activations.tolist(),
            "per_patch": _nan_to_none(self.per_patch.tolist()),
        }
        atomic_write_json(out / "retention.json", data)
        return out

    def __repr__(self) -> str:
        s = self.spec
        fams = ", ".join(f"{f}={getattr(self, f):.3f}" for f in FAMILIES)
        return (
            f"RetentionResult({s.get('model')} {s.get('layer')} unit={s.get('unit')}: {fams}, "
            f"overall={self.overall:.3f}; {self.included}/{len(self.activations)} patches)"
        )


def _nan_to_none(v: Any) -> Any:
    """``v`` with every nan float (in nested dicts and lists) replaced by ``None`` (valid JSON)."""
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return None if isinstance(v, float) and math.isnan(v) else v


# ------------------------------------------------------------------------------------------ the method


def _check_arguments(k: Any, candidates: Any, contrast: Any, norm: Any, seed: Any) -> tuple:
    """The checked ``(k, candidates, contrast, norm, seed)`` (raises on a bad one)."""
    k = integer("k", k, 1)
    candidates = integer("candidates", candidates, 1)
    if k > candidates:
        raise DiversevisError(f"k={k} exceeds candidates={candidates}: keep k <= candidates (the pool size)")
    contrast = finite("contrast", contrast, 0.0, open_lo=True)
    norm = None if norm is None else finite("norm", norm, 0.0, open_lo=True)
    return k, candidates, contrast, norm, integer("seed", seed, 0, SEED_MAX)


def _transform_spec(size: int, margin: int, band: float) -> dict[str, Any]:
    """The transformations' parameters, for the run spec."""
    return {
        "translation_px": [max(1, round(f * size)) for f in SHIFTS],
        "translation_fractions": list(SHIFTS),
        "directions": [d[0] for d in DIRECTIONS],
        "phase_dphi": list(PHASE_SHIFTS),
        "phase_band": None if band == math.inf else band,  # None: the dominant frequency's half-plane
        "rotation_degrees": list(ROTATIONS),
        "elastic_amplitude_px": ELASTIC_AMPLITUDE,
        "elastic_smooth_px": _elastic_sigma(size),
        "elastic_draws": ELASTIC_DRAWS,
        "margin": margin,
    }


def response_retention(
    model: Network | nn.Module | str,
    layer: str,
    unit: int | None = None,
    *,
    k: int = 32,
    candidates: int = 2048,
    contrast: float = 0.5,
    norm: float | None = None,
    seed: int = 0,
    images: str | Path | None = None,
    phase_band: float = math.inf,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> RetentionResult:
    """Retention of a unit's response to its top natural patches under held-out transformations.

    Parameters
    ----------
    model : Network, nn.Module or str
        The network (a zoo name such as ``"vgg16-paper"`` is loaded); RGB input.
    layer : str
        Target layer (alias or dot path), read before any following ReLU.
    unit : int, optional
        Channel index of the target unit.
    k : int
        Number of top natural patches, ``1 <= k <= candidates``.
    candidates : int
        Size of the random natural-patch pool (``top_patches``) they are the top of.
    contrast : float
        L2 norm around grey of every patch, original or transformed, as a fraction of the mean
        natural-patch norm of the receptive-field size (0.5: the DFV contrast).
    norm : float, optional
        Absolute L2 norm (display units) overriding ``contrast``.
    seed : int
        Seed of the patch pool and of the elastic fields; the result is deterministic on CPU.
    images : str or Path, optional
        Folder of natural images (default: the bundled photos).
    phase_band : float
        ``band`` of :func:`shift_dominant_phase` for the phase family, cycles/pixel (default ``inf``: the
        dominant frequency's half-plane; 0: the dominant bin alone; see the module docstring).
    device : str, optional
        Move the network there (default: where it is).
    progress : bool
        Show a progress bar over the transformations.

    Returns
    -------
    RetentionResult
        Per-family retention, ``overall``, the ``(k, T)`` per-patch ratios and the run spec.

    Raises
    ------
    DiversevisError
        A bad target, ``k``, ``candidates``, ``contrast``, ``norm``, ``seed`` or ``phase_band``; a non-RGB
        network; or no top patch driving the unit above 0 (retention is then undefined).
    """
    t0 = time.perf_counter()
    k, candidates, contrast, norm, seed = _check_arguments(k, candidates, contrast, norm, seed)
    band = _check_band(phase_band)
    net = _prepare(model, device)
    top = top_patches(
        net, layer, unit, k=k, candidates=candidates, contrast=contrast, norm=norm, images=images, seed=seed
    )
    prob = Problem.build(
        net, layer, unit, None, "max", contrast=contrast, norm=norm, distance_layer=None, images_folder=images
    )
    size = prob.placement.image_size
    margin = _margin(size)
    locs = _sample_locations(size, candidates, _resolve_folder(images), DEFAULT_SCALES, seed)
    ctx, reflected = _contexts(locs, top.indices, margin)
    mu = torch.from_numpy(dataset_mean(images).astype(np.float32)).view(3, 1, 1)

    def match(p: Tensor) -> Tensor:
        return _match(p, mu, prob.norm)[0]

    steps = _steps(size, margin, k, seed, band)
    r0, per_patch = _ratios(prob, steps, ctx, match(_crop(ctx, margin, size)), match, progress)
    if not (r0 > 0).any():
        raise DiversevisError(
            f"none of the top {k} natural patches drives {net.display_name(layer)} unit {unit} above 0 "
            f"(best {r0.max():.4g}), so retention is undefined; choose a responsive unit or more candidates"
        )
    spec = common_spec(
        method="retention",
        **prob.spec(),
        contrast=contrast if norm is None else None,
        k=k,
        candidates=candidates,
        seed=seed,
        match_contrast=True,
        scales=list(DEFAULT_SCALES),
        natural_images=str(images) if images else "bundled",
        transforms=_transform_spec(size, margin, band),
        reflected_contexts=reflected,
        included=int((r0 > 0).sum()),
        device=str(net.device),
        dtype="float32",
        seconds=round(time.perf_counter() - t0, 3),
    )
    return RetentionResult.build(per_patch, steps, r0, spec)
