"""The held-out validation of a sweep (method.md E.3): the ``retention`` sweep test, the per-layer rank
correlations of :mod:`diversevis.study.validation` (known answers on hand-made rows) and the report's
"Validation: held-out transformations" section on a small real sweep (vgg16-paper conv1_1, six units,
30 iterations: the DI calibration of ``tests/test_report.py``'s sweep, shared through the cache)."""

from __future__ import annotations

import io
import math
import re
import shutil
from html import escape as html_escape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

import diversevis as dv
from diversevis.cli import main
from diversevis.core.errors import DiversevisError
from diversevis.study import validation as val
from diversevis.study.report import write_report
from diversevis.study.report.build import COLUMNS
from diversevis.study.store import Store
from diversevis.study.sweep import sweep
from diversevis.study.sweep_settings import TESTS, SweepSettings

FAMILIES = ("translation", "phase", "rotation", "elastic")


def _row(layer: str, unit: int, **metrics) -> dict:
    return {"layer": layer, "unit": unit, "status": "done", "metrics": metrics, "spec": {}}


# ------------------------------------------------------------------------------ known answers
def test_rank_correlation_known_answers():
    x = [0.1, 0.2, 0.5, 0.9, 1.3]
    n, rho, p = val.rank_correlation(x, [v**3 - 4 for v in x])  # monotone, not linear
    assert n == 5 and rho == pytest.approx(1.0) and p == pytest.approx(0.0, abs=1e-6)
    n, rho, p = val.rank_correlation(x, [-math.exp(v) for v in x])
    assert n == 5 and rho == pytest.approx(-1.0) and 0 <= p < 1e-6
    assert val.rank_correlation(x[:3], x[:3]) == (3, None, None)  # n < 4
    assert val.rank_correlation(x, [0.7] * 5) == (5, None, None)  # constant retention
    assert val.rank_correlation([2.0] * 5, x) == (5, None, None)  # constant score
    n, rho, p = val.rank_correlation([1, 2, 3, 4], [1, 3, 2, 4])
    assert rho == pytest.approx(0.8) and 0 < p < 1  # 1 - 6 * 2 / (4 * 15)
    with pytest.raises(ValueError, match="paired"):
        val.rank_correlation([1, 2, 3, 4], [1, 2, 3])


def test_correlations_per_layer_pair_and_sign():
    rows = []
    for i in range(5):  # conv1: retention rises with DI; phase retention falls with F1/F0 (as expected)
        rows.append(
            _row("conv1", i, di=0.2 * i, retention=0.5 + 0.1 * i, retention_phase=i, f1_f0=2.0 - 0.3 * i)
        )
    for i in range(4):  # conv2: retention falls with DI; no phase test
        rows.append(_row("conv2", i, di=float(i), retention=1.0 - 0.2 * i, retention_phase=0.3))
    rows.append(_row("conv2", 7, di=9.0, retention=math.nan))  # nan: not counted
    rows.append(_row("conv2", 8, di=9.0, retention=None))  # missing: not counted
    rows.append(_row("conv2", 9, failed="non-finite loss", di=9.0, retention=9.0))  # failed: not counted
    rows.append({**_row("conv2", 10, di=9.0, retention=9.0), "status": "running"})  # not done
    rows.append(_row("conv3", 0, di=0.1, retention=0.4))  # one unit: n = 1, no rho
    got = {(c.layer, c.score, c.retention): c for c in val.correlations(rows)}
    assert list(got) == [
        ("conv1", "di", "retention"),
        ("conv1", "di", "retention_phase"),
        ("conv1", "f1_f0", "retention_phase"),
        ("conv2", "di", "retention"),
        ("conv2", "di", "retention_phase"),
        ("conv3", "di", "retention"),
    ]  # no shift test anywhere: that pair is absent
    c = got["conv1", "di", "retention"]
    assert (c.n, c.rho, c.expected, c.as_expected) == (5, pytest.approx(1.0), 1, True)
    c = got["conv1", "f1_f0", "retention_phase"]
    assert (c.rho, c.expected, c.as_expected) == (pytest.approx(-1.0), -1, True)
    c = got["conv2", "di", "retention"]
    assert (c.n, c.rho, c.as_expected) == (4, pytest.approx(-1.0), False)
    c = got["conv2", "di", "retention_phase"]
    assert (c.n, c.rho, c.p, c.as_expected) == (4, None, None, None)  # constant retention
    assert (got["conv3", "di", "retention"].n, got["conv3", "di", "retention"].rho) == (1, None)

    text = val.summary(list(got.values()))
    assert text.startswith("3 of the 4 rank correlations computed have the expected sign and 3 of those")
    assert "conv1 +1.00 (n = 5), conv2 -1.00 (n = 4)" in text
    assert "No rank correlation could be computed" in val.summary([got["conv3", "di", "retention"]])
    assert "nothing to correlate" in val.summary([])

    table = val.table([got["conv1", "f1_f0", "retention_phase"], got["conv3", "di", "retention"]])
    assert table[0]["expected"] == "−" and table[0]["rho"] == "-1" and "selectivity" in table[0]["why"]
    assert table[1]["rho"] == table[1]["p"] == "–" and table[1]["n"] == "1"


