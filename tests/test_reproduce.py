"""The reproduction study's building blocks: unit classes, distances, resumable steps, the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from diversevis.core.errors import DiversevisError
from diversevis.study.reproduce import (
    Preset,
    Section,
    _pixel_min_distance,
    _Steps,
    classify_unit,
    holm_rejections,
    publish,
    render_html,
    render_markdown,
    reproduce,
)


def test_pixel_distance_is_zero_for_copies_and_sqrt2_for_orthogonal_images():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 8, 8))
    assert _pixel_min_distance(np.stack([a, a, -a])) == pytest.approx(0.0, abs=1e-12)
    # two zero-mean images with equal energy and no correlation are sqrt(2) contrasts apart
    x = np.zeros((2, 1, 2, 2))
    x[0, 0] = [[1, -1], [1, -1]]
    x[1, 0] = [[1, 1], [-1, -1]]
    assert _pixel_min_distance(x) == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize(
    ("metrics", "kind"),
    [
        ({"f1_f0": 0.05, "dfv_min_ratio": 0.97, "dfv_pixel_min_distance": 1.2}, "phase-invariant"),
        ({"f1_f0": 1.6, "dfv_min_ratio": 0.95, "dfv_pixel_min_distance": 0.9}, "deformation-invariant"),
        ({"f1_f0": 1.6, "dfv_min_ratio": 0.95, "dfv_pixel_min_distance": 0.1}, "selective"),  # copies
        ({"f1_f0": 1.6, "dfv_min_ratio": 0.6, "dfv_pixel_min_distance": 1.0}, "selective"),  # weak set
        ({"f1_f0": float("nan"), "dfv_min_ratio": 0.99}, "selective"),  # no grating response
        ({"f1_f0": 0.05, "dfv_min_ratio": 0.5}, "selective"),
    ],
)
def test_units_are_classified_by_phase_modulation_and_strong_diverse_sets(metrics, kind):
    assert classify_unit(metrics) == kind  # lambda-mode rows (no diversity index)


DRIVEN_COMPLEX = {"phase_label": "complex-like", "floor_holds": True}
DRIVEN_SIMPLE = {"phase_label": "simple-like", "floor_holds": True}
NOT_DRIVEN = {"phase_label": "gratings do not drive this unit", "floor_holds": True}


@pytest.mark.parametrize(
    ("metrics", "kind"),
    [
        ({**DRIVEN_COMPLEX, "f1_f0": 0.05, "di": 0.9}, "phase-invariant"),
        ({**DRIVEN_COMPLEX, "f1_f0": 0.05, "di": 0.2}, "selective"),  # flat gratings, but a narrow set
        ({**DRIVEN_SIMPLE, "f1_f0": 1.6, "di": 0.7}, "deformation-invariant"),
        ({**DRIVEN_SIMPLE, "f1_f0": 1.6, "di": 0.1}, "selective"),
        ({**NOT_DRIVEN, "f1_f0": 0.01, "di": 0.8}, "invariant, no grating verdict"),  # F1/F0 not trusted
        ({**NOT_DRIVEN, "f1_f0": 0.01, "di": 0.1}, "selective"),
        ({**DRIVEN_COMPLEX, "f1_f0": 0.05, "di": 0.9, "floor_holds": False}, "below the floor"),
    ],
)
def test_floor_mode_units_are_classified_by_the_diversity_index_and_driven_gratings(metrics, kind):
    assert classify_unit(metrics) == kind


def test_finished_steps_are_reused_and_other_settings_recompute(tmp_path):
    calls = []

    def step():
        calls.append(1)
        return {"value": len(calls)}

    first = _Steps(tmp_path, {"seed": 0}).run("a", step, log=lambda s: None)
    again = _Steps(tmp_path, {"seed": 0}).run("a", step, log=lambda s: None)
    assert first["value"] == again["value"] == 1 and len(calls) == 1
    other = _Steps(tmp_path, {"seed": 1}).run("a", step, log=lambda s: None)
    assert other["value"] == 2
    saved = json.loads((tmp_path / "steps" / "a.json").read_text())
    assert saved["config"] == {"seed": 1} and not list((tmp_path / "steps").glob("*.tmp*"))
    # configs holding tuples (a preset's lambdas) read back as lists and still match
    _Steps(tmp_path, {"lambdas": (0.0, 0.1)}).run("b", step, log=lambda s: None)
    _Steps(tmp_path, {"lambdas": (0.0, 0.1)}).run("b", step, log=lambda s: None)
    assert len(calls) == 3


def test_report_renders_tables_verdicts_and_figures_in_markdown_and_html():
    s = Section("Claim (x)", verdict="partly reproduced", paragraphs=["a **bold** `code` <tag>"])
    s.tables.append((["k", "v"], [["x", 0.123456], ["y", None]]))
    s.figures.append(("figures/f.png", "a figure"))
    md = render_markdown("T", ["intro"], [s])
    assert "**Verdict: partly reproduced.**" in md and "| x | 0.123 |" in md and "| y | - |" in md
    assert "![a figure](figures/f.png)" in md
    html = render_html("T", ["intro"], [s])
    assert 'class="verdict partly"' in html and "<b>bold</b>" in html and "<code>code</code>" in html
    assert "&lt;tag&gt;" in html and '<img src="figures/f.png"' in html


def test_unknown_preset_names_the_choices(tmp_path):
    with pytest.raises(DiversevisError, match="quick, standard, full"):
        reproduce(tmp_path, preset="huge")


@pytest.mark.slow
def test_a_tiny_study_runs_every_step_and_a_rerun_reuses_them(tmp_path):
    tiny = Preset(1, 1, ("conv2_1",), 12, (0.0, 1.0), 64, max_iter=20, prior_steps=10)
    reproduce(tmp_path, preset=tiny, progress=False)
    verdicts = json.loads((tmp_path / "verdicts.json").read_text())
    assert sum(k.startswith("Claim") for k in verdicts) == 3
    md = (tmp_path / "report.md").read_text()
    assert "Natural-image prior" in md and (tmp_path / "report.html").is_file()
    for fig in (tmp_path / "figures").glob("*.png"):
        assert fig.stat().st_size > 1000
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "steps").glob("*.json")}
    reproduce(tmp_path, preset=tiny, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "steps").glob("*.json")} == stamps


def test_publish_copies_the_linked_figures_and_rewrites_the_links(tmp_path):
    study = tmp_path / "study"
    (study / "figures").mkdir(parents=True)
    (study / "figures" / "a.png").write_bytes(b"png-a")
    (study / "sweeps" / "u1").mkdir(parents=True)
    (study / "sweeps" / "u1" / "grid.png").write_bytes(b"png-b")
    (study / "unlinked.png").write_bytes(b"x")
    (study / "report.md").write_text("# T\n\n![A](figures/a.png)\n\n![B](sweeps/u1/grid.png)\n")
    dest = tmp_path / "docs" / "reproduction.md"
    (tmp_path / "docs" / "reproduction").mkdir(parents=True)
    (tmp_path / "docs" / "reproduction" / "stale.png").write_bytes(b"old")
    assert publish(study, dest) == dest
    md = dest.read_text()
    assert "![A](reproduction/figures/a.png)" in md and "![B](reproduction/sweeps/u1/grid.png)" in md
    pub = tmp_path / "docs" / "reproduction"
    assert sorted(str(p.relative_to(pub)) for p in pub.rglob("*.png")) == [
        "figures/a.png",
        "sweeps/u1/grid.png",
    ]
    (study / "figures" / "a.png").unlink()
    with pytest.raises(DiversevisError, match="missing: figures/a.png"):
        publish(study, dest)
    with pytest.raises(DiversevisError, match="no report.md"):
        publish(tmp_path / "nowhere", dest)


def test_holm_rejects_step_down_until_the_first_p_above_its_threshold():
    # m = 4: thresholds 0.0125, 0.0167, 0.025, 0.05
    assert holm_rejections([0.01, 0.04, 0.03, 0.005]) == 2  # 0.005, 0.01 pass; 0.03 > 0.025 stops
    assert holm_rejections([0.001, 0.002, 0.003, 0.004]) == 4
    assert holm_rejections([0.03, 0.5]) == 0  # 0.03 > 0.05 / 2
    assert holm_rejections([0.02, 0.5]) == 1 and holm_rejections([]) == 0


def test_cli_overrides_are_validated_and_named_in_the_study(tmp_path, capsys, monkeypatch):
    from diversevis.cli import main

    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--out", str(tmp_path), "--units", "0"])
    assert e.value.code == 2 and "--units" in capsys.readouterr().err
    seen = {}

    def fake(out, *, preset, **kw):  # record what the CLI asks for, without running the study
        seen.update(preset=preset, **kw)
        (tmp_path / "report.md").write_text("# T\n")
        (tmp_path / "verdicts.json").write_text("{}")
        return tmp_path / "report.md"

    monkeypatch.setattr("diversevis.study.reproduce.reproduce", fake)
    assert (
        main(["reproduce", "--out", str(tmp_path), "--quick", "--units", "8", "--device", "cpu", "-q"]) == 0
    )
    assert seen["preset"].units == 8 and seen["preset"].baseline_units == 2 and seen["device"] == "cpu"
    from diversevis.study.reproduce import _preset_name

    assert _preset_name(seen["preset"]) == "quick (units=8)"


def test_computation_time_counts_units_that_earlier_resumed_invocations_computed():
    from diversevis.study.reproduce.run import _compute_seconds

    results = {
        "ref": {"seconds": 60.0},  # a step finished in one go: its wall time
        "vgg": {"rows": [], "seconds": 5.0, "compute_seconds": 7200.0},  # resumed: its units' own times
        "base": {"rows": [], "seconds": 1.0, "compute_seconds": 300.0, "untimed_units": 3},
        "eff_layers": ["stem"],
    }
    assert _compute_seconds(results) == (7560.0, 3)
