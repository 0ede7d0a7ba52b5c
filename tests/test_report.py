"""``diversevis report``: a static HTML report of a sweep store, checked as files and in headless Chromium.

One tiny real sweep (vgg16-paper conv1_1, units 0-3, 30 iterations, DFV + phase test; a few seconds) is
shared by the module. Tests that change a store work on a copy. The browser test drives the Debian
Chromium at /usr/bin/chromium with Playwright (``pip install playwright``; no ``playwright install``); where
either is missing it is skipped with a reason, except under CI (``CI`` set, e.g. ``CI=true``), where it fails.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

import diversevis as dv
from diversevis.cli import main
from diversevis.study.report import write_report
from diversevis.study.store import Store
from diversevis.study.sweep import sweep

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
UNITS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def store(vgg16_paper, tmp_path_factory) -> Path:
    """A small finished sweep (never modified: copy it first)."""
    out = tmp_path_factory.mktemp("report") / "sweep"
    sweep(vgg16_paper, ["conv1_1"], "0-3", out=out, max_iter=30, tests=("dfv", "phase"), progress=False)
    return out


@pytest.fixture(scope="module")
def report(store) -> Path:
    """The report of ``store`` at its default place, ``store/report/index.html``."""
    return write_report(store)


class _Refs(HTMLParser):
    """Collects ``src`` and ``href`` attributes and ``<img>`` sources of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key):
                self.refs.append(a[key])
        if tag == "img":
            self.imgs.append(a.get("src") or "")


def _refs(page: Path) -> _Refs:
    p = _Refs()
    p.feed(page.read_text(encoding="utf-8"))
    return p


