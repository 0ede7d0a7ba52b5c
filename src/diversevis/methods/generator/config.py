"""Settings of the feature-inverting image generator: :class:`GeneratorConfig` and the named :data:`PRESETS`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from diversevis.core.errors import DiversevisError, did_you_mean

__all__ = ["GeneratorConfig", "PRESETS"]


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Architecture and training settings of an :class:`~diversevis.methods.generator.ImageGenerator`.

    Attributes
    ----------
    model : str
        Zoo spec of the frozen feature network ``E`` whose code the generator inverts (``"vgg16"``: the
        padded ImageNet VGG-16; at 64 px its ``pool4`` is 512 x 4 x 4).
    code_layer : str
        Layer of ``model`` whose (ReLU'd) output is the code ``h = E(x)``.
    size : int
        Side of the generated images and of the natural training patches, in pixels. ``size`` divided by
        the code's spatial side must be a power of two (the decoder upsamples by 2 per stage).
    feature_layers : tuple of str
        Comparator layers of the feature loss (layers of ``model``).
    pixel_weight : float
        Weight of the pixel loss (mean squared error in display units [0, 1]).
    feature_weight : float
        Weight of the feature loss: per comparator layer, the mean squared feature error divided by the
        mean square of the target features (a relative error, so the layers' scales do not matter).
    adversarial_weight : float
        Weight of the non-saturating adversarial loss of a small patch discriminator (0: no discriminator).
    width : int
        Channels of the decoder's first stage; each upsampling stage halves them (at least 32).
    dae_width : int
        Hidden channels of the denoising autoencoder on the codes (a per-position MLP).
    batch_size : int
        Natural patches per Adam step.
    steps : int
        Adam steps (the generator, the DAE and the discriminator each take one per step).
    lr : float
        Adam learning rate (the same for the generator, the DAE and the discriminator); cosine decay to
        ``lr / 20``.
    dae_noise : float
        Standard deviation of the DAE's Gaussian corruption relative to the codes' standard deviation
        (the global std over all code elements of the held-out patches).
    val_patches : int
        Held-out patches on which the code statistics (``code_mean``, ``code_std``, ``upper``) are measured.
    seed : int
        Seed of the initialisation, the patch stream, the flips, the DAE noise and the held-out patches.
    flips : bool
        Random left-right flips of the training patches.
    """

    model: str = "vgg16"
    code_layer: str = "pool4"
    size: int = 64
    feature_layers: tuple[str, ...] = ("conv3_3",)
    pixel_weight: float = 1.0
    feature_weight: float = 0.01
    adversarial_weight: float = 0.0
    width: int = 256
    dae_width: int = 1024
    batch_size: int = 16
    steps: int = 1400
    lr: float = 1e-3
    dae_noise: float = 0.3
    val_patches: int = 512
    seed: int = 0
    flips: bool = True

    def __post_init__(self) -> None:
        for name in ("size", "width", "dae_width", "batch_size", "steps", "val_patches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DiversevisError(f"GeneratorConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(self.feature_layers, str) or isinstance(self.feature_layers, list):
            layers = (self.feature_layers,) if isinstance(self.feature_layers, str) else self.feature_layers
            object.__setattr__(self, "feature_layers", tuple(layers))
        for name in ("pixel_weight", "feature_weight", "adversarial_weight"):
            if not getattr(self, name) >= 0:
                raise DiversevisError(f"GeneratorConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.lr > 0 or not self.dae_noise > 0:
            raise DiversevisError(
                f"GeneratorConfig needs lr > 0 and dae_noise > 0, got {self.lr}, {self.dae_noise}"
            )
        if self.pixel_weight == 0 and (self.feature_weight == 0 or not self.feature_layers):
            raise DiversevisError("GeneratorConfig needs a pixel loss or a feature loss (a weight > 0)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise DiversevisError(f"GeneratorConfig.seed must be an integer >= 0, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dictionary of the settings (JSON- and ``weights_only``-safe; lists for tuples)."""
        d = dataclasses.asdict(self)
        d["feature_layers"] = list(self.feature_layers)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise DiversevisError(f"unknown GeneratorConfig fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        if "feature_layers" in values:
            values["feature_layers"] = tuple(values["feature_layers"])
        return cls(**values)

    def replace(self, **changes: Any) -> GeneratorConfig:
        """Copy with some settings changed."""
        return dataclasses.replace(self, **changes)


#: Named configurations. ``"default"``: vgg16 pool4 at 64 px, trained in about 20 minutes on one CPU
#: thread; ``"tiny"``: vgg16 pool3 at 32 px (256 x 4 x 4), small decoder, a minute or less on one thread
#: (for tests); ``"gpu"``: the default architecture trained longer on larger batches.
PRESETS: dict[str, GeneratorConfig] = {
    "default": GeneratorConfig(),
    "tiny": GeneratorConfig(
        size=32,
        code_layer="pool3",
        feature_layers=("conv3_3",),
        width=64,
        dae_width=512,
        batch_size=8,
        steps=300,
        lr=2e-3,
        val_patches=128,
    ),
    "gpu": GeneratorConfig(batch_size=64, steps=20000, lr=5e-4, val_patches=2048),
}


def _resolve_config(config: GeneratorConfig | str | None) -> GeneratorConfig:
    """A :class:`GeneratorConfig` from itself, a :data:`PRESETS` name or ``None`` (``"default"``)."""
    if config is None:
        return PRESETS["default"]
    if isinstance(config, GeneratorConfig):
        return config
    if isinstance(config, str):
        if config not in PRESETS:
            raise DiversevisError(f"unknown generator preset {config!r}.{did_you_mean(config, PRESETS)}")
        return PRESETS[config]
    raise DiversevisError(f"config must be a GeneratorConfig or a preset name, got {type(config).__name__}")
