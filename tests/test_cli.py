"""The ``diversevis`` command: listings, user errors (exit 2, one line, no traceback) and real runs.

Most tests call :func:`diversevis.cli.main` in-process; two run the installed command in a subprocess to
check the real exit status and streams.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diversevis import __version__
from diversevis.cli import main
from diversevis.models.zoo import load_model

CELL = ["--model", "cell:complex", "--layer", "response"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def user_error(capsys, *argv: str) -> str:
    """Run a command that must fail as a user error; return its one-line message."""
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("diversevis: error: ")
    return lines[0]


def argparse_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture
def pickled_module(tmp_path) -> Path:
    path = tmp_path / "net.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Conv2d(2, 1, 3)), path)
    return path


# ---------------------------------------------------------------------------- listings
def test_models_lists_the_offline_specs(capsys):
    rc, out, err = run(capsys, "models")
    assert rc == 0 and err == ""
    specs = [line.split()[0] for line in out.splitlines()]
    assert {"vgg16", "vgg16-paper", "cell:simple", "cell:complex", "cell:texture"} <= set(specs)


def test_layers_of_vgg16_paper_shows_conv3_1_with_rf_24(capsys, vgg16_paper):
    rc, out, err = run(capsys, "layers", "--model", "vgg16-paper")
    assert rc == 0 and err == ""
    rows = {line.split()[1]: line.split() for line in out.splitlines()[1:] if len(line.split()) == 6}
    assert rows["conv3_1"] == ["features.10", "conv3_1", "Conv2d", "256x51x51", "24", "4"]
    assert rows["conv1_1"] == ["features.0", "conv1_1", "Conv2d", "64x222x222", "3", "1"]
    assert rows["pool2"] == ["features.9", "pool2", "MaxPool2d", "128x53x53", "16", "4"]


def test_layers_honours_size_and_marks_layers_off_the_chain(capsys):
    rc, out, _ = run(capsys, "layers", *CELL[:2], "--size", "20")
    assert rc == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line and line[0] != "("}
    assert rows["quadrature"] == ["quadrature", "Conv2d", "2x5x5", "16", "1"]
    assert rows["response"] == ["response", "_Response", "1x5x5", "-", "-"]
    assert "gradient probe" in out.splitlines()[-1]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"diversevis {__version__}"


# --------------------------------------------------------------------------- user errors
def test_unknown_model_suggests_the_close_match(capsys):
    msg = user_error(capsys, "diverse", "--model", "vgg16paper", "--layer", "conv3_1", "--unit", "0")
    assert "unknown model 'vgg16paper'" in msg and "Did you mean: vgg16-paper" in msg


def test_unknown_layer_suggests_the_close_match(capsys):
    msg = user_error(capsys, "diverse", "--model", "cell:complex", "--layer", "respons", "--unit", "0")
    assert "unknown layer 'respons'" in msg and "Did you mean: response?" in msg


def test_unknown_layer_hint_names_a_command_that_works(capsys):
    msg = user_error(capsys, "diverse", "--model", "cell:complex", "--layer", "respons", "--unit", "0")
    hint = msg.split("see `", 1)[1].split("`", 1)[0].split()
    assert hint[:2] == ["diversevis", "layers"]
    rc, _, err = run(capsys, *hint[1:])
    assert rc == 0, err


def test_unit_out_of_range_gives_the_valid_range(capsys):
    msg = user_error(capsys, "diverse", *CELL, "--unit", "5")
    assert "unit 5 is out of range" in msg and "valid: 0..0" in msg


def test_a_diverse_set_needs_two_images(capsys):
    msg = user_error(capsys, "diverse", *CELL, "--unit", "0", "--images", "1")
    assert "--images must be >= 2" in msg and "diversevis mei" in msg


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--images", "0"], "--images"),
        (["--max-iter", "0"], "--max-iter"),
        (["--max-iter", "-5"], "--max-iter"),
        (["--max-iter", "ten"], "--max-iter"),
        (["--lr", "0"], "--lr"),
        (["--lr", "-1"], "--lr"),
        (["--contrast", "0"], "--contrast"),
        (["--norm", "-2"], "--norm"),
        (["--diversity", "-0.1"], "--diversity"),
        (["--tau", "0"], "--tau"),
        (["--patience", "-1"], "--patience"),
        (["--mei-restarts", "0"], "--mei-restarts"),
    ],
)
def test_non_positive_values_are_rejected_by_argparse(capsys, argv, option):
    msg = argparse_error(capsys, "diverse", *CELL, "--unit", "0", *argv)
    assert msg.startswith("diversevis diverse: error: ") and f"argument {option}" in msg


def test_negative_unit_and_zero_restarts_are_rejected(capsys):
    assert "argument --unit" in argparse_error(capsys, "mei", *CELL, "--unit", "-1")
    assert "argument --restarts" in argparse_error(capsys, "mei", *CELL, "--unit", "0", "--restarts", "0")
    assert "argument --size" in argparse_error(capsys, "layers", *CELL[:2], "--size", "0")


def test_missing_command_or_target_is_an_argparse_error(capsys):
    argparse_error(capsys)
    msg = argparse_error(capsys, "mei", *CELL)
    assert "one of the arguments --unit" in msg and "--direction is required" in msg


def test_bad_direction_is_a_user_error(capsys, tmp_path):
    msg = user_error(capsys, "mei", *CELL, "--direction", "1,x")
    assert "comma-separated numbers" in msg
    msg = user_error(capsys, "mei", *CELL, "--direction", str(tmp_path / "d.npy"))
    assert "does not exist" in msg


def test_layers_with_a_too_small_size_is_a_user_error(capsys):
    user_error(capsys, "layers", *CELL[:2], "--size", "8")


def test_missing_model_file(capsys, tmp_path):
    msg = user_error(capsys, "layers", "--model", f"file:{tmp_path / 'missing.pt'}")
    assert "does not exist" in msg


def test_pickled_module_is_refused_without_allow_pickle(capsys, pickled_module):
    msg = user_error(capsys, "layers", "--model", f"file:{pickled_module}")
    assert "--allow-pickle" in msg and "not loaded" in msg


def test_pickled_module_loads_with_allow_pickle(capsys, pickled_module):
    rc, out, err = run(
        capsys, "layers", "--model", f"file:{pickled_module}", "--allow-pickle", "--size", "10"
    )
    assert rc == 0 and err == ""
    rows = [line.split() for line in out.splitlines()[1:]]
    assert rows == [
        ["0", "Conv2d", "2x8x8", "3", "1"],
        ["1", "ReLU", "2x8x8", "3", "1"],
        ["2", "Conv2d", "1x6x6", "5", "1"],
    ]


def test_state_dict_file_gets_a_clear_message(capsys, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(nn.Conv2d(3, 2, 3).state_dict(), path)
    msg = user_error(capsys, "layers", "--model", f"file:{path}")
    assert "holds a state_dict" in msg and "dv.Network(model" in msg


def test_unwritable_output_directory_is_a_user_error(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    msg = user_error(
        capsys, "mei", *CELL, "--unit", "0", "--max-iter", "2", "--restarts", "1", "-q", "--out", str(blocker)
    )
    assert "cannot create output directory" in msg


# ------------------------------------------------------------------------------ real runs
def test_diverse_on_the_complex_cell_writes_a_complete_result(capsys, tmp_path):
    out_dir = tmp_path / "run"
    rc, out, err = run(
        capsys,
        "diverse",
        *CELL,
        "--unit", "0",
        "--images", "3",
        "--max-iter", "30",
        "--mei-restarts", "2",
        "--seed", "7",
        "--quiet",
        "--out", str(out_dir),
    )  # fmt: skip
    assert rc == 0, err
    assert {p.name for p in out_dir.iterdir()} == {"grid.png", "images.npz", "result.json"}
    assert (out_dir / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out_dir / 'grid.png'}" in out

    meta = json.loads((out_dir / "result.json").read_text())
    spec = meta["spec"]
    assert (spec["model"], spec["layer"], spec["unit"], spec["seed"]) == ("complex-cell", "response", 0, 7)
    assert (spec["method"], spec["n_images"], spec["diversity"], spec["max_iter"]) == ("diverse", 3, 0.01, 30)
    assert spec["versions"]["diversevis"] == __version__ and spec["versions"]["torch"] == torch.__version__

    with np.load(out_dir / "images.npz") as z:
        images, acts = z["images"], z["activations"]
    assert images.shape == (3, 3, 16, 16)
    norm = spec["norm"]
    np.testing.assert_allclose(np.linalg.norm((images - 0.5).reshape(3, -1), axis=1), norm, rtol=1e-4)
    # energy model with orthonormal filters: activation <= ||x - grey||^2 = norm^2, reached at every phase
    assert np.all(acts <= norm**2 * (1 + 1e-5)) and np.all(acts >= 0.9 * norm**2)
    with torch.no_grad():
        net = load_model("cell:complex")
        again = net.activations(torch.from_numpy(images), ["response"])["response"].flatten()
    np.testing.assert_allclose(again.numpy(), acts, rtol=1e-5)
    assert meta["metrics"]["activations"] == pytest.approx(acts.tolist())


def test_mei_on_the_simple_cell_reaches_its_closed_form_maximum(capsys, tmp_path):
    out_dir = tmp_path / "mei"
    rc, out, err = run(
        capsys, "mei", "-m", "cell:simple", "-l", "response", "-u", "0", "--max-iter", "30",
        "--restarts", "2", "-q", "-o", str(out_dir),
    )  # fmt: skip
    assert rc == 0, err
    meta = json.loads((out_dir / "result.json").read_text())
    spec = meta["spec"]
    assert (spec["method"], spec["model"], spec["restarts"]) == ("mei", "simple-cell", 2)
    with np.load(out_dir / "images.npz") as z:
        assert z["images"].shape == (1, 3, 16, 16)
    # <g, x - grey> with ||g|| = 1 and ||x - grey|| = norm: at most norm (Cauchy-Schwarz)
    assert 0.9 * spec["norm"] <= meta["metrics"]["mei_activation"] <= spec["norm"] * (1 + 1e-5)
    assert "1 image(s) of 16px" in out


# ----------------------------------------------------------------------------- subprocess
def test_user_error_in_a_real_process_exits_2_with_one_line():
    argv = ["mei", "--model", "vgg16paper", "--layer", "x", "--unit", "0"]
    proc = subprocess.run(
        [sys.executable, "-m", "diversevis.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("diversevis: error: unknown model 'vgg16paper'. Did you mean: vgg16-paper")


def test_console_script_lists_models():
    script = Path(sys.executable).with_name("diversevis")
    if not script.exists():
        pytest.skip("the diversevis console script is not installed next to this python")
    proc = subprocess.run([str(script), "models"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    assert any(line.split()[0] == "vgg16-paper" for line in proc.stdout.splitlines())
