"""The settings of the generator-prior methods (:func:`diversevis.dgn_am`, :func:`diversevis.ppgn`), declared once.

Both methods move a code ``h`` of a trained feature-inverting generator ``G`` (:mod:`diversevis.methods.generator`)
with the same update (:func:`diversevis.methods.code_sampler.sample_codes`)::

    h <- clip_[0, U]( decay * (h + eps1 * (R(h) - h) / sigma^2
                              + eps2 * lr_t * s * g / mean|g|
                              + eps3 * s_k * N(0, 1)) )

where ``g = d a(G(h)) / dh`` is the gradient of the unit's activation, ``s`` the mean of the codes' standard
deviation over natural patches and ``s_k`` the per-element one, ``lr_t`` falls linearly from ``lr`` to
``lr_end``, ``R`` is the denoising autoencoder on codes and ``sigma`` its training noise. DGN-AM (Nguyen et
al. 2016) is the special case ``eps1 = eps3 = 0`` with ``decay = 0.99``; PPGN (Nguyen et al. 2017) adds the
learned prior (``eps1``) and the Langevin noise (``eps3``) and does not decay.

Units differ from the reference code, whose step sizes were set for CaffeNet's fc6 code (values ~0-30): the
condition step here is in units of the codes' own spread ``s`` so that one set of defaults suits any code
layer, and ``eps1`` defaults to ``0.1 sigma^2`` (a tenth of the way to the denoised code per step).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from diversevis.core.checks import check_fields
from diversevis.core.errors import DiversevisError, did_you_mean
from diversevis.core.settings import Settings

__all__ = ["CodeSamplerSettings", "DGN_AM", "PPGN", "INITS"]

#: How the codes start: codes of random natural patches (the reference's "encoding of a real image"), or
#: ``relu(mean + std * N(0, 1))`` with the natural codes' element-wise mean and spread.
INITS = ("natural", "random")


@dataclasses.dataclass(frozen=True)
class CodeSamplerSettings(Settings):
    """Hyperparameters of the code update shared by DGN-AM and PPGN (module docstring).

    Attributes
    ----------
    chains : int
        Codes moved in parallel (DGN-AM: restarts, the best is kept; PPGN: Markov chains).
    n_iter : int
        Updates per chain (the references: 200).
    lr, lr_end : float
        Condition step size at the first and last update, in units of the codes' spread (linear decay).
    eps1 : float or None
        Weight of the prior gradient ``(R(h) - h) / sigma^2``; ``None``: ``0.1 sigma^2`` (PPGN), 0 (DGN-AM).
    eps2 : float
        Weight of the condition (the unit's normalised gradient).
    eps3 : float
        Noise standard deviation, in units of each code element's natural spread.
    decay : float
        Multiplicative L2 decay of the code after each update (DGN-AM: 0.99; PPGN: 1).
    every, burn_in : int
        PPGN: a sample of every chain is kept every ``every`` updates after the first ``burn_in``.
    init : {"natural", "random"}
        Where the codes start (:data:`INITS`).
    contrast, norm, images
        The contrast the unit sees (as :func:`diversevis.mei`): the generator's centre crop is scaled to
        this L2 norm around grey, so activations compare with the MEI's at the same contrast.
    seed : int
        Seed of the starting codes and of the noise.
    mei_restarts : int
        Restarts of the unrestricted MEI the ratios refer to (when none is given).
    """

    chains: int = 4
    n_iter: int = 200
    lr: float = 1.0
    lr_end: float = 0.0
    eps1: float | None = None
    eps2: float = 1.0
    eps3: float = 0.0
    decay: float = 1.0
    every: int = 5
    burn_in: int = 100
    init: str = "natural"
    contrast: float = 0.5
    norm: float | None = None
    images: str | Path | None = None
    seed: int = 0
    mei_restarts: int = 4

    def check(self) -> None:
        check_fields(
            self,
            ints=[("chains", 1, 4096), ("n_iter", 1, 1_000_000), ("every", 1), ("burn_in", 0),
                  ("seed", 0), ("mei_restarts", 1, 1024)],
            floats=[("lr", 0.0), ("lr_end", 0.0), ("eps1", 0.0), ("eps2", 0.0), ("eps3", 0.0),
                    ("decay", 0.0, 1.0, True), ("contrast", 0.0, math.inf, True), ("norm", 0.0, math.inf, True)],
            optional=["eps1", "norm"],
        )  # fmt: skip
        if self.init not in INITS:
            raise DiversevisError(
                f"unknown init {self.init!r}{did_you_mean(str(self.init), INITS)}; choose from {', '.join(INITS)}"
            )
        if self.eps2 == 0 and (self.eps1 == 0 or self.eps1 is None) and self.eps3 == 0:
            raise DiversevisError("eps2 = 0 with no prior and no noise leaves the codes where they start")

    def resolved_eps1(self, sigma: float, default: float) -> float:
        """``eps1``, or ``default * sigma^2`` when it was not given."""
        return float(self.eps1) if self.eps1 is not None else float(default) * float(sigma) ** 2


#: DGN-AM's defaults: 4 restarts, 200 normalised-gradient steps with a linearly falling step size and the
#: reference's 0.99 decay, no prior, no noise (Nguyen et al. 2016; ``act_max.py``). A first step of 0.3
#: code spreads: on vgg16-paper conv3_1 units 4, 21, 40 and conv2_1 unit 3 with the default generator it
#: reached a mean ratio to the MEI of 0.45 (1.0: 0.41; 0.1 without decay: 0.46; projected Adam on unit 21:
#: 0.46 against 0.39 here, so the generator, not the update, bounds what DGN-AM reaches).
DGN_AM = CodeSamplerSettings(chains=4, n_iter=200, lr=0.3, lr_end=0.0, eps1=0.0, eps3=0.0, decay=0.99)
#: PPGN's defaults: the DAE prior (``eps1 = 0.1 sigma^2``), a constant condition step of 0.1 code spreads
#: (0.3 reached 20-40 % lower ratios on synthetic complex cells: a constant step that large keeps jumping
#: past the maxima), a little noise, 16 chains sampled every 5 updates after 100 (Nguyen et al. 2017,
#: ``1_class_conditional_sampling.sh``).
PPGN = CodeSamplerSettings(chains=16, n_iter=200, lr=0.1, lr_end=0.1, eps1=None, eps3=0.05, decay=1.0)
