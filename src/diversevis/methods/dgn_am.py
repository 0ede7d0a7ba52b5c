"""DGN-AM: activation maximisation through a deep generator network (Nguyen et al., NIPS 2016).

Instead of optimising pixels, optimise the code ``h`` of a generator ``G`` trained to invert a network's
features of natural images (:mod:`diversevis.methods.generator`), so that the image ``G(h)`` drives the
unit; the generator acts as a prior towards natural-looking images. Each update (the reference's
``act_max.py``): a normalised gradient step on ``h``, a clip of every code element to ``[0, U]`` (``U`` =
mean + 3 std of that element over natural patches, the reference's ``act_range/3x``) and an L2 decay
``h *= 0.99``, with a step size falling linearly to 0 over 200 updates; the best of a few restarts is kept.

Differences from the reference: the generator is ours (vgg16 pool4 code of 64 px patches, trained on the
bundled photos; the reference's DeePSiM fc6 inverter of CaffeNet makes 256 px images and cannot be
downloaded here); the unit sees the centre crop of ``G(h)`` the size of its receptive field, scaled to the
MEI's contrast (:class:`~diversevis.methods.code_sampler.CodeProblem`), so its activation is a ratio to
the unrestricted MEI at the same contrast; step sizes are in units of the codes' natural spread.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diversevis.core.network import Network
from diversevis.core.result import Result
from diversevis.methods.code_sampler import CodeProblem, GeneratorResult, history, sample_codes, start_codes
from diversevis.methods.dfv import mei as _mei
from diversevis.methods.generator_settings import DGN_AM, CodeSamplerSettings
from diversevis.methods.problem import Problem, _prepare, resolve_mei

__all__ = ["dgn_am", "resolve_generator", "generator_spec"]


def dgn_am(
    model: Network | nn.Module | str,
    layer: str,
    unit: int,
    generator: Any = "default",
    *,
    restarts: int = DGN_AM.chains,
    n_iter: int = DGN_AM.n_iter,
    lr: float = DGN_AM.lr,
    lr_end: float = DGN_AM.lr_end,
    decay: float = DGN_AM.decay,
    init: str = DGN_AM.init,
    contrast: float = DGN_AM.contrast,
    norm: float | None = DGN_AM.norm,
    images: str | Path | None = None,
    seed: int = 0,
    mei: bool | float | Result = True,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> GeneratorResult:
    """The most exciting image a generator can make for a unit (DGN-AM).

    Parameters
    ----------
    model, layer, unit
        The target unit (read at the centre of its receptive field).
    generator : ImageGenerator, str or path
        A trained generator, a cached preset name (``"default"``: ``diversevis train-generator``) or a
        ``.pt`` file.
    restarts : int
        Codes optimised in parallel; the most activating one is returned.
    n_iter, lr, lr_end, decay, init
        The update (:mod:`diversevis.methods.generator_settings`): 200 normalised-gradient steps whose size
        falls linearly from ``lr`` to ``lr_end`` (in units of the codes' natural spread), L2 decay 0.99,
        starting from codes of natural patches.
    contrast, norm, images
        The unit sees the crop at this contrast (as :func:`diversevis.mei`).
    seed : int
    mei : bool, float or Result
        The unrestricted MEI the ratio refers to: ``True`` computes it (same contrast), a number or a
        :class:`Result` supplies it, ``False`` skips it.
    device : str or torch.device, optional
    progress : bool

    Returns
    -------
    GeneratorResult
        One image ``(1, C, h, w)`` (what the unit sees), its activation and ratio to the MEI;
        ``generator_images`` holds the whole ``(1, 3, S, S)`` output; ``extra["restart_activations"]``.
    """
    s = DGN_AM.replace(
        chains=restarts, n_iter=n_iter, lr=lr, lr_end=lr_end, decay=decay, init=init, contrast=contrast,
        norm=norm, images=images, seed=seed,
    )  # fmt: skip
    cp, mei_res, mei_act = _setup(model, layer, unit, generator, s, None, mei, device)
    net, gen, prob = cp.prob.net, cp.generator, cp.prob
    trace = sample_codes(cp, start_codes(cp, s), s, eps1=0.0, progress=progress, desc="DGN-AM")
    with torch.no_grad():
        acts = cp.values(trace.best_codes.to(net.device)).cpu()
        best = int(acts.argmax())
        full, shown = cp.images(trace.best_codes[best : best + 1].to(net.device))
    spec = prob.run_spec(
        "dgn_am", contrast=s.contrast, norm=s.norm, images=s.images, seed=seed,
        **settings_of(s), generator=generator_spec(gen), seconds=round(trace.seconds, 3),
    )  # fmt: skip
    return _generator_result(
        shown, acts[best : best + 1], full, spec, mei_res, mei_act, cp, history(trace),
        restart_activations=[float(a) for a in acts],
    )  # fmt: skip


def _setup(
    model: Any, layer: str, unit: int, generator: Any, s: CodeSamplerSettings, distance_layer: str | None,
    mei: bool | float | Result, device: Any,
) -> tuple[CodeProblem, Result | None, float | None]:  # fmt: skip
    """The unit seen through the generator, and the unrestricted MEI (computed at the same contrast)."""
    net = _prepare(model, device)
    gen = resolve_generator(generator, net.device)
    prob = Problem.build(
        net, layer, unit, None, "max", contrast=s.contrast, norm=s.norm, distance_layer=distance_layer,
        images_folder=s.images,
    )  # fmt: skip
    cp = CodeProblem.build(prob, gen)
    mei_res, mei_act = resolve_mei(
        mei, lambda: _mei(net, layer, unit, contrast=s.contrast, norm=s.norm, images=s.images, seed=s.seed)
    )
    return cp, mei_res, mei_act


def _generator_result(
    shown: torch.Tensor, acts: torch.Tensor, full: torch.Tensor, spec: dict, mei_res: Result | None,
    mei_act: float | None, cp: CodeProblem, loss: Any, distances: torch.Tensor | None = None, **extra: Any,
) -> GeneratorResult:  # fmt: skip
    """A :class:`GeneratorResult` with the crop box recorded and the shown images measured."""
    n = shown.shape[0]
    res = GeneratorResult(
        images=shown.detach().cpu(),
        activations=acts.detach().cpu().float(),
        distances=distances if distances is not None else torch.zeros(n, n),
        loss_history=loss,
        spec=spec,
        mei_activation=mei_act,
        mei_image=None if mei_res is None else mei_res.mei_image,
        extra={"crop_box": list(cp.box), **extra},
        generator_images=full.detach().cpu(),
    )
    return res.measure_shown(lambda x: cp.prob.evaluate(x, need_features=False)[0], device=cp.prob.net.device)


def resolve_generator(generator: Any, device: torch.device) -> nn.Module:
    """An :class:`ImageGenerator` on ``device`` from a model, a cached preset name or a ``.pt`` path."""
    from diversevis.methods.generator import ImageGenerator

    if isinstance(generator, ImageGenerator):
        return generator.to(device)
    from diversevis.methods.generator import load_generator

    return load_generator(generator if generator is not None else "default", device=device)


def generator_spec(gen: nn.Module) -> dict[str, Any]:
    """The generator's part of a run spec: its settings and what its training measured."""
    config = gen.config.to_dict() if hasattr(gen.config, "to_dict") else dataclasses.asdict(gen.config)
    metrics = getattr(gen, "metrics", None) or {}
    return {
        "config": config,
        "metrics": {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))},
    }


def settings_of(s: CodeSamplerSettings) -> dict[str, Any]:
    """Settings entries of a run spec (the contrast, norm, images and seed are stated on their own)."""
    return {k: v for k, v in s.as_dict().items() if k not in ("contrast", "norm", "images", "seed")}