def _copy(store: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "sweep"
    shutil.copytree(store, dst, ignore=shutil.ignore_patterns("report"))
    return dst


# ------------------------------------------------------------------------------------------ files
def test_templates_ship_as_package_data():
    templates = resources.files("diversevis.study.report").joinpath("templates")
    names = {t.name for t in templates.iterdir()}
    assert {"base.html.j2", "index.html.j2", "layer.html.j2", "unit.html.j2"} <= names


def test_report_pages_reference_the_stores_pngs_by_relative_paths(store, report):
    assert report == (store / "report" / "index.html").resolve()
    out = report.parent
    pages = sorted(out.glob("*.html"))
    assert {p.name for p in pages} == {
        "index.html",
        "layer-conv1_1.html",
        *(f"unit-conv1_1-u{u}.html" for u in UNITS),
    }
    for metric in ("dfv_mean_ratio", "dfv_min_distance", "f1_f0"):
        assert (out / "hist" / f"conv1_1-{metric}.png").is_file()
    assert not (out / "hist" / "conv1_1-shift_min_ratio.png").exists()  # no shift test in this sweep
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert str(store.resolve()) not in html and "file:" not in html
        parsed = _refs(page)
        for ref in parsed.refs:
            url = urlparse(ref)
            assert not url.scheme and not url.netloc, f"{page.name}: non-relative reference {ref!r}"
            target = out / unquote(url.path)
            assert target.exists(), f"{page.name}: {ref!r} points nowhere"
        assert all(src.endswith(".png") for src in parsed.imgs)
    index = report.read_text(encoding="utf-8")
    assert len(re.findall(r'<tr data-layer="conv1_1"', index)) == len(UNITS)
    assert "vgg16-paper" in index and "missing files (" not in index and 'class="missing"' not in index
    unit = (out / "unit-conv1_1-u2.html").read_text(encoding="utf-8")
    imgs = _refs(out / "unit-conv1_1-u2.html").imgs
    assert [Path(s).parent.name + "/" + Path(s).name for s in imgs] == [
        "mei/grid.png",
        "diverse/grid.png",
        "phase/phase.png",
    ]
    assert "f1_f0" in unit and "dfv_min_distance" in unit and "Run spec: diverse" in unit
    assert not list(out.rglob("*.tmp")), "no half-written files"


def test_report_elsewhere_and_escaping(store, tmp_path):
    src = _copy(store, tmp_path)
    with Store(src) as s:
        settings = s.get_meta("settings")
        s.set_meta("settings", {**settings, "note": "<script>alert(1)</script>"})
    index = write_report(src, tmp_path / "elsewhere" / "rep")
    html = index.read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    for ref in _refs(index).imgs:
        assert not Path(ref).is_absolute() and (index.parent / unquote(ref)).is_file()
    assert any(
        r.startswith("../../sweep/conv1_1/u0/") for r in _refs(index.parent / "unit-conv1_1-u0.html").imgs
    )


def test_a_missing_png_is_shown_as_a_marker_not_a_broken_image(store, tmp_path):
    src = _copy(store, tmp_path)
    (src / "conv1_1" / "u1" / "diverse" / "grid.png").unlink()
    (src / "conv1_1" / "u2" / "phase" / "phase.png").write_bytes(b"")  # empty: as bad as missing
    out = write_report(src).parent
    page = (out / "unit-conv1_1-u1.html").read_text(encoding="utf-8")
    assert "missing files" in page and 'aria-label="missing file diverse/grid.png"' in page
    assert not any(s.endswith("u1/diverse/grid.png") for s in _refs(out / "unit-conv1_1-u1.html").imgs)
    assert any(s.endswith("u1/mei/grid.png") for s in _refs(out / "unit-conv1_1-u1.html").imgs)
    assert 'aria-label="missing file phase/phase.png"' in (out / "unit-conv1_1-u2.html").read_text()
    index = (out / "index.html").read_text(encoding="utf-8")
    assert index.count("missing files (1)") == 2  # the badges of u1 and u2 in the units table
    layer = (out / "layer-conv1_1.html").read_text(encoding="utf-8")
    assert 'aria-label="missing file diverse/grid.png"' in layer  # the gallery card of u1
    assert 'class="missing"' not in (out / "unit-conv1_1-u0.html").read_text(encoding="utf-8")


def test_the_report_shows_the_diversity_index_and_phase_labels(report):
    index = report.read_text(encoding="utf-8")
    assert 'data-key="di"' in index and "diversity index (pixels)" in index
    assert "of units gratings drive" in index and "not driven by gratings" in index
    assert "F1/F0 (phase modulation), units gratings drive" in index  # the histogram counts those only


def test_the_layer_summary_counts_sets_whose_png_falls_below_the_floor(store, tmp_path, vgg16_paper):
    """The PNG's activations are re-measured here (clip to [0, 1], 8 bit); then one set is made to fail."""
    import json

    import numpy as np
    import torch

    rows = {r["unit"]: r for r in Store(store).rows()}
    below = {}
    for u, row in rows.items():
        x = torch.from_numpy(np.load(store / row["path"] / "diverse" / "images.npz")["images"]).float()
        shown = (x.clamp(0, 1) * 255).round() / 255
        with torch.no_grad():
            a = vgg16_paper.activations(shown, ["conv1_1"])["conv1_1"][:, u, 0, 0]
        below[u] = float(a.min()) / row["metrics"]["mei_activation"] < 0.85 - 0.005
    index = write_report(store, tmp_path / "r1").read_text(encoding="utf-8")
    assert f"PNG below the floor (clipped to [0, 1])</dt><dd>{sum(below.values())} of 4" in index
    dst = _copy(store, tmp_path)
    u = next(u for u, b in below.items() if not b)
    result = dst / rows[u]["path"] / "diverse" / "result.json"
    rec = json.loads(result.read_text())
    rec["metrics"]["shown_activations"][2] = (
        0.5 * rows[u]["metrics"]["mei_activation"]
    )  # a PNG at half the MEI
    result.write_text(json.dumps(rec))
    out = write_report(dst, tmp_path / "r2")
    text = out.read_text(encoding="utf-8")
    assert f"{sum(below.values()) + 1} of 4 (median PNG min ratio" in text and "--display-range" in text
    page = (out.parent / f"unit-conv1_1-u{u}.html").read_text(encoding="utf-8")
    assert "png_below_floor" in page and "png_min_ratio" in page


def test_a_failed_unit_is_shown_with_its_reason_not_as_missing_files(store, tmp_path):
    src = _copy(store, tmp_path)
    reason = "non-finite loss at iteration 3 (a NaN weight in the model?)"
    with Store(src) as st:
        st.record("conv1_1", 9, {"failed": reason}, {"failed": reason}, 0.1)
    out = write_report(src).parent
    page = (out / "unit-conv1_1-u9.html").read_text(encoding="utf-8")
    assert "failed:" in page and reason in page and "missing files" not in page
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "<b>1</b>failed (not computed)" in index and "<b>0</b>with missing files" in index
    assert "<dt>failed (not computed)</dt><dd>1 of 5</dd>" in index  # the layer summary


def test_bad_directories_give_clear_errors(tmp_path):
    with pytest.raises(dv.DiversevisError, match="does not exist"):
        write_report(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(dv.DiversevisError, match="not a diversevis results directory"):
        write_report(tmp_path / "plain")
    (tmp_path / "file").write_text("x")
    with pytest.raises(dv.DiversevisError, match="is a file"):
        write_report(tmp_path / "file")
    Store(tmp_path / "empty", create=True).close()
    with pytest.raises(dv.DiversevisError, match="no finished units"):
        write_report(tmp_path / "empty")
    assert not (tmp_path / "empty" / "report").exists()


def test_cli_report_prints_the_index_path_and_exits_2_on_bad_dirs(store, tmp_path, capsys):
    src = _copy(store, tmp_path)
    assert main(["report", str(src), "--out", str(tmp_path / "rep")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str((tmp_path / "rep" / "index.html").resolve()) and err == ""
    assert main(["report", str(tmp_path / "nope")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("diversevis: error: ") and "does not exist" in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------- browser
_WAIT_FOR_IMAGES = """async () => {
    const imgs = Array.from(document.images);
    imgs.forEach(i => { i.loading = "eager"; });  // load the gallery's lazy images too
    await Promise.all(imgs.map(i => i.complete && i.naturalWidth > 0 ? null :
        new Promise(r => { i.addEventListener("load", r); i.addEventListener("error", r); })));
    return imgs.map(i => [i.getAttribute("src"), i.naturalWidth]);
}"""


def _images_load(page) -> int:
    imgs = page.evaluate(_WAIT_FOR_IMAGES)
    broken = [src for src, w in imgs if not w > 0]
    assert not broken, f"broken images on {page.url}: {broken}"
    return len(imgs)


def _column(page, key: str) -> list[float]:
    i = page.eval_on_selector(f'#units th[data-key="{key}"]', "th => th.cellIndex")
    return page.eval_on_selector_all(
        "#units tbody tr", f"rows => rows.map(r => parseFloat(r.cells[{i}].dataset.sort))"
    )


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _browser_missing() -> str | None:
    """Why the browser test cannot run here (None: it can)."""
    if not CHROMIUM.exists():
        return f"needs Chromium at {CHROMIUM}: install chromium (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "needs the playwright package: install it (pip install playwright)"
    return None


def _skip_or_fail_without_browser() -> None:
    """Skip where Chromium or Playwright is missing, but fail under CI: there the test must run."""
    why = _browser_missing()
    if why is None:
        return
    if _in_ci():
        pytest.fail(f"CI is set but the browser test cannot run: {why}", pytrace=False)
    pytest.skip(why)


def test_missing_chromium_skips_outside_ci_and_fails_under_ci(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install chromium"):
        _skip_or_fail_without_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install chromium"):
        _skip_or_fail_without_browser()


@pytest.mark.timeout(120)
def test_report_in_headless_chromium(report):
    _skip_or_fail_without_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            errors: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.as_uri())

            assert page.locator("#units tbody tr").count() == len(UNITS)
            assert _images_load(page) == 4  # the four histograms (DI, DFV ratio and distance, F1/F0)
            # click-to-sort on a numeric column: ascending, then descending; rows move as a whole
            before = dict(zip(_column(page, "unit"), _column(page, "mei_activation")))
            assert len(set(before.values())) == len(UNITS)
            th = page.locator('#units th[data-key="mei_activation"]')
            th.click()
            asc = _column(page, "mei_activation")
            assert asc == sorted(before.values()) and th.get_attribute("aria-sort") == "ascending"
            assert dict(zip(_column(page, "unit"), asc)) == before
            th.click()
            assert _column(page, "mei_activation") == sorted(before.values(), reverse=True)
            assert th.get_attribute("aria-sort") == "descending"
            assert page.locator("#units th[aria-sort]").count() == 1

            # a unit link opens its detail page, whose images load
            first = int(_column(page, "unit")[0])
            page.locator("#units tbody tr").first.locator("a.unit-link").click()
            page.wait_for_load_state("load")
            assert page.url.endswith(f"unit-conv1_1-u{first}.html")
            assert page.locator("h1").inner_text().startswith(f"conv1_1 · unit {first}")
            assert _images_load(page) == 3  # MEI, diverse set, phase plot
            # and the layer page's gallery (lazy images) loads too
            page.locator("nav.crumbs a", has_text="conv1_1").click()
            page.wait_for_load_state("load")
            assert page.locator(".gallery .card").count() == len(UNITS)
            assert _images_load(page) == 4 + 2 * len(UNITS)  # histograms + MEI and diverse grid per unit
        finally:
            browser.close()
    assert not errors, errors
    assert requests and all(u.startswith("file://") for u in requests), "the report must work offline"
