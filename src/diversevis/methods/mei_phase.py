"""Phase test on the unit's own MEI: does its response survive moving the phase of its preferred pattern?

The grating phase test (:mod:`diversevis.methods.phase`) needs gratings that drive the unit; many units
respond to gratings weakly or not at all ("gratings do not drive this unit"). The fairer probe keeps the
unit's own most exciting input and moves only its phase: :func:`mei_phase_test` shifts the phase of the
MEI's dominant Fourier component(s) (:func:`shift_dominant_phase`, also used by
:mod:`~diversevis.methods.retention`) over a full cycle in ``steps`` steps, keeps the image's L2 norm around
grey, and records the pre-ReLU response ``p(phi)``. From the curve:

* ``modulation = (max r - min r) / (max r + min r)`` of the firing rate ``r = relu(p)`` (0: flat, 1: the
  rate reaches 0 somewhere);
* ``F1 / F0`` of ``r``, exactly as the grating test computes it
  (:func:`~diversevis.methods.phase.modulation_ratio`: ``F0 = mean r``, ``F1 = 2 |mean(r exp(-i phi))|``;
  ``> 1`` simple-like, ``< 1`` complex-like);
* ``min_ratio = min p / p(MEI)``: how far the worst phase falls (about -1 for a linear unit, 1 for a
  phase-invariant one).

Which components move (``band``). By default (``band=math.inf``) every FFT bin on the dominant
frequency's side of the origin (``f . f0 > 0``) moves by ``phi`` and its conjugate by ``-phi``: the phase
of the whole pattern along its dominant orientation (a Hilbert-type shift), which leaves a quadrature-pair
energy unit exactly unchanged and turns a linear unit's response into ``p(MEI) cos(phi)``. Moving the
dominant bin alone (``band=0``) is a poor probe: an MEI is a localised pattern whose spectrum is spread
over several bins, so one bin holds only part of it, and the response of a phase-invariant energy unit to
"one bin moved, the rest kept" is strongly modulated (synthetic 16 px complex cell: modulation 0.93
with ``band=0``, 0.000 with ``band=inf``).

>>> from diversevis.methods.mei_phase import mei_phase_test
>>> r = mei_phase_test("vgg16-paper", "conv2_1", 3)
>>> r.modulation, r.f1_f0, r.min_ratio
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diversevis.core.cache import atomic_write_bytes, atomic_write_json, output_dir
from diversevis.core.checks import IMAGES_MAX, finite, integer
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.params import image_hw
from diversevis.core.result import Result
from diversevis.core.spec import common_spec
from diversevis.methods.dfv import run_mei
from diversevis.methods.phase import modulation_ratio
from diversevis.methods.problem import Problem, _prepare
from diversevis.methods.settings import MEISettings

__all__ = [
    "dominant_frequency",
    "shift_dominant_phase",
    "curve_modulation",
    "MEIPhaseResult",
    "mei_phase_test",
]


# ----------------------------------------------------------------------------------- phase of a grating


def _conjugate(mask: Tensor) -> Tensor:
    """``out[ky, kx] = mask[-ky mod H, -kx mod W]``: the mask at the conjugate frequencies."""
    return torch.roll(torch.flip(mask, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))


def _frequency_grid(h: int, w: int) -> tuple[Tensor, Tensor]:
    """Signed frequencies ``(fy, fx)`` (cycles/pixel, ``(H, W)`` each) of the FFT bins."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)
    fx = torch.fft.fftfreq(w, dtype=torch.float64)
    return torch.meshgrid(fy, fx, indexing="ij")


