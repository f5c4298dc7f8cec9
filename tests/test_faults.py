"""Faults, each a test: SIGKILL mid-sweep then resume, Ctrl-C, two runs at once, a full or
read-only results directory. (A failing cell: tests/test_run.py in-process, tests/test_executors.py
in the pool and under Ray.) Runs are real ``sae-run`` processes on a tiny spec.

No test here races a clock. A run to be interrupted is started with the test hook
``SAE_TEST_HOLD_AFTER_CELLS=1:<marker>`` (``engine.executors``): after its first cell is stored
it creates ``<marker>`` and blocks until the marker is deleted or the run is signalled. The
test waits for the marker (with a generous timeout, to fail instead of hang), so "one cell is
finished and the run is still going" is a state it controls, on a fast machine or a slow one.
"""

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
from engine.executors import HOLD_ENV
from engine.plan import make_plan
from engine.runner import run
from engine.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
# 8 cells in 4 groups of 2 (one group per dictionary size)
SWEEP = TINY.replace("[1, 2]", "[1, 2, 3, 4]") + "run: {threads: 1}\n"
N_CELLS = 8
PATIENCE = 180  # seconds: a run that has not reached the awaited state by then is a failure


def start(spec: Path, results: Path, *extra: str, hold: Path | None = None) -> subprocess.Popen:
    """``sae-run`` in a new process group; with ``hold``, it stops after its first stored cell
    (creating the file ``hold``) until ``hold`` is deleted or the process is signalled."""
    cmd = [sys.executable, "-c", "from engine.cli import sae_run; sae_run()", str(spec), "--results", str(results), *extra]
    env = {k: v for k, v in os.environ.items() if k != HOLD_ENV}
    if hold is not None:
        env[HOLD_ENV] = f"1:{hold}"
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """A test run started in the background of a script (``cmd &``) ignores SIGINT, and the
    ignoring is inherited: give the child the default, as a terminal's foreground job has, so
    that Python installs its Ctrl-C handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finished_cells(results: Path) -> int:
    store = cell_store(results)
    return sum(store.done(p.name) is not None for p in store.root.iterdir()) if store.root.exists() else 0


def wait_until(condition, p: subprocess.Popen, what: str, timeout: float = PATIENCE) -> None:
    """Poll ``condition`` while ``p`` runs; fail (never hang) if it exits or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while not condition():
        if p.poll() is not None:
            out, err = p.communicate()
            pytest.fail(f"sae-run exited with {p.returncode} before {what}:\n{out}\n{err}")
        if time.monotonic() > end:
            stop(p)
            pytest.fail(f"sae-run did not reach {what} within {timeout:.0f} s")
        time.sleep(0.02)


def held(p: subprocess.Popen, marker: Path) -> None:
    """Wait until ``p`` stored its first cell and is held by the test hook."""
    wait_until(marker.exists, p, "its first stored cell (the hold marker)")


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.communicate()


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
    marker = tmp_path.parent / f"{tmp_path.name}.hold"
    p = start(sweep, tmp_path, "--jobs", "1", hold=marker)
    try:
        held(p, marker)  # the worker stored cell 1 of 8 and waits
        workers = children(p.pid)
        assert workers, "no pool worker"
        os.kill(p.pid, signal.SIGKILL)  # the parent only: its workers must go by themselves
        p.communicate(timeout=60)
    finally:
        stop(p)
    end = time.monotonic() + 30
    while any(alive(w) for w in workers) and time.monotonic() < end:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers), "pool workers outlived their killed parent"
    assert finished_cells(tmp_path) == 1
    assert not bundles(tmp_path)  # nothing that looks complete
    again = CliRunner().invoke(sae_run, [str(sweep), "--results", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert f"1 of {N_CELLS} cells already finished" in again.stderr
    assert f"({N_CELLS - 1} cells trained, 1 reused)" in again.stdout  # no finished cell recomputed
    (bundle,) = bundles(tmp_path)
    assert verify(bundle).ok
    assert json.loads((bundle / "bundle.json").read_text())["content_digest"] == uninterrupted


@pytest.mark.parametrize("extra", [(), ("--jobs", "1")], ids=["in-process", "pool"])
def test_ctrl_c_stops_cleanly_and_keeps_finished_cells(sweep, tmp_path, extra):
    marker = tmp_path.parent / f"{tmp_path.name}.hold"
    p = start(sweep, tmp_path, *extra, hold=marker)
    try:
        held(p, marker)  # cell 1 of 8 stored, the run held mid-group: it cannot finish first
        workers = children(p.pid)
        os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        _, err = p.communicate(timeout=60)
    finally:
        stop(p)
    assert p.returncode == 130, err
    assert "interrupted: finished cells are kept; rerun the same command to resume" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err  # workers included
    assert finished_cells(tmp_path) == 1
    assert not bundles(tmp_path)
    end = time.monotonic() + 30
    while any(alive(w) for w in workers) and time.monotonic() < end:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers)


def test_two_runs_at_once_share_the_work(sweep, uninterrupted, tmp_path):
    """A is held after its first cell, inside the first group (whose locks it holds); B then
    trains the other three groups and waits for A's; released, A finishes its group and
    reuses B's. The overlap is forced, so the split of the work is exact."""
    marker = tmp_path.parent / f"{tmp_path.name}.hold"
    a = start(sweep, tmp_path, hold=marker)
    b = None
    try:
        held(a, marker)
        b = start(sweep, tmp_path)
        wait_until(lambda: finished_cells(tmp_path) == N_CELLS - 1, b, "the cells not locked by the held run")
        marker.unlink()  # release A
        (out_a, err_a), (out_b, err_b) = a.communicate(timeout=300), b.communicate(timeout=300)
    finally:
        stop(a)
        if b is not None:
            stop(b)
    assert a.returncode == 0, err_a
    assert b.returncode == 0, err_b
    assert "Traceback" not in err_a + err_b
    assert "1 cells are being trained by another run" in err_b  # B did wait for A's locked cell
    assert (trained(out_a, err_a), trained(out_b, err_b)) == (2, N_CELLS - 2)  # no cell trained twice
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
