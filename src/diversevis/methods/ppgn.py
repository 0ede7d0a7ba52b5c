"""PPGN: Plug & Play Generative Networks, sampling images that drive a unit (Nguyen et al., CVPR 2017).

PPGN turns DGN-AM into a sampler: Langevin dynamics on the generator's code ``h`` with three terms (the
paper's Eq. 11), ``h <- h + eps1 dlog p(h)/dh + eps2 dlog p(unit|h)/dh + N(0, eps3^2)``, where the prior
gradient comes from a denoising autoencoder ``R`` on codes, ``dlog p(h)/dh ~ (R(h) - h) / sigma^2``
(Alain & Bengio 2014), and the condition term is the unit's normalised gradient through ``G`` (the update
of :mod:`diversevis.methods.generator_settings`). Chains are run in parallel from codes of natural
patches; after a burn-in a sample of every chain is kept every few updates.

Why it is here: PPGN promises *diverse* images for a unit, which is what claim (iii) of the DFV paper says
sampling-based methods underestimate. With ``min_ratio`` the samples are compared with DFV at matched
activation: from every kept sample at >= ``min_ratio`` of the MEI, the ``n_samples`` most diverse (greedy
max-min in the distance space, starting from the most activating); without it, the last sample of each
of the first ``n_samples`` chains.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diversevis.core.checks import finite
from diversevis.core.errors import DiversevisError
from diversevis.core.network import Network
from diversevis.core.objectives import pairwise_rms_matrix
from diversevis.core.result import Result
from diversevis.methods.code_sampler import CodeProblem, GeneratorResult, history, sample_codes, start_codes
from diversevis.methods.dgn_am import _generator_result, _setup, generator_spec, settings_of
from diversevis.methods.exemplars import greedy_max_min
from diversevis.methods.generator_settings import PPGN

__all__ = ["ppgn"]

#: Codes rendered and evaluated per forward pass when scoring the kept samples.
BATCH = 64


def ppgn(
    model: Network | nn.Module | str,
    layer: str,
    unit: int,
    generator: Any = "default",
    n_samples: int = 6,
    *,
    chains: int | None = None,
    n_iter: int = PPGN.n_iter,
    lr: float = PPGN.lr,
    eps1: float | None = PPGN.eps1,
    eps2: float = PPGN.eps2,
    eps3: float = PPGN.eps3,
    every: int = PPGN.every,
    burn_in: int = PPGN.burn_in,
    init: str = PPGN.init,
    min_ratio: float | None = None,
    distance_layer: str | None = None,
    contrast: float = PPGN.contrast,
    norm: float | None = PPGN.norm,
    images: str | Path | None = None,
    seed: int = 0,
    mei: bool | float | Result = True,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> GeneratorResult:
    """``n_samples`` images that drive a unit, sampled by PPGN.

    Parameters
    ----------
    model, layer, unit
        The target unit (read at the centre of its receptive field).
    generator : ImageGenerator, str or path
        A trained generator with its code DAE (``"default"``: the cached preset).
    n_samples : int
        Images returned.
    chains : int, optional
        Parallel chains (default ``max(16, n_samples)``).
    n_iter, lr, eps1, eps2, eps3, every, burn_in, init
        The sampler (:mod:`diversevis.methods.generator_settings`): ``eps1`` weighs the DAE prior
        (default ``0.1 sigma^2``), ``eps2`` the unit, ``eps3`` the noise (per code element, in units of its
        natural spread); ``lr`` is the condition step in units of the codes' spread.
    min_ratio : float, optional
        Matched activation: choose the most diverse ``n_samples`` among the kept samples at >= this
        fraction of the MEI (e.g. the DFV set's floor). Fewer qualifying samples: the most activating
        others fill the set, ``extra["matched"]`` is ``False`` and a warning says so.
    distance_layer : str, optional
        The space of the pairwise distances (and of the max-min choice); ``None``: pixels.
    contrast, norm, images, seed, mei, device, progress
        As :func:`diversevis.dgn_am`.

    Returns
    -------
    GeneratorResult
        ``(n_samples, C, h, w)`` images the unit sees, activations, ratios, pairwise distances;
        ``generator_images`` the whole outputs; ``extra`` the pool size, how many met ``min_ratio`` and
        the chains' final ratios.
    """
    chains = max(16, int(n_samples)) if chains is None else chains
    s = PPGN.replace(
        chains=chains, n_iter=n_iter, lr=lr, lr_end=lr, eps1=eps1, eps2=eps2, eps3=eps3, every=every,
        burn_in=min(burn_in, n_iter), init=init, contrast=contrast, norm=norm, images=images, seed=seed,
    )  # fmt: skip
    n = _check_counts(n_samples, s.chains, min_ratio)
    cp, mei_res, mei_act = _setup(model, layer, unit, generator, s, distance_layer, mei, device)
    net, gen, prob = cp.prob.net, cp.generator, cp.prob
    if min_ratio is not None and mei_act is None:
        raise DiversevisError("min_ratio needs the MEI's activation: pass mei=True, a number or a Result")
    eps1_value = s.resolved_eps1(float(gen.dae_sigma), 0.1)
    trace = sample_codes(cp, start_codes(cp, s), s, eps1=eps1_value, progress=progress, desc="PPGN")
    pool = trace.samples if min_ratio is not None else trace.codes[:n]
    acts, feats = _score(cp, pool)
    labels = torch.arange(pool.shape[0]) % s.chains  # samples are kept chain by chain at each snapshot
    bar = None if min_ratio is None else min_ratio * mei_act
    pick, matched, eligible = _choose(acts, feats, n, bar, labels)
    with torch.no_grad():
        full, shown = cp.images(pool[pick].to(net.device))
    spec = prob.run_spec(
        "ppgn", contrast=s.contrast, norm=s.norm, images=s.images, seed=seed, **settings_of(s),
        eps1_resolved=eps1_value, n_samples=n, min_ratio=min_ratio, generator=generator_spec(gen),
        seconds=round(trace.seconds, 3),
    )  # fmt: skip
    final = trace.activations[-1]
    extra = {
        "pool": int(pool.shape[0]), "eligible": eligible, "matched": matched,
        "chosen_at_ratio": None if min_ratio is None else float(acts[pick].min() / mei_act),
        "chain_final_ratios": [float(a / mei_act) if mei_act else None for a in final],
    }  # fmt: skip
    dist = pairwise_rms_matrix(feats[pick].flatten(1))
    return _generator_result(
        shown, acts[pick], full, spec, mei_res, mei_act, cp, history(trace), dist, **extra
    )


def _check_counts(n_samples: Any, chains: int, min_ratio: Any) -> int:
    """``n_samples`` as an int in ``1..chains`` (without ``min_ratio``), ``min_ratio`` in ``(0, 2]``."""
    from diversevis.core.checks import integer

    n = integer("n_samples", n_samples, 1, 4096)
    if min_ratio is None and n > chains:
        raise DiversevisError(f"n_samples={n} needs at least as many chains (got chains={chains})")
    if min_ratio is not None:
        finite("min_ratio", min_ratio, 0.0, 2.0, open_lo=True)
    return n


@torch.no_grad()
def _score(cp: CodeProblem, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations ``(K,)`` and distance-space features ``(K, ...)`` of codes, on the CPU."""
    acts, feats = [], []
    for i in range(0, codes.shape[0], BATCH):
        _, shown = cp.images(codes[i : i + BATCH].to(cp.prob.net.device))
        a, f = cp.prob.evaluate(shown)
        acts.append(a.cpu())
        feats.append(f.cpu())
    return torch.cat(acts), torch.cat(feats)


def _choose(
    acts: torch.Tensor, feats: torch.Tensor, n: int, bar: float | None, chains: torch.Tensor | None = None
) -> tuple[list[int], bool, int]:
    """Indices of the chosen samples, whether ``n`` met the bar, and how many did.

    Without a bar: the first ``n``. With one: greedy max-min among the samples at >= ``bar`` (the most
    activating first). When fewer than ``n`` get there, the bar drops to the best activation of the
    ``n``-th best chain (``chains`` gives each sample's chain), so the set is still the most diverse one
    PPGN offers at its own highest common level, drawn from at least ``n`` chains; with no chain labels
    (or fewer chains than ``n``) the most activating samples fill the set.
    """
    if bar is None:
        return list(range(n)), True, n
    ok = torch.nonzero(acts >= bar).flatten()
    matched = len(ok) >= n
    if not matched:
        warnings.warn(
            f"only {len(ok)} of {len(acts)} PPGN samples reach the matched activation; the set is chosen at "
            "the highest level n chains reach (raise n_iter, chains or lr, or lower min_ratio)",
            RuntimeWarning,
            stacklevel=3,
        )
        if chains is None or int(chains.max()) + 1 < n:
            return [int(i) for i in torch.argsort(acts, descending=True)[:n]], False, len(ok)
        best = torch.full((int(chains.max()) + 1,), -torch.inf).scatter_reduce(0, chains, acts, "amax")
        ok = torch.nonzero(acts >= torch.sort(best, descending=True).values[n - 1]).flatten()
    start = int(acts[ok].argmax())
    pick = [int(ok[i]) for i in greedy_max_min(feats[ok].flatten(1), n, start=start)]
    return pick, matched, int((acts >= bar).sum())
