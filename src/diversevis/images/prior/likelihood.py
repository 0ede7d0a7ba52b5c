"""The PixelCNN++ discretised logistic mixture likelihood, continuously relaxed (see :mod:`diversevis.images.prior`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "HALF_BIN",
    "MIN_LOG_SCALE",
    "PARAMS_PER_MIX",
    "logistic_bin_log_prob",
    "mixture_log_prob",
    "quantize",
]

#: Half the width of one of the 256 bins in PixelCNN++ units ([-1, 1]).
HALF_BIN = 1.0 / 255.0
#: Lower bound of the predicted log-scales (as in PixelCNN++).
MIN_LOG_SCALE = -7.0
#: Parameters per mixture component: 1 logit + 3 means + 3 log-scales + 3 channel coefficients.
PARAMS_PER_MIX = 10


def logistic_bin_log_prob(
    y: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, half_bin: float = HALF_BIN
) -> torch.Tensor:
    """Log-probability of the bin around ``y`` under a logistic, with open-ended edge bins (continuous relaxation).

    ``log(F(y + h) - F(y - h))`` with ``F`` the CDF of the logistic ``(mean, exp(log_scale))`` and
    ``h = half_bin``; ``log F(y + h)`` for ``y < -1 + h`` (lowest bin) and ``log(1 - F(y - h))`` for
    ``y > 1 - h`` (highest bin). ``y`` is not rounded. The difference of CDFs is evaluated stably as
    ``logsigmoid(a) + logsigmoid(-b) + log(1 - exp(b - a))`` with ``a, b = (y +- h - mean) / scale``.

    Parameters
    ----------
    y : torch.Tensor
        Values in PixelCNN++ units ([-1, 1] for display values in [0, 1]); any shape broadcasting with
        ``mean`` and ``log_scale``.
    mean, log_scale : torch.Tensor
        Logistic location (same units) and natural log of its scale.
    half_bin : float
        Half the bin width (``1/255`` for 256 levels in [-1, 1]).

    Returns
    -------
    torch.Tensor
        Log-probabilities in nats (broadcast shape). On the grid ``-1 + 2 k / 255`` they sum to 1 over
        ``k = 0..255`` (exp of them).
    """
    inv_scale = torch.exp(-log_scale)
    a = (y + half_bin - mean) * inv_scale
    b = (y - half_bin - mean) * inv_scale
    upper = F.logsigmoid(a)  # log F(y + h)
    lower = F.logsigmoid(-b)  # log (1 - F(y - h))
    mid = upper + lower + torch.log(-torch.expm1(b - a))
    return torch.where(y < -1.0 + half_bin, upper, torch.where(y > 1.0 - half_bin, lower, mid))


def _split_params(
    params: torch.Tensor, n_mix: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split network output ``(N, 10 M, H, W)`` into logits ``(N, M, H, W)`` and means, log-scales and
    coefficients ``(N, 3, M, H, W)`` (log-scales clamped at :data:`MIN_LOG_SCALE`, coefficients tanh'd)."""
    n, c, h, w = params.shape
    if c != PARAMS_PER_MIX * n_mix:
        raise ValueError(
            f"expected {PARAMS_PER_MIX * n_mix} parameter channels for {n_mix} mixtures, got {c}"
        )
    logits = params[:, :n_mix]
    rest = params[:, n_mix:].reshape(n, 3, 3, n_mix, h, w)
    means, log_scales, coeffs = rest.unbind(dim=1)
    return logits, means, torch.clamp(log_scales, min=MIN_LOG_SCALE), torch.tanh(coeffs)


def mixture_log_prob(y: torch.Tensor, params: torch.Tensor, n_mix: int, channels: int = 3) -> torch.Tensor:
    """Per-pixel log-likelihood under the PixelCNN++ discretised logistic mixture with channel conditioning.

    For component ``m`` the means are ``mu_R``, ``mu_G + c0 * y_R`` and ``mu_B + c1 * y_R + c2 * y_G``
    (``c = tanh`` of the predicted coefficients, ``y`` the actual values), and

        ``log p(y_ij) = logsumexp_m [ log pi_m + sum_c log P_m(y_ij^c) ]``

    with ``P_m`` from :func:`logistic_bin_log_prob`. With ``channels < 3`` the sum runs over the first
    ``channels`` channels only, which gives the marginal ``p(y^R)`` or ``p(y^R, y^G)`` of the pixel (the
    later channels are integrated out exactly).

    Parameters
    ----------
    y : torch.Tensor
        ``(N, 3, H, W)`` images in PixelCNN++ units ([-1, 1]).
    params : torch.Tensor
        ``(N, 10 * n_mix, H, W)`` network output: ``n_mix`` mixture logits, then means, log-scales and
        coefficients, each ``(3, n_mix)`` per pixel (channel-major).
    n_mix : int
        Mixture components ``M``.
    channels : {1, 2, 3}
        Leading channels included in the joint.

    Returns
    -------
    torch.Tensor
        ``(N, H, W)`` log-probabilities in nats.
    """
    if channels not in (1, 2, 3):
        raise ValueError(f"channels must be 1, 2 or 3, got {channels}")
    logits, means, log_scales, coeffs = _split_params(params, n_mix)
    yr, yg, yb = (y[:, c : c + 1] for c in range(3))  # (N, 1, H, W), broadcast over M
    mean_r = means[:, 0]
    mean_g = means[:, 1] + coeffs[:, 0] * yr
    mean_b = means[:, 2] + coeffs[:, 1] * yr + coeffs[:, 2] * yg
    cond_means = (mean_r, mean_g, mean_b)
    total = torch.log_softmax(logits, dim=1)
    for c, yc in enumerate((yr, yg, yb)[:channels]):
        total = total + logistic_bin_log_prob(yc, cond_means[c], log_scales[:, c])
    return torch.logsumexp(total, dim=1)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round display values ``x`` (in [0, 1]) to the 256-level grid ``k / 255`` (clamping to [0, 1])."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0
