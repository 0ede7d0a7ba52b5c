"""``torchvision:NAME`` and ``timm:NAME`` specs: architectures from the optional libraries.

Pretrained weights come from each library's own cache (torchvision: the torch hub cache,
``$TORCH_HOME/hub/checkpoints``; timm: the Hugging Face cache, ``$HF_HOME``), downloaded on first use;
``NAME@PATH`` loads a local checkpoint instead, and ``model_args={"pretrained": False}`` (CLI:
``--model-arg pretrained=False``) builds the architecture with random weights. Every other model
argument goes to the library's builder (``num_classes=10``, ``in_chans=1``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from diversevis.core.errors import DiversevisError, ModelNotFoundError, did_you_mean
from diversevis.core.network import Network
from diversevis.models.user import LoadOptions, one_line

__all__ = ["load_torchvision", "load_timm", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pretrained(prefix: str, model_args: dict) -> tuple[bool, dict]:
    """``pretrained`` (default True) and the other builder arguments."""
    kwargs = dict(model_args)
    pretrained = kwargs.pop("pretrained", True)
    if not isinstance(pretrained, bool):
        raise DiversevisError(f"{prefix}: pretrained must be True or False, got {pretrained!r}")
    return pretrained, kwargs


def _random_hint(spec: str) -> str:
    return (
        f"or build {spec} with random weights: --model-arg pretrained=False "
        "(Python: model_args={'pretrained': False})"
    )


def _import(package: str, spec: str, install: str):
    try:
        return __import__(package)
    except Exception as e:
        raise ModelNotFoundError(
            f"{spec} needs {package}, which is not importable ({one_line(e)}); install it with: {install}"
        ) from e


def _checkpoint(path: str) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a foreign or pickled file
        raise DiversevisError(f"cannot read checkpoint {path!r}: {one_line(e)}") from e
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _torchvision_weights_error(tv, name: str, e: Exception) -> DiversevisError:
    """Offline (or a failed download): where the weights go and the three ways around it."""
    spec = f"torchvision:{name}"
    where = f"{torch.hub.get_dir()}/checkpoints"
    try:
        url = tv.models.get_model_weights(name).DEFAULT.url
        where = f"{where}/{url.rsplit('/', 1)[-1]} (from {url})"
    except Exception:  # noqa: BLE001 - the message is still useful without the file name
        pass
    return ModelNotFoundError(
        f"could not get the pretrained weights of {spec} ({type(e).__name__}: {one_line(e, 160)}). torchvision "
        f"downloads them to the torch hub cache, {where}; offline, download that file elsewhere and copy it "
        f"there (or set TORCH_HOME), or pass a local checkpoint as {spec}@/path/to/weights.pth, "
        + _random_hint(spec)
    )


def load_torchvision(spec: str, options: LoadOptions) -> Network:
    """``torchvision:NAME[@PATH]``: ImageNet normalisation, VGG aliases, weights as the module docs say."""
    name, _, ckpt = spec.partition("@")
    tv = _import("torchvision", f"torchvision:{name}", "pip install 'diversevis[torchvision]'")
    available = tv.models.list_models()
    if name not in available:
        raise ModelNotFoundError(f"torchvision has no model {name!r}.{did_you_mean(name, available)}")
    pretrained, kwargs = _pretrained(f"torchvision:{name}", options.model_args)
    try:
        if ckpt:
            model = tv.models.get_model(name, weights=None, **kwargs)
            model.load_state_dict(_checkpoint(ckpt))
        else:
            weights = "DEFAULT" if pretrained else None
            model = tv.models.get_model(name, weights=weights, **kwargs)
    except DiversevisError:
        raise
    except OSError as e:  # urllib's URLError / HTTPError, a read-only cache
        raise _torchvision_weights_error(tv, name, e) from e
    except Exception as e:  # noqa: BLE001 - bad builder arguments, a checkpoint that does not fit
        extra = (
            " (pretrained weights fix some arguments; try pretrained=False)" if kwargs and pretrained else ""
        )
        raise DiversevisError(
            f"torchvision could not build {name} ({type(e).__name__}: {one_line(e)}){extra}"
        ) from e
    aliases = {}
    if name.startswith("vgg") and hasattr(model, "features") and not name.endswith("_bn"):
        from torchvision.models.vgg import cfgs

        from diversevis.models.zoo import vgg_aliases

        cfg_key = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}.get(name)
        if cfg_key:
            aliases = vgg_aliases(cfgs[cfg_key])
    defaults = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": 224}
    return options.network(
        model, spec=f"torchvision:{spec}", name=f"torchvision:{name}", defaults=defaults, aliases=aliases
    )


def load_timm(spec: str, options: LoadOptions) -> Network:
    """``timm:NAME[@PATH]``: the model's own normalisation and input size from its pretrained config."""
    name, _, ckpt = spec.partition("@")
    timm = _import("timm", f"timm:{name}", "pip install timm")
    if not (timm.is_model(name) or timm.is_model(name.split(".")[0])):
        raise ModelNotFoundError(f"timm has no model {name!r}.{did_you_mean(name, timm.list_models())}")
    pretrained, kwargs = _pretrained(f"timm:{name}", options.model_args)
    if ckpt:
        pretrained, kwargs["checkpoint_path"] = False, str(Path(ckpt).expanduser())
        if not Path(kwargs["checkpoint_path"]).is_file():
            raise ModelNotFoundError(f"checkpoint {ckpt!r} does not exist")
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as e:  # huggingface_hub / requests: offline, not in the cache
        raise ModelNotFoundError(
            f"could not get the pretrained weights of timm:{name} ({type(e).__name__}: {one_line(e, 160)}). "
            f"timm downloads them to the Hugging Face cache (~/.cache/huggingface, or $HF_HOME); offline, "
            f"fill that cache elsewhere and copy it, or pass a local checkpoint as timm:{name}@/path/to/weights, "
            + _random_hint(f"timm:{name}")
        ) from e
    except Exception as e:  # noqa: BLE001 - no pretrained weights for this name, bad builder arguments
        hint = f"; {_random_hint(f'timm:{name}')}" if pretrained else ""
        raise DiversevisError(f"timm could not build {name} ({type(e).__name__}: {one_line(e)}){hint}") from e
    cfg = dict(getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {})
    size = tuple(cfg.get("input_size", (3, 224, 224)))[-2:]
    defaults = {
        "mean": cfg.get("mean", IMAGENET_MEAN),
        "std": cfg.get("std", IMAGENET_STD),
        "input_size": size if size[0] != size[1] else size[0],
    }
    return options.network(model, spec=f"timm:{spec}", name=f"timm:{name}", defaults=defaults)
