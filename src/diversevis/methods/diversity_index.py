"""The calibrated diversity index (DI): 0 for a simple cell, 1 for an energy-model complex cell.

A diverse set's raw spread (mean or min pairwise RMS distance, in pixels or in the distance layer)
depends on the image size, the norm, ``N``, the activation floor and the distance space, so it cannot
be compared across units, layers or networks. The DI rescales it by what two reference cells reach
under *the same* settings (Ding, ..., Cadena, Ecker, Tolias: simulated simple cells score 0, complex
cells 1):

    DI = (d - d_simple) / (d_complex - d_simple)

* ``d`` is the set's mean (``di``) or minimum (``di_min``) pairwise RMS distance, in pixel space
  (around grey) and, with a distance layer, in that layer's rectified features (``di_feature``,
  ``di_feature_min``);
* ``d_simple`` / ``d_complex`` are the same statistics of floor-mode sets of reference Gabor cells of
  the unit's image size and channels: a linear (simple) cell ``<g_0, x>`` and a quadrature-pair energy
  (complex) cell in its amplitude form ``sqrt(<g_0, x>^2 + <g_90, x>^2)`` (degree 1 in the image like
  the simple cell and a bias-free ReLU network, so a floor leaves both cells the same slack), each at
  four orientations (0, 45, 90, 135 degrees; wavelength a third of the shorter side, at
  least 3 px; envelope SD a fifth), averaged over orientations. They are optimised with the unit's
  ``N``, norm, seed, loop and diversity term (``distance``, ``tau``, distance layer of the same
  network) at the floor of the set: the set's own floor in floor mode; in lambda mode its minimum
  ratio to the MEI rounded to 0.05 and clipped to [0.5, 0.95] (``calibration_floor``). Their MEIs are
  known in closed form (``rho`` for image norm ``rho``). They stop by the set's rule with the
  floor-mode plateau defaults (:meth:`~diversevis.methods.settings.DiverseSettings.loop`).

So DI compares a unit with reference cells at matched activation: 0 means no more spread than a
linear filter's cone allows, 1 as much as a phase-invariant energy unit, above 1 more (e.g. a
position-invariant texture unit). Calibrations are cached in memory and on disk
(``<cache>/diversity_index/``), so a sweep computes one per layer.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from diversevis.core.cache import atomic_write_json, cache_dir
from diversevis.core.objectives import diversity_value, pairwise_rms_matrix
from diversevis.core.optimize import Watched, optimize_groups
from diversevis.core.params import PixelImage, image_hw
from diversevis.methods.floor import FloorConstraint
from diversevis.methods.problem import Problem, _seeded_images
from diversevis.methods.settings import DiverseSettings
from diversevis.models.synthetic import gabor

__all__ = ["Calibration", "calibrate", "set_distances", "calibrated_index", "calibration_floor", "index_spec"]
__all__ += ["clipped_linear_optimum"]

#: Orientations of the reference cells, in degrees.
ORIENTATIONS = (0.0, 45.0, 90.0, 135.0)
_MEMORY: dict[str, Calibration] = {}


def calibrated_index(d: float, d_simple: float, d_complex: float) -> float | None:
    """``(d - d_simple) / (d_complex - d_simple)``; ``None`` when the references do not separate."""
    span = d_complex - d_simple
    if not math.isfinite(d) or not span > 1e-12 * max(abs(d_complex), 1e-30):
        return None
    return (d - d_simple) / span


def set_distances(images: torch.Tensor, feats: torch.Tensor | None = None) -> dict[str, float]:
    """Mean and min pairwise RMS distances of a set, in pixels (around grey) and in features.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, C, H, W)`` display-space images (N >= 2).
    feats : torch.Tensor, optional
        ``(N, ...)`` distance-layer features of the same images.

    Returns
    -------
    dict
        ``pixel_mean``, ``pixel_min`` and, with ``feats``, ``feature_mean``, ``feature_min``.
    """
    out = {}
    for name, x in (("pixel", images - 0.5), ("feature", feats)):
        if x is None:
            continue
        d = pairwise_rms_matrix(x.detach().flatten(1).double())
        off = d[~torch.eye(len(d), dtype=torch.bool, device=d.device)]
        out[f"{name}_mean"], out[f"{name}_min"] = float(off.mean()), float(off.min())
    return out


def calibration_floor(min_ratio: float | None, floor: float | None) -> float | None:
    """The floor the references are run at: the set's floor, or (lambda mode) its rounded min ratio."""
    if floor is not None:
        return floor
    if min_ratio is None or not math.isfinite(min_ratio):
        return None
    return min(0.95, max(0.5, round(min_ratio * 20) / 20))


