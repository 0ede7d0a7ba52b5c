"""Invariance metrics of a diverse set, and DFV against the baselines (method.md A.11, B.4).

For any set of images of one unit, in one distance space (pixels or a lower layer's rectified features,
exactly as :func:`diversevis.diverse` measures them):

* activation ratios to the unit's MEI (mean and worst);
* min and mean pairwise RMS distance;
* participation ratio of the set's features, ``(sum l)^2 / sum l^2`` over the eigenvalues ``l`` of their
  covariance: the effective number of dimensions the set spans (1 for a line, 2 for a circle, up to N-1).

:func:`compare_baselines` runs DFV and three baselines at matched settings (same network, unit,
contrast, number of images and seed):

* ``restarts``: N independent MEIs (no diversity term, same initial images as DFV);
* ``gram``: Lucid's Gram-cosine diversity, its weight tuned by bisection until the set's mean activation
  matches DFV's;
* ``natural``: the most activating natural patches (at the same contrast), a greedy max-min diverse
  subset of the top k;
* ``ppgn`` (with ``ppgn=``): Plug & Play Generative Network samples (:func:`diversevis.ppgn`) through a
  trained generator, the most diverse of those at >= DFV's min ratio (matched activation): the sampling
  baseline of the paper's claim (iii).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diversevis.core.cache import atomic_write_bytes, atomic_write_json, atomic_write_text, output_dir
from diversevis.core.network import Network
from diversevis.core.objectives import pairwise_rms_matrix
from diversevis.core.result import Result, image_grid, png_html
from diversevis.methods.dfv import Problem, _common_spec, _prepare, diverse, mei
from diversevis.methods.diversity_index import calibrate, calibration_floor, set_distances
from diversevis.methods.settings import DiverseSettings

__all__ = ["participation_ratio", "set_metrics", "gram_matched", "Comparison", "compare_baselines"]


def participation_ratio(features: torch.Tensor) -> float:
    """Effective dimensionality ``(sum l)^2 / sum l^2`` of a set of feature vectors.

    Parameters
    ----------
    features : torch.Tensor
        ``(N, D)`` (or ``(N, ...)``, flattened) features of N images.

    Returns
    -------
    float
        In ``[1, N - 1]`` for a non-degenerate set; ``0`` if all vectors are equal.
    """
    f = features.detach().flatten(1).double()
    f = f - f.mean(0, keepdim=True)
    lam = torch.linalg.eigvalsh(f @ f.T).clamp_min(0)  # same non-zero spectrum as the covariance
    s = float(lam.sum())
    if s <= 0:
        return 0.0
    return s * s / float((lam * lam).sum())


def set_metrics(
    activations: torch.Tensor, features: torch.Tensor, mei_activation: float | None
) -> dict[str, float | None]:
    """Ratios, distances and participation ratio of one set of images.

    Parameters
    ----------
    activations : torch.Tensor
        ``(N,)`` target values.
    features : torch.Tensor
        ``(N, ...)`` features in the distance space.
    mei_activation : float, optional
        For the ratios.
    """
    d = pairwise_rms_matrix(features.detach().flatten(1).float())
    n = d.shape[0]
    iu = torch.triu_indices(n, n, 1)
    pair = d[iu[0], iu[1]]
    ratio = None if not mei_activation else activations / mei_activation
    return {
        "n": n,
        "mean_activation": float(activations.mean()),
        "mean_ratio": None if ratio is None else float(ratio.mean()),
        "min_ratio": None if ratio is None else float(ratio.min()),
        "min_distance": float(pair.min()) if n > 1 else math.nan,
        "mean_distance": float(pair.mean()) if n > 1 else math.nan,
        "participation_ratio": participation_ratio(features),
    }


def gram_matched(
    model: Network | nn.Module | str,
    layer: str,
    unit: int,
    target_mean_ratio: float,
    mei_activation: float,
    *,
    distance_layer: str,
    n_images: int = 6,
    tol: float = 0.01,
    max_trials: int = 8,
    **kwargs,
) -> tuple[Result, float]:
    """Lucid's Gram-cosine diversity with its weight tuned so the set's mean activation matches a target.

    The Gram diversity is bounded (in ``[-1, 1]``), so its weight is searched in units of the MEI
    activation, by bisection in log space between ``1e-3`` and ``30`` times the MEI.

    Returns
    -------
    (Result, float)
        The set closest to the target mean ratio, and its weight lambda.
    """
    lo, hi = math.log(1e-3 * mei_activation), math.log(30 * mei_activation)
    best: tuple[float, Result, float] | None = None
    for _ in range(max_trials):
        lam = math.exp((lo + hi) / 2)
        res = diverse(
            model,
            layer,
            unit,
            n_images=n_images,
            diversity=lam,
            distance="gram",
            distance_layer=distance_layer,
            mei=mei_activation,
            **kwargs,
        )
        ratio = float(res.ratios.mean())
        gap = abs(ratio - target_mean_ratio)
        if best is None or gap < best[0]:
            best = (gap, res, lam)
        if gap <= tol:
            break
        if ratio > target_mean_ratio:
            lo = math.log(lam)  # still too strong an activation: more diversity weight
        else:
            hi = math.log(lam)
    return best[1], best[2]


@dataclass
class Comparison:
    """DFV against the baselines for one unit.

    Attributes
    ----------
    rows : list of dict
        One row per method: ``method`` plus :func:`set_metrics` values.
    sets : dict
        Method -> :class:`~diversevis.result.Result` with its images.
    mei_activation : float
    spec : dict
    """

    rows: list[dict[str, Any]]
    sets: dict[str, Result]
    mei_activation: float
    spec: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self, method: str) -> dict[str, Any]:
        """The metrics row of one method."""
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(method)

    def gaps(self) -> dict[str, float | None]:
        """DFV's min distance divided by each baseline's (> 1: DFV finds a more diverse set)."""
        dfv = self.row("dfv")["min_distance"]
        out = {}
        for r in self.rows:
            if r["method"] != "dfv":
                out[r["method"]] = dfv / r["min_distance"] if r["min_distance"] else None
        return out

    def markdown(self) -> str:
        """The table as Markdown."""
        head = (
            "| method | mean ratio | min ratio | min distance | mean distance | participation ratio | DI | "
            "DI (layer) |\n|---|---|---|---|---|---|---|---|\n"
        )
        lines = []
        for r in self.rows:
            lines.append(
                f"| {r['method']} | {_f(r['mean_ratio'])} | {_f(r['min_ratio'])} "
                f"| {_f(r['min_distance'], 4)} | {_f(r['mean_distance'], 4)} | {_f(r['participation_ratio'], 2)} "
                f"| {_f(r.get('di'), 2)} | {_f(r.get('di_feature'), 2)} |"
            )
        space = self.spec.get("distance_layer") or "pixels"
        return (
            f"Distances: RMS in {space}. MEI activation {self.mei_activation:.4g}.\n\n"
            + head
            + "\n".join(lines)
            + "\n"
        )

    def __repr__(self) -> str:
        return (
            f"Comparison({self.spec.get('model')} {self.spec.get('layer')} unit={self.spec.get('unit')})\n"
            + (self.markdown())
        )

    def figure(self) -> bytes:
        """PNG: one labelled row of images per method."""
        from PIL import Image, ImageDraw, ImageFont

        font = ImageFont.load_default(size=14)
        rows = []
        for name, res in self.sets.items():
            r = res.ratios
            labels = [
                f"{float(a):.3g}" + ("" if r is None else f" ({float(r[i]):.0%})")
                for i, a in enumerate(res.activations)
            ]
            m = self.row(name)
            title = f"{name}: min dist {_f(m['min_distance'], 3)}, PR {_f(m['participation_ratio'], 2)}"
            rows.append(Image.open(io.BytesIO(image_grid(res.images, labels, title=title))))
        head = f"{self.spec.get('model')} {self.spec.get('layer')} unit {self.spec.get('unit')}"
        w = max(im.width for im in rows)
        h = sum(im.height for im in rows) + 28
        canvas = Image.new("RGB", (w, h), "white")
        ImageDraw.Draw(canvas).text((8, 6), head, fill=(0, 0, 0), font=font)
        y = 28
        for im in rows:
            canvas.paste(im, (0, y))
            y += im.height
        buf = io.BytesIO()
        canvas.save(buf, format="PNG")
        return buf.getvalue()

    def _repr_png_(self) -> bytes:
        """Jupyter: the comparison shows itself as its figure (one row of images per method)."""
        return self.figure()

    def _repr_html_(self) -> str:
        """Jupyter: the table (as text) above the figure (inline PNG)."""
        return png_html(self.figure(), self.markdown())

    def save(self, directory: str | Path) -> Path:
        """Write ``comparison.png``, ``comparison.md``, ``sets.npz`` and ``comparison.json`` (last)."""
        out = output_dir(directory)
        atomic_write_bytes(out / "comparison.png", self.figure())
        atomic_write_text(out / "comparison.md", self.markdown())
        buf = io.BytesIO()
        arrays = {}
        for name, res in self.sets.items():
            arrays[f"{name}_images"] = res.images.detach().cpu().numpy()
            arrays[f"{name}_activations"] = res.activations.detach().cpu().numpy()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(out / "sets.npz", buf.getvalue())
        atomic_write_json(
            out / "comparison.json",
            {
                "spec": self.spec,
                "mei_activation": self.mei_activation,
                "rows": self.rows,
                "gaps": self.gaps(),
                **self.extra,
            },
        )
        return out


def _f(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def compare_baselines(
    model: Network | nn.Module | str,
    layer: str,
    unit: int,
    *,
    n_images: int = 6,
    diversity: float = 0.01,
    distance_layer: str | None = None,
    contrast: float = 0.5,
    norm: float | None = None,
    seed: int = 0,
    max_iter: int = 1000,
    natural: bool = True,
    exemplar_candidates: int = 8192,
    exemplar_k: int = 64,
    gram: bool = True,
    floor: float | None = None,
    ppgn: Any = None,
    images: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Comparison:
    """DFV against random restarts, Gram-cosine diversity and natural exemplars, at matched settings.

    Parameters
    ----------
    model, layer, unit
        The target unit.
    n_images, diversity, distance_layer, contrast, norm, seed, max_iter
        DFV settings (:func:`diversevis.diverse`); the baselines use the same ones.
    natural : bool
        Include the natural-exemplar baseline (needs an RGB network).
    exemplar_candidates, exemplar_k : int
        Natural patches sampled, and how many of the most activating form the pool for the greedy
        max-min subset.
    gram : bool
        Include the Gram-cosine baseline (needs a ``distance_layer`` with spatial maps; several DFV runs
        for the bisection).
    floor : float, optional
        Run DFV in floor mode (every image at >= ``floor`` x MEI) instead of with weight ``diversity``.
    ppgn : ImageGenerator, str, path or True, optional
        Add the PPGN baseline with this generator (``True``: the cached ``"default"``; ``None``: skip). Its
        samples are chosen at >= DFV's min ratio (matched activation); ``extra["ppgn_matched"]`` says
        whether enough samples got there.

    Every set also gets the calibrated diversity index (``di``, ``di_min``; ``di_feature``... with a
    distance layer) from one calibration at DFV's floor (lambda mode: DFV's rounded min ratio), so the
    index of a set below that activation (natural exemplars) flatters it: read it with its ratios.

    Returns
    -------
    Comparison
        Metrics table (all distances in the same space), the image sets and the run spec.
    """
    net = _prepare(model, device)
    common = dict(
        contrast=contrast, norm=norm, seed=seed, max_iter=max_iter, images=images, progress=progress
    )
    m = mei(net, layer, unit, **common)
    mei_act = m.mei_activation
    prob = Problem.build(
        net,
        layer,
        unit,
        None,
        "max",
        contrast=contrast,
        norm=m.spec["norm"],
        distance_layer=distance_layer,
        images_folder=images,
    )
    sets: dict[str, Result] = {}
    common["calibrate"] = False  # one calibration for every set, below
    sets["dfv"] = diverse(
        net,
        layer,
        unit,
        n_images=n_images,
        diversity=diversity,
        floor=floor,
        distance_layer=distance_layer,
        mei=m,
        **common,
    )
    sets["restarts"] = diverse(
        net, layer, unit, n_images=n_images, diversity=0.0, distance_layer=distance_layer, mei=m, **common
    )
    extra: dict[str, Any] = {}
    if gram and distance_layer is not None:
        target = float(sets["dfv"].ratios.mean())
        sets["gram"], lam = gram_matched(
            net, layer, unit, target, mei_act, distance_layer=distance_layer, n_images=n_images, **common
        )
        extra["gram_lambda"] = lam
    if natural and net.in_channels == 3:
        sets["natural"], extra["natural_top1_ratio"] = _natural_set(
            net, layer, unit, m, n_images, distance_layer, exemplar_k, exemplar_candidates, images, seed
        )
    if ppgn is not None and ppgn is not False:
        sets["ppgn"] = _ppgn_set(net, layer, unit, ppgn, m, sets["dfv"], n_images, distance_layer, common)
        extra["ppgn_matched"] = sets["ppgn"].extra.get("matched")
        extra["ppgn_eligible"] = sets["ppgn"].extra.get("eligible")
        extra["ppgn_spec"] = sets["ppgn"].spec
    settings = DiverseSettings(
        n_images=n_images, distance_layer=distance_layer, seed=seed, max_iter=max_iter, floor=floor
    )
    cal_floor = calibration_floor(float(sets["dfv"].ratios.min()), floor)
    cal = calibrate(prob, settings, cal_floor, progress=progress)
    rows = [{"method": name, **_set_row(prob, res, mei_act, cal)} for name, res in sets.items()]
    extra["di_calibration"] = cal.as_dict()
    spec = _common_spec(
        method="compare_baselines",
        **prob.spec(),
        n_images=n_images,
        diversity=None if floor is not None else diversity,
        floor=floor,
        contrast=contrast if norm is None else None,
        seed=seed,
        max_iter=max_iter,
        exemplar_candidates=exemplar_candidates if natural else None,
        exemplar_k=exemplar_k if natural else None,
        device=str(net.device),
    )
    return Comparison(rows=rows, sets=sets, mei_activation=mei_act, spec=spec, extra=extra)


def _natural_set(
    net: Network, layer: str, unit: int, m: Result, n_images: int, distance_layer: str | None,
    k: int, candidates: int, images: str | Path | None, seed: int,
) -> tuple[Result, float]:  # fmt: skip
    """The natural-exemplar baseline at the MEI's norm: a max-min subset of the top ``k`` of
    ``candidates`` patches, and the best patch's activation relative to the MEI."""
    from diversevis.methods.exemplars import diverse_exemplars, top_patches

    top = top_patches(
        net, layer, unit, k=k, candidates=candidates, norm=m.spec["norm"], images=images, seed=seed
    )
    sub = diverse_exemplars(top, n_images, distance_layer=distance_layer)
    return sub.as_result(mei_activation=m.mei_activation), float(top.activations[0]) / m.mei_activation