def _dominant_bin(spectrum: Tensor) -> tuple[int, int]:
    """``(ky, kx)`` of the strongest non-DC, non-self-conjugate bin of a ``(C, H, W)`` spectrum, taken in
    the canonical half-plane (``fx > 0``; where the pair shares ``fx``, ``fy > 0``)."""
    h, w = spectrum.shape[-2:]
    power = (spectrum.abs() ** 2).sum(0)
    self_conj = ((2 * torch.arange(h)) % h == 0)[:, None] & ((2 * torch.arange(w)) % w == 0)[None, :]
    power = power.masked_fill(self_conj, 0.0)
    if not float(power.max()) > 1e-20 * float((spectrum.abs() ** 2).sum()):
        raise DiversevisError(
            f"the {h}x{w} image has no grating component whose phase can move (it is uniform, or holds only "
            "Nyquist patterns); give an image with spatial structure"
        )
    y, x = divmod(int(power.flatten().argmax()), w)
    cy, cx = (-y) % h, (-x) % w
    fy, fx = _frequency_grid(h, w)
    keep = bool(fx[y, x] > 0) if fx[y, x] != fx[cy, cx] else bool(fy[y, x] > 0)
    return (y, x) if keep else (cy, cx)


def _phase_masks(spectrum: Tensor, band: float) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Bins whose phase moves by ``+dphi`` and by ``-dphi`` (their conjugates), and the dominant bin.

    ``+`` holds the dominant bin and every bin within ``band`` cycles/pixel of it that lies closer to it
    than to its conjugate; ``-`` the conjugates of those. A bin that would be in both (a Nyquist row or
    column) and every self-conjugate bin stays put, so the shifted image is real.
    """
    h, w = spectrum.shape[-2:]
    y0, x0 = _dominant_bin(spectrum)
    fy, fx = _frequency_grid(h, w)
    f0y, f0x = fy[y0, x0], fx[y0, x0]
    near = ((fy - f0y) ** 2 + (fx - f0x) ** 2) <= band**2 + 1e-12
    mask = near & (fy * f0y + fx * f0x > 0)
    mask[y0, x0] = True
    conj = _conjugate(mask)
    return mask & ~conj, conj & ~mask, (y0, x0)


def dominant_frequency(image: Tensor) -> tuple[float, float]:
    """Signed frequency ``(fy, fx)`` (cycles/pixel) of the strongest non-DC FFT bin of a ``(C, H, W)``
    image (power summed over channels; of the pair ``+-f`` the one with ``fx > 0``, or ``fy > 0`` when
    both share ``fx``; bins that are their own conjugate are skipped: their phase cannot move)."""
    x = _check_image(image)
    y0, x0 = _dominant_bin(torch.fft.fft2(x.double()))
    fy, fx = _frequency_grid(*x.shape[-2:])
    return float(fy[y0, x0]), float(fx[y0, x0])


def shift_dominant_phase(image: Tensor, dphi: float, *, band: float = 0.0) -> Tensor:
    """Move the phase of an image's dominant grating component by ``dphi``, keeping everything else.

    The FFT coefficient of the dominant bin ``f0`` (see :func:`dominant_frequency`) is multiplied by
    ``exp(i dphi)`` and that of ``-f0`` by ``exp(-i dphi)``, so a grating ``cos(2 pi f0 . r + phi)``
    becomes ``cos(2 pi f0 . r + phi + dphi)``; with ``band > 0`` every bin within ``band`` cycles/pixel of
    ``f0`` (on its side of the origin) moves with it. Magnitudes and the mean are untouched, hence the L2
    norm around any constant (grey 0.5 included) is preserved exactly (up to float rounding).

    Parameters
    ----------
    image : Tensor
        ``(C, H, W)`` image, display space or grey-centred (the mean does not matter).
    dphi : float
        Phase shift in radians (positive: the grating moves against its wave vector ``f0``).
    band : float
        Radius in cycles/pixel of the neighbourhood of ``f0`` that moves too (0: the dominant pair only;
        ``math.inf``: every bin with a positive projection on ``f0``, i.e. a Hilbert-type shift).

    Returns
    -------
    Tensor
        ``(C, H, W)`` real image, same dtype and device as ``image``.

    Raises
    ------
    DiversevisError
        If ``image`` is not a finite ``(C, H, W)`` tensor with some non-DC structure, or ``dphi`` /
        ``band`` are not numbers (``band >= 0``).
    """
    x = _check_image(image)
    dphi = finite("dphi", dphi)
    band = _check_band(band)
    spec = torch.fft.fft2(x.double())
    plus, minus, _ = _phase_masks(spec, band)
    factor = torch.ones(plus.shape, dtype=torch.complex128, device=spec.device)
    factor[plus] = complex(math.cos(dphi), math.sin(dphi))
    factor[minus] = complex(math.cos(dphi), -math.sin(dphi))
    return torch.fft.ifft2(spec * factor).real.to(x.dtype)


def _check_image(image: Any) -> Tensor:
    if not isinstance(image, Tensor) or image.dim() != 3 or min(image.shape) < 1:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise DiversevisError(f"image must be a (C, H, W) tensor, got {shape}; pass one image, e.g. x[0]")
    if not image.is_floating_point() or not bool(torch.isfinite(image).all()):
        raise DiversevisError("image must hold finite floating-point values; check for nan/inf pixels")
    return image.detach()


def _check_band(band: Any) -> float:
    if isinstance(band, (int, float)) and not isinstance(band, bool) and band == math.inf:
        return math.inf
    return finite("band (cycles/pixel)", band, 0.0)


def curve_modulation(rates: np.ndarray) -> float:
    """``(max - min) / (max + min)`` of non-negative rates ``(n,)`` (nan when they are all 0)."""
    r = np.asarray(rates, dtype=np.float64)
    hi, lo = float(r.max()), float(r.min())
    return (hi - lo) / (hi + lo) if hi + lo > 0 else math.nan


@dataclass(frozen=True, eq=False)
class MEIPhaseResult:
    """The response of a unit to its MEI with the phase of the MEI's dominant component moved.

    Attributes
    ----------
    phases, curve : numpy.ndarray
        ``(steps,)`` phase shifts (radians, evenly over ``[0, 2 pi)``) and the pre-ReLU responses to the
        shifted MEIs (``curve[0]``: the MEI itself).
    mei_activation : float
        Response to the unshifted MEI (> 0).
    modulation, f1_f0, f0, f1 : float
        ``(max - min) / (max + min)`` and ``F1 / F0`` (with ``F0``, ``F1``) of the rates ``relu(curve)``.
    min_ratio : float
        ``curve.min() / mei_activation`` (negative when some phase drives the unit below 0).
    frequency : (float, float)
        The MEI's dominant frequency ``(fy, fx)``, cycles/pixel.
    shifted_energy : float
        Share of the MEI's non-DC energy (around its mean) in the components whose phase moves.
    spec : dict
        How the result was made (JSON-serialisable).
    mei_image, min_image : Tensor
        ``(C, H, W)`` the MEI and its shifted copy at the curve's minimum (display space).
    """

    phases: np.ndarray
    curve: np.ndarray
    mei_activation: float
    modulation: float
    f1_f0: float
    f0: float
    f1: float
    min_ratio: float
    frequency: tuple[float, float]
    shifted_energy: float
    spec: dict[str, Any]
    mei_image: Tensor
    min_image: Tensor

    @property
    def kind(self) -> str | None:
        """``"simple-like"`` (F1/F0 > 1), ``"complex-like"`` (< 1), ``None`` if F1/F0 is undefined."""
        if not math.isfinite(self.f1_f0):
            return None
        return "simple-like" if self.f1_f0 > 1 else "complex-like"

    def metrics(self) -> dict[str, Any]:
        """The headline numbers as plain Python values (``nan`` becomes ``None``)."""
        names = ("modulation", "f1_f0", "f0", "f1", "min_ratio", "mei_activation", "shifted_energy")
        out: dict[str, Any] = {n: _finite_or_none(getattr(self, n)) for n in names}
        out.update(min_response=float(self.curve.min()), max_response=float(self.curve.max()))
        return {**out, "frequency": list(self.frequency), "kind": self.kind}

    def save(self, directory: str | Path) -> Path:
        """Write ``mei_phase.png`` (the curve, the MEI, the worst phase) and then ``mei_phase.json``
        (spec, metrics, phases, curve), both atomically; needs matplotlib."""
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise DiversevisError("MEI phase plots need matplotlib: pip install matplotlib") from None
        out = output_dir(directory)
        atomic_write_bytes(out / "mei_phase.png", self.plot())
        data = {
            "spec": self.spec,
            "metrics": self.metrics(),
            "phases": [float(v) for v in self.phases],
            "curve": [_finite_or_none(float(v)) for v in self.curve],
        }
        atomic_write_json(out / "mei_phase.json", data)
        return out

    def plot(self) -> bytes:
        """The curve with the MEI's activation, the MEI and its worst phase, as PNG bytes (Agg)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 3), dpi=100)
        FigureCanvasAgg(fig)
        ax, ax_mei, ax_min = fig.subplots(1, 3, gridspec_kw={"width_ratios": [2.2, 1, 1]})
        deg = np.degrees(self.phases)
        ax.plot(deg, self.curve, "o-", ms=3, label="response")
        ax.axhline(self.mei_activation, color="tab:green", ls="--", lw=1, label="MEI")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel("phase shift (deg)")
        ax.set_ylabel("response (pre-ReLU)")
        ax.legend(fontsize=7, loc="lower left")
        ratio = "undefined" if not math.isfinite(self.f1_f0) else f"{self.f1_f0:.2f}"
        ax.set_title(
            f"modulation {self.modulation:.2f}, F1/F0 {ratio}, min {self.min_ratio:.2f} x MEI", fontsize=9
        )
        for a, img, title in ((ax_mei, self.mei_image, "MEI"), (ax_min, self.min_image, "worst phase")):
            a.imshow(_display(img), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            a.set_title(title, fontsize=9)
            a.set_axis_off()
        s = self.spec
        band = "half-plane" if s.get("band") is None else f"band {s['band']:g} c/px"
        fig.suptitle(
            f"{s.get('model')} {s.get('layer')} unit {s.get('unit')}: phase of the MEI ({band})", fontsize=10
        )
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"MEIPhaseResult({s.get('model')} {s.get('layer')} unit={s.get('unit')}: "
            f"modulation={self.modulation:.3f}, F1/F0={self.f1_f0:.3f}, min_ratio={self.min_ratio:.3f}, "
            f"{len(self.curve)} phases)"
        )


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _display(img: Tensor) -> np.ndarray:
    """``(H, W, 3)`` or ``(H, W)`` clipped to ``[0, 1]`` for imshow (other channel counts: their mean)."""
    x = img.detach().cpu().float().clamp(0, 1)
    if x.shape[0] == 3:
        return x.permute(1, 2, 0).numpy()
    return x.mean(0).numpy()


