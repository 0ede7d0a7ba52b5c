"""What the reproduction study runs with: presets, the paper's reference numbers, verdict thresholds, device."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, fields

from diversevis.models.zoo import load_model

#: The official notebook's printed numbers (method.md B.2): VGG-19 (Gatys-normalised) conv3_1 unit 21.
PAPER_REFERENCE = {
    "network": "VGG-19, Gatys-normalised",
    "mean_activation": 55.28,
    "activations": [55.67, 58.88, 57.55, 51.52, 53.84, 54.23],
    "min_over_max": 0.875,
    "min_distance": 5.0,
    "n_iter": 774,
}

VGG_LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3")
EFF_CANDIDATES = ("stem", "stage1", "block1", "block2", "block3", "block4", "block5", "block6", "block7")

#: Thresholds behind the verdicts (stated in the report).
PHASE_INVARIANT_F1F0 = 0.3  # "near-perfectly phase invariant": modulation below 30 % of the mean rate
COMPLEX_F1F0 = 1.0  # the classic simple / complex boundary
STRONG_RATIO = 0.9  # every image of the diverse set at >= 90 % of the MEI
DEFORMATION_PIXEL_DISTANCE = 0.5  # min pixel distance between set images, relative to their RMS contrast
SHIFT_INVARIANT = 0.5  # shift test: every crop at >= 50 % of the MEI
FLOOR = 0.85  # floor-mode DFV: every image of a set at >= 85 % of the MEI (Ding et al.; LAMINR)
DI_INVARIANT = 0.5  # calibrated diversity index: at least halfway from a simple to a complex cell


@dataclass(frozen=True)
class Preset:
    """How much of the study to run.

    Attributes
    ----------
    units : int
        Units sampled per ``vgg16-paper`` layer (and per matched EfficientNet layer).
    baseline_units : int
        Units per layer in the baseline comparison (claim iii).
    baseline_layers : tuple of str
    shift_stride : int
        Shift-test crop stride (1 in every preset: the fast optimiser makes the stride-1 test affordable;
        sweeps cap a larger one per layer so at least two offsets remain).
    lambdas : tuple of float
        Diversity weights of the trade-off curve.
    candidates : int
        Natural patches sampled for the natural-exemplar baseline.
    max_iter : int
    prior_steps : int, optional
        Training steps of the natural-image prior when the default prior is not cached yet (``None``:
        train the full default prior, about 5 minutes on a CPU, and cache it).
    """

    units: int
    baseline_units: int
    baseline_layers: tuple[str, ...]
    shift_stride: int
    lambdas: tuple[float, ...]
    candidates: int
    max_iter: int = 1000
    prior_steps: int | None = None


PRESETS = {
    "quick": Preset(3, 2, ("conv2_1", "conv3_1"), 1, (0.0, 0.01, 0.1, 1.0), 2048, prior_steps=400),
    "standard": Preset(32, 8, ("conv2_1", "conv3_1"), 1, (0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0), 4096),
    "full": Preset(
        64, 32, ("conv2_1", "conv3_1"), 1, (0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0), 8192
    ),
}


def _preset_name(p: Preset) -> str:
    """``quick`` for a named preset, else the nearest named one and what differs: ``quick (units=8)``."""
    names = [f.name for f in fields(Preset)]

    def diff(q: Preset) -> list[str]:
        return [n for n in names if getattr(q, n) != getattr(p, n)]

    best = min(PRESETS, key=lambda k: len(diff(PRESETS[k])))
    changed = diff(PRESETS[best])
    if not changed:
        return best
    return f"{best} ({', '.join(f'{n}={getattr(p, n)}' for n in changed)})"


_DEVICE: contextvars.ContextVar[str | None] = contextvars.ContextVar("reproduce_device", default=None)


def _load(name: str):
    """A zoo network on the study's device (``reproduce(device=...)``)."""
    return load_model(name, device=_DEVICE.get())
