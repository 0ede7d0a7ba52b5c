"""Aligning one unit's invariance manifold to other units: the A->B similarity (method.md E.2).

Unit A's manifold is an :class:`~diversevis.core.cppn.ImplicitGenerator`: every latent ``z`` gives an
image ``g_A(c, z)`` of the pixel coordinates ``c``. An affine map of the coordinates,
``c -> M c + t`` with ``M = R(angle) diag(exp(log_scale)) F`` (``F`` an optional reflection), moves,
rotates and scales every image of the manifold at once (the image norm stays fixed). The A->B
similarity is the largest mean activation ratio of unit B (activation / B's MEI activation) over A's
latent grid that such a map achieves: 1 when A's whole invariance set, suitably placed, drives B as well
as B's own MEI; near 0 when most of it does not (a complex cell's phase loop on a simple cell).

The objective is multi-modal in the angle (a Gabor-like manifold has a match every half turn, and a
poor one in between), so the fit starts from several angles, with and without the reflection. A and
the B's are units of the same layer (same receptive field, same image size), so every B is read out of
the same forward pass, which makes the search two-staged:

1. *scan*: A's grid is rendered once under each of ``angles x scales x reflections`` starting maps
   (no gradients) and one forward pass gives every B's mean ratio under every map;
2. *refine*: each B's ``refine`` best starting maps are refined by gradient ascent on all parameters
   (rotation, log-scale, translation), every (B, start) pair an independent group of one batch of the
   shared loop (:func:`~diversevis.core.optimize.optimize_groups`); the best refined map wins.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from diversevis.core.checks import check_fields, check_loop
from diversevis.core.cppn import ImplicitGenerator, latent_grid
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.optimize import Watched, optimize_groups
from diversevis.core.params import fixed_norm
from diversevis.core.settings import Settings
from diversevis.methods.problem import Problem, _check_units, _prepare, mei_value

__all__ = [
    "AlignSettings",
    "Alignment",
    "transform_matrix",
    "transform_coords",
    "render_transformed",
    "mean_ratio",
    "align",
]


@dataclasses.dataclass(frozen=True)
class AlignSettings(Settings):
    """Hyperparameters of :func:`align`.

    Attributes
    ----------
    angles : int
        Angles of the scan, evenly spaced over a full turn.
    scales : int
        Isotropic scales of the scan, log-spaced over ``[-max_log_scale / 2, max_log_scale / 2]``
        (1: scale 1 only).
    reflect : bool
        Also scan every map with a reflection (``y -> -y`` before the rotation); the better wins.
    refine : int
        Best starting maps of the scan refined per B.
    anisotropic : bool
        Fit a separate log-scale per axis (else one isotropic scale).
    max_log_scale : float
        Bound of each log-scale (``|log s| <= max_log_scale``, through a tanh).
    max_shift : float
        Bound of each translation component, in coordinate units (the longer image side spans 2).
    per_dim : int or None
        Latents per dimension of the grid the ratio is averaged over (``None``: 8 for a 1-D manifold,
        4 for 2-D).
    lr, max_iter, patience, ema, stop, plateau_window, plateau_rtol, precision
        The shared loop's settings (Adam on the transform parameters; the plateau rule watches each
        transform's mean ratio).
    """

    angles: int = 8
    scales: int = 3
    reflect: bool = True
    refine: int = 2
    anisotropic: bool = False
    max_log_scale: float = math.log(3.0)
    max_shift: float = 1.0
    per_dim: int | None = None
    lr: float = 0.05
    max_iter: int = 150
    patience: int = 30
    ema: float = 0.9
    stop: str = "plateau"
    plateau_window: int = 30
    plateau_rtol: float = 0.002
    precision: str = "fp32"

    def check(self) -> None:
        check_loop(self)
        check_fields(
            self,
            ints=[("angles", 1, 360), ("scales", 1, 32), ("refine", 1, 64), ("per_dim", 1, 64)],
            floats=[("max_log_scale", 0.0), ("max_shift", 0.0)],
            optional=["per_dim"],
        )
        for name in ("reflect", "anisotropic"):
            if not isinstance(getattr(self, name), bool):
                raise DiversevisError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def starts(self, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The scan's maps: ``angle (S,)``, isotropic ``log_scale (S,)`` and ``reflect (S,)`` bool."""
        angle = torch.arange(self.angles, device=device) * (2 * math.pi / self.angles)
        half = self.max_log_scale / 2
        log_scale = (
            torch.linspace(-half, half, self.scales, device=device)
            if self.scales > 1
            else torch.zeros(1, device=device)
        )
        reflect = torch.tensor([False, True] if self.reflect else [False], device=device)
        mesh = torch.meshgrid(angle, log_scale, reflect.float(), indexing="ij")
        return mesh[0].flatten(), mesh[1].flatten(), mesh[2].flatten().bool()

    def grid_side(self, dim: int) -> int:
        """Latents per dimension of the alignment grid of a ``dim``-D manifold."""
        return self.per_dim if self.per_dim is not None else (8 if dim == 1 else 4)


