"""Faults, each a test: SIGKILL mid-sweep then resume, Ctrl-C, two runs at once, a full or
read-only results directory. (A failing cell: tests/test_run.py in-process, tests/test_executors.py
in the pool and under Ray.) Runs are real ``sae-run`` processes on a tiny spec."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny import TINY

from engine.bundle import verify
from engine.cellstore import cell_store
from engine.cli import sae_run
from engine.plan import make_plan
from engine.runner import run
from engine.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
# 8 cells in 4 groups, long enough to be stopped half-way
SWEEP = TINY.replace("[1, 2]", "[1, 2, 3, 4]").replace("steps: 150", "steps: 600") + "run: {threads: 1}\n"
N_CELLS = 8


def start(spec: Path, results: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from engine.cli import sae_run; sae_run()", str(spec), "--results", str(results), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finished_cells(results: Path) -> int:
    store = cell_store(results)
    return sum(store.done(p.name) is not None for p in store.root.iterdir()) if store.root.exists() else 0


def wait_for_a_finished_cell(p: subprocess.Popen, results: Path, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while finished_cells(results) == 0:
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < end, "no cell finished in time"
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "(zombie)" not in state


def bundles(results: Path) -> list[Path]:
    return [p for p in results.iterdir() if p.name.startswith("tiny")]


def trained(stdout: str, stderr: str) -> int:
    """How many cells a finished sae-run trained, from what it printed."""
    m = re.search(r"\((\d+) cells trained", stdout) or re.search(r"\((\d+) cells trained here", stderr)
    return int(m.group(1)) if m else 0  # "cached:" -- another run did it all


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    spec = tmp_path_factory.mktemp("spec") / "sweep.yaml"
    spec.write_text(SWEEP)
    return spec


@pytest.fixture(scope="module")
def uninterrupted(sweep, tmp_path_factory):
    return run(make_plan(load_spec(sweep)), tmp_path_factory.mktemp("ref")).meta["content_digest"]


def test_sigkill_mid_sweep_then_resume(sweep, uninterrupted, tmp_path):
    p = start(sweep, tmp_path, "--jobs", "1")
    wait_for_a_finished_cell(p, tmp_path)
    workers = children(p.pid)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    end = time.monotonic() + 30
    while any(alive(w) for w in workers) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers), "pool workers outlived their killed parent"
    done = finished_cells(tmp_path)
    assert 1 <= done
    if done < N_CELLS:
        assert not bundles(tmp_path)  # nothing that looks complete
    again = CliRunner().invoke(sae_run, [str(sweep), "--results", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert f"{done} of {N_CELLS} cells already finished" in again.stderr
    assert f"({N_CELLS - done} cells trained, {done} reused)" in again.stdout  # no finished cell recomputed
    (bundle,) = bundles(tmp_path)
    assert verify(bundle).ok
    assert json.loads((bundle / "bundle.json").read_text())["content_digest"] == uninterrupted


@pytest.mark.parametrize("extra", [(), ("--jobs", "1")], ids=["in-process", "pool"])
def test_ctrl_c_stops_cleanly_and_keeps_finished_cells(sweep, tmp_path, extra):
    p = start(sweep, tmp_path, *extra)
    wait_for_a_finished_cell(p, tmp_path)
    workers = children(p.pid)
    os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted: finished cells are kept; rerun the same command to resume" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err  # workers included
    assert finished_cells(tmp_path) >= 1
    assert not bundles(tmp_path)
    end = time.monotonic() + 30
    while any(alive(w) for w in workers) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers)


def test_two_runs_at_once_share_the_work(sweep, uninterrupted, tmp_path):
    a = start(sweep, tmp_path)
    b = start(sweep, tmp_path)
    (out_a, err_a), (out_b, err_b) = a.communicate(timeout=300), b.communicate(timeout=300)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    assert "Traceback" not in err_a + err_b
    assert trained(out_a, err_a) + trained(out_b, err_b) == N_CELLS  # no cell trained twice
    (bundle,) = bundles(tmp_path)
    assert verify(bundle).ok
    assert json.loads((bundle / "bundle.json").read_text())["content_digest"] == uninterrupted
    leftovers = [p for p in [*tmp_path.iterdir(), *(tmp_path / ".cells").iterdir()] if p.name.startswith(".tmp-")]
    assert not leftovers
    assert finished_cells(tmp_path) == N_CELLS


def _raise(err: int):
    def fail(self, *args, **kwargs):
        raise OSError(err, os.strerror(err), str(getattr(self, "tmp", None) or getattr(self, "root", "?")))

    return fail


@pytest.mark.parametrize(
    ("target", "err"),
    [("engine.bundle.BundleWriter.write_json", errno.ENOSPC), ("engine.cellstore.KeyedStore.put", errno.EROFS)],
    ids=["disk-full-writing-the-bundle", "read-only-cell-store"],
)
def test_unwritable_results_fail_clearly(target, err, tmp_path, monkeypatch):
    monkeypatch.setattr(target, _raise(err))
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY.replace("steps: 150", "steps: 20") + "run: {threads: 1}\n")
    results = tmp_path / "r"
    r = CliRunner().invoke(sae_run, [str(spec), "--results", str(results)])
    assert r.exit_code == 2, r.output
    (line,) = r.stderr.strip().splitlines()[-1:]
    assert f"cannot write results ({os.strerror(err)}); free some space or choose a writable --results directory" in line
    assert "Traceback" not in r.output
    assert not bundles(results)
    assert not [p for p in results.rglob(".tmp-*")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 directory anyway; the monkeypatched EROFS/ENOSPC cases cover it")
def test_read_only_results_directory(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY.replace("steps: 150", "steps: 20") + "run: {threads: 1}\n")
    results = tmp_path / "r"
    results.mkdir()
    results.chmod(0o500)
    try:
        r = CliRunner().invoke(sae_run, [str(spec), "--results", str(results)])
    finally:
        results.chmod(0o700)
    assert r.exit_code == 2, r.output
    assert "cannot write results (Permission denied)" in r.stderr
    assert "Traceback" not in r.output
    assert not list(results.iterdir())