# ------------------------------------------------------------------------------------------ the method


def _given_image(mei: Any, prob: Problem, layer: str, unit: int | None) -> tuple[Tensor, str]:
    """The MEI image ``(C, H, W)`` of a :class:`Result` or a tensor, checked against the target."""
    net = prob.net
    if isinstance(mei, Result):
        if mei.mei_image is None:
            raise DiversevisError(
                "this Result holds no MEI image; pass diversevis.mei(...)'s result or mei=True"
            )
        for key, want in (("layer", net.display_name(layer)), ("unit", unit)):
            if key in mei.spec and mei.spec[key] != want:
                raise DiversevisError(
                    f"the MEI Result is for {key} {mei.spec[key]!r}, not {want!r}; pass the MEI of this unit "
                    "or mei=True"
                )
        image, source = mei.mei_image, "result"
    elif isinstance(mei, Tensor):
        image, source = (mei[0] if mei.dim() == 4 and mei.shape[0] == 1 else mei), "tensor"
    else:
        raise DiversevisError(
            f"mei must be True, an MEI Result (diversevis.mei) or a (C, H, W) image tensor, got {mei!r}"
        )
    want = (net.in_channels, *image_hw(prob.placement.image_size))
    if image.dim() != 3 or tuple(image.shape) != want:
        raise DiversevisError(
            f"the MEI image has shape {tuple(image.shape)} but this target takes {want} (channels, height, "
            "width: the unit's receptive field); pass the MEI of this layer"
        )
    if not image.is_floating_point() or not bool(torch.isfinite(image).all()):
        raise DiversevisError(
            "the MEI image must hold finite floating-point values; check for nan/inf pixels"
        )
    return image.detach().float().cpu(), source


