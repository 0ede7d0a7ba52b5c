"""The reproduction study: the paper's experiments on real networks, in one command, with verdicts.

``reproduce(out)`` (``diversevis reproduce --out DIR``) runs, on the offline networks:

1. the reference notebook's experiment (``vgg16-paper`` conv3_1 unit 21, N = 6, lambda = 0.01,
   conv2_2 distance) next to the numbers the notebook printed (method.md B.2);
2. the synthetic-cell checks (method.md B.4.1): a phase-invariant energy-model cell keeps its maximum
   over a diverse set, a simple cell cannot;
3. the diversity / activation trade-off of the reference unit over lambda (B.4.3);
4. layer sweeps of ``vgg16-paper`` conv1_1..conv3_3 (DFV, MEI, phase test, shift test) and of the
   receptive-field-matched layers of ``efficientnet-lite0``;
5. DFV against random restarts, Gram-cosine diversity and natural exemplars (B.4.4) over units of
   conv2_1 and conv3_1;
6. diverse sets with and without the natural-image prior (PixelCNN-style), when ``prior.py`` is there;

and writes ``report.md`` and ``report.html`` with figures, and a verdict per claim of the paper
(method.md B.1): (i) phase-invariant and deformation-invariant units, (ii) a second (residual)
network differs at matching layers, (iii) initialisation- and sampling-based diversity underestimates
DFV's. Every step is stored under ``DIR`` as it finishes, so a killed run resumes where it stopped.

The module is a package, one concept per module: :mod:`.config` (presets, the paper's numbers, verdict
thresholds, the device), :mod:`.steps` (the experiments, resumable), :mod:`.stats` (pixel diversity, unit
classes, Mann-Whitney tests, Holm's correction), :mod:`.figures`, :mod:`.sections` (one function per
report section), :mod:`.render` (Markdown and HTML), :mod:`.run` (:func:`reproduce`) and
:mod:`.publication` (:func:`publish`). Every name is importable from here as before; the CLI looks up
``reproduce`` here when it runs, so patching ``diversevis.study.reproduce.reproduce`` reaches it.
"""

from __future__ import annotations

# Re-exports: the names this module had before it became a package (tests and the CLI import them here).
from diversevis.study.reproduce.config import (
    COMPLEX_F1F0,  # noqa: F401
    DEFORMATION_PIXEL_DISTANCE,  # noqa: F401
    EFF_CANDIDATES,  # noqa: F401
    PAPER_REFERENCE,
    PHASE_INVARIANT_F1F0,  # noqa: F401
    PRESETS,
    SHIFT_INVARIANT,  # noqa: F401
    STRONG_RATIO,  # noqa: F401
    VGG_LAYERS,  # noqa: F401
    Preset,
    _preset_name,  # noqa: F401
)
from diversevis.study.reproduce.publication import publish
from diversevis.study.reproduce.render import (
    Section,  # noqa: F401
    md_inline,  # noqa: F401
    render_html,  # noqa: F401
    render_markdown,  # noqa: F401
)
from diversevis.study.reproduce.run import reproduce
from diversevis.study.reproduce.stats import (
    _pixel_min_distance,  # noqa: F401
    classify_unit,  # noqa: F401
    holm_rejections,  # noqa: F401
)
from diversevis.study.reproduce.steps import _Steps  # noqa: F401

__all__ = ["Preset", "PRESETS", "reproduce", "publish", "PAPER_REFERENCE"]
