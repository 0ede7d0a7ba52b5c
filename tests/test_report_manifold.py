"""The invariance-manifold viewer (issue 16, item 4): pages checked as files and in headless Chromium.

The folders are real: a 1-D and a 2-D manifold of the synthetic energy-model complex cell
(``cell_network("complex", size=16, channels=1)``, a few hundred iterations at most; seconds) written by
``ManifoldResult.save``, and a ``manifold_cluster`` folder of a population of two simple and two complex
cells. Each module fixture is built once; tests that change a folder work on a copy. Where the manifold
method or the clustering is not in this tree yet, the tests that need it are skipped with the reason.
The browser tests drive /usr/bin/chromium with Playwright as ``tests/test_report.py`` does (skipped
without them, failing under CI).
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
from test_report import CHROMIUM, CHROMIUM_ARGS, _images_load, _refs, _skip_or_fail_without_browser

import diversevis as dv
from diversevis.cli import main
from diversevis.study.report import write_cluster_page, write_manifold_page, write_report
from diversevis.study.report.build import _fmt

LAYER = "response"
POPULATION = dict(n_simple=2, n_complex=2, seed=3)


# --------------------------------------------------------------------------------------------- folders
@contextmanager
def _one_thread() -> Iterator[None]:
    """Train on one thread (these problems are tiny: on a busy machine a second thread makes them several
    times slower), then give the session its thread count back."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _need(module: str, what: str) -> None:
    """Skip (with the reason) when a module of issue 16 is not in this tree yet."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"needs {module} ({what}, issue 16), not in this tree yet")


def _manifold_folder(out: Path, dim: int) -> Path:
    """A real manifold of the synthetic complex cell, saved to ``out``: in 1-D long enough for the floor to
    hold, with the calibrated DI; in 2-D short, so the floor need not hold (which the page must show)."""
    _need("diversevis.methods.manifold", "the manifold method")
    from diversevis.methods.manifold import manifold
    from diversevis.models.synthetic import cell_network

    net = cell_network("complex", size=16, channels=1)
    kw = dict(per_dim=8, max_iter=300, warmup=50) if dim == 1 else dict(per_dim=4, max_iter=60, warmup=10)
    with _one_thread(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "response unit 0: manifold .* below the floor", RuntimeWarning)
        res = manifold(net, LAYER, 0, dim=dim, mei_restarts=1, calibrate=dim == 1, seed=0, **kw)
    res.save(out)
    return out


@pytest.fixture(scope="module", params=[1, 2], ids=["dim1", "dim2"])
def folder(request, tmp_path_factory) -> Path:
    """A real manifold folder (never modified: copy it first) with its viewer page written."""
    out = _manifold_folder(tmp_path_factory.mktemp(f"manifold{request.param}") / "m", request.param)
    write_manifold_page(out)
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Path:
    """A real manifold-cluster folder of two simple and two complex cells, with its pages written."""
    _need("diversevis.methods.manifold", "the manifold method")
    _need("diversevis.study.manifold_cluster", "manifold alignment and clustering")
    from diversevis.methods.manifold_align import AlignSettings
    from diversevis.models.synthetic import population_network, random_population
    from diversevis.study.manifold_cluster import manifold_cluster

    net = population_network(random_population(**POPULATION))
    out = tmp_path_factory.mktemp("cluster") / "cl"
    manifold = dict(per_dim=6, max_iter=80, warmup=10, mei_restarts=1, calibrate=False)
    with _one_thread(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "response unit .*below the floor", RuntimeWarning)
        manifold_cluster(
            net, LAYER, "all", out, dim=1, clusters=2, align_settings=AlignSettings(max_iter=20),
            manifold_kwargs=manifold,
        )  # fmt: skip
    write_cluster_page(out)
    return out


def _record(folder: Path) -> dict:
    return json.loads((folder / "manifold.json").read_text(encoding="utf-8"))


def _copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / folder.name
    shutil.copytree(folder, dst, ignore=shutil.ignore_patterns("index.html"))
    return dst


def _frames_data(page: str) -> list[dict]:
    m = re.search(r'<script type="application/json" id="frames-data">(.*?)</script>', page, re.S)
    assert m, "the page embeds its frames"
    return json.loads(m.group(1))


def _stats(page: str) -> dict[str, tuple[str, str]]:
    """The summary boxes: key -> (raw value, shown text)."""
    found = re.findall(r'<div class="stat[^"]*" data-key="(\w+)" data-value="([^"]*)"><b>([^<]*)</b>', page)
    return {k: (html.unescape(v), html.unescape(t)) for k, v, t in found}


# ------------------------------------------------------------------------------------------------ files
def test_manifold_templates_ship_as_package_data():
    from importlib import resources

    names = {t.name for t in resources.files("diversevis.study.report").joinpath("templates").iterdir()}
    assert {"manifold.html.j2", "manifold_cluster.html.j2", "_manifold_style.html.j2"} <= names


def test_the_page_names_every_frame_and_shows_the_numbers_of_manifold_json(folder):
    rec, page = _record(folder), (folder / "index.html").read_text(encoding="utf-8")
    n = len(rec["frames"])
    assert n == rec["per_dim"] ** rec["dim"]
    data = _frames_data(page)
    assert [d["src"] for d in data] == rec["frames"]  # every frame, in frame (row-major) order
    assert [d["ratio"] for d in data] == [_fmt(r) for r in rec["ratios"]]
    assert [d["act"] for d in data] == [_fmt(a) for a in rec["activations"]]
    assert [d["below"] for d in data] == [r < rec["floor"] for r in rec["ratios"]]
    thumbs = [s for s in _refs(folder / "index.html").imgs if s.startswith("frames/")]
    assert thumbs[1:] == rec["frames"] and thumbs[0] == rec["frames"][0]  # the stage, then every thumbnail
    stats = _stats(page)
    for key in ("mean_ratio", "min_ratio", "mei_activation", "floor", "mean_floor", "seconds", "di"):
        raw, text = stats[key]
        if rec[key] is None:
            assert (raw, text) == ("", "–")
        else:
            assert float(raw) == rec[key] and text == _fmt(rec[key]), key
    assert stats["floor_holds"][1] == ("yes" if rec["floor_holds"] else "no")
    assert f"{LAYER} · unit 0 " in page and f"{rec['dim']}-D invariance manifold · {n} frames" in page
    m = re.search(r'<dd id="frame-ratio"[^>]*>([^<]*)</dd>', page)
    assert m and m.group(1) == _fmt(rec["ratios"][0])
    if rec["dim"] == 1:
        assert f'<input type="range" id="z" min="0" max="{n - 1}"' in page and 'id="pad"' not in page
        points = re.findall(r'<circle class="pt( below)?" data-index="(\d+)"', page)
        assert [int(k) for _, k in points] == list(range(n))
        assert [bool(b) for b, _ in points] == [r < rec["floor"] for r in rec["ratios"]]
    else:
        assert page.count('<rect class="cell') == n and 'id="zi"' in page and 'id="zj"' in page
        cells = re.findall(r'<rect class="cell[^"]*" data-index="(\d+)" data-i="(\d+)" data-j="(\d+)"', page)
        assert all(int(k) == int(i) * rec["per_dim"] + int(j) for k, i, j in cells)
    assert re.search(r"<details class=\"spec\">\s*<summary>Run spec</summary>", page)


def test_every_reference_is_relative_and_exists(folder):
    page = folder / "index.html"
    text = page.read_text(encoding="utf-8")
    assert str(folder.resolve()) not in text and "file:" not in text
    refs = _refs(page).refs
    assert {"contact_sheet.png", "loop.gif", "manifold.json", "generator.pt"} <= set(refs)
    for ref in refs:
        url = urlparse(ref)
        assert not url.scheme and not url.netloc, ref
        assert (folder / unquote(url.path)).exists(), f"{ref!r} points nowhere"
    assert not list(folder.rglob("*.tmp"))


def test_the_floor_failure_and_a_missing_frame_are_shown(folder, tmp_path):
    src = _copy(folder, tmp_path)
    rec = _record(src)
    rec["floor_holds"] = False
    rec["ratios"][1] = rec["floor"] / 2
    (src / "manifold.json").write_text(json.dumps(rec))
    (src / rec["frames"][2]).unlink()
    page = write_manifold_page(src).read_text(encoding="utf-8")
    assert "the floor does not hold" in page and _stats(page)["floor_holds"][1] == "no"
    assert f"<code>{rec['frames'][2]}</code>" in page and "missing files" in page
    assert rec["frames"][2] not in _refs(src / "index.html").imgs
    data = _frames_data(page)
    assert data[1]["below"] and data[2]["src"] == "" and data[0]["src"] == rec["frames"][0]
    marked = (
        '<circle class="pt below" data-index="1"'
        if rec["dim"] == 1
        else '<rect class="cell below" data-index="1"'
    )
    assert marked in page  # the plot (1-D) or the pad (2-D) marks the latent under the floor


def test_text_from_the_folder_is_escaped(folder, tmp_path):
    src = _copy(folder, tmp_path)
    rec = _record(src)
    rec["spec"]["model"] = "</script><script>alert(1)</script>"
    (src / "manifold.json").write_text(json.dumps(rec))
    page = write_manifold_page(src).read_text(encoding="utf-8")
    assert "<script>alert(1)" not in page and "&lt;/script&gt;&lt;script&gt;alert(1)" in page


def test_bad_manifold_folders_give_clear_errors(folder, tmp_path):
    src = _copy(folder, tmp_path)
    rec = _record(src)
    with pytest.raises(dv.DiversevisError, match="drop --out"):
        write_report(src, tmp_path / "elsewhere")
    (src / "manifold.json").write_text(json.dumps({**rec, "ratios": rec["ratios"][:-1]}))
    with pytest.raises(dv.DiversevisError, match="do not match"):
        write_manifold_page(src)
    (src / "manifold.json").write_text(json.dumps({k: v for k, v in rec.items() if k != "frames"}))
    with pytest.raises(dv.DiversevisError, match="lacks frames"):
        write_manifold_page(src)
    (src / "manifold.json").write_text("{not json")
    with pytest.raises(dv.DiversevisError, match="cannot read"):
        write_manifold_page(src)
    assert not (src / "index.html").exists()
    with pytest.raises(dv.DiversevisError, match="does not exist"):
        write_manifold_page(tmp_path / "nowhere")


def test_cli_report_writes_the_viewer_into_a_manifold_folder(folder, tmp_path, capsys):
    src = _copy(folder, tmp_path)
    assert main(["report", str(src)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str((src / "index.html").resolve()) and err == ""
    assert (src / "index.html").read_text(encoding="utf-8").count('id="frames-data"') == 1
    assert main(["report", str(src), "--out", str(tmp_path / "rep")]) == 2
    assert "drop --out" in capsys.readouterr().err


def test_the_cluster_page_links_every_member_and_shows_the_similarities(cluster):
    cl = json.loads((cluster / "manifold_cluster.json").read_text(encoding="utf-8"))
    page = (cluster / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'<a href="([^"]+)" class="member-link">unit (\d+)</a>', page)
    assert sorted(int(u) for _, u in links) == sorted(cl["units"])
    for href, u in links:
        assert href == f"{cl['unit_dirs'][u]}/index.html" and (cluster / href).is_file()
        member = (cluster / href).read_text(encoding="utf-8")
        assert 'href="../index.html"' in member and f"{LAYER} · unit {u} " in member
        label = cl["labels"][cl["units"].index(int(u))]
        assert f"Cluster {label} of {cl['n_clusters']}" in member
        j = cl["units"].index(int(u))  # the pager walks the layer's units in order
        prev = re.search(r'<a href="([^"]+)" rel="prev">&larr; unit (\d+)</a>', member)
        nxt = re.search(r'<a href="([^"]+)" rel="next">unit (\d+) &rarr;</a>', member)
        assert (prev and int(prev.group(2))) == (cl["units"][j - 1] if j > 0 else None)
        assert (nxt and int(nxt.group(2))) == (cl["units"][j + 1] if j + 1 < len(cl["units"]) else None)
        near = re.findall(r'<a href="([^"]+)" class="near">unit (\d+)</a>', member)
        assert sorted(int(v) for _, v in near) == sorted(v for v in cl["units"] if v != int(u))
        for ref in _refs(cluster / href).refs:  # the unit's files, the cluster page, the nearest units
            assert (cluster / href).parent.joinpath(unquote(urlparse(ref).path)).exists(), (href, ref)
    for k in range(cl["n_clusters"]):
        section = page.split(f'<section id="cluster-{k}"')[1].split("</section>")[0]
        members = [u for u, lab in zip(cl["units"], cl["labels"]) if lab == k]
        assert sorted(int(u) for u in re.findall(r'class="member-link">unit (\d+)<', section)) == sorted(
            members
        )
        assert f'src="{cl["galleries"][k]}"' in section
    assert 'src="similarity.png"' in page
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", page.split('id="similarity"')[1].split("</table>")[0])
    assert cells == [_fmt(v, 3) for row in cl["similarity"] for v in row]
    for ref in _refs(cluster / "index.html").refs:
        assert not urlparse(ref).scheme and (cluster / unquote(urlparse(ref).path)).exists(), ref


def test_a_cluster_member_without_its_manifold_is_marked_not_linked(cluster, tmp_path):
    src = tmp_path / "cl"
    shutil.copytree(cluster, src, ignore=shutil.ignore_patterns("index.html"))
    cl = json.loads((src / "manifold_cluster.json").read_text(encoding="utf-8"))
    gone = cl["units"][1]
    (src / cl["unit_dirs"][str(gone)] / "manifold.json").unlink()
    page = write_cluster_page(src).read_text(encoding="utf-8")
    links = [int(u) for u in re.findall(r'class="member-link">unit (\d+)</a>', page)]
    assert sorted(links) == sorted(u for u in cl["units"] if u != gone)
    assert f"<strong>unit {gone}</strong>" in page and "missing files" in page
    assert not (src / cl["unit_dirs"][str(gone)] / "index.html").exists()
    for u in links:  # the others' pages name the unit among the nearest, without a dead link
        member = src / cl["unit_dirs"][str(u)] / "index.html"
        assert re.search(rf"most similar: .*\bunit {gone}\b", member.read_text(encoding="utf-8"))
        assert all((member.parent / unquote(urlparse(r).path)).exists() for r in _refs(member).refs)


def test_cli_report_on_a_cluster_folder(cluster, tmp_path, capsys):
    src = tmp_path / "cl"
    shutil.copytree(cluster, src, ignore=shutil.ignore_patterns("index.html"))
    assert main(["report", str(src)]) == 0
    assert capsys.readouterr().out.strip() == str((src / "index.html").resolve())
    cl = json.loads((src / "manifold_cluster.json").read_text(encoding="utf-8"))
    assert all((src / d / "index.html").is_file() for d in cl["unit_dirs"].values())


# ----------------------------------------------------------------------------------------------- browser
def _browser(p):
    return p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def _watch(page) -> tuple[list[str], list[str]]:
    """Requests and errors (uncaught exceptions, console errors, failed requests) of a page."""
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("requestfailed", lambda r: errors.append(f"failed request {r.url}"))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return requests, errors


def _shown(page) -> dict:
    """The frame the viewer shows: its src (as written), whether it loaded, and the readout."""
    page.wait_for_function("document.getElementById('frame').complete")
    return page.evaluate(
        """() => { const img = document.getElementById("frame");
        return {src: img.getAttribute("src"), width: img.naturalWidth,
                ratio: document.getElementById("frame-ratio").textContent,
                z: document.getElementById("frame-latent").textContent,
                index: document.getElementById("frame-index").textContent}; }"""
    )


def _expect(page, rec: dict, k: int) -> None:
    shown = _shown(page)
    assert shown["src"] == rec["frames"][k] and shown["width"] > 0, (k, shown)
    assert shown["ratio"] == _fmt(rec["ratios"][k]), (k, shown)
    assert shown["index"] == f"{k} / {len(rec['frames'])}"


def _drive_slider(page, rec: dict) -> None:
    n = len(rec["frames"])
    z = page.locator("#z")
    z.focus()
    page.keyboard.press("ArrowRight")
    _expect(page, rec, 1)
    page.keyboard.press("End")
    _expect(page, rec, n - 1)
    z.fill(str(n // 2))
    _expect(page, rec, n // 2)
    assert _shown(page)["z"] == _fmt(rec["latents"][n // 2][0])
    page.locator('#ratio-plot .pt[data-index="2"]').click()
    _expect(page, rec, 2)
    assert page.locator("#z").input_value() == "2"


def _drive_pad(page, rec: dict) -> None:
    n = rec["per_dim"]
    box = page.locator("#pad rect.cell[data-index='0']").bounding_box()
    side = box["width"]

    def centre(i: int, j: int) -> tuple[float, float]:
        return box["x"] + (j + 0.5) * side, box["y"] + (i + 0.5) * side

    page.mouse.click(*centre(n - 1, 1))
    _expect(page, rec, (n - 1) * n + 1)
    assert (page.locator("#zi").input_value(), page.locator("#zj").input_value()) == (str(n - 1), "1")
    page.mouse.move(*centre(0, 0))  # drag from (0, 0) to (1, n - 1)
    page.mouse.down()
    page.mouse.move(*centre(1, n - 1), steps=6)
    page.mouse.up()
    _expect(page, rec, n + n - 1)
    page.locator("#zi").fill("2")
    _expect(page, rec, 2 * n + n - 1)
    page.locator("#pad").focus()
    page.keyboard.press("ArrowLeft")
    _expect(page, rec, 2 * n + n - 2)


@pytest.mark.timeout(180)
def test_the_viewer_in_headless_chromium(folder):
    _skip_or_fail_without_browser()
    from playwright.sync_api import sync_playwright

    rec = _record(folder)
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests, errors = _watch(page)
            page.goto((folder / "index.html").as_uri())
            # the stage, a thumbnail per frame, the contact sheet and the animation
            assert _images_load(page) == len(rec["frames"]) + 3
            _expect(page, rec, 0)
            (_drive_slider if rec["dim"] == 1 else _drive_pad)(page, rec)
            page.locator("#play").click()  # play steps through the frames, pause stops
            start = _shown(page)["index"]
            page.wait_for_function(f"document.getElementById('frame-index').textContent !== {start!r}")
            page.locator("#play").click()
            assert page.locator("#play").get_attribute("aria-pressed") == "false"
            page.goto((folder / "index.html").as_uri() + "#frame=3")  # a link to one frame
            page.reload()
            _expect(page, rec, 3)
        finally:
            browser.close()
    assert not errors, errors
    assert requests and all(u.startswith("file://") for u in requests), "the viewer must work offline"


@pytest.mark.timeout(180)
def test_the_cluster_pages_in_headless_chromium(cluster):
    _skip_or_fail_without_browser()
    from playwright.sync_api import sync_playwright

    cl = json.loads((cluster / "manifold_cluster.json").read_text(encoding="utf-8"))
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests, errors = _watch(page)
            page.goto((cluster / "index.html").as_uri())
            assert _images_load(page) == 1 + cl["n_clusters"] + len(cl["units"])  # map, galleries, thumbs
            assert page.locator("a.member-link").count() == len(cl["units"])
            for u in cl["units"]:
                page.locator("a.member-link", has_text=f"unit {u}").first.click()
                page.wait_for_load_state("load")
                assert urlparse(page.url).path.endswith(f"/{cl['unit_dirs'][str(u)]}/index.html")
                assert page.locator("h1").inner_text().startswith(f"{LAYER} · unit {u}")
                rec = _record(cluster / cl["unit_dirs"][str(u)])
                assert _images_load(page) == len(rec["frames"]) + 3
                _drive_slider(page, rec)
                page.locator("#cluster-note a", has_text="all clusters").click()
                page.wait_for_load_state("load")
                assert urlparse(page.url).path.endswith(f"/{cluster.name}/index.html")
        finally:
            browser.close()
    assert not errors, errors
    assert requests and all(u.startswith("file://") for u in requests), "the pages must work offline"