def _ppgn_set(
    net: Network, layer: str, unit: int, generator: Any, m: Result, dfv: Result, n_images: int,
    distance_layer: str | None, common: dict[str, Any],
) -> Result:  # fmt: skip
    """The PPGN baseline: the most diverse ``n_images`` samples at >= the DFV set's min ratio."""
    import warnings

    from diversevis.methods.ppgn import ppgn

    with warnings.catch_warnings():  # an unmatched set is recorded in the comparison's extra instead
        warnings.simplefilter("ignore", RuntimeWarning)
        return ppgn(
            net, layer, unit, "default" if generator is True else generator, n_images,
            min_ratio=float(dfv.ratios.min()), distance_layer=distance_layer, contrast=common["contrast"],
            norm=m.spec["norm"], images=common["images"], seed=common["seed"], mei=m,
            progress=common["progress"],
        )  # fmt: skip


def _set_row(prob: Problem, res: Result, mei_act: float, cal) -> dict[str, Any]:
    """One set's metrics (:func:`set_metrics`) and calibrated diversity index, in the problem's space."""
    with torch.no_grad():
        acts, feats = prob.evaluate(res.images.to(prob.net.device))
    feats = feats.cpu()
    index = cal.index(set_distances(res.images, feats if prob.distance_layer is not None else None))
    return {**set_metrics(acts.cpu(), feats, mei_act), **index}
