"""The bad-input audit of issue 14: every listed bad input or fault, run as a new user would, one table.

Each case runs in a fresh temporary directory as a subprocess (the CLI, or ``python -c`` for the
Python API), and the table gives its exit status, the first line it printed on stderr (stdout when it
succeeded), whether a Python traceback appeared and whether it left a partial file (``*.tmp``) or an
output directory behind after a failure. Python API cases print ``raised DiversevisError: ...`` and
exit 3 when the library refused the input, ``returned normally`` (exit 0) when it accepted it.

Run it against this checkout, or against another source tree to compare versions side by side::

    python benchmarks/bad_inputs.py                       # this checkout's src/
    python benchmarks/bad_inputs.py --src /tmp/old/src    # e.g. a worktree of an older commit
    python benchmarks/bad_inputs.py --src /tmp/old/src --compare-src src --markdown table.md

The disk-full case mounts a 48 KiB tmpfs (needs root; it is reported as skipped otherwise).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_FILE = """
import torch
from torch import nn

def linear_head():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 5))

def nan_weight():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    with torch.no_grad():
        m[0].weight[0, 0, 0, 0] = float("nan")
    return m
"""

DIVERSE = ["diverse", "-m", "vgg16-paper", "-l", "conv2_1", "-u", "3", "--images", "3", "--max-iter", "20",
           "--quiet"]  # fmt: skip
PHASE = ["phase-test", "-m", "vgg16-paper", "-l", "conv2_1", "-u", "3"]
SWEEP = ["sweep", "-m", "vgg16-paper", "--layers", "conv1_1", "--tests", "dfv", "--max-iter", "10", "--quiet"]
API = "import numpy as np, diversevis as dv; net = dv.load_model('vgg16-paper'); "


@dataclass
class Case:
    """One bad input: CLI arguments (or a Python snippet), an optional setup, and how it is run."""

    label: str
    argv: list[str] | None = None
    python: str | None = None
    setup: str | None = None  # name of a setup step (a method of Runner)
    out: bool = True  # append --out OUT to the CLI arguments
    interrupt_after: float | None = None  # send SIGINT after this many seconds
    env: dict[str, str] | None = None


def cases() -> list[Case]:
    """The inputs listed in issue 14's Why, in its order."""
    d = DIVERSE
    return [
        Case("--out a read-only location (/sys)", d, out=False, setup="readonly_out"),
        Case("unwritable cache directory", d, env={"DIVERSEVIS_CACHE": "/sys/dv-cache"}),
        Case("full disk (48 KiB tmpfs)", d, out=False, setup="full_disk"),
        Case(
            "a Linear layer as target",
            [
                "diverse",
                "-m",
                "badmodels:linear_head",
                "-l",
                "3",
                "-u",
                "0",
                "--input-size",
                "16,16",
                "--max-iter",
                "20",
                "--quiet",
            ],
        ),  # fmt: skip
        Case(
            "occlusion, image smaller than the RF",
            [
                "occlusion",
                "-m",
                "vgg16-paper",
                "-l",
                "conv3_1",
                "-u",
                "0",
                "--image",
                "chelsea",
                "--image-size",
                "16",
                "--size",
                "8",
                "--stride",
                "4",
            ],
        ),  # fmt: skip
        Case("sweep on an index with a corrupt JSON row", SWEEP + ["--units", "0-1"], setup="corrupt_store"),
        Case(
            "report on an index with a corrupt JSON row", ["report"], setup="corrupt_store_report", out=False
        ),
        Case("--device cuda (no CUDA here)", d + ["--device", "cuda"]),
        Case("--device banana", d + ["--device", "banana"]),
        Case(
            "--direction bad.npy holding pickled data",
            [
                "diverse",
                "-m",
                "vgg16-paper",
                "-l",
                "conv2_1",
                "--direction",
                "bad.npy",
                "--max-iter",
                "20",
                "--quiet",
            ],
            setup="pickled_npy",
        ),  # fmt: skip
        Case("--max-iter 100000000000", DIVERSE[:-3] + ["--max-iter", "100000000000", "--quiet"]),
        Case("--seed 2**64", d + ["--seed", str(2**64)]),
        Case("--diversity inf", d + ["--diversity", "inf"]),
        Case("--lr inf", d + ["--lr", "inf"]),
        Case("--contrast inf", d + ["--contrast", "inf"]),
        Case("--norm 1e30", d + ["--norm", "1e30"]),
        Case(
            "--direction nan",
            [
                "diverse",
                "-m",
                "vgg16-paper",
                "-l",
                "conv2_1",
                "--direction",
                ",".join(["nan"] * 128),
                "--max-iter",
                "20",
                "--quiet",
            ],
        ),  # fmt: skip
        Case(
            "--direction inf",
            [
                "diverse",
                "-m",
                "vgg16-paper",
                "-l",
                "conv2_1",
                "--direction",
                ",".join(["inf"] * 128),
                "--max-iter",
                "20",
                "--quiet",
            ],
        ),  # fmt: skip
        Case(
            "sweep of a model with a NaN weight",
            [
                "sweep",
                "-m",
                "badmodels:nan_weight",
                "--layers",
                "2",
                "--units",
                "0-1",
                "--tests",
                "dfv",
                "--max-iter",
                "10",
                "--input-size",
                "16,16",
                "--quiet",
            ],
        ),  # fmt: skip
        Case("phase-test --contrast inf", PHASE + ["--contrast", "inf"]),
        Case(
            "API diverse(diversity=nan)",
            python=API + "dv.diverse(net, 'conv2_1', 3, diversity=float('nan'), max_iter=20, mei=False)",
        ),  # fmt: skip
        Case("API diverse(lr=0)", python=API + "dv.diverse(net, 'conv2_1', 3, lr=0, max_iter=20, mei=False)"),
        Case(
            "API diverse(tau=0, softmin)",
            python=API + "dv.diverse(net, 'conv2_1', 3, distance='softmin', tau=0, max_iter=20, mei=False)",
        ),  # fmt: skip
        Case(
            "API diverse(ema=2)", python=API + "dv.diverse(net, 'conv2_1', 3, ema=2, max_iter=20, mei=False)"
        ),
        Case(
            "API diverse(mei=nan)",
            python=API + "dv.diverse(net, 'conv2_1', 3, mei=float('nan'), max_iter=20)",
        ),  # fmt: skip
        Case(
            "API diverse_units(n_images=1)",
            python=API + "dv.diverse_units(net, 'conv2_1', [3, 4], n_images=1, max_iter=20, mei=False)",
        ),  # fmt: skip
        Case(
            "API distance layer deeper than target",
            python=API + "dv.diverse(net, 'conv2_1', 3, distance_layer='conv3_1', max_iter=20, mei=False)",
        ),  # fmt: skip
        Case("--out under a file (reported when?)", d, out=False, setup="out_under_file"),
        Case("sweep with bad --units, then corrected", SWEEP + ["--units", "0-1"], setup="bad_units_first"),
        Case("sweep --layers ,", ["sweep", "-m", "vgg16-paper", "--layers", ",", "--units", "0"]),
        Case(
            "Ctrl-C in diverse (after 12 s)",
            DIVERSE[:-3] + ["--max-iter", "100000", "--patience", "100000", "--quiet"],
            interrupt_after=12.0,
        ),  # fmt: skip
        Case(
            "API np.int64 unit (from argsort)",
            python=API
            + "r = dv.diverse(net, 'conv2_1', np.argsort([3, 1])[0], max_iter=20, mei=False); print('ok', r.activations.isfinite().all().item())",
        ),  # fmt: skip
        Case(
            "--model an empty file",
            ["diverse", "-m", "file:empty.pt", "-l", "0", "-u", "0"],
            setup="model_files",
        ),  # fmt: skip
        Case(
            "--model a text file",
            ["diverse", "-m", "file:text.pt", "-l", "0", "-u", "0"],
            setup="model_files",
        ),  # fmt: skip
        Case(
            "--model a directory", ["diverse", "-m", "file:adir", "-l", "0", "-u", "0"], setup="model_files"
        ),  # fmt: skip
    ]


