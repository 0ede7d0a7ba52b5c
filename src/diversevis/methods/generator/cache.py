"""Saving, loading and caching trained generators: :func:`save_generator`, :func:`load_generator`, :func:`generator_cache_path`."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diversevis.core import cache as _cache
from diversevis.core.cache import atomic_save_torch, read_torch_record, weights_only_plain
from diversevis.core.errors import DiversevisError, EnvironmentProblem, did_you_mean
from diversevis.methods.generator.config import PRESETS, GeneratorConfig, _resolve_config
from diversevis.methods.generator.network import ImageGenerator
from diversevis.methods.generator.training import _resolve_device, train_generator

__all__ = ["save_generator", "load_generator", "generator_cache_path"]

_FORMAT = "diversevis-image-generator"
#: Bumped whenever the network, the losses or the training procedure change (invalidates the cache).
_FORMAT_VERSION = 1


def _generator_dir() -> Path:
    """Folder of the cached generators: ``cache_dir() / "generator"`` (tests point it elsewhere)."""
    return _cache.cache_dir() / "generator"


def generator_cache_path(
    name: str = "default", config: GeneratorConfig | None = None, images: str | os.PathLike | None = None
) -> Path:
    """Cache file of a named generator: ``cache_dir() / "generator" / "<name>-<digest>.pt"``.

    Parameters
    ----------
    name : str
        Preset name (also the file's prefix).
    config : GeneratorConfig, optional
        Settings (default ``PRESETS[name]``). The 12-hex digest covers them, the file-format version and
        the natural image set, so changing any of them retrains instead of loading a stale model.
    images : str or path-like, optional
        Image folder trained on (default: the bundled photos).

    Returns
    -------
    pathlib.Path
        The path (the file may not exist).
    """
    from diversevis.images.naturals import image_set_id

    cfg = config if config is not None else _resolve_config(name)
    key = json.dumps(
        {"v": _FORMAT_VERSION, "config": cfg.to_dict(), "images": image_set_id(images)}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return _generator_dir() / f"{name}-{digest}.pt"


def save_generator(gen: ImageGenerator, path: str | os.PathLike) -> Path:
    """Save weights, buffers, config, code shape and metrics atomically (readable with ``torch.load(weights_only=True)``).

    Parameters
    ----------
    gen : ImageGenerator
        The model.
    path : str or path-like
        Target file (parent folders are created).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    record = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "config": gen.config.to_dict(),
        "code_shape": list(gen.code_shape),
        "metrics": weights_only_plain(gen.metrics),
        "state_dict": {k: v.detach().cpu().clone() for k, v in gen.state_dict().items()},
    }
    return atomic_save_torch(path, record)


def _read_generator(path: Path, device: torch.device) -> ImageGenerator:
    record = read_torch_record(path, _FORMAT, _FORMAT_VERSION, "generator")
    gen = ImageGenerator(GeneratorConfig.from_dict(record["config"]), tuple(record["code_shape"]))
    gen.load_state_dict(record["state_dict"])
    gen.metrics = dict(record.get("metrics") or {})
    return gen.to(device)


def load_generator(
    name_or_path: str | os.PathLike = "default",
    *,
    device: str | torch.device | None = None,
    train: bool = False,
    images: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], Any] | None = print,
) -> ImageGenerator:
    """Load a cached generator (a preset name) or a generator file.

    Parameters
    ----------
    name_or_path : str or path-like
        A :data:`PRESETS` name (cached at :func:`generator_cache_path`) or a file written by
        :func:`save_generator`.
    device : str or torch.device, optional
        Device of the returned model (default: CUDA if available, else CPU); also the training device.
    train : bool
        Train (:func:`train_generator`) and cache a preset that is not cached yet; otherwise raise.
    images : str or path-like, optional
        Image folder of a preset (part of its cache key; default: the bundled photos).
    progress, log
        As in :func:`train_generator`.

    Returns
    -------
    ImageGenerator
        Eval mode, ``requires_grad=False`` parameters (gradients still flow to the codes).

    Raises
    ------
    DiversevisError
        Unknown name, a preset not cached with ``train=False`` (the message names the command that trains
        it), or an unreadable file.
    """
    dev = _resolve_device(device)
    if isinstance(name_or_path, str) and name_or_path in PRESETS:
        path = generator_cache_path(name_or_path, images=images)
        if path.is_file():
            gen = _read_generator(path, dev)
        elif train:
            gen = train_generator(name_or_path, images=images, device=dev, progress=progress, log=log)
            save_generator(gen, path)
        else:  # the machine lacks the file, the request is fine: an environment problem (CLI exit 1)
            raise EnvironmentProblem(
                f"generator {name_or_path!r} is not trained yet (no {str(path)!r}); train it once with "
                f"`diversevis train-generator --preset {name_or_path}` or load_generator({name_or_path!r}, train=True)"
            )
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            hint = did_you_mean(str(name_or_path), PRESETS) if isinstance(name_or_path, str) else ""
            raise DiversevisError(
                f"unknown generator {str(name_or_path)!r}: neither a preset ({', '.join(PRESETS)}) nor a file.{hint}"
            )
        gen = _read_generator(path, dev)
    gen.eval()
    gen.requires_grad_(False)
    return gen
