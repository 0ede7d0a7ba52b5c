"""Phase test: is a unit simple-like or complex-like? (method.md A.11(c))

The standard neurophysiology index, measured with sinusoidal gratings on the unit's receptive-field-sized
image, at the same contrast as the diverse feature visualisations (the L2 norm ``Problem.norm`` around
grey; by default half the mean norm of natural patches of that size):

1. **Coarse search.** Every combination of ``orientations`` x ``frequencies`` x ``phases`` gratings is
   shown in a few large batches; the response is the target value read before any ReLU. The preferred
   orientation and spatial frequency maximise the best response over phase.
2. **Fine phase sweep.** At the preferred orientation and frequency, ``fine_phases`` evenly spaced phases
   over ``[0, 2 pi)`` give the raw responses ``p(phi)``; the firing rate is ``r(phi) = relu(p(phi))``.
   Its mean is ``F0`` and the amplitude of its first harmonic is ``F1 = 2 |mean(r exp(-i phi))|``.

``F1 / F0 > 1`` is simple-like (phase selective), ``< 1`` complex-like (phase invariant). Closed forms:
a linear unit ``r = relu(A cos(phi - phi0))`` gives ``pi / 2``; any quadratic (energy) unit gives 0, since
its response to ``cos(phi) G_c - sin(phi) G_s`` contains only the harmonics 0 and 2 of ``phi``; a linear
unit whose offset keeps it above threshold, ``r = c + A cos(phi - phi0)`` with ``c >= A``, gives ``A / c``.

Amplitude convention. A grating of L2 norm ``rho`` has amplitude ``rho * sqrt(2 / D)`` (``D`` values),
the same for every phase, so the norm averaged (RMS) over a phase cycle is exactly ``rho``. A finite
grating's own norm wobbles with phase (by a second-harmonic term that grows near the Nyquist frequency,
where e.g. a vertical 0.5 cycles/pixel grating on an even size vanishes at phase 0); rescaling each grating to exactly
``rho`` would add that wobble to the responses (and divide by ~0 at Nyquist), so the sweep keeps the
amplitude fixed. ``grating(..., per_image=True)`` gives exact per-image norms when needed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.optimize import NonFiniteError
from diversevis.core.params import image_hw
from diversevis.core.result import Result
from diversevis.methods.dfv import Problem, _common_spec, _prepare, run_mei
from diversevis.methods.phase_result import DRIVE_THRESHOLD, NOT_DRIVEN, PhaseResult
from diversevis.methods.problem import resolve_mei
from diversevis.methods.settings import MEISettings

__all__ = [
    "grating",
    "modulation_ratio",
    "PhaseResult",
    "phase_test",
    "F_MAX",
    "DRIVE_THRESHOLD",
    "NOT_DRIVEN",
]

#: Highest spatial frequency of the default grid (cycles/pixel): "Nyquist-ish", just below the 0.5 at
#: which a grating along x or y degenerates (its phase then only changes its contrast, not its position).
F_MAX = 0.45

#: Gratings per forward pass (bounds memory for large receptive fields).
CHUNK = 512


# --------------------------------------------------------------------------- stimuli
def grating(
    size: int | tuple[int, int],
    theta: float | Tensor,
    frequency: float | Tensor,
    phase: float | Tensor,
    *,
    channels: int = 3,
    norm: float | None = None,
    per_image: bool = False,
    device: str | torch.device | None = None,
) -> Tensor:
    """Sinusoidal grating(s) ``cos(2 pi f (x cos theta + y sin theta) + phase)`` around zero.

    ``x`` is the column and ``y`` the row coordinate (``y`` grows downwards), centred at the image
    centre ``((height - 1) / 2, (width - 1) / 2)``; ``theta`` is the direction of the wave vector, as in
    :func:`diversevis.synthetic.gabor` (``theta = 0``: the luminance varies along ``x``, i.e. vertical
    stripes). Add 0.5 for a display-space image.

    Parameters
    ----------
    size : int or (int, int)
        Image side, or ``(height, width)``, in pixels (>= 1).
    theta : float or Tensor
        Orientation of the wave vector in radians.
    frequency : float or Tensor
        Spatial frequency in cycles/pixel.
    phase : float or Tensor
        Phase in radians (0: a bright stripe through the centre).
    channels : int
        The same (grey) grating replicated over this many channels.
    norm : float, optional
        L2 norm (display units, over all ``channels * height * width`` values). By default the amplitude is
        set to ``norm * sqrt(2 / D)``, which gives every phase the same amplitude and makes the norm exact
        on average (RMS) over a phase cycle; see ``per_image``. ``None``: amplitude 1.
    per_image : bool
        Rescale each grating to exactly ``norm`` instead (a grating that vanishes on the pixel grid, such
        as a vertical 0.5 cycles/pixel grating at phase 0 on an even size, stays zero).
    device : str or torch.device, optional
        Device of the output (default: that of the first tensor argument, else CPU).

    Returns
    -------
    Tensor
        ``batch_shape + (channels, height, width)`` float32, where ``batch_shape`` is the broadcast shape of
        ``theta``, ``frequency`` and ``phase`` (``()`` for three scalars, ``(B,)`` for 1-D tensors of
        length ``B`` mixed with scalars).
    """
    hw = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
    if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in hw):
        raise DiversevisError(f"size must be an int >= 1 or (height, width) (pixels), got {size!r}")
    h, w = hw
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise DiversevisError(f"channels must be an int >= 1, got {channels!r}")
    if norm is not None and not norm > 0:
        raise DiversevisError(f"norm must be > 0 (an L2 norm in display units), got {norm}")
    if device is None:
        device = next((a.device for a in (theta, frequency, phase) if isinstance(a, Tensor)), "cpu")
    th, f, ph = (torch.as_tensor(a, dtype=torch.float64, device=device) for a in (theta, frequency, phase))
    try:
        th, f, ph = torch.broadcast_tensors(th, f, ph)
    except RuntimeError:
        raise DiversevisError(
            "theta, frequency and phase must broadcast (scalars or tensors of equal length), got shapes "
            f"{tuple(th.shape)}, {tuple(f.shape)} and {tuple(ph.shape)}"
        ) from None
    batch = th.shape
    rows = torch.arange(h, dtype=torch.float64, device=device) - (h - 1) / 2
    cols = torch.arange(w, dtype=torch.float64, device=device) - (w - 1) / 2
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    th, f, ph = (a.reshape(*batch, 1, 1) for a in (th, f, ph))
    g = torch.cos(2 * math.pi * f * (x * torch.cos(th) + y * torch.sin(th)) + ph)  # (*batch, H, W)
    if norm is not None:
        d = channels * h * w
        if per_image:
            n = g.flatten(-2).norm(dim=-1) * math.sqrt(channels)
            n = n.reshape(*batch, 1, 1)
            g = torch.where(n > 1e-9 * math.sqrt(d), g * (norm / n.clamp_min(1e-300)), torch.zeros_like(g))
        else:
            g = g * (norm * math.sqrt(2.0 / d))
    g = g.unsqueeze(-3).expand(*batch, channels, h, w)
    return g.float().contiguous()


def modulation_ratio(rates: Tensor | np.ndarray, phases: Tensor | np.ndarray) -> tuple[float, float, float]:
    """Modulation ratio ``F1 / F0`` of a firing rate sampled over one phase cycle.

    ``F0 = mean r`` and ``F1 = 2 |mean(r exp(-i phi))|`` (the amplitude of the first harmonic). This is
    the discrete Fourier estimate, exact when ``phases`` are evenly spaced over one full cycle ``[0, 2 pi)``
    and ``r`` has no harmonic ``k = n +- 1`` for ``n`` samples (a half-wave rectified cosine has none for
    even ``n``).

    Parameters
    ----------
    rates : Tensor or ndarray
        ``(n,)`` firing rates (rectified responses, >= 0).
    phases : Tensor or ndarray
        ``(n,)`` stimulus phases in radians.

    Returns
    -------
    f1_f0, f0, f1 : float
        The ratio, ``F0`` and ``F1`` (rate units). ``F1 / F0`` is ``nan`` when ``F0 <= 0``: a unit that
        never fires over the sweep (or whose rates cancel out) has no defined modulation ratio, and ``nan``
        keeps it apart from a genuinely unmodulated (complex-like, ratio 0) unit.

    Examples
    --------
    ``relu(cos(phi))`` gives ``pi / 2`` (simple-like); a constant gives 0; ``c + A cos(phi)`` with
    ``c >= A`` gives ``A / c``.
    """
    r = torch.as_tensor(rates).detach().cpu().double()
    p = torch.as_tensor(phases).detach().cpu().double()
    if r.dim() != 1 or p.shape != r.shape or r.numel() == 0:
        raise DiversevisError(
            f"rates and phases must be 1-D of the same non-zero length, got shapes {tuple(r.shape)} "
            f"and {tuple(p.shape)}"
        )
    f0 = float(r.mean())
    f1 = 2.0 * math.hypot(float((r * torch.cos(p)).mean()), float((r * torch.sin(p)).mean()))
    ratio = f1 / f0 if f0 > 0 else math.nan
    return ratio, f0, f1


# --------------------------------------------------------------------------- the test
def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DiversevisError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _grid(
    name: str, value: int | Sequence[float] | Tensor | np.ndarray, default, positive: bool
) -> np.ndarray:
    """An int count (the default grid) or explicit values."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return default(_count(name, value, 1))
    try:
        a = np.asarray(torch.as_tensor(value, dtype=torch.float64).cpu(), dtype=np.float64)
    except (TypeError, ValueError, RuntimeError):
        raise DiversevisError(f"{name} must be an int >= 1 or a sequence of numbers, got {value!r}") from None
    if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all() or (positive and not (a > 0).all()):
        cond = "positive finite numbers" if positive else "finite numbers"
        raise DiversevisError(
            f"{name} must be an int >= 1 or a non-empty 1-D sequence of {cond}, got {value!r}"
        )
    return a


