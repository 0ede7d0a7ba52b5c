"""Synthetic model cells with known invariances: ground truth for every method.

* :class:`SimpleCell`: ``relu(<g_0, x>)`` -- selective for one phase of one Gabor;
* :class:`ComplexCell`: the energy model ``<g_0, x>^2 + <g_90, x>^2`` -- a quadrature pair, so the
  response is the same for every phase of the Gabor (perfect phase invariance);
* :class:`TextureCell`: a convolutional energy unit pooled over positions -- shift invariant;
* :class:`BipartiteCell`: an energy half and a linear half side by side -- partly phase invariant;
* :class:`CellPopulation`: a layer of simple and complex cells at given orientations, positions and
  wavelengths (one channel each), the ground truth of clustering invariance types across units.

Each cell is an ``nn.Module`` whose named layer ``"response"`` outputs ``(N, 1, 1, 1)`` for an input of
``size x size`` pixels (the receptive field), so DFV reads it exactly as it reads a VALID-padded CNN.
:func:`cell_network` wraps a cell in a :class:`~diversevis.network.Network` whose input normalisation
subtracts mean grey (the cell sees the zero-mean image).

Closed forms used in the tests: with unit-norm, orthogonal ``g_0, g_90`` and images of L2 norm ``rho``
(around grey), the complex cell's maximum is ``rho^2`` for *every* phase, while the simple cell's
maximum ``rho`` is reached at one phase only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from diversevis.core.network import Network

__all__ = [
    "gabor",
    "SimpleCell",
    "ComplexCell",
    "TextureCell",
    "BipartiteCell",
    "CellPopulation",
    "cell_network",
    "random_population",
    "population",
    "population_network",
]


def gabor(
    size: int | tuple[int, int],
    *,
    wavelength: float = 6.0,
    theta: float = 0.0,
    phase: float = 0.0,
    sigma: float | None = None,
    channels: int = 3,
    center: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """Zero-mean, unit-L2-norm Gabor filter.

    Parameters
    ----------
    size : int or (int, int)
        Side in pixels, or ``(height, width)``.
    wavelength : float
        Carrier wavelength in pixels.
    theta : float
        Orientation of the carrier's wave vector, in radians.
    phase : float
        Carrier phase in radians (0 = even/cosine, pi/2 = odd/sine).
    sigma : float, optional
        Gaussian envelope SD in pixels (default a fifth of the shorter side).
    channels : int
        The same (grey) filter replicated over channels.
    center : (float, float)
        ``(x, y)`` offset of the envelope and carrier centre from the image centre, in pixels
        (``y`` downwards); the carrier's phase is measured at that centre.

    Returns
    -------
    torch.Tensor
        ``(channels, height, width)`` float32, zero mean, unit L2 norm.
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    sigma = min(h, w) / 5 if sigma is None else sigma
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) - (h - 1) / 2 - float(center[1]),
        torch.arange(w, dtype=torch.float64) - (w - 1) / 2 - float(center[0]),
        indexing="ij",
    )
    u = x * math.cos(theta) + y * math.sin(theta)
    env = torch.exp(-(x**2 + y**2) / (2 * sigma**2))
    g = env * torch.cos(2 * math.pi * u / wavelength + phase)
    g = g - g.mean()
    g = g.expand(channels, h, w).clone()
    return (g / g.norm()).float()


class _Response(nn.Identity):
    """Named identity so the cell's output layer is called ``response``."""


class SimpleCell(nn.Module):
    """``relu(<g_0, x>)``: a linear Gabor filter followed by a rectifier (phase selective).

    As for the convolutional layers of a CNN, the layer ``response`` is the filter output *before* the
    rectifier (the paper optimises pre-ReLU activations); ``relu`` is the cell's output nonlinearity.
    """

    def __init__(self, size: int = 16, channels: int = 3, **gabor_kw) -> None:
        super().__init__()
        self.response = nn.Conv2d(channels, 1, size, bias=False)
        self.response.weight.data[0] = gabor(size, channels=channels, **gabor_kw)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.response(x))


class ComplexCell(nn.Module):
    """Energy model ``<g_0, x>^2 + <g_90, x>^2`` (phase invariant).

    The quadrature pair is orthonormalised so that the response to ``rho * (cos(t) g_0 + sin(t) g_90)``
    is exactly ``rho^2`` for every phase ``t``.
    """

    def __init__(self, size: int = 16, channels: int = 3, **gabor_kw) -> None:
        super().__init__()
        gabor_kw.pop("phase", None)
        g0 = gabor(size, channels=channels, phase=0.0, **gabor_kw)
        g90 = gabor(size, channels=channels, phase=math.pi / 2, **gabor_kw)
        g90 = g90 - (g90 * g0).sum() * g0
        g90 = g90 / g90.norm()
        self.quadrature = nn.Conv2d(channels, 2, size, bias=False)
        self.quadrature.weight.data[0] = g0
        self.quadrature.weight.data[1] = g90
        self.response = _Response()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.response((self.quadrature(x) ** 2).sum(1, keepdim=True))