@dataclasses.dataclass
class Alignment:
    """Unit A's manifold aligned to unit B.

    Attributes
    ----------
    unit : int
        Unit B.
    ratio : float
        Mean activation ratio of B over A's latent grid under the best transform: the A->B similarity.
    min_ratio : float
        The smallest ratio over the grid.
    ratios : numpy.ndarray
        ``(G,)`` the ratio of each latent of the grid.
    angle : float
        Rotation, radians (in ``[-pi, pi)``).
    scale : (float, float)
        Scale of the x and y coordinates (equal when isotropic).
    shift : (float, float)
        Translation ``t``, in coordinate units.
    reflect : bool
        Whether the best transform reflects (``y -> -y`` first).
    matrix : numpy.ndarray
        ``(2, 2)`` the linear part ``M``; B's image at coordinates ``c`` is A's at ``M c + t``.
    """

    unit: int
    ratio: float
    min_ratio: float
    ratios: np.ndarray
    angle: float
    scale: tuple[float, float]
    shift: tuple[float, float]
    reflect: bool
    matrix: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields."""
        return {
            "unit": self.unit,
            "ratio": self.ratio,
            "min_ratio": self.min_ratio,
            "ratios": [float(r) for r in self.ratios],
            "angle": self.angle,
            "scale": list(self.scale),
            "shift": list(self.shift),
            "reflect": self.reflect,
            "matrix": self.matrix.tolist(),
        }


def transform_matrix(angle: torch.Tensor, log_scale: torch.Tensor, reflect: torch.Tensor) -> torch.Tensor:
    """Linear parts ``M = R(angle) diag(exp(log_scale)) F`` of affine coordinate maps.

    Parameters
    ----------
    angle : torch.Tensor
        ``(T,)`` rotations in radians.
    log_scale : torch.Tensor
        ``(T, 1)`` isotropic or ``(T, 2)`` per-axis (x, y) log-scales.
    reflect : torch.Tensor
        ``(T,)`` bool or 0/1: ``F = diag(1, -1)`` where set, else the identity.

    Returns
    -------
    torch.Tensor
        ``(T, 2, 2)``.
    """
    cos, sin = angle.cos(), angle.sin()
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    scale = log_scale.expand(len(angle), 2).exp()
    flip = 1.0 - 2.0 * reflect.to(angle.dtype)
    diag = torch.stack([scale[:, 0], scale[:, 1] * flip], -1)  # diag(s) F = diag(s_x, s_y * flip)
    return rot * diag[:, None, :]


def transform_coords(coords: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Coordinates ``(H, W, 2)`` under ``T`` maps ``c -> M c + t``: ``(T, H, W, 2)``."""
    return torch.einsum("tij,hwj->thwi", matrix, coords) + shift[:, None, None, :]


