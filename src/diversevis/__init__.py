"""diversevis: diverse feature visualization and invariance analysis for PyTorch CNNs.

>>> import diversevis as dv
>>> net = dv.load_model("vgg16-paper")
>>> res = dv.diverse(net, "conv3_1", unit=21, n_images=6, diversity=0.01, distance_layer="conv2_2", seed=0)
>>> res.save("runs/conv3_1_u21")
"""

__version__ = "0.1.0"

from diversevis import _compat
from diversevis.core.errors import DiversevisError, EnvironmentProblem, LayerNotFoundError, ModelNotFoundError
from diversevis.core.network import LayerInfo, Network, as_network
from diversevis.core.objectives import Target
from diversevis.core.receptive import ReceptiveField
from diversevis.core.result import Result
from diversevis.methods.baselines import Comparison, compare_baselines, participation_ratio, set_metrics
from diversevis.methods.dfv import diverse, diverse_units, mei, mei_units
from diversevis.methods.manifold import manifold
from diversevis.methods.manifold_result import ManifoldResult, load_manifold
from diversevis.methods.mei_phase import MEIPhaseResult, mei_phase_test, shift_dominant_phase
from diversevis.methods.phase import PhaseResult, grating, modulation_ratio, phase_test
from diversevis.methods.retention import RetentionResult, response_retention
from diversevis.methods.shift import ShiftResult, shift_test
from diversevis.models.zoo import list_models, load_model

_compat.install()  # old import paths (diversevis.dfv, ...) for one release

#: Public names imported on first use (``dv.actmax``, ...), so ``import diversevis`` stays light.
_LAZY = {
    "actmax": "methods.classic.actmax",
    "invert": "methods.classic.inversion",
    "deconvnet": "methods.classic.deconvnet",
    "deconv_top_patches": "methods.classic.deconvnet",
    "occlusion": "methods.classic.occlusion",
    "multifaceted": "methods.classic.multifaceted",
    "dissect": "methods.classic.dissection",
    "load_prior": "images.prior",
    "train_prior": "images.prior",
    "PixelCNNPrior": "images.prior",
    "manifold_cluster": "study.manifold_cluster",
    "dgn_am": "methods.dgn_am",
    "ppgn": "methods.ppgn",
    "train_generator": "methods.generator",
    "load_generator": "methods.generator",
    "ImageGenerator": "methods.generator",
    "evaluate_generator": "methods.generator",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if f"{__name__}.{name}" in _compat.MOVED:  # an old submodule (``dv.sweep``): deprecated alias
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
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
    "manifold",
    "ManifoldResult",
    "load_manifold",
    "manifold_cluster",
    "shift_test",
    "ShiftResult",
    "phase_test",
    "mei_phase_test",
    "MEIPhaseResult",
    "shift_dominant_phase",
    "response_retention",
    "RetentionResult",
    "PhaseResult",
    "grating",
    "modulation_ratio",
    "compare_baselines",
    "Comparison",
    "participation_ratio",
    "set_metrics",
    "DiversevisError",
    "EnvironmentProblem",
    "LayerNotFoundError",
    "ModelNotFoundError",
    *_LAZY,
]