def default_frequencies(size: int | tuple[int, int], n: int) -> np.ndarray:
    """``n`` log-spaced spatial frequencies from one cycle per image (``1 / side``, the longer side) to
    :data:`F_MAX`."""
    side = max(size) if isinstance(size, (tuple, list)) else size
    lo = min(1.0 / side, F_MAX / 2)
    return np.geomspace(lo, F_MAX, n)


def _responses(prob: Problem, th: Tensor, f: Tensor, ph: Tensor) -> Tensor:
    """Pre-ReLU target values ``(B,)`` (float64, CPU) of the gratings ``(th, f, ph)`` in chunks."""
    net = prob.net
    size = prob.placement.image_size
    out = []
    with torch.no_grad():
        for i in range(0, th.numel(), CHUNK):
            sl = slice(i, i + CHUNK)
            x = 0.5 + grating(
                size, th[sl], f[sl], ph[sl], channels=net.in_channels, norm=prob.norm, device=net.device
            )
            out.append(prob.evaluate(x, need_features=False)[0].double().cpu())
    return torch.cat(out)


def _coarse_search(
    prob: Problem, thetas: np.ndarray, freqs: np.ndarray, coarse_ph: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """All ``(theta, f, phase)`` gratings in a few large batches.

    Returns the ``(T, F, P)`` responses, the ``(T, F)`` best response over phase, and the indices of the
    preferred orientation and frequency (the argmax of the latter).
    """
    T, Fn, P = len(thetas), len(freqs), len(coarse_ph)
    th = torch.as_tensor(thetas).view(T, 1, 1).expand(T, Fn, P).reshape(-1)
    ff = torch.as_tensor(freqs).view(1, Fn, 1).expand(T, Fn, P).reshape(-1)
    pp = torch.as_tensor(coarse_ph).view(1, 1, P).expand(T, Fn, P).reshape(-1)
    coarse = _responses(prob, th, ff, pp).view(T, Fn, P).numpy()
    best_over_phase = coarse.max(axis=2)  # (T, F)
    ti, fi = np.unravel_index(int(np.argmax(best_over_phase)), best_over_phase.shape)
    return coarse, best_over_phase, ti, fi


def _fine_sweep(prob: Problem, theta: float, f: float, n_fine: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_fine`` evenly spaced phases over ``[0, 2 pi)`` at ``(theta, f)`` and their raw responses."""
    fine_ph = np.arange(n_fine) * (2 * math.pi / n_fine)
    fine_t = torch.as_tensor(fine_ph)
    curve = _responses(prob, torch.full_like(fine_t, theta), torch.full_like(fine_t, f), fine_t)
    return fine_ph, curve.numpy()


def _grey_response(prob: Problem) -> float:
    """Target value of the blank grey (0.5) image of the grating size."""
    net = prob.net
    size = prob.placement.image_size
    with torch.no_grad():
        blank = torch.full((1, net.in_channels, *image_hw(size)), 0.5, device=net.device)
        return float(prob.evaluate(blank, need_features=False)[0][0])


def _check_finite(prob: Problem, what: str, values: np.ndarray) -> None:
    """Raise naming the cause when the network's responses to gratings are not finite numbers."""
    bad = ~np.isfinite(np.asarray(values, dtype=np.float64))
    if bad.any():
        raise NonFiniteError(
            f"the network returned non-finite responses ({int(bad.sum())} of {bad.size} {what} are nan or "
            f"inf) to gratings of L2 norm {prob.norm:.4g}: check the model for nan/inf weights or "
            "activations, or lower the contrast; F1/F0 would be nan"
        )


def _check_request(prob: Problem, drive_threshold: float) -> float:
    """A finite grating norm and a drive threshold in ``[0, 1]``; returns the threshold as a float."""
    if not math.isfinite(prob.norm):
        raise DiversevisError(
            f"the grating L2 norm is {prob.norm} (from contrast/norm): give a finite contrast or norm; "
            "gratings of infinite contrast have no defined response"
        )
    t = drive_threshold
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
        raise DiversevisError(
            f"drive_threshold must be a number in [0, 1] (a fraction of the MEI activation), got {t!r}"
        )
    return float(t)


def _phase_mei(
    prob: Problem, layer: str, unit, direction, metric: str, mei, restarts: int, images
) -> tuple[Result | None, float | None]:
    """The MEI the best grating is compared with: computed at the grating norm, given, or none."""
    s = MEISettings(norm=prob.norm, restarts=_count("mei_restarts", restarts, 1), images=images)
    return resolve_mei(mei, lambda: run_mei(prob.net, layer, unit, direction, metric, s))


def _phase_spec(
    prob: Problem,
    *,
    contrast: float,
    norm: float | None,
    images: str | Path | None,
    counts: tuple[int, int, int, int],
    freqs: np.ndarray,
    drive: tuple[float, int | None, Result | None],
    seconds: float,
) -> dict[str, Any]:
    """Run spec of :func:`phase_test`; ``counts`` = (orientations, frequencies, phases, fine phases),
    ``drive`` = (drive threshold, MEI restarts if computed here, the MEI result if any)."""
    net = prob.net
    size = prob.placement.image_size
    T, Fn, P, n_fine = counts
    threshold, restarts, mei_res = drive
    return _common_spec(
        method="phase",
        **prob.spec(),
        contrast=contrast if norm is None else None,
        amplitude=prob.norm * math.sqrt(2.0 / (net.in_channels * math.prod(image_hw(size)))),
        orientations=T,
        frequencies=Fn,
        phases=P,
        fine_phases=n_fine,
        f_min=float(freqs.min()),
        f_max=float(freqs.max()),
        forward_passes=T * Fn * P + n_fine + 1,
        drive_threshold=threshold,
        mei_restarts=restarts,
        mei_seconds=None if mei_res is None else mei_res.spec.get("seconds"),
        device=str(net.device),
        dtype="float32",
        natural_images=(str(images) if images else "bundled") if norm is None else None,
        seconds=round(seconds, 3),
    )


def phase_test(
    model: Network | nn.Module | str,
    layer: str,
    unit: int | None = None,
    *,
    direction: Sequence[float] | Tensor | None = None,
    metric: str = "max",
    contrast: float = 0.5,
    norm: float | None = None,
    orientations: int | Sequence[float] = 16,
    frequencies: int | Sequence[float] = 12,
    phases: int = 8,
    fine_phases: int = 32,
    images: str | Path | None = None,
    mei: bool | float | Result | None = True,
    mei_restarts: int = MEISettings.restarts,
    drive_threshold: float = DRIVE_THRESHOLD,
    device: str | torch.device | None = None,
) -> PhaseResult:
    """Grating phase test of one unit: preferred orientation and frequency, then the F1/F0 ratio.

    Parameters
    ----------
    model : Network, nn.Module or str
        The network (a zoo name such as ``"vgg16-paper"`` is loaded).
    layer : str
        Target layer (alias or dot path); read before any following ReLU, at the unit whose receptive
        field is the grating image (padded networks: the image sits in a grey canvas).
    unit : int, optional
        Channel index of the target unit.
    direction : sequence of float, optional
        Target direction in channel space instead of a unit.
    metric : {"max", "cos", "mse"}
        Target metric, as in :func:`diversevis.diverse` (``mse`` is never positive, so its ratio is nan).
    contrast : float
        Grating L2 norm as a fraction of the mean natural-patch norm (0.5: the DFV contrast).
    norm : float, optional
        Absolute L2 norm (display units) overriding ``contrast``; see :func:`grating` for the amplitude.
    orientations : int or sequence of float
        Count of evenly spaced orientations over ``[0, pi)`` (>= 1), or explicit values in radians.
    frequencies : int or sequence of float
        Count of log-spaced frequencies from ``1 / size`` to :data:`F_MAX` = 0.45 cycles/pixel (>= 1), or
        explicit positive values in cycles/pixel.
    phases : int
        Phases of the coarse search, evenly spaced over ``[0, 2 pi)`` (>= 1).
    fine_phases : int
        Phases of the fine sweep (>= 3; the default 32 is plenty, and an even count makes F1 exact for a
        rectified cosine).
    images : str or Path, optional
        Folder of natural images for the contrast statistics (default: the bundled photos).
    mei : bool, float or Result
        The unit's MEI at the grating norm, which the best grating is compared with: ``True`` computes it
        (:func:`diversevis.mei`, ``mei_restarts`` restarts), a number or the :class:`Result` of
        :func:`diversevis.mei` supplies it, ``False``/``None`` skips the check (the label then says so).
    mei_restarts : int
        Restarts of the MEI when it is computed here.
    drive_threshold : float
        Fraction of the MEI activation the best grating must reach for a simple-/complex-like label
        (default :data:`DRIVE_THRESHOLD` = 0.3; ours, method.md gives none); below it the label is
        "gratings do not drive this unit" and F1/F0 is reported but flagged.
    device : str, optional
        Move the network there (default: where it already is).

    Returns
    -------
    PhaseResult
        Preferred ``orientation`` (rad) and ``frequency`` (cycles/px), ``f1_f0``, ``f0``, ``f1``, the
        tuning curves, the fine ``phase_curve``, the ``best_grating`` and the verdict ``label``.

    Raises
    ------
    DiversevisError
        Bad arguments, an infinite grating norm (e.g. ``contrast=inf``), or non-finite responses of the
        network to the gratings: F1/F0 is never silently nan for those. A unit that never fires over the
        sweep gives ``f1_f0 = nan`` with the cause in :meth:`PhaseResult.nan_cause`.

    Notes
    -----
    A target without spatial units (a ``(B, N)`` readout or logit, optimised on the whole input) is
    probed with gratings on its *effective* receptive field: the box holding 95 % of the gradient
    energy at the MEI (:meth:`~diversevis.methods.problem.Problem.windowed`), in a grey screen, at the
    same L2 norm; the spec's ``window`` and ``image_size`` give the box. Full-screen gratings would
    spread the contrast over pixels the neuron ignores.

    Costs ``orientations * frequencies * phases + fine_phases + 1`` forward passes (1569 by default),
    batched :data:`CHUNK` at a time without gradients, plus the MEI when it is computed here. The rate is
    the rectified target value with no baseline subtraction; a unit with a large positive bias can stay
    above threshold over the whole cycle and then reads complex-like (``A / c``) even when it is linear:
    compare ``grey_response``.
    """
    n_ph = _count("phases", phases, 1)
    n_fine = _count("fine_phases", fine_phases, 3)
    t0 = time.perf_counter()
    net = _prepare(model, device)
    prob = Problem.build(
        net,
        layer,
        unit,
        direction,
        metric,
        contrast=contrast,
        norm=norm,
        distance_layer=None,
        images_folder=images,
    )
    threshold = _check_request(prob, drive_threshold)
    thetas = _grid("orientations", orientations, lambda n: np.arange(n) * (math.pi / n), positive=False)
    coarse_ph = np.arange(n_ph) * (2 * math.pi / n_ph)
    mei_res, mei_act = _phase_mei(prob, layer, unit, direction, metric, mei, mei_restarts, images)
    if prob.placement.unit_index is None and mei_res is not None:
        prob = prob.windowed(mei_res.mei_image)  # a readout / logit: gratings on its effective field
    size = prob.placement.image_size
    freqs = _grid("frequencies", frequencies, lambda n: default_frequencies(size, n), positive=True)

    coarse, best_over_phase, ti, fi = _coarse_search(prob, thetas, freqs, coarse_ph)
    _check_finite(prob, "coarse-search responses", coarse)
    theta_star, f_star = float(thetas[ti]), float(freqs[fi])
    fine_ph, curve = _fine_sweep(prob, theta_star, f_star, n_fine)
    grey = _grey_response(prob)
    _check_finite(prob, "fine-sweep and grey responses", np.append(curve, grey))
    ratio, f0, f1 = modulation_ratio(np.maximum(curve, 0.0), fine_ph)
    best_phase = float(fine_ph[int(np.argmax(curve))])
    best = 0.5 + grating(size, theta_star, f_star, best_phase, channels=net.in_channels, norm=prob.norm)

    spec = _phase_spec(
        prob,
        contrast=contrast,
        norm=norm,
        images=images,
        counts=(len(thetas), len(freqs), n_ph, n_fine),
        freqs=freqs,
        drive=(threshold, mei_restarts if mei is True else None, mei_res),
        seconds=time.perf_counter() - t0,
    )
    return PhaseResult(
        orientation=theta_star,
        frequency=f_star,
        f1_f0=ratio,
        f0=f0,
        f1=f1,
        orientations=np.asarray(thetas, dtype=np.float64),
        frequencies=np.asarray(freqs, dtype=np.float64),
        orientation_curve=best_over_phase[:, fi].copy(),
        frequency_curve=best_over_phase[ti, :].copy(),
        phases=fine_ph,
        phase_curve=curve,
        spec=spec,
        best_grating=best.cpu(),
        mei_activation=mei_act,
        grey_response=grey,
        coarse_phases=coarse_ph,
        coarse_responses=coarse,
        drive_threshold=threshold,
    )