def render_transformed(gen: ImplicitGenerator, z: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Every latent's image on every coordinate map, in one generator pass.

    Parameters
    ----------
    gen : ImplicitGenerator
    z : torch.Tensor
        ``(G, dim)`` latents.
    coords : torch.Tensor
        ``(T, H, W, 2)`` transformed pixel coordinates.

    Returns
    -------
    torch.Tensor
        ``(T * G, C, H, W)`` display-space images, transform-major (transform ``t`` owns rows
        ``t * G .. (t + 1) * G - 1``), each at the generator's norm.

    The ``T`` coordinate maps are stacked into one tall ``(T * H, W)`` canvas for one call of
    :meth:`~diversevis.core.cppn.ImplicitGenerator.render`; the fixed norm is a per-image scale, so
    scaling each ``H x W`` tile back to the norm gives exactly the image rendered alone.
    """
    T, H, W, _ = coords.shape
    tall = gen.render(z, coords.reshape(T * H, W, 2)) - 0.5  # (G, C, T * H, W)
    G, C = tall.shape[:2]
    tiles = tall.reshape(G, C, T, H, W).permute(2, 0, 1, 3, 4).reshape(T * G, C, H, W)
    return 0.5 + fixed_norm(tiles, gen.config["norm"])


def mean_ratio(acts: torch.Tensor, mei: torch.Tensor) -> torch.Tensor:
    """The alignment objective: mean over the grid of activation / MEI activation.

    ``acts (T, G)`` the B activations of each transform's ``G`` images, ``mei (T,)`` each B's MEI
    activation; returns ``(T,)``.
    """
    return (acts / mei[:, None]).mean(1)


class _TransformBank(nn.Module):
    """``T`` bounded affine maps of A's coordinates; calling it renders A's grid under each.

    Rows are groups of the shared loop (``compact=True`` slices the parameters and ``reflect``); the
    generator and the latents are kept out of the module's registry so that they are never sliced.
    """

    def __init__(
        self,
        gen: ImplicitGenerator,
        z: torch.Tensor,
        angle: torch.Tensor,
        log_scale: torch.Tensor,
        reflect: torch.Tensor,
        s: AlignSettings,
    ) -> None:
        super().__init__()
        T = len(angle)
        self._fixed = (gen, z)
        self.angle = nn.Parameter(angle.clone())
        raw = (
            torch.atanh((log_scale / s.max_log_scale).clamp(-0.99, 0.99))
            if s.max_log_scale > 0
            else log_scale * 0
        )
        self.raw_scale = nn.Parameter(raw.view(T, 1).repeat(1, 2 if s.anisotropic else 1).contiguous())
        self.raw_shift = nn.Parameter(torch.zeros(T, 2, device=angle.device))
        self.register_buffer("reflect", reflect.clone())
        self.bounds = (s.max_log_scale, s.max_shift)

    def decoded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``angle (T,)``, ``log_scale (T, 1|2)``, ``shift (T, 2)`` within their bounds."""
        ls, sh = self.bounds
        return self.angle, ls * torch.tanh(self.raw_scale), sh * torch.tanh(self.raw_shift)

    def forward(self) -> torch.Tensor:
        gen, z = self._fixed
        angle, log_scale, shift = self.decoded()
        coords = transform_coords(gen.coords, transform_matrix(angle, log_scale, self.reflect), shift)
        return render_transformed(gen, z, coords)


class _Best:
    """The best transform parameters seen per group (the loop keeps the best images, not parameters)."""

    def __init__(self, bank: _TransformBank) -> None:
        T = len(bank.angle)
        self.value = torch.full((T,), -math.inf, device=bank.angle.device)
        self.params = [p.detach().clone() for p in (bank.angle, bank.raw_scale, bank.raw_shift)]

    @torch.no_grad()
    def update(self, bank: _TransformBank, groups: torch.Tensor, value: torch.Tensor) -> None:
        better = value > self.value[groups]
        self.value[groups] = torch.where(better, value, self.value[groups])
        for best, p in zip(self.params, (bank.angle, bank.raw_scale, bank.raw_shift)):
            rows = groups[better]
            best[rows] = p.detach()[better]


def align(
    model: Network | nn.Module | str,
    layer: str,
    generator: ImplicitGenerator,
    units: Sequence[int],
    mei_activations: Sequence[float],
    *,
    settings: AlignSettings | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> list[Alignment]:
    """Fit one affine coordinate map of unit A's manifold per unit B, all B's in one batch.

    Parameters
    ----------
    model : Network, nn.Module or str
        The network (left as it was found).
    layer : str
        The layer of A and of every B (same receptive field, so A's images fit B's input).
    generator : ImplicitGenerator
        Unit A's manifold (e.g. ``manifold(...).generator``); not changed (a frozen copy is used).
    units : sequence of int
        The B units (A itself may be among them: its self-similarity).
    mei_activations : sequence of float
        Each B's MEI activation, the denominator of its ratios.
    settings : AlignSettings, optional
        Restarts, reflection, bounds and the loop's settings (default :class:`AlignSettings`).
    device : str or torch.device, optional
        Where to run (default: the network's device).
    progress : bool
        Show the loop's progress bar.

    Returns
    -------
    list of Alignment
        One per B, in the order of ``units``.
    """
    s = settings if settings is not None else AlignSettings()
    net = _prepare(model, device)
    units = _check_units(net, layer, units)
    if len(mei_activations) != len(units):
        raise DiversevisError(f"give one MEI activation per unit ({len(units)}), got {len(mei_activations)}")
    meis = torch.tensor([mei_value(m) for m in mei_activations], device=net.device)
    gen = _frozen_copy(generator, net.device)
    prob = Problem.build(
        net, layer, units[0], None, "max", contrast=0.5, norm=gen.config["norm"], distance_layer=None,
        images_folder=None,
    )  # fmt: skip
    _check_geometry(gen, prob, net, layer)
    z = latent_grid(gen.dim, s.grid_side(gen.dim), device=net.device)
    unit_t = torch.tensor(units, device=net.device)
    angle, log_scale, reflect = _scan(gen, z, prob, unit_t, meis, s)
    R = angle.shape[1]
    bank = _TransformBank(gen, z, angle.flatten(), log_scale.flatten(), reflect.flatten(), s)
    best = _Best(bank)

    def loss_fn(images: torch.Tensor, groups: torch.Tensor) -> Watched:
        owner = groups // R
        a = prob.read(images, need_features=False)[0]
        rows = torch.arange(len(images), device=images.device)
        acts = a[rows, unit_t[owner].repeat_interleave(len(z))].view(len(groups), len(z))
        r = mean_ratio(acts, meis[owner])
        best.update(bank, groups, r.detach())
        return Watched(-r, r.detach()[:, None])

    optimize_groups(
        bank,
        loss_fn,
        groups=len(units) * R,
        **s.loop(),
        progress=progress,
        desc=f"align x{len(units)}",
        compact=True,
    )
    return _alignments(best, reflect.flatten(), R, units, meis, gen, z, prob, s)


@torch.no_grad()
def _scan(
    gen: ImplicitGenerator,
    z: torch.Tensor,
    prob: Problem,
    unit_t: torch.Tensor,
    meis: torch.Tensor,
    s: AlignSettings,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every B's ``refine`` best starting maps (``(K, refine)`` angle, log-scale, reflect).

    A's grid is rendered once per starting map and read for all B's in one forward pass.
    """
    angle, log_scale, reflect = s.starts(z.device)
    matrix = transform_matrix(angle, log_scale[:, None], reflect)
    shift = torch.zeros(len(angle), 2, device=z.device)
    images = render_transformed(gen, z, transform_coords(gen.coords, matrix, shift))
    a = prob.read(images, need_features=False)[0][:, unit_t]  # (S * G, K)
    score = (a.view(len(angle), len(z), -1) / meis).mean(1)  # (S, K)
    top = score.topk(min(s.refine, len(angle)), dim=0).indices.T  # (K, refine)
    return angle[top], log_scale[top], reflect[top]


def _frozen_copy(generator: ImplicitGenerator, device: torch.device) -> ImplicitGenerator:
    """A frozen eval-mode copy of the generator on ``device`` (the caller's stays as it is)."""
    if not isinstance(generator, ImplicitGenerator):
        raise DiversevisError(
            f"generator must be an ImplicitGenerator (a manifold's), got {type(generator).__name__}"
        )
    return copy.deepcopy(generator).to(device).eval().requires_grad_(False)


def _check_geometry(gen: ImplicitGenerator, prob: Problem, net: Network, layer: str) -> None:
    """A's images must have the B's image size (units of one layer)."""
    size = tuple(gen.config["size"])
    want = prob.placement.image_size
    want = (want, want) if isinstance(want, int) else tuple(want)
    if size != want:
        raise DiversevisError(
            f"the manifold renders {size[0]}x{size[1]} images but units of {net.display_name(layer)} see "
            f"{want[0]}x{want[1]}: align units of the layer the manifold was trained on"
        )


@torch.no_grad()
def _alignments(
    best: _Best,
    reflect: torch.Tensor,
    per_unit: int,
    units: list[int],
    meis: torch.Tensor,
    gen: ImplicitGenerator,
    z: torch.Tensor,
    prob: Problem,
    s: AlignSettings,
) -> list[Alignment]:
    """Each B's best group, its parameters decoded and its grid's ratios measured again."""
    K = len(units)
    pick = best.value.view(K, per_unit).argmax(1) + torch.arange(K, device=meis.device) * per_unit
    angle, raw_scale, raw_shift = (p[pick] for p in best.params)
    log_scale = s.max_log_scale * torch.tanh(raw_scale)
    shift = s.max_shift * torch.tanh(raw_shift)
    matrix = transform_matrix(angle, log_scale, reflect[pick])
    images = render_transformed(gen, z, transform_coords(gen.coords, matrix, shift))
    a = prob.read(images, need_features=False)[0]
    rows = torch.arange(len(images), device=a.device)
    acts = a[rows, torch.tensor(units, device=a.device).repeat_interleave(len(z))].view(K, len(z))
    ratios = (acts / meis[:, None]).cpu().numpy()
    scale = log_scale.expand(K, 2).exp().cpu().numpy()
    out = []
    for k, u in enumerate(units):
        ang = (float(angle[k]) + math.pi) % (2 * math.pi) - math.pi
        out.append(
            Alignment(
                unit=u, ratio=float(ratios[k].mean()), min_ratio=float(ratios[k].min()), ratios=ratios[k],
                angle=ang, scale=(float(scale[k, 0]), float(scale[k, 1])),
                shift=(float(shift[k, 0]), float(shift[k, 1])), reflect=bool(reflect[pick[k]]),
                matrix=matrix[k].cpu().numpy(),
            )
        )  # fmt: skip
    return out
