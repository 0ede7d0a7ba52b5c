"""The study from start to end: run (or reuse) every step, build the sections, write the report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from diversevis.core.cache import atomic_write_json, atomic_write_text
from diversevis.core.errors import DiversevisError
from diversevis.study.reproduce.config import _DEVICE, FLOOR, PRESETS, VGG_LAYERS, Preset, _preset_name
from diversevis.study.reproduce.render import Section, render_html, render_markdown
from diversevis.study.reproduce.sections import _sections
from diversevis.study.reproduce.steps import (
    _baselines,
    _cells,
    _matched_eff_layers,
    _prior,
    _reference,
    _Steps,
    _sweep,
    _tradeoff,
)

TITLE = "diversevis reproduction study"


def reproduce(
    out: str | Path,
    *,
    preset: str | Preset = "quick",
    seed: int = 0,
    prior_beta: float = 1e-4,
    progress: bool = True,
    log: Callable[[str], None] = print,
    device: str | None = None,
) -> Path:
    """Run the reproduction study and write ``report.md`` / ``report.html`` under ``out``.

    Parameters
    ----------
    out : str or Path
        Study directory (created; a rerun with the same preset and seed resumes it).
    preset : str or Preset
        ``quick`` (a few units, minutes on a CPU), ``standard`` or ``full`` (64 units per layer: a GPU
        job), or a :class:`Preset`.
    seed : int
    prior_beta : float
        Weight of the natural-image prior's NLL in the prior comparison.
    progress : bool
        Progress bars for the sweeps.
    log : callable
        Receives one line per step.
    device : str, optional
        Where the networks run (``"cuda"`` for the ``full`` preset); default: the CPU. The synthetic
        cells and the prior's training stay on the CPU.

    Returns
    -------
    Path
        The report's Markdown file.
    """
    token = _DEVICE.set(device)
    try:
        return _reproduce(out, preset, seed, prior_beta, progress, log)
    finally:
        _DEVICE.reset(token)


def _reproduce(out, preset, seed, prior_beta, progress, log) -> Path:
    name, p = _resolve_preset(preset)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"preset": asdict(p), "seed": seed, "prior_beta": prior_beta, "dfv": f"floor {FLOOR}, DI"}
    steps = _Steps(out, config)
    t_start = time.perf_counter()
    r = _run_steps(steps, out, p, seed, prior_beta, progress, log)
    sections = _sections(
        out, r["ref"], r["cells"], r["trade"], r["vgg"]["rows"], r["eff"]["rows"], r["eff_layers"],
        r["base"]["rows"], r["prior"],
    )  # fmt: skip
    total = time.perf_counter() - t_start
    compute, untimed = _compute_seconds(r)
    intro = _intro(name, p, seed, compute, total, sections, untimed=untimed)
    return _write_report(out, intro, sections, name, seed)


def _resolve_preset(preset: str | Preset) -> tuple[str, Preset]:
    """The preset's name as the report shows it, and the preset."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise DiversevisError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        return preset, PRESETS[preset]
    return _preset_name(preset), preset


def _run_steps(
    steps: _Steps, out: Path, p: Preset, seed: int, prior_beta: float, progress: bool, log
) -> dict:
    """Every step of the study in order (finished ones reused), by short name."""
    r: dict[str, Any] = {}
    r["ref"] = steps.run("reference", lambda: _reference(out, seed, max(p.max_iter, 2000)), log)
    r["cells"] = steps.run("cells", lambda: _cells(out, seed), log)
    r["trade"] = steps.run("tradeoff", lambda: _tradeoff(out, p.lambdas, seed, p.max_iter), log)
    r["vgg"] = steps.run(
        "sweep_vgg16-paper", lambda: _sweep(out, "vgg16-paper", VGG_LAYERS, p, seed, progress), log
    )
    eff_layers = steps.run("eff_layers", lambda: {"layers": _matched_eff_layers(VGG_LAYERS)}, log)["layers"]
    r["eff_layers"] = eff_layers
    r["eff"] = steps.run(
        "sweep_efficientnet-lite0",
        lambda: _sweep(out, "efficientnet-lite0", eff_layers, p, seed, progress),
        log,
    )
    r["base"] = steps.run("baselines", lambda: _baselines(out, p, r["vgg"]["rows"], seed), log)
    r["prior"] = steps.run("prior", lambda: _prior(out, seed, p.max_iter, prior_beta, p.prior_steps), log)
    return r