@dataclass(frozen=True)
class Calibration:
    """The reference cells' distance statistics (``set_distances`` keys) for one setting."""

    floor: float
    simple: dict[str, float]
    complex: dict[str, float]

    def index(self, dists: dict[str, float]) -> dict[str, float | None]:
        """``di``, ``di_min`` (pixels) and ``di_feature``, ``di_feature_min`` (if measured) of a set."""
        names = {"pixel_mean": "di", "pixel_min": "di_min", "feature_mean": "di_feature"}
        names["feature_min"] = "di_feature_min"
        return {
            names[k]: calibrated_index(v, self.simple[k], self.complex[k])
            for k, v in dists.items()
            if k in self.simple
        }

    def as_dict(self) -> dict[str, Any]:
        return {"floor": self.floor, "simple": self.simple, "complex": self.complex}


def _reference_filters(hw: tuple[int, int], channels: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(O, C, H, W)`` even Gabors and their orthonormalised odd partners, one per orientation."""
    lam = max(min(hw) / 3, 3.0)
    even, odd = [], []
    for deg in ORIENTATIONS:
        kw = dict(wavelength=lam, theta=math.radians(deg), channels=channels)
        g0 = gabor(hw, phase=0.0, **kw)
        g90 = gabor(hw, phase=math.pi / 2, **kw)
        g90 = g90 - (g90 * g0).sum() * g0
        even.append(g0)
        odd.append(g90 / g90.norm())
    return torch.stack(even).to(device), torch.stack(odd).to(device)


def clipped_linear_optimum(g: torch.Tensor, norm: float, iters: int = 60) -> float:
    """Largest response ``<z, g>`` of a unit-norm linear filter ``g`` over images ``0.5 + z`` inside
    ``[0, 1]`` with ``||z|| <= norm``: the reference cells' MEI when images keep the display range.

    The optimum is ``z = clip(t g, -0.5, 0.5)`` with the largest ``t`` whose ``||z||`` is at most
    ``norm`` (found by bisection); it is ``norm`` itself when ``norm * g`` stays in range, and
    ``0.5 * sum|g|`` when even the saturated image is shorter than ``norm``.

    Parameters
    ----------
    g : torch.Tensor
        The filter, any shape, ``||g|| = 1``.
    norm : float
        The images' L2 norm around grey (display units).
    """
    g = g.double().flatten()
    length = lambda t: float(torch.clamp(t * g, -0.5, 0.5).norm())  # noqa: E731  (grows with t)
    peak = float(g.abs().max())
    if norm * peak <= 0.5:
        return float(norm)  # nothing clips: the unconstrained optimum
    lo, hi = norm, 0.5 / float(g.abs()[g.abs() > 0].min())  # at hi every pixel saturates
    if length(hi) <= norm:
        return float(0.5 * g.abs().sum())
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if length(mid) <= norm else (lo, mid)
    return float((torch.clamp(lo * g, -0.5, 0.5) * g).sum())


def _reference_meis(even: torch.Tensor, odd: torch.Tensor, rho: float, display_range: bool) -> torch.Tensor:
    """``(2 O,)`` MEI activations of the simple then the complex reference cells: ``rho`` at norm
    ``rho``, or their best inside ``[0, 1]`` (:func:`clipped_linear_optimum`; for a complex cell the
    better of its two filters' optima, a lower bound on its energy optimum)."""
    if not display_range:
        return torch.full((2 * len(even),), rho, device=even.device)
    simple = [clipped_linear_optimum(g, rho) for g in even]
    complex_ = [max(a, clipped_linear_optimum(b, rho)) for a, b in zip(simple, odd)]
    return torch.tensor(simple + complex_, device=even.device, dtype=torch.float32)


def _key(prob: Problem, s: DiverseSettings, floor: float) -> str:
    """A digest of everything the references depend on (for the caches)."""
    parts: dict[str, Any] = {
        "v": 4,
        "hw": list(image_hw(prob.placement.image_size)),
        "channels": prob.net.in_channels,
        "norm": round(float(prob.norm), 6),
        "floor": floor,
        "mean_floor": s.mean_floor,
        **{k: getattr(s, k) for k in ("n_images", "distance", "tau", "seed", "precondition", "lr")},
        **{k: getattr(s, k) for k in ("max_iter", "patience", "ema", "precision", "stop")},
        **s.plateau("floor"),
        "orientations": ORIENTATIONS,
    }
    if s.display_range:  # (absent when off, so caches written before the option stay valid)
        parts["display_range"] = True
    if prob.distance_layer is not None:  # the network itself: its features of a fixed probe
        probe = torch.rand(2, prob.net.in_channels, *image_hw(prob.placement.image_size),
                           generator=torch.Generator().manual_seed(0)).to(prob.net.device)  # fmt: skip
        with torch.no_grad():
            f = prob.features(probe).double().cpu()
        parts["layer"] = [prob.net.spec or prob.net.name, prob.distance_layer, f"{float(f.sum()):.6e}"]
        parts["probe"] = f"{float((f**2).sum()):.6e}"
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def calibrate(prob: Problem, s: DiverseSettings, floor: float, *, progress: bool = False) -> Calibration:
    """The reference simple and complex cells' set distances for ``prob``'s geometry and ``s``.

    Both cells at every orientation are optimised in one batch (one group each) in floor mode at
    ``floor``; the result is cached in memory and on disk.
    """
    key = _key(prob, s, floor)
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_dir() / "diversity_index" / f"{key}.json"
    try:
        data = json.loads(path.read_text())
        cal = Calibration(float(data["floor"]), data["simple"], data["complex"])
    except (OSError, ValueError, KeyError, TypeError):
        cal = _run_references(prob, s, floor, progress)
        try:
            atomic_write_json(path, cal.as_dict())
        except OSError:
            pass  # a read-only cache only costs the recomputation next time
    _MEMORY[key] = cal
    return cal


def _run_references(prob: Problem, s: DiverseSettings, floor: float, progress: bool) -> Calibration:
    """Optimise floor-mode sets of the reference cells and average their distances per kind."""
    net, N, rho = prob.net, s.n_images, float(prob.norm)
    hw = image_hw(prob.placement.image_size)
    even, odd = _reference_filters(hw, net.in_channels, net.device)
    O = len(ORIENTATIONS)
    G = 2 * O  # groups 0..O-1: simple cells; O..2O-1: complex cells
    # each cell's MEI: rho at norm rho; with display_range, its best image inside [0, 1]
    mei = _reference_meis(even, odd, rho, s.display_range)
    fc = FloorConstraint(floor, mei, N, mean_floor=s.mean_floor)
    param = PixelImage(
        G * N, net.in_channels, hw, prob.norm, precondition=s.precondition, device=net.device,
        clip=s.display_range,
    )  # fmt: skip
    with torch.no_grad():
        param.raw.copy_(_seeded_images(G, N, net.in_channels, hw, s.seed))
    need_feats = prob.distance_layer is not None

    def responses(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        o = (groups % O).repeat_interleave(N)
        z = (x - 0.5).flatten(1)
        p0 = (z * even[o].flatten(1)).sum(1)
        p90 = (z * odd[o].flatten(1)).sum(1)
        simple = (groups < O).repeat_interleave(N)
        return torch.where(simple, p0, torch.sqrt(p0**2 + p90**2 + 1e-12)).view(-1, N)

    def loss_fn(x: torch.Tensor, groups: torch.Tensor) -> Watched:
        f = prob.features(x) if need_feats else x - 0.5
        d = diversity_value(f.reshape(-1, N, *f.shape[1:]), s.distance, s.tau)
        return fc.watched(x, responses(x, groups), d, groups)

    optimize_groups(
        param, loss_fn, groups=G, **s.loop("floor"), progress=progress, desc="DI references", compact=True
    )
    stats: dict[str, list[dict[str, float]]] = {"simple": [], "complex": []}
    for g in range(G):
        images, _ = fc.images(g)
        with torch.no_grad():
            feats = prob.features(images) if need_feats else None
        stats["simple" if g < O else "complex"].append(set_distances(images, feats))
    mean = {k: {m: sum(d[m] for d in v) / len(v) for m in v[0]} for k, v in stats.items()}
    return Calibration(floor, mean["simple"], mean["complex"])


def index_spec(
    prob: Problem,
    s: DiverseSettings,
    images: torch.Tensor,
    feats: torch.Tensor | None,
    ratios: torch.Tensor | None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """The run-spec entries of a set's DI: ``diversity_index`` (``di``, ``di_min``, ...) and
    ``di_calibration`` (the floor, the reference cells' distances and the set's own)."""
    if not s.calibrate:
        return {}
    min_ratio = None if ratios is None else float(ratios.min())
    floor = calibration_floor(min_ratio, s.floor)
    if floor is None:
        return {
            "diversity_index": None,
            "di_calibration": "no positive MEI activation: the DI is calibrated at the set's activation relative to it",
        }
    cal = calibrate(prob, s, floor, progress=progress)
    dists = set_distances(images, feats if prob.distance_layer is not None else None)
    spec = {"diversity_index": cal.index(dists), "di_calibration": {**cal.as_dict(), "set": dists}}
    peak = _reference_peak(prob) if s.display_range else 0.0
    if peak > 0.5:
        warnings.warn(
            f"display_range: at norm {float(prob.norm):.3g} the DI's reference cells' best images leave "
            f"[0, 1] (peak {peak:.2f} around grey > 0.5), so the index is not calibrated here (a simple "
            "cell can score near 1); lower the contrast for a calibrated DI",
            stacklevel=2,
        )
        spec["di_calibration"]["references_clipped"] = True
    return spec


def _reference_peak(prob: Problem) -> float:
    """Largest pixel deviation from grey of the reference cells' unclipped optimal images (norm x filter)."""
    even, odd = _reference_filters(image_hw(prob.placement.image_size), prob.net.in_channels, "cpu")
    return float(prob.norm) * float(torch.cat([even, odd]).abs().max())
