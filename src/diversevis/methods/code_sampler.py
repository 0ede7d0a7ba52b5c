"""Driving a unit through a generator's code: the problem (:class:`CodeProblem`) and the one update loop
(:func:`sample_codes`) that DGN-AM and PPGN share.

The generator ``G`` maps a code ``h`` to an ``S x S`` RGB image. The unit sees the centre crop of that image
the size of its receptive field (the reference reads a unit "at the image centre"), its mean removed and
scaled to the MEI's L2 norm around grey (``0.5 + norm * (x - m) / ||x - m||``, ``m`` the crop's mean over
pixels and channels: a generator's images carry a luminance offset that would otherwise spend the contrast
budget; colour differences are kept), grey-scaled for one-channel networks: so every
activation here compares with the unrestricted MEI's at the same contrast, and the images live in the same
space as DFV's (same size, same norm), so their distances compare too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diversevis.core.cache import atomic_write_bytes
from diversevis.core.errors import DiversevisError
from diversevis.core.optimize import NonFiniteError
from diversevis.core.params import fixed_norm, image_hw
from diversevis.core.result import Result, image_grid
from diversevis.methods.generator_settings import CodeSamplerSettings
from diversevis.methods.problem import Problem

__all__ = ["CodeProblem", "CodeTrace", "GeneratorResult", "sample_codes", "start_codes"]


@dataclass
class CodeProblem:
    """A unit's :class:`~diversevis.methods.problem.Problem` seen through a generator.

    Attributes
    ----------
    prob : Problem
        The target, its receptive-field geometry and contrast (norm).
    generator : ImageGenerator
        The trained generator (eval mode, frozen), on the network's device.
    box : (int, int, int, int)
        ``(top, left, height, width)`` of the crop the unit sees inside the generator's output.
    """

    prob: Problem
    generator: torch.nn.Module
    box: tuple[int, int, int, int]

    @classmethod
    def build(cls, prob: Problem, generator: torch.nn.Module) -> CodeProblem:
        """Check that the unit's image fits in the generator's output and has 1 or 3 channels."""
        size = int(generator.config.size)
        h, w = image_hw(prob.placement.image_size)
        if h > size or w > size:
            raise DiversevisError(
                f"the unit's {h}x{w}px receptive field is larger than the generator's {size}px output; "
                f"train a generator with --size {max(h, w)} or more (diversevis train-generator)"
            )
        if prob.net.in_channels not in (1, 3):
            raise DiversevisError(
                f"{prob.net.name} takes {prob.net.in_channels}-channel images; the generator makes RGB "
                "images, usable by 3-channel (RGB) and 1-channel (grey) networks only"
            )
        generator = generator.to(prob.net.device)
        return cls(prob, generator, ((size - h) // 2, (size - w) // 2, h, w))

    def render(self, full: torch.Tensor) -> torch.Tensor:
        """The images the unit sees ``(N, C, h, w)`` from generator outputs ``(N, 3, S, S)``."""
        top, left, h, w = self.box
        crop = full[:, :, top : top + h, left : left + w]
        if self.prob.net.in_channels == 1:
            crop = crop.mean(1, keepdim=True)
        return 0.5 + fixed_norm(crop - crop.mean((1, 2, 3), keepdim=True), self.prob.norm)

    def images(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Generator outputs ``(N, 3, S, S)`` and the unit's images ``(N, C, h, w)`` of codes ``h``."""
        full = self.generator(h)
        return full, self.render(full)

    def values(self, h: torch.Tensor) -> torch.Tensor:
        """The unit's activations ``(N,)`` for codes ``h`` (differentiable in ``h``)."""
        return self.prob.evaluate(self.images(h)[1], need_features=False)[0]


@dataclass
class CodeTrace:
    """What :func:`sample_codes` returns (all on the CPU).

    Attributes
    ----------
    codes : torch.Tensor
        ``(chains, C, h, w)`` the last codes.
    activations : torch.Tensor
        ``(n_iter + 1, chains)`` activation of every chain before each update and after the last.
    best_codes : torch.Tensor
        ``(chains, C, h, w)`` each chain's most activating code along the way.
    samples : torch.Tensor
        ``(K, C, h, w)`` the codes kept every ``every`` updates after ``burn_in`` (and the last ones).
    sample_activations : torch.Tensor
        ``(K,)`` their activations.
    seconds : float
    """

    codes: torch.Tensor
    activations: torch.Tensor
    best_codes: torch.Tensor
    samples: torch.Tensor
    sample_activations: torch.Tensor
    seconds: float = 0.0


def start_codes(cp: CodeProblem, s: CodeSamplerSettings, feature_net=None) -> torch.Tensor:
    """The ``(chains, C, h, w)`` starting codes (``s.init``): natural-patch codes or random ones.

    ``feature_net`` is the generator's encoder network (:func:`diversevis.load_model` of
    ``generator.config.model``); loaded when needed and not given.
    """
    gen = cp.generator
    rng = torch.Generator().manual_seed(s.seed)
    if s.init == "random":
        z = torch.randn(s.chains, *gen.code_shape, generator=rng).to(gen.upper.device)
        h = (gen.code_mean + gen.code_std * z).clamp_min(0)
    else:
        from diversevis.images.naturals import sample_patches
        from diversevis.methods.generator import feature_network

        net = feature_net if feature_net is not None else feature_network(gen.config, gen.upper.device)
        patches = sample_patches(int(gen.config.size), s.chains, folder=s.images, seed=s.seed + 1)
        with torch.no_grad():
            h = gen.encode(net, patches.to(gen.upper.device))
    return gen.clip(h).detach()


