"""Network inversion (Mahendran & Vedaldi, CVPR 2015): the image whose representation matches a target's.

Given a target image ``x0`` and a layer ``Phi``, find

    x* = argmin_x  ||Phi(x) - Phi(x0)||^2 / ||Phi(x0)||^2
                   + lambda_alpha * R_alpha((x - 0.5) / B) / (H W)
                   + lambda_tv * R_Vbeta((x - 0.5) / V) / (H W)

(method.md C.4) with ``R_alpha(u) = sum |u|^alpha`` (:func:`alpha_norm`, keeps pixel values within about
``B`` of grey) and ``R_Vbeta(u) = sum_ij ((u_{i,j+1} - u_ij)^2 + (u_{i+1,j} - u_ij)^2)^(beta/2)``
(:func:`tv_norm`, favours piecewise-smooth images), normalised per pixel as in the paper: ``B`` is the
typical deviation of natural pixel values from the mean (80 on a 0-255 scale) and ``V = B / 6.5``. The
image lives in display space ``[0, 1]`` and is fed through the network's own normalisation; the
optimisation runs on the shared Adam loop (the paper used gradient descent with momentum).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diversevis.core.cache import atomic_write_bytes
from diversevis.core.checks import SIDE_MAX, check_fields, check_loop
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.optimize import OptimizeResult, StepInfo, optimize
from diversevis.core.params import precondition as _precondition
from diversevis.core.result import Result, image_grid
from diversevis.core.settings import Settings
from diversevis.images.photos import load_photo, photo_names, square_resize
from diversevis.methods.problem import _prepare

__all__ = [
    "alpha_norm",
    "tv_norm",
    "relative_feature_error",
    "load_image",
    "bundled_image_names",
    "invert",
    "InversionSettings",
    "InversionResult",
    "DEFAULT_BOUND",
]

#: ``B`` of the paper: typical |pixel - mean| of natural images, 80 on a 0..255 scale (display units).
DEFAULT_BOUND = 80.0 / 255.0


# ------------------------------------------------------------------------------------------ the maths


def alpha_norm(x: torch.Tensor, alpha: float, *, reduce: bool = True) -> torch.Tensor:
    """``R_alpha(x) = sum |x|^alpha``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, ...)`` values.
    alpha : float
        Exponent (> 0; 6 in the paper).
    reduce : bool
        Sum over everything (scalar) or per image (``(N,)``).

    Returns
    -------
    torch.Tensor
        Scalar, or ``(N,)`` with ``reduce=False``.
    """
    v = x.abs() ** alpha
    return v.sum() if reduce else v.flatten(1).sum(1)


def tv_norm(x: torch.Tensor, beta: float, *, reduce: bool = True, eps: float = 0.0) -> torch.Tensor:
    """Total variation ``R_Vbeta(x) = sum_{c,i,j} ((x_{i,j+1} - x_ij)^2 + (x_{i+1,j} - x_ij)^2 + eps)^(beta/2)``.

    Both differences are taken at the ``(H - 1) x (W - 1)`` pixels that have a right and a lower
    neighbour, separately for every channel.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, H, W)`` images.
    beta : float
        Exponent (2 in the paper; 1 is the isotropic TV).
    reduce : bool
        Sum over everything (scalar) or per image (``(N,)``).
    eps : float
        Added inside the power so that ``beta < 2`` has a finite gradient at flat regions.

    Returns
    -------
    torch.Tensor
        Scalar, or ``(N,)`` with ``reduce=False``.
    """
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    v = dx**2 + dy**2
    if eps:
        v = v + eps
    v = v if beta == 2 else v ** (beta / 2)
    return v.sum() if reduce else v.flatten(1).sum(1)


def relative_feature_error(phi: torch.Tensor, phi0: torch.Tensor) -> torch.Tensor:
    """``||phi - phi0||^2 / ||phi0||^2`` per image.

    Parameters
    ----------
    phi : torch.Tensor
        ``(N, ...)`` representations.
    phi0 : torch.Tensor
        ``(1, ...)`` (or ``(N, ...)``) target representation; broadcasts over ``N``.

    Returns
    -------
    torch.Tensor
        ``(N,)`` relative squared errors (the denominator is clamped at ``1e-30``).
    """
    num = (phi - phi0).flatten(1).pow(2).sum(1)
    return num / phi0.flatten(1).pow(2).sum(1).clamp_min(1e-30)


# -------------------------------------------------------------------------------------------- images


def bundled_image_names() -> list[str]:
    """Short names of the bundled photos usable as ``image``.

    Returns
    -------
    list of str
        ``astronaut``, ``chelsea``, ``china``, ... (see :func:`diversevis.images.photos.photo_names`).
    """
    return photo_names()


def load_image(
    image: str | os.PathLike | np.ndarray | torch.Tensor, size: int | None = None, *, channels: int = 3
) -> torch.Tensor:
    """Read a target image into display space.

    Parameters
    ----------
    image : str, path, numpy.ndarray or torch.Tensor
        A file path; the name of a bundled photo (``"astronaut"`` or ``"skimage:astronaut"``, see
        :func:`bundled_image_names`); an ``(H, W, 3)`` (or ``(H, W)``) array, ``uint8`` or float in
        ``[0, 1]``; or a ``(C, H, W)`` float tensor in ``[0, 1]``.
    size : int, optional
        Resize (bilinear, antialiased) so that the shorter side is ``size`` and crop the centre square.
    channels : int
        Channels the network expects (1: grey by channel mean; 3: RGB).

    Returns
    -------
    torch.Tensor
        ``(channels, H, W)`` float32 in ``[0, 1]``.
    """
    from diversevis.images.naturals import _to_display_rgb

    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise DiversevisError(
                f"an image tensor must be (3, H, W) or (1, H, W), got shape {tuple(t.shape)}"
            )
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        t = t.clamp(0, 1)
    elif isinstance(image, np.ndarray):
        try:
            arr = _to_display_rgb(image)
        except ValueError as e:
            raise DiversevisError(f"{e}; expected an (H, W, 3) or (H, W) image array") from None
        t = torch.from_numpy(np.array(arr, dtype=np.float32)).permute(2, 0, 1)
    else:
        t, _ = load_photo(image)
    if size is not None:
        t = square_resize(t, size)
    if channels == 1:
        t = t.mean(0, keepdim=True)
    elif channels != 3:
        raise DiversevisError(f"inversion supports 1- or 3-channel networks, not {channels}")
    return t.contiguous()


# ------------------------------------------------------------------------------------------- result


class InversionResult(Result):
    """A :class:`~diversevis.result.Result` of :func:`invert`.

    ``images`` is ``(2, C, H, W)``: the reconstruction, then the target; ``activations`` holds their
    relative feature errors ``||Phi(x) - Phi0||^2 / ||Phi0||^2`` (the target's is 0). The metrics add
    ``feature_error`` (of the reconstruction), ``relative_feature_error`` (its square root),
    ``image_rms_error`` and ``image_relative_error``.
    """

    @property
    def reconstruction(self) -> torch.Tensor:
        """``(C, H, W)`` reconstructed image."""
        return self.images[0]

    @property
    def target(self) -> torch.Tensor:
        """``(C, H, W)`` target image."""
        return self.images[1]

    def metrics(self) -> dict[str, Any]:
        m = super().metrics()
        for k in ("feature_error", "relative_feature_error", "image_rms_error", "image_relative_error"):
            m[k] = self.spec.get(k)
        return m

    def save(self, directory: str | Path) -> Path:
        """As :meth:`Result.save`, with the grid labelled "reconstruction" / "target"."""
        out = super().save(directory)
        s = self.spec
        labels = [f"recon. err {s.get('feature_error', float('nan')):.2g}", "target"]
        title = f"{s.get('model', '')}  {s.get('layer', '')}  inversion"
        atomic_write_bytes(out / "grid.png", image_grid(self.images, labels, title=title))
        return out


class _FreeImage(nn.Module):
    """Unconstrained display-space image ``0.5 + raw``, optionally with the 1/sqrt(f) gradient whitening."""

    def __init__(self, raw: torch.Tensor, precondition: bool) -> None:
        super().__init__()
        self.raw = nn.Parameter(raw)
        self.use_precondition = precondition

    def forward(self) -> torch.Tensor:
        r = _precondition(self.raw) if self.use_precondition else self.raw
        return 0.5 + r


# ------------------------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class InversionSettings(Settings):
    """The settings of :func:`invert` (see there for each field): target size, priors, start and loop.

    Building one refuses non-positive exponents, bound, learning rate or initial SD and negative prior
    weights, before the network is loaded.
    """

    size: int | None = None
    alpha: float = 6.0
    beta: float = 2.0
    lambda_alpha: float = 1e-5
    lambda_tv: float = 1e-3
    bound: float = DEFAULT_BOUND
    precondition: bool = True
    init_sd: float = 0.01
    lr: float = 0.05
    max_iter: int = 500
    patience: int = 100
    ema: float = 0.9
    seed: int = 0

    def check(self) -> None:
        positive = [(name, 0.0, math.inf, True) for name in ("alpha", "beta", "bound", "init_sd")]
        check_fields(
            self,
            ints=[("size", 1, SIDE_MAX)],
            floats=positive + [("lambda_alpha", 0.0), ("lambda_tv", 0.0)],
            optional=["size"],
        )
        check_loop(self)


def invert(
    model: Network | nn.Module | str,
    layer: str,
    image: str | os.PathLike | np.ndarray | torch.Tensor,
    *,
    size: int | None = InversionSettings.size,
    alpha: float = InversionSettings.alpha,
    beta: float = InversionSettings.beta,
    lambda_alpha: float = InversionSettings.lambda_alpha,
    lambda_tv: float = InversionSettings.lambda_tv,
    bound: float = InversionSettings.bound,
    precondition: bool = InversionSettings.precondition,
    init_sd: float = InversionSettings.init_sd,
    lr: float = InversionSettings.lr,
    max_iter: int = InversionSettings.max_iter,
    patience: int = InversionSettings.patience,
    ema: float = InversionSettings.ema,
    seed: int = InversionSettings.seed,
    device: str | torch.device | None = None,
    progress: bool = False,
    callbacks: Iterable[Callable[[StepInfo], bool | None]] = (),
) -> InversionResult:
    """Reconstruct an image from its representation at ``layer`` (Mahendran & Vedaldi 2015).

    Parameters
    ----------
    model : Network, nn.Module or str
        The network (a zoo name is loaded).
    layer : str
        Layer whose whole output ``Phi`` is matched (pre-ReLU for a conv layer followed by a ReLU).
    image : str, path, numpy.ndarray or torch.Tensor
        Target image (see :func:`load_image`).
    size : int, optional
        Resize/crop the target to ``size x size`` first (default: as given).
    alpha, beta : float
        Exponents of the range (``R_alpha``) and total-variation (``R_Vbeta``) regularisers.
    lambda_alpha, lambda_tv : float
        Their weights (per-pixel normalised as in the paper; the paper tunes them per layer: deeper
        layers need a larger ``lambda_tv``).
    bound : float
        ``B`` in display units; ``V = B / 6.5``.
    precondition : bool
        Whiten the gradient with the 1/sqrt(f) preconditioner.
    init_sd : float
        SD of the initial noise around grey.
    lr, max_iter, patience, ema : float, int, int, float
        Adam learning rate (display units per step) and the shared loop's stopping settings.
    seed : int
        Seed of the initial noise.
    device : str, optional
        Move the network there.
    progress : bool
        Show a progress bar.
    callbacks : iterable of callables
        Passed to :func:`~diversevis.optimize.optimize`.

    Returns
    -------
    InversionResult
        ``images[0]`` the reconstruction, ``images[1]`` the target; ``spec`` holds the settings and the
        final ``feature_error`` (``||Phi(x) - Phi0||^2 / ||Phi0||^2``), ``relative_feature_error`` (its
        square root), ``image_rms_error`` (display units) and ``image_relative_error``
        (``||x - x0|| / ||x0 - mean(x0)||``).
    """
    s = InversionSettings.from_arguments(locals())
    return run_invert(model, layer, image, s, device=device, progress=progress, callbacks=callbacks)


def run_invert(
    model: Network | nn.Module | str,
    layer: str,
    image: str | os.PathLike | np.ndarray | torch.Tensor,
    s: InversionSettings,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
    callbacks: Iterable[Callable[[StepInfo], bool | None]] = (),
) -> InversionResult:
    """:func:`invert` with its settings given as one :class:`InversionSettings` (as the CLI calls it)."""
    net = _prepare(model, device)
    net.resolve(layer)
    target, phi0 = _target_features(net, layer, image, s.size)
    h, w = target.shape[-2:]
    v_bound = s.bound / 6.5
    gen = torch.Generator().manual_seed(s.seed)
    raw = s.init_sd * torch.randn(target.shape, generator=gen)
    param = _FreeImage(raw.to(net.device), s.precondition)
    loss_fn = _inversion_loss(
        net, layer, phi0, h * w, s.alpha, s.beta, s.lambda_alpha, s.lambda_tv, s.bound, v_bound
    )
    opt = optimize(
        param,
        loss_fn,
        **s.loop(),
        progress=progress,
        desc=f"invert {net.display_name(layer)}",
        callbacks=callbacks,
    )
    x = opt.images
    err, rms, rel = _errors(net, layer, x, target, phi0)
    return InversionResult(
        images=torch.cat([x.detach(), target]).cpu(),
        activations=torch.tensor([err, 0.0]),
        distances=torch.tensor([[0.0, rms], [rms, 0.0]]),
        loss_history=opt.history,
        spec=_spec(net, layer, image, s, (int(h), int(w)), list(phi0.shape[1:]), (err, rms, rel), opt),
    )


def _spec(
    net: Network,
    layer: str,
    image: Any,
    s: InversionSettings,
    hw: tuple[int, int],
    feature_shape: list[int],
    errors: tuple[float, float, float],
    opt: OptimizeResult,
) -> dict[str, Any]:
    """The run spec: every setting, the final errors, counts, timings and versions."""
    err, rms, rel = errors
    return {
        "method": "invert",
        "model": net.name,
        "layer": net.display_name(layer),
        "layer_path": net.resolve(layer),
        "unit": None,
        "image": _describe(image),
        "image_size": list(hw),
        "size": s.size,
        "feature_shape": feature_shape,
        "alpha": s.alpha,
        "beta": s.beta,
        "lambda_alpha": s.lambda_alpha,
        "lambda_tv": s.lambda_tv,
        "bound": s.bound,
        "tv_bound": s.bound / 6.5,
        "precondition": s.precondition,
        "init_sd": s.init_sd,
        "lr": s.lr,
        "max_iter": s.max_iter,
        "patience": s.patience,
        "ema": s.ema,
        "seed": s.seed,
        "device": str(net.device),
        "dtype": "float32",
        "feature_error": err,
        "relative_feature_error": math.sqrt(max(err, 0.0)),
        "image_rms_error": rms,
        "image_relative_error": rel,
        **opt.summary(),
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _target_features(
    net: Network, layer: str, image: str | os.PathLike | np.ndarray | torch.Tensor, size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target ``(1, C, H, W)`` on the network's device and its representation ``Phi0`` at ``layer``."""
    target = load_image(image, size, channels=net.in_channels).to(net.device)[None]
    h, w = target.shape[-2:]
    if not net.output_shape(layer, (h, w)):
        raise DiversevisError(
            f"layer {net.display_name(layer)!r} produces no output for a {h}x{w} image; use a larger one"
        )
    with torch.no_grad():
        phi0 = net.activations(target, [layer])[layer]
    if float(phi0.pow(2).sum()) == 0:
        raise DiversevisError(
            f"the target's representation at {net.display_name(layer)!r} is all zero; nothing to invert"
        )
    return target, phi0


def _inversion_loss(
    net: Network,
    layer: str,
    phi0: torch.Tensor,
    pixels: int,
    alpha: float,
    beta: float,
    lambda_alpha: float,
    lambda_tv: float,
    bound: float,
    v_bound: float,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The objective of the module docstring for display-space images; ``pixels`` is ``H W``."""
    eps = 0.0 if beta >= 2 else 1e-6

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        phi = net.activations(x, [layer])[layer]
        loss = relative_feature_error(phi, phi0).sum()
        u = x - 0.5
        if lambda_alpha > 0:
            loss = loss + lambda_alpha * alpha_norm(u / bound, alpha) / pixels
        if lambda_tv > 0:
            loss = loss + lambda_tv * tv_norm(u / v_bound, beta, eps=eps) / pixels
        return loss

    return loss_fn


def _errors(
    net: Network, layer: str, x: torch.Tensor, target: torch.Tensor, phi0: torch.Tensor
) -> tuple[float, float, float]:
    """Feature error ``||Phi(x) - Phi0||^2 / ||Phi0||^2``, image RMS error and relative image error."""
    with torch.no_grad():
        err = float(relative_feature_error(net.activations(x, [layer])[layer], phi0)[0])
        diff = (x - target).flatten()
        rms = float(diff.pow(2).mean().sqrt())
        rel = float(
            diff.norm() / (target - target.mean((2, 3), keepdim=True)).flatten().norm().clamp_min(1e-12)
        )
    return err, rms, rel


def _versions() -> dict[str, str]:
    from diversevis.methods.dfv import versions

    return versions()


def _describe(image: Any) -> str:
    if isinstance(image, torch.Tensor):
        return f"tensor{tuple(image.shape)}"
    if isinstance(image, np.ndarray):
        return f"array{image.shape}:{image.dtype}"
    return str(image)
