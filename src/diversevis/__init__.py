"""diversevis: diverse feature visualization and invariance analysis for PyTorch CNNs.

>>> import diversevis as dv
>>> net = dv.load_model("vgg16-paper")
>>> res = dv.diverse(net, "conv3_1", unit=21, n_images=6, diversity=0.01, distance_layer="conv2_2", seed=0)
>>> res.save("runs/conv3_1_u21")
"""

__version__ = "0.1.0"

from .dfv import diverse, diverse_units, mei, mei_units
from .errors import DiversevisError, LayerNotFoundError, ModelNotFoundError
from .invariance import Comparison, compare_baselines, participation_ratio, set_metrics
from .network import LayerInfo, Network, as_network
from .objectives import Target
from .phase import PhaseResult, grating, modulation_ratio, phase_test
from .receptive import ReceptiveField
from .result import Result
from .shift import ShiftResult, shift_test
from .zoo import list_models, load_model

#: Public names imported on first use (``dv.actmax``, ...), so ``import diversevis`` stays light.
_LAZY = {
    "actmax": "classic.actmax",
    "invert": "classic.inversion",
    "deconvnet": "classic.deconvnet",
    "deconv_top_patches": "classic.deconvnet",
    "occlusion": "classic.occlusion",
    "multifaceted": "classic.multifaceted",
    "dissect": "classic.dissection",
    "load_prior": "prior",
    "train_prior": "prior",
    "PixelCNNPrior": "prior",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'diversevis' has no attribute {name!r}")


__all__ = [
    "__version__",
    "Network",
    "LayerInfo",
    "ReceptiveField",
    "Target",
    "Result",
    "load_model",
    "list_models",
    "as_network",
    "diverse",
    "mei",
    "diverse_units",
    "mei_units",
    "shift_test",
    "ShiftResult",
    "phase_test",
    "PhaseResult",
    "grating",
    "modulation_ratio",
    "compare_baselines",
    "Comparison",
    "participation_ratio",
    "set_metrics",
    "DiversevisError",
    "LayerNotFoundError",
    "ModelNotFoundError",
    *_LAZY,
]