class TextureCell(nn.Module):
    """Shift-invariant unit: energy of a small Gabor quadrature pair, averaged over all positions.

    Any texture made of that Gabor's carrier drives it equally wherever it is cropped.
    """

    def __init__(self, size: int = 16, kernel: int = 7, channels: int = 3, **gabor_kw) -> None:
        super().__init__()
        gabor_kw.setdefault("wavelength", 4.0)
        gabor_kw.setdefault("sigma", kernel / 3)
        gabor_kw.pop("phase", None)
        g0 = gabor(kernel, channels=channels, phase=0.0, **gabor_kw)
        g90 = gabor(kernel, channels=channels, phase=math.pi / 2, **gabor_kw)
        self.quadrature = nn.Conv2d(channels, 2, kernel, bias=False)
        self.quadrature.weight.data[0] = g0
        self.quadrature.weight.data[1] = g90
        self.pool = nn.AvgPool2d(size - kernel + 1)
        self.response = _Response()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = (self.quadrature(x) ** 2).sum(1, keepdim=True)
        return self.response(self.pool(e))


class BipartiteCell(nn.Module):
    """Two subunits side by side: a phase-invariant energy half and a phase-selective linear half.

    ``sqrt(<l_0, x>^2 + <l_90, x>^2) + <r_0, x>`` with a quadrature pair ``l`` on the left half of the
    field and a Gabor ``r`` on the right half (all unit norm, disjoint supports), so the response is
    homogeneous of degree 1 in the image: the MEI splits the image norm equally between the halves
    (``rho * sqrt(2)`` at norm ``rho``), the left half's phase is free and the right half's fixed, a
    unit between a simple and a complex cell in its invariance.
    """

    def __init__(self, size: int = 16, channels: int = 3, **gabor_kw) -> None:
        super().__init__()
        gabor_kw.pop("phase", None)
        half = size // 2
        l0 = gabor((size, half), channels=channels, phase=0.0, **gabor_kw)
        l90 = gabor((size, half), channels=channels, phase=math.pi / 2, **gabor_kw)
        l90 = l90 - (l90 * l0).sum() * l0
        w = torch.zeros(3, channels, size, size)
        w[0, :, :, :half], w[1, :, :, :half] = l0, l90 / l90.norm()
        w[2, :, :, size - half :] = gabor((size, half), channels=channels, phase=0.0, **gabor_kw)
        self.subunits = nn.Conv2d(channels, 3, size, bias=False)
        self.subunits.weight.data.copy_(w)
        self.response = _Response()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.subunits(x)
        energy = torch.sqrt(p[:, :1] ** 2 + p[:, 1:2] ** 2 + 1e-12)
        return self.response(energy + p[:, 2:3])


def _quadrature_pair(size: int, channels: int, **gabor_kw) -> tuple[torch.Tensor, torch.Tensor]:
    """An orthonormal even/odd Gabor pair (the energy model's filters)."""
    gabor_kw.pop("phase", None)
    g0 = gabor(size, channels=channels, phase=0.0, **gabor_kw)
    g90 = gabor(size, channels=channels, phase=math.pi / 2, **gabor_kw)
    g90 = g90 - (g90 * g0).sum() * g0
    return g0, g90 / g90.norm()


