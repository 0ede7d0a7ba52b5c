"""Dead starts: a target that gives exactly 0 with no gradient cannot be optimised from there.

A unit read after a ReLU (a block output, a rectified readout) is 0 for every image that drives it
negatively, and its gradient is 0 too: plain gradient ascent never leaves such a start. DFV and the MEI
therefore (1) redraw the starting images that are dead, a few times, each from its own seeded noise (the
same for a one-unit run and a batched one), and (2) if some stay dead, optimise with redirected ReLU
gradients (:class:`~diversevis.core.redirect.RedirectedReLU`: a sample whose gradient through a ReLU is
zero everywhere gets the gradient that would increase the ReLU's input) until they are alive. Images
that are still 0 at the end are reported as dead; when even the MEI is 0, the message names the
pre-activation layer to target instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from diversevis.core.network import Network
from diversevis.core.redirect import RedirectedReLU

__all__ = [
    "DEAD_START_TRIES",
    "dead_mask",
    "revive_dead_starts",
    "alive_starts",
    "starts_spec",
    "dead_images",
    "dead_unit_message",
]

#: How many times a dead starting image is redrawn before the redirected gradient takes over.
DEAD_START_TRIES = 3


def dead_mask(values: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Which images the target gives exactly 0 with an all-zero gradient.

    Parameters
    ----------
    values : callable
        ``(N, C, H, W)`` images -> ``(N,)`` target values (differentiable).
    images : torch.Tensor
        ``(N, C, H, W)`` display-space images.

    Returns
    -------
    torch.Tensor
        ``(N,)`` bool.
    """
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        v = values(x)
        (g,) = torch.autograd.grad(v.sum(), x, allow_unused=True)
    flat = torch.zeros_like(x).flatten(1) if g is None else g.flatten(1)
    return (v.detach() == 0) & (flat.abs().amax(1) == 0)


def revive_dead_starts(
    param: torch.nn.Module,
    values: Callable[[torch.Tensor], torch.Tensor],
    seed: int,
    per_group: int,
    tries: int = DEAD_START_TRIES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Redraw the raw starting images of ``param`` that are dead, up to ``tries`` times.

    Image ``i`` is redrawn at attempt ``t`` from a generator seeded with ``(seed, t, i % per_group)``, so
    the ``k``-th image of every group of a batched run restarts exactly like image ``k`` of a one-unit run.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``(N,)`` int: how often each image was redrawn; ``(N,)`` bool: the images still dead.
    """
    dead = dead_mask(values, param())
    redraws = torch.zeros(len(dead), dtype=torch.long)
    for attempt in range(1, tries + 1):
        if not bool(dead.any()):
            break
        with torch.no_grad():
            for i in dead.nonzero().flatten().tolist():
                gen = torch.Generator().manual_seed(_start_seed(seed, attempt, i % per_group))
                param.raw[i] = torch.randn(param.raw.shape[1:], generator=gen).to(param.raw)
                redraws[i] += 1
        dead = dead_mask(values, param())
    return redraws, dead


def _start_seed(seed: int, attempt: int, index: int) -> int:
    return (int(seed) * 1_000_003 + attempt * 10_007 + index) % (2**63)


def dead_unit_message(net: Network, layer: str, unit: int | None) -> str:
    """What to do when no image drives ``unit`` above 0: name the layer's pre-activation if it has one."""
    pre = net.pre_activation(layer)
    where = f"unit {unit} of {net.display_name(layer)!r}" if unit is not None else net.display_name(layer)
    hint = (
        f"; the layer's output is rectified: target the pre-activation layer {pre!r} instead"
        if pre
        else "; target a layer before its nonlinearity"
    )
    return f"no image drives {where} above 0 (its MEI activation is 0){hint}"


def alive_starts(
    param: torch.nn.Module,
    values: Callable[[torch.Tensor], torch.Tensor],
    seed: int,
    per_group: int,
    module: torch.nn.Module,
) -> tuple[contextlib.AbstractContextManager, torch.Tensor, bool]:
    """Revive dead starts: the context to optimise in, the redraws per image, and whether ReLU gradients
    are redirected (:class:`~diversevis.core.redirect.RedirectedReLU` on ``module``, when images stay
    dead after the redraws; else a no-op context)."""
    redraws, dead = revive_dead_starts(param, values, seed, per_group)
    still = bool(dead.any())
    return (RedirectedReLU(module) if still else contextlib.nullcontext()), redraws, still


def starts_spec(redraws: torch.Tensor, redirected: bool) -> dict:
    """Run-spec entries of the dead-start handling: ``{}`` when no start was dead (ordinary runs keep
    their spec), else how many redraws the images needed and whether gradients were redirected."""
    n = int(redraws.sum())
    return {"dead_starts_redrawn": n, "redirected_relu": redirected} if n or redirected else {}


def dead_images(activations: torch.Tensor) -> dict:
    """``{"dead_images": [i, ...]}`` for the final images with activation exactly 0 (else ``{}``)."""
    dead = (activations.detach() == 0).nonzero().flatten().tolist()
    return {"dead_images": dead} if dead else {}