def _mei_image(
    mei: Any, prob: Problem, layer: str, unit: int | None, s: MEISettings, progress: bool
) -> tuple[Tensor, str, Result | None]:
    """The MEI image, where it came from (``computed``, ``result``, ``tensor``) and the computed Result."""
    if mei is True:
        res = run_mei(prob.net, layer, unit, None, "max", s, progress=progress)
        return res.mei_image.detach().float().cpu(), "computed", res
    if isinstance(mei, bool):
        raise DiversevisError(
            "mei=False leaves nothing to test: pass mei=True, an MEI Result or an image tensor"
        )
    image, source = _given_image(mei, prob, layer, unit)
    return image, source, None


def _shifted(image: Tensor, phases: np.ndarray, band: float) -> Tensor:
    """``(steps, C, H, W)`` phase-shifted copies of ``image``, each at its norm around grey."""
    rho = float((image - 0.5).norm())
    out = torch.stack([shift_dominant_phase(image, float(p), band=band) for p in phases])
    d = (out - 0.5).flatten(1).norm(dim=1).clamp_min(1e-30)
    return 0.5 + (out - 0.5) * (rho / d).view(-1, 1, 1, 1)


def _responses(prob: Problem, images: Tensor) -> np.ndarray:
    """Pre-ReLU target values ``(N,)`` (float64) of display-space images."""
    with torch.no_grad():
        values = prob.evaluate(images.to(prob.net.device), need_features=False)[0].double().cpu().numpy()
    if not np.isfinite(values).all():
        raise DiversevisError(
            f"{prob.net.name} returned non-finite responses to the phase-shifted MEIs: check the model for "
            "nan/inf weights or activations"
        )
    return values