class CellPopulation(nn.Module):
    """A layer of simple and complex cells, one output channel per cell.

    Parameters
    ----------
    cells : sequence of mappings
        One per channel: ``kind`` (``"simple"`` or ``"complex"``) and the :func:`gabor` keywords
        (``wavelength``, ``theta``, ``phase``, ``sigma``, ``center``).
    size : int
        Receptive-field side in pixels.
    channels : int
        Input channels.

    The layer ``response`` outputs ``(N, len(cells), 1, 1)`` for ``size x size`` inputs: channel ``i``
    is ``<g_i, x>`` for a simple cell (pre-rectifier, as :class:`SimpleCell`) and the energy
    ``<g_i0, x>^2 + <g_i90, x>^2`` for a complex cell (as :class:`ComplexCell`).
    """

    def __init__(self, cells: Sequence[Mapping[str, Any]], size: int = 16, channels: int = 1) -> None:
        super().__init__()
        filters, first, second, energy = [], [], [], []
        for cell in cells:
            kw = dict(cell)
            kind = kw.pop("kind")
            if kind not in ("simple", "complex"):
                raise ValueError(f"a population cell is 'simple' or 'complex', got {kind!r}")
            first.append(len(filters))
            if kind == "simple":
                filters.append(gabor(size, channels=channels, **kw))
            else:
                filters.extend(_quadrature_pair(size, channels, **kw))
            second.append(len(filters) - 1)
            energy.append(kind == "complex")
        self.cells = [dict(c) for c in cells]
        self.filters = nn.Conv2d(channels, len(filters), size, bias=False)
        self.filters.weight.data.copy_(torch.stack(filters))
        self.register_buffer("first", torch.tensor(first))
        self.register_buffer("second", torch.tensor(second))
        self.register_buffer("energy", torch.tensor(energy, dtype=torch.float32).view(1, -1, 1, 1))
        self.response = _Response()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.filters(x)
        a, b = p[:, self.first], p[:, self.second]
        return self.response(a * (1 - self.energy) + (a**2 + b**2) * self.energy)


def random_population(
    n_simple: int,
    n_complex: int,
    size: int = 16,
    *,
    seed: int = 0,
    wavelengths: tuple[float, float] | None = None,
    max_offset: float | None = None,
) -> list[dict[str, Any]]:
    """Cells of both kinds at random orientations, phases, positions and wavelengths.

    Parameters
    ----------
    n_simple, n_complex : int
        Cells of each kind; the simple ones come first.
    size : int
        Receptive-field side in pixels.
    seed : int
        Seed of the draw.
    wavelengths : (float, float), optional
        Range of the carrier wavelength in pixels (default ``size / 4 .. size / 2.5``).
    max_offset : float, optional
        Largest centre offset per axis in pixels (default ``size / 8``).

    Returns
    -------
    list of dict
        :class:`CellPopulation` cell specs (``kind``, ``theta``, ``phase``, ``wavelength``, ``center``).
    """
    rng = np.random.default_rng(seed)
    lo, hi = wavelengths if wavelengths is not None else (size / 4, size / 2.5)
    off = size / 8 if max_offset is None else max_offset
    cells = []
    for kind in ["simple"] * n_simple + ["complex"] * n_complex:
        cells.append(
            dict(
                kind=kind,
                theta=float(rng.uniform(0, math.pi)),
                phase=float(rng.uniform(0, 2 * math.pi)),
                wavelength=float(rng.uniform(lo, hi)),
                center=(float(rng.uniform(-off, off)), float(rng.uniform(-off, off))),
            )
        )
    return cells


def population(
    n_simple: int = 2, n_complex: int = 2, size: int = 16, seed: int = 0, channels: int = 1
) -> CellPopulation:
    """A :class:`CellPopulation` of :func:`random_population` cells (a ``MODULE:FUNCTION`` model spec:
    ``diversevis.models.synthetic:population``, with ``--mean 0.5 --std 1 --in-channels 1``)."""
    cells = random_population(n_simple, n_complex, size, seed=seed)
    return CellPopulation(cells, size=size, channels=channels).eval().requires_grad_(False)


def population_network(cells: Sequence[Mapping[str, Any]], size: int = 16, channels: int = 1) -> Network:
    """A :class:`CellPopulation` wrapped as a :class:`Network` (zero-mean input around grey)."""
    pop = CellPopulation(cells, size=size, channels=channels).eval().requires_grad_(False)
    return Network(
        pop, mean=[0.5] * channels, std=[1.0] * channels, name="cell-population",
        in_channels=channels, input_size=size,
    )  # fmt: skip


_CELLS = {"simple": SimpleCell, "complex": ComplexCell, "texture": TextureCell, "bipartite": BipartiteCell}


def cell_network(kind: str, size: int = 16, channels: int = 3, **kw) -> Network:
    """A synthetic cell wrapped as a :class:`Network` (input normalised to zero-mean around grey).

    Parameters
    ----------
    kind : {"simple", "complex", "texture", "bipartite"}
    size : int
        Receptive-field size in pixels.
    """
    cell = _CELLS[kind](size=size, channels=channels, **kw).eval().requires_grad_(False)  # fixed weights
    return Network(
        cell,
        mean=[0.5] * channels,
        std=[1.0] * channels,
        name=f"{kind}-cell",
        in_channels=channels,
        input_size=size,
    )