def test_the_scatter_plot_is_a_png_and_none_without_pairs():
    rows = [_row("a", i, di=0.1 * i, retention=0.2 * i) for i in range(5)]
    rows += [_row("b", i, di=0.3 * i, retention=1 - 0.1 * i) for i in range(3)]
    png = val.scatter_png(rows)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        w, h = im.size
    assert (w, h) == (
        round(val.SCATTER_SIZE[0] * val.SCATTER_DPI),
        round(val.SCATTER_SIZE[1] * val.SCATTER_DPI),
    )
    assert val.scatter_png([_row("a", 0, di=0.5), _row("a", 1, retention=0.5)]) is None
    # every point is drawn: five of layer a's colour cover more pixels than one (the legend has one too)
    assert _blue_pixels(png) > _blue_pixels(val.scatter_png(rows[4:])) + 50


def _blue_pixels(png: bytes) -> int:
    """Pixels of the first layer's colour (tab10 blue at alpha 0.8 on white)."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=float)
    blue = 0.8 * np.array([31, 119, 180]) + 0.2 * 255
    return int((np.abs(rgb - blue).max(-1) < 12).sum())


# ------------------------------------------------------------------------------- the sweep test
def test_retention_is_a_sweep_test_that_the_stored_settings_ignore():
    assert "retention" in TESTS
    plain, with_retention = SweepSettings(), SweepSettings(tests=("dfv", "retention"))
    assert plain.stored("m") == with_retention.stored("m")  # a store may add the test later
    assert with_retention.retention_arguments() == {
        "k": 32,
        "candidates": 2048,
        "contrast": 0.5,
        "seed": 0,
        "images": None,
    }
    with pytest.raises(DiversevisError, match="retention"):
        SweepSettings(tests=("retension",))


def test_a_unit_without_retention_keeps_the_reason_and_no_metric(tmp_path, monkeypatch):
    conv = torch.nn.Conv2d(3, 1, 5)
    net = dv.Network(torch.nn.Sequential(conv), name="bar", input_size=5)

    def no_patch(*args, **kwargs):
        raise DiversevisError("none of the top 32 natural patches drives unit 0 above 0")

    monkeypatch.setattr("diversevis.methods.retention.response_retention", no_patch)
    store = sweep(net, ["0"], "all", out=tmp_path / "s", tests=("retention",), max_iter=10, progress=False)
    (row,) = store.rows()
    store.close()
    assert row["status"] == "done" and not any(k.startswith("retention") for k in row["metrics"])
    assert row["spec"]["retention"] == {"skipped": "none of the top 32 natural patches drives unit 0 above 0"}
    assert val.skipped([row]) == [("0", 0, "none of the top 32 natural patches drives unit 0 above 0")]


# ------------------------------------------------------------------------- a small real sweep
@pytest.fixture(scope="module")
def store(vgg16_paper, tmp_path_factory) -> Path:
    """vgg16-paper conv1_1 units 0-5 with DFV and retention, through the CLI (never modified: copy it)."""
    out = tmp_path_factory.mktemp("validation") / "sweep"
    args = ["sweep", "-m", "vgg16-paper", "--layers", "conv1_1", "--units", "0-5",
            "--tests", "dfv,retention", "--max-iter", "30", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return out


def test_the_sweep_stores_retention_metrics_and_files(store):
    with Store(store) as s:
        rows = s.rows()
    assert len(rows) == 6
    measured = [r for r in rows if "retention" in r["metrics"]]
    assert len(measured) >= 4, [r["spec"].get("retention") for r in rows]
    for r in rows:
        m = r["metrics"]
        if "retention" not in m:  # e.g. a colour unit whose top patch has no grating to shift
            assert r["spec"]["retention"]["skipped"]
            continue
        assert all(isinstance(m[f"retention_{f}"], float) for f in FAMILIES)
        assert m["retention"] == pytest.approx(sum(m[f"retention_{f}"] for f in FAMILIES) / 4)
        assert isinstance(m["di"], float) and "f1_f0" not in m  # no phase test in this sweep
        assert r["spec"]["retention"]["k"] == 32 and r["spec"]["retention"]["candidates"] == 2048
        assert (store / r["path"] / "retention" / "retention.json").is_file()


class _Page(HTMLParser):
    """The ``<img>`` sources and the ``<h2>`` texts of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.h2: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs).get("src") or "")
        elif tag == "h2":
            self.h2.append("")
            self._in_h2 = True

    def handle_endtag(self, tag):
        self._in_h2 = self._in_h2 and tag != "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.h2[-1] += data


