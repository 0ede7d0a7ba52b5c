"""Training the generator and its DAE on natural patches (:func:`train_generator`) and scoring it (:func:`evaluate_generator`)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diversevis.core.network import Network
from diversevis.methods.generator.config import GeneratorConfig, _resolve_config
from diversevis.methods.generator.network import ImageGenerator, code_shape_of, feature_network

__all__ = ["train_generator", "evaluate_generator", "held_out_patches", "gaussian_blur"]

_STREAM = 10_000_019  # training patches of step k: seed * _STREAM + k


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _val_seed(seed: int) -> int:
    """Seed of the held-out patches that calibrate the code statistics (far from the training seeds)."""
    return seed * _STREAM + 7_777_777


def _eval_seed(seed: int) -> int:
    """Seed of the held-out patches of :func:`evaluate_generator` (neither training nor calibration)."""
    return seed * _STREAM + 8_888_888


def _patches(cfg: GeneratorConfig, n: int, seed: int, images: str | os.PathLike | None) -> torch.Tensor:
    from diversevis.images.naturals import sample_patches

    return sample_patches(cfg.size, n, folder=images, seed=seed)


def held_out_patches(
    config: GeneratorConfig, n: int = 256, seed: int | None = None, images: str | os.PathLike | None = None
) -> torch.Tensor:
    """Natural patches held out from training and from the code statistics.

    Parameters
    ----------
    config : GeneratorConfig
        Gives the patch side ``size`` and the seed.
    n : int
        Number of patches.
    seed : int, optional
        Seed of :func:`~diversevis.images.naturals.sample_patches` (default: a stream derived from
        ``config.seed`` that training and the code statistics never use).
    images : str or path-like, optional
        Image folder (default: the bundled photos).

    Returns
    -------
    torch.Tensor
        ``(n, 3, size, size)`` display-space RGB in [0, 1].
    """
    return _patches(config, n, _eval_seed(config.seed) if seed is None else seed, images)


def _flip(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip a random half of ``(N, 3, H, W)`` patches left-right."""
    do = torch.rand(batch.shape[0], generator=gen) < 0.5
    return torch.where(do[:, None, None, None], batch.flip(-1), batch)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (kernel radius ``ceil(3 sigma)``, clipped to the image).

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, H, W)`` images.
    sigma : float
        Standard deviation in pixels (> 0).

    Returns
    -------
    torch.Tensor
        ``(N, C, H, W)`` blurred images.
    """
    radius = min(int(math.ceil(3 * sigma)), x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c
    )
    return F.conv2d(
        F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c
    )


class _PatchDiscriminator(nn.Module):
    """Three 4x4 stride-2 convolutions (32, 64, 128 channels) and a 3x3 convolution to one logit per patch."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for c_out in (32, 64, 128):
            layers += [nn.Conv2d(c, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(2.0 * x - 1.0)


@torch.no_grad()
def _calibrate(gen: ImageGenerator, net: Network, val: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Measure ``code_mean``, ``code_std``, ``upper`` (mean + 3 std), ``code_scale`` and ``dae_sigma`` on ``val``.

    Returns the codes ``(N, C, h, w)`` of ``val``.
    """
    codes = torch.cat([gen.encode(net, val[i : i + batch_size]) for i in range(0, val.shape[0], batch_size)])
    mean, std = codes.mean(0), codes.std(0)
    gen.code_mean.copy_(mean)
    gen.code_std.copy_(std)
    gen.upper.copy_(mean + 3.0 * std)
    gen.code_scale.copy_(codes.std().clamp_min(1e-8))
    gen.dae_sigma_t.copy_(gen.config.dae_noise * gen.code_scale)
    return codes


def _features(net: Network, cfg: GeneratorConfig, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Code (ReLU'd ``code_layer``) and comparator features of ``x``: ``{"code": ..., layer: ...}``."""
    layers = list(dict.fromkeys([cfg.code_layer, *cfg.feature_layers]))
    acts = net.activations(x, layers)
    out = {layer: acts[layer] for layer in cfg.feature_layers}
    out["code"] = torch.relu(acts[cfg.code_layer])
    return out


def _feature_loss(
    net: Network, cfg: GeneratorConfig, img: torch.Tensor, target: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Sum over the comparator layers of the MSE of the features divided by the mean square of the target's."""
    if not cfg.feature_layers or cfg.feature_weight == 0:
        return img.new_zeros(())
    acts = net.activations(img, list(cfg.feature_layers))
    return sum(
        F.mse_loss(acts[layer], target[layer]) / target[layer].pow(2).mean().clamp_min(1e-12)
        for layer in cfg.feature_layers
    )


class _Trainer:
    """One training run: the models, the optimisers, the random streams and the step."""

    def __init__(self, gen: ImageGenerator, net: Network, dev: torch.device, images: Any) -> None:
        cfg = gen.config
        self.gen, self.net, self.dev, self.images, self.cfg = gen, net, dev, images, cfg
        self.rng = torch.Generator().manual_seed(cfg.seed)
        self.opt = torch.optim.Adam(gen.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        self.disc = None
        if cfg.adversarial_weight > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 1)
                self.disc = _PatchDiscriminator().to(dev)
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
        factor = lambda step: 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * step / max(1, cfg.steps - 1)))  # noqa: E731
        self.scheds = [torch.optim.lr_scheduler.LambdaLR(self.opt, factor)]
        if self.disc is not None:
            self.scheds.append(torch.optim.lr_scheduler.LambdaLR(self.opt_d, factor))

    def step(self, step: int) -> dict[str, float]:
        """One Adam step of the generator, the DAE (and the discriminator); returns the losses."""
        cfg, gen = self.cfg, self.gen
        x = _patches(cfg, cfg.batch_size, cfg.seed * _STREAM + step, self.images)
        if cfg.flips:
            x = _flip(x, self.rng)
        noise = torch.randn((x.shape[0], *gen.code_shape), generator=self.rng)
        x, noise = x.to(self.dev), noise.to(self.dev)
        with torch.no_grad():
            target = _features(self.net, cfg, x)
        h = target["code"]
        img = gen(h)
        pixel = F.mse_loss(img, x)
        feature = _feature_loss(self.net, cfg, img, target)
        loss = cfg.pixel_weight * pixel + cfg.feature_weight * feature
        adv = img.new_zeros(())
        if self.disc is not None:
            adv = F.softplus(-self.disc(img)).mean()
            loss = loss + cfg.adversarial_weight * adv
        scale = gen.code_scale
        dae = F.mse_loss(gen.denoise(h + gen.dae_sigma_t * noise) / scale, h / scale)
        self.opt.zero_grad(set_to_none=True)
        (loss + dae).backward()
        self.opt.step()
        d_loss = 0.0
        if self.disc is not None:
            real, fake = self.disc(x), self.disc(img.detach())
            loss_d = F.softplus(-real).mean() + F.softplus(fake).mean()
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            d_loss = loss_d.item()
        for s in self.scheds:
            s.step()
        return {
            "pixel": pixel.item(),
            "feature": feature.item(),
            "adv": adv.item(),
            "dae": dae.item(),
            "disc": d_loss,
        }


@torch.no_grad()
def _val_scores(
    gen: ImageGenerator, val: torch.Tensor, codes: torch.Tensor, batch_size: int = 64
) -> dict[str, float]:
    """PSNR (dB, mean over patches) of ``G(h)`` and the DAE's relative error ``||R(h + n) - h|| / ||n||``."""
    g = torch.Generator().manual_seed(12345)
    psnr, dae = [], []
    for i in range(0, val.shape[0], batch_size):
        x, h = val[i : i + batch_size], codes[i : i + batch_size]
        mse = (gen(h) - x).pow(2).flatten(1).mean(1)
        psnr.append(-10.0 * torch.log10(mse.clamp_min(1e-10)))
        n = gen.dae_sigma_t * torch.randn(h.shape, generator=g).to(h)
        dae.append((gen.denoise(h + n) - h).flatten(1).norm(dim=1) / n.flatten(1).norm(dim=1))
    return {"val_psnr": float(torch.cat(psnr).mean()), "dae_relative_error": float(torch.cat(dae).mean())}


def train_generator(
    config: GeneratorConfig | str = "default",
    *,
    images: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    log: Callable[[str], Any] | None = print,
) -> ImageGenerator:
    """Train a DeePSiM-style generator and its code DAE on natural patches.

    Step ``k`` draws ``batch_size`` random multi-scale crops (:func:`~diversevis.images.naturals.sample_patches`,
    seed ``seed * 10000019 + k``) and flips a random half left-right; their codes and comparator features
    come from the frozen feature network (no gradient). Adam takes one step on the pixel, feature (and
    adversarial) losses of ``G`` and on the DAE's loss ``mean ((R(h + n) - h) / s)^2``, ``n ~ N(0, dae_sigma^2)``,
    ``s = code_scale``. ``val_patches`` patches from a separate seed stream are encoded first and give the
    code statistics (``code_mean``, ``code_std``, ``upper = mean + 3 std``, ``code_scale``, ``dae_sigma``).
    They are other crops of the *same* photographs. The same config and seed give the same weights on CPU.

    Parameters
    ----------
    config : GeneratorConfig or str
        Settings or a :data:`PRESETS` name.
    images : str or path-like, optional
        Train on this folder of images instead of the bundled photos (as in ``sample_patches``).
    device : str or torch.device, optional
        Training device (default: CUDA if available, else CPU); the returned model stays there.
    progress : bool
        A tqdm progress bar with the running pixel PSNR.
    log : callable, optional
        Receives a line of text at the start and the end (``None``: silent).

    Returns
    -------
    ImageGenerator
        Eval mode, frozen parameters, with ``metrics``: ``seconds``, ``seconds_per_step``, ``steps``,
        ``train_pixel_mse``, ``train_feature_loss``, ``train_dae_loss`` (means over the last 10% of the steps),
        ``val_psnr``, ``dae_relative_error`` (on the calibration patches), ``history``, ``image_set_id``, ...
    """
    from diversevis.images.naturals import image_set_id

    cfg = _resolve_config(config)
    dev = _resolve_device(device)
    net = feature_network(cfg, device=dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        gen = ImageGenerator(cfg, code_shape_of(cfg, net)).to(dev)
    val = _patches(cfg, cfg.val_patches, _val_seed(cfg.seed), images).to(dev)
    codes = _calibrate(gen, net, val)
    gen.train()
    trainer = _Trainer(gen, net, dev, images)
    if log is not None:
        log(
            f"training generator: {cfg.model} {cfg.code_layer} {gen.code_shape} at {cfg.size}px, {cfg.steps} steps of {cfg.batch_size}"
        )
    losses, history = _run_steps(trainer, gen, val, codes, progress)
    gen.eval()
    gen.requires_grad_(False)
    tail = losses[-max(1, cfg.steps // 10) :]
    mean = lambda key: sum(r[key] for r in tail) / len(tail)  # noqa: E731
    gen.metrics = {
        **history.pop(),
        "steps": cfg.steps,
        "train_pixel_mse": mean("pixel"),
        "train_feature_loss": mean("feature"),
        "train_adversarial_loss": mean("adv"),
        "train_dae_loss": mean("dae"),
        "dae_sigma": gen.dae_sigma,
        "code_scale": float(gen.code_scale),
        "seed": cfg.seed,
        "torch": torch.__version__,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "parameters": gen.num_parameters(),
        "image_set_id": image_set_id(images),
        "images": None if images is None else str(images),
        "history": history,
    }
    if log is not None:
        m = gen.metrics
        log(
            f"trained in {m['seconds']:.0f}s: held-out PSNR {m['val_psnr']:.2f} dB, DAE error {m['dae_relative_error']:.3f}"
        )
    return gen


def _run_steps(
    trainer: _Trainer, gen: ImageGenerator, val: torch.Tensor, codes: torch.Tensor, progress: bool
):
    """The training loop; returns the per-step losses and the history of validation scores (last = final)."""
    cfg = gen.config
    every = max(1, cfg.steps // 10)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, desc="train generator", leave=False, dynamic_ncols=True)
    losses: list[dict[str, float]] = []
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    try:
        for step in range(cfg.steps):
            losses.append(trainer.step(step))
            if (step + 1) % every == 0 or step == cfg.steps - 1:
                gen.eval()
                history.append(
                    {"step": step + 1, "seconds": time.perf_counter() - t0, **_val_scores(gen, val, codes)}
                )
                gen.train()
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    window = losses[-20:]
                    mse = sum(r["pixel"] for r in window) / len(window)
                    bar.set_postfix(psnr=f"{-10 * math.log10(max(mse, 1e-10)):.2f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    final = dict(history[-1], seconds=seconds, seconds_per_step=seconds / cfg.steps)
    return losses, [*history, final]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N,)`` PSNR in dB of images in [0, 1] (peak 1)."""
    return -10.0 * torch.log10((a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10))


def gradient_energy(x: torch.Tensor) -> torch.Tensor:
    """``(N,)`` mean squared finite difference (horizontal plus vertical) of images ``(N, C, H, W)``, taken
    at half resolution (2x2 means), so the period-2 checkerboard of transposed convolutions, which is not
    detail, averages out. The evaluation's sharpness is the ratio of this energy for reconstructions to that
    of the patches: blurry reconstructions score well below 1 even when their PSNR is good; an adversarial
    loss is meant to raise it, so it is the score that says whether the discriminator helps."""
    x = F.avg_pool2d(x, 2)
    dx = (x[..., :, 1:] - x[..., :, :-1]).pow(2).flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).mean(1)
    return dx + dy


def _rel_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N,)`` ``||a - b|| / ||b||`` per sample."""
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1).clamp_min(1e-12)


@torch.no_grad()
def evaluate_generator(
    gen: ImageGenerator,
    net: Network | None = None,
    n: int = 256,
    seed: int | None = None,
    *,
    blur_sigma: float = 2.0,
    images: str | os.PathLike | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Reconstruction quality on held-out natural patches against two baselines.

    Each patch ``x`` is encoded, ``h = E(x)``, and reconstructed, ``G(h)``. Scores (means over patches):
    PSNR in dB (peak 1, per patch) and the relative code error ``||E(y) - E(x)|| / ||E(x)||`` of a
    reconstruction ``y``, and the sharpness, the gradient energy of the reconstructions over that of the
    patches (:func:`gradient_energy`, half resolution; a ratio of means over patches, so flat patches do
    not dominate; 1 as sharp as the patches). Baselines: ``mean_patch``, the mean of 1024 training
    patches (one image for all); ``mean_colour``, every patch replaced by its own mean colour (a flat
    patch; it knows each patch's mean, which the generator must infer from the code), and ``blur``, the
    patch blurred by a Gaussian of ``blur_sigma`` px (reflect padding).

    Parameters
    ----------
    gen : ImageGenerator
        The generator.
    net : Network, optional
        Its feature network (default: :func:`feature_network` of ``gen.config`` on ``gen``'s device).
    n : int
        Held-out patches.
    seed : int, optional
        Patch seed (default: a stream that neither training nor the code statistics use; see
        :func:`held_out_patches`).
    blur_sigma : float
        Standard deviation of the blur baseline, pixels.
    images : str or path-like, optional
        Image folder (default: the bundled photos).
    batch_size : int
        Patches per forward pass.

    Returns
    -------
    dict
        ``{"n", "seed", "size", "blur_sigma", "baselines", "psnr": {"generator", "mean_patch", "mean_colour", "blur"},
        "feature_error": {...same keys...}, "sharpness": {...same keys...}}``.
    """
    cfg = gen.config
    dev = gen.code_scale.device
    net = net if net is not None else feature_network(cfg, device=dev)
    seed = _eval_seed(cfg.seed) if seed is None else seed
    x_all = held_out_patches(cfg, n, seed, images)
    mean_patch = _patches(cfg, 1024, cfg.seed * _STREAM, images).mean(0, keepdim=True).to(dev)
    scores: dict[str, dict[str, list[torch.Tensor]]] = {"psnr": {}, "feature_error": {}, "sharpness": {}}
    for i in range(0, n, batch_size):
        x = x_all[i : i + batch_size].to(dev)
        h = gen.encode(net, x)
        candidates = {
            "generator": gen(h),
            "mean_patch": mean_patch.expand_as(x),
            "mean_colour": x.mean((2, 3), keepdim=True).expand_as(x),
            "blur": gaussian_blur(x, blur_sigma),
        }
        for name, y in candidates.items():
            scores["psnr"].setdefault(name, []).append(_psnr(y, x).cpu())
            scores["feature_error"].setdefault(name, []).append(_rel_error(gen.encode(net, y), h).cpu())
            scores["sharpness"].setdefault(name, []).append(gradient_energy(y).cpu())
        scores["sharpness"].setdefault("patch", []).append(gradient_energy(x).cpu())
    out: dict[str, Any] = {"n": n, "seed": seed, "size": cfg.size, "blur_sigma": blur_sigma}
    out["baselines"] = {
        "mean_patch": "the mean of 1024 training patches (the patches of training step 0's seed)",
        "mean_colour": "every patch replaced by its own mean colour",
        "blur": f"Gaussian blur, sigma {blur_sigma:g} px, reflect padding",
    }
    for metric, per in scores.items():
        out[metric] = {name: float(torch.cat(v).mean()) for name, v in per.items()}
    patch_energy = out["sharpness"].pop("patch")
    out["sharpness"] = {name: e / max(patch_energy, 1e-12) for name, e in out["sharpness"].items()}
    return out
