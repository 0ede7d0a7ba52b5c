"""The CLI never answers a user's or the machine's fault with a traceback: one line, a documented status.

Exit statuses: 2 for usage errors (names, values), 1 for the environment (an unwritable output, a
missing device, an unexpected error), 130 for Ctrl-C.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from diversevis.cli import EXIT_ENVIRONMENT, EXIT_USAGE, main
from diversevis.core.devices import check_device
from diversevis.core.errors import DiversevisError, EnvironmentProblem

MEI = ["mei", "--model", "cell:simple", "--layer", "response", "--unit", "0", "--max-iter", "3", "--quiet"]


def run(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_an_output_path_under_a_file_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, err = run(capsys, [*MEI, "--out", str(blocker / "run")])
    assert rc == EXIT_USAGE and len(err) == 1 and "is a file, not a directory" in err[0]
    assert not (blocker.parent / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_directory_is_an_environment_error(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, err = run(capsys, [*MEI, "--out", str(ro / "run")])
    finally:
        ro.chmod(0o700)
    assert rc == EXIT_ENVIRONMENT and len(err) == 1 and "no permission to write" in err[0]


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.isdir("/proc/self"), reason="root and procfs only")
def test_an_output_on_a_filesystem_root_cannot_write_is_an_environment_error(capsys):
    rc, err = run(capsys, [*MEI, "--out", "/proc/diversevis-test/run"])  # procfs: no mkdir, even for root
    assert rc == EXIT_ENVIRONMENT and len(err) == 1 and "/proc/diversevis-test" in err[0]


@pytest.fixture
def full_disk(tmp_path):
    """A 48 KiB tmpfs with 4 KiB free (root only; the injected ENOSPC below covers the other cases)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(disk)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the injected-ENOSPC test covers a full disk)")
    try:
        (disk / "filler").write_bytes(b"\0" * (44 * 1024))
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_full_disk_is_one_line_naming_the_output_and_leaves_no_partial_file(full_disk, capsys):
    out = full_disk / "run"
    rc, err = run(
        capsys, ["diverse", *MEI[1:7], "--images", "3", "--max-iter", "3", "--quiet", "--out", str(out)]
    )
    assert rc == EXIT_ENVIRONMENT and len(err) == 1
    assert "No space left on device" in err[0] and str(full_disk) in err[0]
    assert not list(full_disk.rglob("*.tmp"))


def test_a_write_that_fails_with_an_os_error_is_one_line_and_status_1(tmp_path, capsys, monkeypatch):
    import diversevis.core.cache as cache

    def full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "out" / "grid.png"))

    monkeypatch.setattr(cache.os, "fsync", full)
    rc, err = run(capsys, [*MEI, "--out", str(tmp_path / "out")])
    assert rc == EXIT_ENVIRONMENT and len(err) == 1
    assert "No space left on device" in err[0] and "grid.png" in err[0]


@pytest.mark.parametrize(
    "device, error, match",
    [("banana", DiversevisError, "unknown device 'banana'"), ("cuda:99", EnvironmentProblem, "cuda")],
)
def test_devices_are_checked_against_this_machine(device, error, match):
    with pytest.raises(error, match=match):
        check_device(device)


def test_an_unavailable_device_exits_1_and_an_unknown_one_2(capsys):
    rc, err = run(capsys, [*MEI, "--device", "banana"])
    assert rc == EXIT_USAGE and "unknown device" in err[0]
    rc, err = run(capsys, [*MEI, "--device", "cuda:99"])
    assert rc == EXIT_ENVIRONMENT and len(err) == 1


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    import diversevis.cli.diverse as cmd

    def bug(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cmd, "load", bug)
    rc, err = run(capsys, [*MEI])
    assert rc == EXIT_ENVIRONMENT and err == [
        "diversevis: error: unexpected ZeroDivisionError: division by zero (please report it; --debug shows "
        "the traceback)"
    ]
    rc, err = run(capsys, ["--debug", *MEI])
    assert rc == EXIT_ENVIRONMENT and err[0].startswith("Traceback") and len(err) > 3


def test_a_sweep_refused_for_bad_units_leaves_no_settings_behind(tmp_path, capsys):
    argv = ["sweep", "--model", "cell:simple", "--layers", "response", "--max-iter", "3", "--quiet"]
    rc, err = run(capsys, [*argv, "--units", "5-9", "--out", str(tmp_path / "s")])
    assert rc == EXIT_USAGE and "out of range" in err[0]
    assert not (tmp_path / "s").exists()
    rc, err = run(
        capsys, [*argv, "--units", "0", "--mei-restarts", "1", "--tests", "dfv", "--out", str(tmp_path / "s")]
    )
    assert rc == 0, err  # the corrected command is not refused for "other settings"


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--lr", "inf"], "expected a finite number > 0, got inf"),
        (["--contrast", "nan"], "expected a finite number > 0, got nan"),
        (["--norm", "inf"], "expected a finite number > 0, got inf"),
        (["--max-iter", "0"], "expected an integer >= 1, got 0"),
        (["--seed", str(2**64)], "seed must be an integer in [0, 2**63 - 1]"),
    ],
)
def test_absurd_numbers_are_usage_errors_without_a_traceback(capsys, flags, match):
    try:
        rc = main([*MEI, *flags])
    except SystemExit as exit_:  # argparse: usage line + error line
        rc = exit_.code
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE and match in err.strip().splitlines()[-1] and "Traceback" not in err


def test_a_pickled_direction_file_is_refused(tmp_path, capsys):
    import numpy as np

    f = tmp_path / "d.npy"
    np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    argv = ["mei", "--model", "cell:simple", "--layer", "response", "--direction", str(f), "--quiet"]
    rc, err = run(capsys, argv)
    assert rc == EXIT_USAGE and len(err) == 1 and "not a plain numeric .npy array" in err[0]


def test_a_corrupt_index_row_is_reported_with_the_unit_and_repaired(tmp_path, capsys):
    import sqlite3

    argv = ["sweep", "--model", "cell:simple", "--layers", "response", "--units", "0", "--max-iter", "3",
            "--mei-restarts", "1", "--tests", "dfv", "--quiet", "--out", str(tmp_path / "s")]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    with sqlite3.connect(tmp_path / "s" / "index.sqlite") as db:
        db.execute("UPDATE units SET metrics = '{not json' WHERE unit = 0")
    for command in (argv, ["report", str(tmp_path / "s")]):
        rc, err = run(capsys, command)
        assert (
            rc == EXIT_USAGE
            and len(err) == 1
            and "response unit 0 is corrupt" in err[0]
            and "--repair" in err[0]
        )
    rc, err = run(capsys, [*argv, "--repair"])
    assert rc == 0, err
    assert main(["report", str(tmp_path / "s")]) == 0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
        (lambda p: p.write_text("not a model\n"), "is not a PyTorch checkpoint"),
        (lambda p: p.mkdir(), "is a directory, not a file"),
    ],
    ids=["empty", "text", "directory"],
)
def test_a_model_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path, capsys, make, message):
    make(tmp_path / "model.pt")
    rc, err = run(capsys, ["layers", "--model", f"file:{tmp_path / 'model.pt'}"])
    assert rc == EXIT_USAGE and len(err) == 1 and message in err[0]


def test_a_sweep_without_layers_is_a_usage_error(tmp_path, capsys):
    rc, err = run(capsys, ["sweep", "--model", "cell:simple", "--layers", ",", "--units", "0",
                           "--out", str(tmp_path / "s")])  # fmt: skip
    assert rc == EXIT_USAGE and "give at least one layer name" in err[0]
    assert not (tmp_path / "s" / "index.sqlite").exists()
