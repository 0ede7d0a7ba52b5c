"""Settings of the natural-image prior: :class:`PriorConfig` and the named :data:`PRESETS`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from diversevis.core.errors import DiversevisError, did_you_mean

__all__ = ["PriorConfig", "PRESETS"]


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """Architecture and training settings of a :class:`PixelCNNPrior`.

    Attributes
    ----------
    channels : int
        Feature channels of both stacks.
    blocks : int
        Gated residual blocks per stack. Each holds two masked convolutions, so it extends the receptive
        field by ``2 * (kernel // 2)`` rows upwards (vertical stack) and columns leftwards (horizontal).
    kernel : int
        Side of the (odd) masked convolution kernels.
    n_mix : int
        Logistic mixture components per pixel.
    dropout : float
        Dropout probability inside the residual blocks in train mode (:func:`train_prior` and
        :func:`load_prior` return models in eval mode, which score without dropout; the reference code's
        prior kept dropout on while optimising images, a defect).
    patch_size : int
        Side in pixels of the natural training patches.
    batch_size : int
        Patches per Adam step.
    steps : int
        Adam steps.
    lr : float
        Initial learning rate; a cosine schedule decays it to ``lr * lr_final``.
    lr_final : float
        Final learning rate as a fraction of ``lr``.
    grad_clip : float
        Maximum gradient L2 norm (0 disables clipping).
    val_patches : int
        Held-out validation patches.
    eval_every : int
        Steps between validation evaluations (also the last step).
    flips : bool
        Random horizontal flips of the training patches (vertical flips are not used: natural images are
        not up-down symmetric).
    seed : int
        Seed of the initialisation, the training-patch stream, the flips and the validation patches.
    """

    channels: int = 32
    blocks: int = 4
    kernel: int = 3
    n_mix: int = 5
    dropout: float = 0.0
    patch_size: int = 16
    batch_size: int = 16
    steps: int = 1600
    lr: float = 3e-3
    lr_final: float = 0.05
    grad_clip: float = 10.0
    val_patches: int = 512
    eval_every: int = 200
    flips: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("channels", "blocks", "n_mix", "patch_size", "batch_size", "steps", "val_patches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DiversevisError(f"PriorConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.kernel, int) or self.kernel < 3 or self.kernel % 2 == 0:
            raise DiversevisError(f"PriorConfig.kernel must be an odd integer >= 3, got {self.kernel!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise DiversevisError(f"PriorConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.lr > 0 or not 0 < self.lr_final <= 1:
            raise DiversevisError(
                f"PriorConfig needs lr > 0 and 0 < lr_final <= 1, got {self.lr}, {self.lr_final}"
            )
        if self.eval_every < 1 or self.seed < 0 or self.grad_clip < 0:
            raise DiversevisError("PriorConfig needs eval_every >= 1, seed >= 0 and grad_clip >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dictionary of the settings (JSON- and ``weights_only``-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriorConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise DiversevisError(f"unknown PriorConfig fields: {', '.join(sorted(unknown))}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> PriorConfig:
        """Copy with some settings changed."""
        return dataclasses.replace(self, **changes)


#: Named configurations. ``"default"``: CPU-friendly (0.23 M parameters, 16 px patches, about 5 minutes on
#: one CPU core); ``"large"``: a GPU configuration (4.1 M parameters, 32 px patches, 20000 steps).
PRESETS: dict[str, PriorConfig] = {
    "default": PriorConfig(),
    "large": PriorConfig(
        channels=96,
        blocks=8,
        n_mix=10,
        dropout=0.1,
        patch_size=32,
        batch_size=32,
        steps=20000,
        lr=1e-3,
        val_patches=2048,
        eval_every=1000,
    ),
}


def _resolve_config(config: PriorConfig | str | None) -> PriorConfig:
    if config is None:
        return PRESETS["default"]
    if isinstance(config, PriorConfig):
        return config
    if isinstance(config, str):
        if config not in PRESETS:
            raise DiversevisError(f"unknown prior preset {config!r}.{did_you_mean(config, PRESETS)}")
        return PRESETS[config]
    raise DiversevisError(f"config must be a PriorConfig or a preset name, got {type(config).__name__}")