def _compute_seconds(results: dict[str, dict]) -> tuple[float, int]:
    """Computation behind the study's steps (s), and how many reused units carry no time.

    A step's own ``seconds`` is the wall time of the invocation that finished it; a resumed sweep or
    baseline step also reuses units earlier invocations computed, so its ``compute_seconds`` (summed
    over its units) counts instead where it has one.
    """
    steps = [v for v in results.values() if isinstance(v, dict)]  # (the matched layers are a list)
    total = sum(float(s.get("compute_seconds", s.get("seconds")) or 0) for s in steps)
    return total, sum(int(s.get("untimed_units", 0)) for s in steps)


def _machine() -> str:
    """``torch 2.13.0, 2 CPU threads`` or ``torch 2.13.0, CUDA: NVIDIA H100``: where the study ran."""
    where = (
        f"CUDA: {torch.cuda.get_device_name()}"
        if torch.cuda.is_available()
        else f"{torch.get_num_threads()} CPU threads"
    )
    return f"torch {torch.__version__}, {where}"


def _intro(
    name: str, p: Preset, seed: int, compute: float, total: float, sections: list[Section], untimed: int = 0
) -> list[str]:
    """The report's opening paragraphs: what is reproduced with what, the preset, the time, the verdicts."""
    return [
        "Reproduction of Cadena et al., *Diverse feature visualizations reveal invariances in early layers of "
        "deep neural networks* (ECCV 2018) with diversevis. The paper used a Gatys-normalised VGG-19 and "
        "ResNet-50, whose weights are not available offline here; this study uses `vgg16-paper` "
        "(ImageNet VGG-16, VALID padding, Gatys-normalised on the bundled photos) and `efficientnet-lite0` "
        "(an ImageNet residual network) instead, so it compares shapes and directions, not digits.",
        f"Preset `{name}`: {p.units} units per layer, {p.baseline_units} units per layer in the baseline "
        f"comparison, shift-test stride {p.shift_stride}, seed {seed}. The steps took {compute / 60:.1f} min "
        f"of computation in all ({_machine()}; sweeps and baselines summed over their units, whichever "
        f"invocation computed them{_untimed(untimed)}); this invocation {total / 60:.1f} min (it reuses "
        "finished steps and units).",
        *([] if name == "full" else [_not_full(p)]),
        "Verdicts: " + "; ".join(f"{s.title}: **{s.verdict}**" for s in sections if s.verdict) + ".",
    ]


def _untimed(n: int) -> str:
    """The caveat for baseline units reused from files written before units were timed."""
    return f"; {n} baseline units reused from untimed files are not counted" if n else ""


def _not_full(p: Preset) -> str:
    """What a smaller preset gives up against ``full``."""
    text = (
        "This is not the `full` preset (64 units per layer, 32 in the baseline comparison), which is a GPU "
        "job (`diversevis reproduce --preset full --device cuda`): fewer units make the per-layer fractions "
        "coarse."
    )
    if p.shift_stride > 1:
        text += (
            f" The shift test ran at stride {p.shift_stride}: it tests fewer crop offsets than the paper's "
            "stride 1, so its worst-crop ratios are upper bounds."
        )
    return text


def _write_report(out: Path, intro: list[str], sections: list[Section], name: str, seed: int) -> Path:
    """``report.md``, ``report.html`` and ``verdicts.json`` under ``out``; returns the Markdown file."""
    md = render_markdown(TITLE, intro, sections)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", render_html(TITLE, intro, sections))
    atomic_write_json(
        out / "verdicts.json",
        {s.title: s.verdict for s in sections if s.verdict} | {"preset": name, "seed": seed},
    )
    return out / "report.md"
