"""Saving, loading and caching trained priors: :func:`save_prior`, :func:`load_prior`, :func:`prior_cache_path`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from diversevis.core.cache import atomic_save_torch, cache_dir, read_torch_record, weights_only_plain
from diversevis.core.errors import DiversevisError, did_you_mean
from diversevis.images.prior.config import PRESETS, PriorConfig, _resolve_config
from diversevis.images.prior.network import PixelCNNPrior
from diversevis.images.prior.training import _resolve_device, train_prior

__all__ = ["save_prior", "load_prior", "prior_cache_path"]

_FORMAT = "diversevis-pixelcnn-prior"
#: Bumped whenever the model, the likelihood or the training procedure changes (invalidates the cache).
_FORMAT_VERSION = 1


def prior_cache_path(name: str = "default", config: PriorConfig | None = None) -> Path:
    """Cache file of a named prior: ``cache_dir() / "prior" / "<name>-<digest>.pt"``.

    Parameters
    ----------
    name : str
        Preset name.
    config : PriorConfig, optional
        Settings (default ``PRESETS[name]``). The 12-hex digest covers them, the file-format version and
        the natural image set, so changing any of them retrains instead of loading a stale model.

    Returns
    -------
    pathlib.Path
        The path (the file may not exist).
    """
    from diversevis.images.naturals import image_set_id

    cfg = config if config is not None else _resolve_config(name)
    key = json.dumps(
        {"v": _FORMAT_VERSION, "config": cfg.to_dict(), "images": image_set_id()}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "prior" / f"{name}-{digest}.pt"


def save_prior(prior: PixelCNNPrior, path: str | os.PathLike) -> Path:
    """Save weights, config and metrics atomically to a file readable with ``torch.load(weights_only=True)``.

    Parameters
    ----------
    prior : PixelCNNPrior
        The model.
    path : str or path-like
        Target file (parent folders are created).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    state = {k: v.detach().cpu().clone() for k, v in prior.state_dict().items()}
    record = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "config": prior.config.to_dict(),
        "metrics": weights_only_plain(prior.metrics),
        "state_dict": state,
    }
    return atomic_save_torch(path, record)


def _read_prior(path: Path, device: torch.device) -> PixelCNNPrior:
    record = read_torch_record(path, _FORMAT, _FORMAT_VERSION, "prior")
    prior = PixelCNNPrior(PriorConfig.from_dict(record["config"]))
    prior.load_state_dict(record["state_dict"])
    prior.metrics = dict(record.get("metrics") or {})
    return prior.to(device)


def load_prior(
    name: str | os.PathLike = "default",
    device: str | torch.device | None = None,
    train_if_missing: bool = True,
    *,
    progress: bool = True,
) -> PixelCNNPrior:
    """Load a cached prior, training and caching it first if needed.

    Parameters
    ----------
    name : str or path-like
        A :data:`PRESETS` name (cached at :func:`prior_cache_path`), or the path of a file written by
        :func:`save_prior`.
    device : str or torch.device, optional
        Device of the returned model (default: CUDA if available, else CPU); also the training device.
    train_if_missing : bool
        Train (:func:`train_prior`) and cache a preset that is not cached yet; otherwise raise.
    progress : bool
        Progress bar while training.

    Returns
    -------
    PixelCNNPrior
        In eval mode with ``requires_grad=False`` parameters (gradients still flow to the images).

    Raises
    ------
    DiversevisError
        Unknown name, missing cache with ``train_if_missing=False``, or an unreadable file.
    """
    dev = _resolve_device(device)
    if isinstance(name, str) and name in PRESETS:
        path = prior_cache_path(name)
        if path.is_file():
            prior = _read_prior(path, dev)
        elif train_if_missing:
            prior = train_prior(name, device=dev, progress=progress)
            save_prior(prior, path)
        else:
            raise DiversevisError(
                f"prior {name!r} is not cached ({str(path)!r}); call load_prior({name!r}) or train_prior() to train it"
            )
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            hint = did_you_mean(str(name), PRESETS) if isinstance(name, str) else ""
            raise DiversevisError(
                f"unknown prior {str(name)!r}: neither a preset ({', '.join(PRESETS)}) nor a file.{hint}"
            )
        prior = _read_prior(path, dev)
    prior.eval()
    prior.requires_grad_(False)
    return prior
