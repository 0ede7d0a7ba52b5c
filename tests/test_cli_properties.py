"""Property: whatever numbers a user types, `diversevis diverse` either succeeds with finite results or
exits 1/2 with an error line and no traceback, and never leaves a partial file behind."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diversevis.cli import main

WEIRD = st.one_of(
    st.sampled_from(["inf", "-inf", "nan", "0", "-1", "1e30", "1e-30", "abc", "", "2e308", "1_000", "0x10"]),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.integers(-(2**70), 2**70).map(str),
)
VALID = {
    "--lr": st.floats(1e-3, 10.0).map(repr),
    "--contrast": st.floats(0.05, 2.0).map(repr),
    "--norm": st.floats(0.1, 20.0).map(repr),
    "--diversity": st.floats(0.0, 100.0).map(repr),
    "--tau": st.floats(1e-3, 10.0).map(repr),
    "--seed": st.integers(0, 2**40).map(str),
    "--images": st.integers(2, 5).map(str),
    "--max-iter": st.integers(1, 4).map(str),
}
BASE = ["diverse", "--model", "cell:complex", "--layer", "response", "--unit", "0", "--quiet"]
BASE += ["--mei-restarts", "1", "--patience", "2"]


def run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        rc = exit_.code
    return rc, capsys.readouterr().err


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.fixed_dictionaries(VALID),
    drop_norm=st.booleans(),
    bad=st.one_of(st.none(), st.tuples(st.sampled_from(sorted(VALID)), WEIRD)),
)
def test_diverse_never_answers_with_a_traceback_or_a_nan(capsys, values, drop_norm, bad):
    if drop_norm:
        values.pop("--norm")
    if bad is not None:
        values[bad[0]] = bad[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        argv = [*BASE, "--out", str(out), *[x for kv in values.items() for x in kv]]
        rc, err = run(argv, capsys)
        assert "Traceback" not in err
        assert not list(Path(tmp).rglob("*.tmp"))
        if rc == 0:
            res = json.loads((out / "result.json").read_text())
            assert all(math.isfinite(a) for a in res["metrics"]["activations"])
        else:
            assert rc in (1, 2), err
            assert "error:" in err.strip().splitlines()[-1]
            assert not (out / "result.json").exists()


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
