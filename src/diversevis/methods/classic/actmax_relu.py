"""Redirected ReLU gradients, now in :mod:`diversevis.core.redirect` (shared by actmax and DFV's dead starts)."""

from diversevis.core.redirect import RedirectedReLU, redirected_relu, redirected_relu_grad

__all__ = ["redirected_relu_grad", "redirected_relu", "RedirectedReLU"]