def _parse(page: Path) -> _Page:
    p = _Page()
    p.feed(page.read_text(encoding="utf-8"))
    return p


def test_the_report_shows_the_validation_section_and_its_scatter(store, tmp_path):
    index = write_report(store, tmp_path / "rep")
    html = index.read_text(encoding="utf-8")
    page = _parse(index)
    assert "Validation: held-out transformations" in page.h2
    scatter = [s for s in page.imgs if s.endswith("validation-di-retention.png")]
    assert len(scatter) == 1 and not urlparse(scatter[0]).scheme and not Path(scatter[0]).is_absolute()
    from PIL import Image

    with Image.open(index.parent / unquote(scatter[0])) as im:
        im.load()
        assert im.size == (690, 510)
    with Store(store) as s:
        corr = val.correlations(s)
    assert [c.retention for c in corr] == ["retention", "retention_phase"] and corr[0].n >= 4
    assert html_escape(val.summary(corr)) in html  # the sentence, whatever the numbers say
    body = html.split('id="validation-table"')[1].split("</table>")[0]
    cells = re.findall(r"<tr><td[^>]*>conv1_1</td>(.*?)</tr>", body)
    assert len(cells) == 2
    first = re.findall(r"<td[^>]*>(?:<code>)?(.*?)(?:</code>)?</td>", cells[0])
    assert first[:3] == ["di", "retention", str(corr[0].n)] and first[-1] == "+"
    assert first[3] == ("–" if corr[0].rho is None else f"{corr[0].rho:.3g}")
    for key in ("retention", "retention_phase"):
        assert f'data-key="{key}"' in html and key in {c.key for c in COLUMNS}


def test_a_store_without_retention_has_no_validation_section(store, tmp_path):
    src = tmp_path / "sweep"
    shutil.copytree(store, src, ignore=shutil.ignore_patterns("report"))
    with Store(src) as s:
        for r in s.rows():
            metrics = {k: v for k, v in r["metrics"].items() if not k.startswith("retention")}
            spec = {k: v for k, v in r["spec"].items() if k != "retention"}
            s.record(r["layer"], r["unit"], metrics, spec, r["seconds"])
    index = write_report(src)
    html = index.read_text(encoding="utf-8")
    assert "Validation: held-out" not in html and 'data-key="retention"' not in html
    assert not (index.parent / "hist" / "validation-di-retention.png").exists()