def _spectrum_summary(image: Tensor, band: float) -> tuple[tuple[float, float], float]:
    """The dominant frequency ``(fy, fx)`` (cycles/px) and the share of non-DC energy that moves."""
    spec = torch.fft.fft2((image - image.mean((1, 2), keepdim=True)).double())
    plus, minus, (y0, x0) = _phase_masks(spec, band)
    power = (spec.abs() ** 2).sum(0)
    fy = torch.fft.fftfreq(image.shape[1], dtype=torch.float64)[y0]
    fx = torch.fft.fftfreq(image.shape[2], dtype=torch.float64)[x0]
    share = float(power[plus | minus].sum() / power.sum().clamp_min(1e-300))
    return (float(fy), float(fx)), share


def mei_phase_test(
    model: Network | nn.Module | str,
    layer: str,
    unit: int | None = None,
    *,
    mei: bool | Result | Tensor = True,
    steps: int = 32,
    band: float = math.inf,
    contrast: float = MEISettings.contrast,
    norm: float | None = MEISettings.norm,
    mei_restarts: int = MEISettings.restarts,
    seed: int = MEISettings.seed,
    images: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> MEIPhaseResult:
    """Response of a unit to its MEI over a full cycle of the MEI's dominant phase.

    Parameters
    ----------
    model, layer, unit
        The target, read (pre-ReLU) as :func:`diversevis.mei` reads it; a zoo name is loaded.
    mei : bool, Result or Tensor
        ``True``: compute the MEI here (:func:`diversevis.mei` with ``contrast``/``norm``,
        ``mei_restarts``, ``seed``, ``images``); or the :class:`Result` of :func:`diversevis.mei` for this
        layer and unit; or a ``(C, H, W)`` (or ``(1, C, H, W)``) display-space image of the unit's
        receptive-field size.
    steps : int
        Phase shifts evenly spaced over ``[0, 2 pi)`` (>= 3; an even count makes F1 exact for a
        rectified cosine).
    band : float
        Which Fourier components move, cycles/pixel around the dominant frequency (see the module
        docstring; ``math.inf``, the default: the whole pattern along its dominant orientation; 0: the
        dominant component alone).
    contrast, norm : float
        The MEI's L2 norm around grey when it is computed here (fraction of the natural-patch norm, or
        absolute). A given MEI keeps its own norm; every shifted image has the MEI's norm.
    mei_restarts, seed : int
        Restarts and seed of the MEI computed here.
    images, device, progress
        Natural-image folder of the contrast statistics, where to move the network, and the MEI
        optimisation's progress bar.

    Returns
    -------
    MEIPhaseResult
        ``phases``, ``curve``, ``modulation``, ``f1_f0`` (with ``f0``, ``f1``), ``min_ratio``, the dominant
        ``frequency``, ``shifted_energy``, the images and the run ``spec``.

    Raises
    ------
    DiversevisError
        On a bad target, ``steps``, ``band``, ``contrast``, ``norm``, ``mei_restarts`` or ``seed``; an MEI
        of the wrong shape, of another layer or unit, without structure, or that does not drive the unit
        above 0 (the ratios to it would be meaningless).
    """
    t0 = time.perf_counter()
    steps = integer("steps", steps, 3, IMAGES_MAX)
    band = _check_band(band)
    contrast = finite("contrast", contrast, 0.0, open_lo=True)
    norm = None if norm is None else finite("norm", norm, 0.0, open_lo=True)
    settings = MEISettings(
        contrast=contrast,
        norm=norm,
        restarts=integer("mei_restarts", mei_restarts, 1),
        seed=seed,
        images=images,
    )
    net = _prepare(model, device)
    prob = Problem.build(
        net, layer, unit, None, "max", contrast=contrast, norm=norm, distance_layer=None, images_folder=images
    )
    image, source, res = _mei_image(mei, prob, layer, unit, settings, progress)
    a0 = float(_responses(prob, image[None])[0])
    if not a0 > 0:
        raise DiversevisError(
            f"the MEI drives {net.display_name(layer)} unit {unit} to {a0:.4g} <= 0, so the ratios to it are "
            "meaningless; pass the unit's MEI (mei=True) or a responsive unit"
        )
    phases = np.arange(steps) * (2 * math.pi / steps)
    shifted = _shifted(image, phases, band)
    curve = _responses(prob, shifted)
    rates = np.maximum(curve, 0.0)
    f1_f0, f0, f1 = modulation_ratio(rates, phases)
    frequency, share = _spectrum_summary(image, band)
    spec = common_spec(
        method="mei_phase",
        **prob.spec(),
        contrast=contrast if norm is None else None,
        steps=steps,
        band=None if band == math.inf else band,
        band_rule="half-plane of the dominant frequency" if band == math.inf else "disc around it",
        mei_source=source,
        image_norm=float((image - 0.5).norm()),
        mei_restarts=settings.restarts if source == "computed" else None,
        mei_seed=settings.seed if source == "computed" else None,
        mei_seconds=None if res is None else res.spec.get("seconds"),
        natural_images=str(images) if images else "bundled",
        device=str(net.device),
        dtype="float32",
        seconds=round(time.perf_counter() - t0, 3),
    )
    worst = int(np.argmin(curve))
    return MEIPhaseResult(
        phases=phases,
        curve=curve,
        mei_activation=a0,
        modulation=curve_modulation(rates),
        f1_f0=f1_f0,
        f0=f0,
        f1=f1,
        min_ratio=float(curve.min()) / a0,
        frequency=frequency,
        shifted_energy=share,
        spec=spec,
        mei_image=image,
        min_image=shifted[worst].clone(),
    )
