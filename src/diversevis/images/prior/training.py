"""Training the natural-image prior on natural patches (:func:`train_prior`) and scoring it (:func:`evaluate_prior`)."""

from __future__ import annotations

import math
import os
import time

import torch
from torch import nn

from diversevis.images.prior.config import PriorConfig, _resolve_config
from diversevis.images.prior.likelihood import quantize
from diversevis.images.prior.network import PixelCNNPrior

__all__ = ["train_prior", "evaluate_prior"]


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _flip(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip a random half of ``(N, 3, H, W)`` patches left-right."""
    do = torch.rand(batch.shape[0], generator=gen) < 0.5
    return torch.where(do[:, None, None, None], batch.flip(-1), batch)


def _patches(cfg: PriorConfig, n: int, seed: int, folder: str | os.PathLike | None) -> torch.Tensor:
    from diversevis.images.naturals import sample_patches

    return quantize(sample_patches(cfg.patch_size, n, folder=folder, seed=seed))


def _val_seed(seed: int) -> int:
    return seed * 10_000_019 + 7_777_777  # a stream far from the training seeds seed * 10_000_019 + step


@torch.no_grad()
def evaluate_prior(prior: PixelCNNPrior, x: torch.Tensor, batch_size: int = 256) -> float:
    """Mean NLL (bits/dim) of images in eval mode.

    Parameters
    ----------
    prior : PixelCNNPrior
        The model (its train/eval mode is restored afterwards).
    x : torch.Tensor
        ``(N, 3, H, W)`` display-space images in [0, 1].
    batch_size : int
        Images per forward pass.

    Returns
    -------
    float
        ``mean_n prior.nll(x)[n]`` in bits per dimension.
    """
    was_training = prior.training
    prior.eval()
    try:
        total = sum(float(prior.nll(x[i : i + batch_size]).sum()) for i in range(0, x.shape[0], batch_size))
    finally:
        prior.train(was_training)
    return total / x.shape[0]


def train_prior(
    config: PriorConfig | str | None = None,
    *,
    device: str | torch.device | None = None,
    steps: int | None = None,
    progress: bool = True,
    folder: str | os.PathLike | None = None,
) -> PixelCNNPrior:
    """Train a PixelCNN++ prior on natural image patches.

    Every step draws ``batch_size`` fresh patches with :func:`diversevis.naturals.sample_patches`
    (seed ``seed * 10000019 + step``), quantises them to the 256 display levels and flips a random half
    left-right; Adam minimises their NLL with a cosine learning-rate decay. ``val_patches`` patches from a
    separate seed stream are held out and scored every ``eval_every`` steps. They are different random
    crops of the *same* photographs, so the validation NLL measures fit to this image distribution, not
    generalisation to new photographs.

    Parameters
    ----------
    config : PriorConfig or str, optional
        Settings or a :data:`PRESETS` name (default ``"default"``).
    device : str or torch.device, optional
        Training device (default: CUDA if available, else CPU). The model stays there.
    steps : int, optional
        Override ``config.steps``.
    progress : bool
        Show a tqdm progress bar with the running training and the latest validation bits/dim.
    folder : str or path-like, optional
        Train on a folder of images instead of the bundled photos (see
        :func:`diversevis.naturals.natural_images`).

    Returns
    -------
    PixelCNNPrior
        The trained model in eval mode, with ``metrics``: ``train_bpd`` (mean over the last 10% of the
        steps), ``val_bpd`` (final), ``steps``, ``seconds``, ``seed``, ``torch``, ``device``,
        ``parameters``, ``image_set_id``, ``history`` (list of ``[step, train_bpd, val_bpd]``).
    """
    from diversevis.images.naturals import image_set_id

    cfg = _resolve_config(config)
    if steps is not None:
        cfg = cfg.replace(steps=steps)
    dev = _resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        prior = PixelCNNPrior(cfg)
    prior.to(dev).train()
    gen = torch.Generator().manual_seed(cfg.seed)
    val = _patches(cfg, cfg.val_patches, _val_seed(cfg.seed), folder)
    val_dev = val.to(dev)

    opt = torch.optim.Adam(prior.parameters(), lr=cfg.lr)

    def lr_factor(step: int) -> float:
        t = step / max(1, cfg.steps - 1)
        return cfg.lr_final + (1.0 - cfg.lr_final) * 0.5 * (1.0 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, desc="train prior", leave=False, dynamic_ncols=True)
    losses: list[float] = []
    history: list[list[float]] = []
    val_bpd = float("nan")
    t0 = time.perf_counter()
    try:
        for step in range(cfg.steps):
            batch = _patches(cfg, cfg.batch_size, cfg.seed * 10_000_019 + step, folder)
            if cfg.flips:
                batch = _flip(batch, gen)
            loss = prior.nll(batch.to(dev)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(prior.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.detach().item())
            last = step == cfg.steps - 1
            if (step + 1) % cfg.eval_every == 0 or last:
                val_bpd = evaluate_prior(prior, val_dev)
                recent = losses[-cfg.eval_every :]
                history.append([step + 1, sum(recent) / len(recent), val_bpd])
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or last:
                    window = losses[-50:]
                    bar.set_postfix(
                        train=f"{sum(window) / len(window):.3f}",
                        val="-" if math.isnan(val_bpd) else f"{val_bpd:.3f}",  # none measured yet
                        refresh=last,  # the final line shows the final validation score
                    )
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    tail = losses[-max(1, cfg.steps // 10) :]
    prior.eval()
    prior.metrics = {
        "train_bpd": sum(tail) / len(tail),
        "val_bpd": val_bpd,
        "initial_bpd": losses[0],
        "steps": cfg.steps,
        "seconds": seconds,
        "seed": cfg.seed,
        "torch": torch.__version__,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "parameters": prior.num_parameters(),
        "image_set_id": image_set_id(folder),
        "folder": None if folder is None else str(folder),
        "history": history,
    }
    return prior