def sample_codes(
    cp: CodeProblem,
    h0: torch.Tensor,
    s: CodeSamplerSettings,
    *,
    eps1: float,
    progress: bool = False,
    desc: str = "codes",
) -> CodeTrace:
    """Move the codes ``h0`` by the update of :mod:`diversevis.methods.generator_settings`.

    Parameters
    ----------
    cp : CodeProblem
    h0 : torch.Tensor
        ``(chains, C, h, w)`` starting codes.
    s : CodeSamplerSettings
        Step sizes, noise, decay, iterations and the sampling schedule.
    eps1 : float
        The prior's weight, resolved (``s.resolved_eps1``).
    progress : bool
        A tqdm bar over the updates.

    Returns
    -------
    CodeTrace

    Raises
    ------
    NonFiniteError
        When a code or an activation becomes NaN or infinite.
    """
    import time

    gen, t0 = cp.generator, time.perf_counter()
    rng = torch.Generator().manual_seed(s.seed + 7)
    h, scale = h0.clone(), float(gen.code_std.mean())
    acts, samples, sample_acts = [], [], []
    best_a = torch.full((h.shape[0],), -torch.inf, device=h.device)
    best_h = h.clone()
    for t in tqdm(range(s.n_iter + 1), desc=desc, disable=not progress, leave=False):
        h.requires_grad_(True)
        a = cp.values(h)
        _check_finite(a, t)
        better = a.detach() > best_a
        best_a = torch.where(better, a.detach(), best_a)
        best_h = torch.where(better.view(-1, 1, 1, 1), h.detach(), best_h)
        acts.append(a.detach().cpu())
        if (t >= s.burn_in and (t - s.burn_in) % s.every == 0) or t == s.n_iter:
            samples.append(h.detach().cpu())
            sample_acts.append(a.detach().cpu())
        if t == s.n_iter:
            break
        (g,) = torch.autograd.grad(a.sum(), h)
        h = h.detach()
        lr_t = s.lr + (s.lr_end - s.lr) * t / max(s.n_iter - 1, 1)
        step = _condition_step(g, s.eps2 * lr_t * scale)
        with torch.no_grad():
            if eps1:
                step = step + eps1 * gen.prior_grad(h)
            if s.eps3:
                noise = torch.randn(h.shape, generator=rng).to(h.device)
                step = step + s.eps3 * gen.code_std * noise
            h = gen.clip(s.decay * (h + step))
    return CodeTrace(
        codes=h.detach().cpu(),
        activations=torch.stack(acts),
        best_codes=best_h.cpu(),
        samples=torch.cat(samples),
        sample_activations=torch.cat(sample_acts),
        seconds=time.perf_counter() - t0,
    )


def _condition_step(g: torch.Tensor, size: float) -> torch.Tensor:
    """``size * g / mean|g|`` per chain (the reference's normalised step; 0 where ``g`` vanishes)."""
    mean = g.abs().flatten(1).mean(1).view(-1, *([1] * (g.dim() - 1)))
    return torch.where(mean > 0, size * g / mean.clamp_min(1e-30), torch.zeros_like(g))


def _check_finite(a: torch.Tensor, t: int) -> None:
    if not bool(torch.isfinite(a).all()):
        raise NonFiniteError(
            f"the unit's activation became non-finite at update {t} of the code sampler; lower lr / eps1 / "
            "eps3, or check the generator and the network for NaN weights"
        )


@dataclass(repr=False)
class GeneratorResult(Result):
    """A :class:`~diversevis.core.result.Result` that also keeps the generator's whole outputs.

    ``images`` are what the unit sees (the centre crop at the MEI's contrast); ``generator_images`` the
    ``(N, 3, S, S)`` outputs they were cut from, written to ``generator.png`` by :meth:`save`.
    """

    generator_images: torch.Tensor | None = field(default=None, repr=False)

    def save(self, directory: str | Path) -> Path:
        """:meth:`Result.save` plus ``generator.png`` (the whole generator outputs, crop box outlined)."""
        out = super().save(directory)
        if self.generator_images is not None:
            full = _outline(self.generator_images.detach().cpu(), self.extra.get("crop_box"))
            labels = [f"{r:.2f} MEI" for r in (self.ratios if self.ratios is not None else self.activations)]
            atomic_write_bytes(out / "generator.png", image_grid(full, labels, title="generator outputs"))
        return out


def _outline(full: torch.Tensor, box) -> torch.Tensor:
    """The images with a one-pixel red frame around the crop ``box = (top, left, h, w)``."""
    if not box:
        return full
    top, left, h, w = (int(v) for v in box)
    x = full.clone()
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1)
    x[:, :, top, left : left + w] = red
    x[:, :, top + h - 1, left : left + w] = red
    x[:, :, top : top + h, left] = red
    x[:, :, top : top + h, left + w - 1] = red
    return x


def history(trace: CodeTrace) -> np.ndarray:
    """The loss history of a run: minus the chains' mean activation per update."""
    return (-trace.activations.mean(1)).numpy()