def _api_call(code: str) -> str:
    """A Python API snippet that prints what a user sees: the DiversevisError raised, or its output."""
    body = "\n".join("    " + line for line in code.split("; "))
    return (
        "import sys\nfrom diversevis import DiversevisError\ntry:\n"
        + body
        + "\n    print('returned normally')\n"
        "except DiversevisError as e:\n    print(f'raised DiversevisError: {e}', file=sys.stderr); sys.exit(3)\n"
    )


class Runner:
    """Runs cases against one source tree, each in a fresh working directory."""

    def __init__(self, src: Path, timeout: float) -> None:
        self.src, self.timeout = src.resolve(), timeout

    def run(self, case: Case) -> dict:
        with tempfile.TemporaryDirectory(prefix="dv-bad-") as tmp:
            work = Path(tmp)
            (work / "badmodels.py").write_text(MODEL_FILE)
            out = work / "out"
            argv = list(case.argv or [])
            if case.argv is not None and case.out:
                argv += ["--out", str(out)]
            extra = {}
            if case.setup:
                res = getattr(self, case.setup)(work, argv)
                if isinstance(res, str):
                    return {"status": "skip", "line": res, "traceback": False, "left": ""}
                argv, extra = res if isinstance(res, tuple) else (res, {})
            cmd = [sys.executable, "-m", "diversevis", *argv] if case.python is None else [
                sys.executable, "-c", _api_call(case.python)]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": f"{self.src}{os.pathsep}{work}", **(case.env or {})}
            existed = out.exists()  # a store made by the setup is not left behind by the case
            t0 = time.perf_counter()
            rc, stdout, stderr = self._call(cmd, work, env, case.interrupt_after)
            seconds = time.perf_counter() - t0
            failed = rc not in (0, 130)  # 130: Ctrl-C saves the partial result by design
            left = self._left(work, out if failed and not existed else None)
            if "after" in extra:
                extra["after"](work, out)
            text = stderr if stderr.strip() else stdout
            if rc == 0 and stdout.strip():
                text = stdout
            lines = [ln for ln in text.splitlines() if ln.strip()]
            usage = bool(lines) and lines[0].startswith("usage:")  # argparse: the error is the last line
            first = lines[-1] if ("Traceback" in text or usage) and lines else (lines[0] if lines else "")
            note = extra.get("note", lambda: "")()
            return {"status": rc, "line": first.strip()[:160] + note, "traceback": "Traceback" in text,
                    "left": left, "seconds": seconds}  # fmt: skip

    def _call(self, cmd, cwd, env, interrupt_after):
        if interrupt_after is None:
            try:
                p = subprocess.run(
                    cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=self.timeout
                )
            except subprocess.TimeoutExpired as e:
                return "timeout", e.stdout or "", e.stderr or ""
            return p.returncode, p.stdout, p.stderr
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(interrupt_after)
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=self.timeout)
        return p.returncode, stdout, stderr

    @staticmethod
    def _left(work: Path, failed_out: Path | None) -> str:
        tmps = [p.name for p in work.rglob("*.tmp")]
        left = f"tmp files: {', '.join(tmps)}" if tmps else ""
        if failed_out is not None and failed_out.exists() and any(failed_out.rglob("*")):
            left += (" " if left else "") + "output left"
        return left

    # ------------------------------------------------------------------ setups
    def readonly_out(self, work, argv):
        return argv + ["--out", "/sys/dv-out"]

    def full_disk(self, work, argv):
        disk = work / "disk"
        disk.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(disk)],
                          capture_output=True).returncode != 0:  # fmt: skip
            return "skipped: cannot mount a tmpfs here (needs root)"
        (disk / "filler").write_bytes(b"\0" * (44 * 1024))

        def after(work, out):
            subprocess.run(["umount", str(disk)], capture_output=True)

        def note():
            return ""

        self._disk = disk
        return argv + ["--out", str(disk / "run")], {"after": after, "note": note}

    def _store(self, work) -> Path:
        store = work / "out"
        env = {**os.environ, "PYTHONPATH": str(self.src)}
        subprocess.run([sys.executable, "-m", "diversevis", *SWEEP, "--units", "0-1", "--out", str(store)],
                       cwd=work, env=env, capture_output=True, timeout=self.timeout)  # fmt: skip
        db = next(store.glob("*.sqlite"), None) or next(store.glob("*.db"), None)
        if db is None:
            return store
        with sqlite3.connect(db) as con:
            table = con.execute("select name from sqlite_master where type='table' and sql like '%metrics%'").fetchone()[0]  # fmt: skip
            con.execute(f"update {table} set metrics = '{{not json' where unit = 1")
        return store

    def corrupt_store(self, work, argv):
        self._store(work)
        return argv

    def corrupt_store_report(self, work, argv):
        return argv + [str(self._store(work))]

    def pickled_npy(self, work, argv):
        np.save(work / "bad.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return argv

    def out_under_file(self, work, argv):
        (work / "afile").write_text("x")
        return argv + ["--out", str(work / "afile" / "run")]

    def bad_units_first(self, work, argv):
        env = {**os.environ, "PYTHONPATH": str(self.src)}
        bad = [a if a != "0-1" else "0-999" for a in argv]
        subprocess.run([sys.executable, "-m", "diversevis", *bad], cwd=work, env=env, capture_output=True,
                       timeout=self.timeout)  # fmt: skip
        return argv

    def model_files(self, work, argv):
        (work / "empty.pt").write_bytes(b"")
        (work / "text.pt").write_text("this is not a model\n")
        (work / "adir").mkdir()
        return argv


def _cell(r: dict) -> str:
    if r["status"] == "skip":
        return f"– | {r['line']}"
    flags = []
    if r["traceback"]:
        flags.append("**traceback**")
    if r["left"]:
        flags.append(r["left"])
    line = r["line"].replace("|", "\\|")
    return f"{r['status']} | `{line}`" + (f" ({'; '.join(flags)})" if flags else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--compare-src", type=Path, help="a second source tree: its columns come after")
    parser.add_argument("--only", help="run only cases whose label contains this text")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    trees = [args.src] + ([args.compare_src] if args.compare_src else [])
    head = " | ".join(
        f"{t} exit | first line" for t in (["before", "after"] if len(trees) == 2 else ["this"])
    )
    rows = [f"| input | {head} |", "|" + " --- |" * (1 + 2 * len(trees))]
    print(rows[0], flush=True)
    for case in cases():
        if args.only and args.only not in case.label:
            continue
        cells = [_cell(Runner(t, args.timeout).run(case)) for t in trees]
        rows.append(f"| {case.label} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    if shutil.which(sys.executable) is None:  # pragma: no cover
        sys.exit("no python")
    main()
