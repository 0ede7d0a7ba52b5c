"""The phase test's verdict: F1/F0 labels a unit only if gratings drive it, and a nan is never a label.

Known answer for "gratings do not drive this unit": a *dot cell*, a linear unit whose filter is one pixel
(all channels) of a ``SIZE`` x ``SIZE`` image. Its MEI at L2 norm ``rho`` puts all the contrast in that
pixel: ``rho * sqrt(C)``. A grating of the same (phase-averaged) norm has amplitude ``rho * sqrt(2 / D)``,
``D = C * SIZE^2``, so its best response is ``C * rho * sqrt(2 / D)`` and the ratio to the MEI is
``sqrt(2 / SIZE^2)`` = 0.088 for 16 px, far below the 0.3 threshold, while F1/F0 alone (a rectified
cosine, pi / 2) would say simple-like.
"""

from __future__ import annotations

import io
import json
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import diversevis as dv
from diversevis.cli import main
from diversevis.cli.invariance import _print_phase
from diversevis.methods.phase import DRIVE_THRESHOLD, NOT_DRIVEN, phase_test
from diversevis.models.synthetic import cell_network

SIZE, NORM, C = 16, 4.0, 3
#: closed forms of the dot cell (see the module docstring)
DOT_MEI = NORM * math.sqrt(C)
DOT_RATIO = math.sqrt(2 / SIZE**2)


def dot_cell(weight: float = 1.0) -> dv.Network:
    conv = nn.Conv2d(C, 1, SIZE, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, SIZE // 2, SIZE // 2] = weight
    module = nn.Sequential(OrderedDict(response=conv)).eval().requires_grad_(False)
    return dv.Network(module, mean=[0.5] * C, std=[1.0] * C, name="dot-cell", in_channels=C, input_size=SIZE)


@pytest.fixture(scope="module")
def dot():
    return phase_test(dot_cell(), "response", 0, norm=NORM, mei=DOT_MEI)


def test_a_unit_gratings_barely_drive_is_labelled_so_with_f1_f0_flagged(dot, tmp_path):
    assert DRIVE_THRESHOLD == 0.3
    assert dot.grating_ratio == pytest.approx(DOT_RATIO, rel=0.01)  # closed form 0.088
    assert dot.drives is False and dot.kind is None and dot.label == NOT_DRIVEN
    assert dot.f1_f0 == pytest.approx(math.pi / 2, abs=0.02)  # still reported: a rectified cosine
    assert "8.8% of the MEI" in dot.flag() and "(< 30%)" in dot.flag()
    assert NOT_DRIVEN in repr(dot) and "best grating 9% of MEI" in repr(dot)
    pytest.importorskip("matplotlib")
    out = dot.save(tmp_path)
    m = json.loads((out / "phase.json").read_text())["metrics"]
    assert (m["label"], m["kind"], m["drives"], m["drive_threshold"]) == (NOT_DRIVEN, None, False, 0.3)
    assert m["f1_f0"] == pytest.approx(math.pi / 2, abs=0.02) and m["flag"] == dot.flag()


def test_the_computed_mei_gives_the_same_verdict():
    r = phase_test(dot_cell(), "response", 0, norm=NORM)  # mei=True: optimised at the grating norm
    assert r.spec["mei_restarts"] == 4 and r.mei_activation == pytest.approx(DOT_MEI, rel=0.1)
    assert r.label == NOT_DRIVEN and r.grating_ratio < 0.1


def test_the_threshold_is_a_recorded_parameter():
    r = phase_test(dot_cell(), "response", 0, norm=NORM, mei=DOT_MEI, drive_threshold=0.05)
    assert r.spec["drive_threshold"] == 0.05 and r.drives is True
    assert r.label == r.kind == "simple-like" and r.flag() is None
    for bad in (-0.1, 1.5, math.nan, True):
        with pytest.raises(dv.DiversevisError, match="drive_threshold must be a number in"):
            phase_test(dot_cell(), "response", 0, norm=NORM, mei=DOT_MEI, drive_threshold=bad)


def test_a_large_mei_override_flags_a_complex_cell_and_no_mei_says_unchecked():
    net = cell_network("complex", size=SIZE)
    big = phase_test(net, "response", 0, norm=NORM, mei=1e3, phases=4, fine_phases=8)
    assert big.label == NOT_DRIVEN and big.kind is None and big.f1_f0 < 1e-3
    none = phase_test(net, "response", 0, norm=NORM, mei=False, phases=4, fine_phases=8)
    assert none.drives is None and none.grating_ratio is None
    assert none.kind == "complex-like" and none.label == "complex-like (not checked against the MEI)"


def test_infinite_contrast_and_nan_weights_are_errors_naming_the_cause():
    with pytest.raises(dv.DiversevisError, match="grating L2 norm is inf"):
        phase_test(cell_network("simple", size=SIZE), "response", 0, contrast=math.inf)
    with pytest.raises(dv.DiversevisError, match="grating L2 norm is inf"):
        phase_test(cell_network("simple", size=SIZE), "response", 0, norm=math.inf)
    with pytest.raises(
        dv.DiversevisError, match=r"'response.weight' holds NaN values"
    ):  # refused when wrapped
        phase_test(dot_cell(math.nan), "response", 0, norm=NORM, mei=False, phases=4)


def test_cli_prints_the_label_or_the_flag_never_nan(capsys, tmp_path, dot):
    rc = main(
        ["phase-test", "-m", "cell:texture", "-l", "response", "-u", "0", "--norm", "4", "-q"]
        + ["--drive-threshold", "0.25", "--out", str(tmp_path / "c")]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert (
        "  F1/F0 = 0.000 (complex-like)" in out and "56.4% of the MEI" in out and "a label needs 25%" in out
    )
    assert json.loads((tmp_path / "c" / "phase.json").read_text())["spec"]["drive_threshold"] == 0.25

    _print_phase(dot, tmp_path)
    out = capsys.readouterr().out
    assert "F1/F0 = 1.57" in out and f"(flagged: {NOT_DRIVEN}: the best grating reaches 8.8%" in out

    for argv in (
        ["-u", "0", "--contrast", "inf"],
        ["--direction=-1", "--norm", "4"],  # minus an energy: never fires, F0 = 0
    ):
        try:
            rc = main(
                ["phase-test", "-m", "cell:texture", "-l", "response", "-q", "--out", str(tmp_path / "x")]
                + argv
            )
        except SystemExit as exit_:  # argparse refuses --contrast inf itself
            rc = exit_.code
        out, err = capsys.readouterr()
        assert rc == 2 and out == "" and "nan" not in err.lower()
        assert ("expected a finite number > 0, got inf" in err) or (
            "F1/F0 is undefined: the unit never fires" in err
        )
    assert not (tmp_path / "x" / "phase.json").exists()


def test_phase_result_shows_itself_in_a_notebook(dot):
    pytest.importorskip("matplotlib")
    png = dot._repr_png_()
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size[0] > 800
    html = dot._repr_html_()
    assert '<img src="data:image/png;base64,' in html and "gratings do not drive" in html
    assert np.isfinite(dot.phase_curve).all()


def test_grating_verdict_reads_a_stored_label_as_a_verdict_only_where_gratings_drive():
    from diversevis.methods.phase_result import NOT_DRIVEN, grating_verdict

    assert grating_verdict("complex-like") == "complex-like"
    assert grating_verdict("simple-like (not checked against the MEI)") == "simple-like"
    assert grating_verdict(NOT_DRIVEN) is None and grating_verdict(None) is None
    assert grating_verdict("undefined: the unit never fires over the phase sweep") is None
