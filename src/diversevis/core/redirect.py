"""Redirected ReLU gradients (Lucid's ``redirected_relu_grad``): reviving units whose every path is dead.

Used by :func:`diversevis.methods.classic.actmax.actmax` (``redirect_relu=``) during the first steps of
the optimisation, and by diverse feature visualisation when a target stays dead at every start.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["redirected_relu_grad", "redirected_relu", "RedirectedReLU"]


def redirected_relu_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient of the redirected ReLU with respect to its input.

    Where a sample's plain ReLU gradient ``grad * (x > 0)`` is non-zero it is returned unchanged.
    For a sample whose plain gradient is zero everywhere (all its inputs that matter are negative),
    the gradient also flows where ``x <= 0`` if it points towards increasing ``x`` under gradient
    descent (``grad < 0``), so the optimiser can revive the dead units (Lucid's ``redirected_relu_grad``).

    Parameters
    ----------
    x : torch.Tensor
        ``(N, ...)`` ReLU input.
    grad : torch.Tensor
        ``(N, ...)`` gradient of the loss (to be minimised) with respect to the ReLU output.

    Returns
    -------
    torch.Tensor
        ``(N, ...)`` gradient with respect to ``x``.
    """
    pos = x > 0
    plain = torch.where(pos, grad, torch.zeros_like(grad))
    redirected = torch.where(pos | (grad < 0), grad, torch.zeros_like(grad))
    dead = plain.flatten(1).abs().amax(1) == 0 if plain.dim() > 1 else plain.abs().amax() == 0
    dead = dead.view(-1, *([1] * (plain.dim() - 1))) if plain.dim() > 1 else dead
    return torch.where(dead, redirected, plain)


class _RedirectedReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return redirected_relu_grad(x, grad)


def redirected_relu(x: torch.Tensor) -> torch.Tensor:
    """``relu(x)`` whose backward pass is :func:`redirected_relu_grad`.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, ...)`` input.

    Returns
    -------
    torch.Tensor
        ``(N, ...)`` ``x.clamp_min(0)``, with the redirected gradient.
    """
    return _RedirectedReLUFn.apply(x)


class RedirectedReLU:
    """Context manager: the ``nn.ReLU`` modules of ``module`` use redirected gradients while ``active``.

    Forward hooks on every ``nn.ReLU`` replace its output by :func:`redirected_relu` of its input (same
    values, different backward). The hooks are removed on exit, also when the block raises, so the model
    is left exactly as it was. ReLUs applied as functions (``F.relu`` inside ``forward``) are not seen.

    Parameters
    ----------
    module : nn.Module
        The model (e.g. ``Network.module``).
    active : bool
        Initial state; set the attribute to switch redirection on or off between steps.

    Attributes
    ----------
    n_relus : int
        Number of ReLU modules hooked (0 outside the ``with`` block).
    """

    def __init__(self, module: nn.Module, active: bool = True) -> None:
        self.module = module
        self.active = active
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def n_relus(self) -> int:
        return len(self._handles)

    def _hook(self, mod: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self.active or not torch.is_grad_enabled():
            return None
        return redirected_relu(inputs[0])

    def __enter__(self) -> RedirectedReLU:
        try:
            for m in self.module.modules():
                if type(m) is nn.ReLU:
                    self._handles.append(m.register_forward_hook(self._hook))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, *exc) -> None:
        self._remove()
