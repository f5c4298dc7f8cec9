"""Executors: in-process, a local process pool (--jobs) and Ray give byte-identical bundles;
per-cell locks; a failing cell under the pool and under Ray."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from tiny import TINY

from engine import locks
from engine.cellstore import cell_store
from engine.cli import sae_diff, sae_run
from engine.executors import run_group
from engine.plan import make_plan
from engine.provenance import code_info
from engine.runner import run
from engine.spec import load_spec

SPEC = TINY + "run: {threads: 1}\n"
# lr 1e30 with l1 1e30 overflows at step 1; the lr=3e-3 cell trains normally (lr splits the groups)
NAN_SPEC = SPEC.replace("[1, 2]", "1").replace("[0.03, 0.1]", "1.0e+30").replace("lr: 3.0e-3", "lr: [3.0e-3, 1.0e+30]")


def digest(bundle) -> str:
    return json.loads((bundle / "bundle.json").read_text())["content_digest"]


def bundle_of(results):
    (b,) = [p for p in results.iterdir() if p.name.startswith(("tiny-", "nan-"))]
    return b


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("spec") / "tiny.yaml"
    p.write_text(SPEC)
    return p


@pytest.fixture(scope="module")
def reference(spec_file, tmp_path_factory):
    """The in-process (default executor) bundle."""
    return run(make_plan(load_spec(spec_file)), tmp_path_factory.mktemp("ref")).path


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for this module (starting one takes seconds)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_pool_gives_the_in_process_bytes(spec_file, reference, tmp_path):
    r = CliRunner().invoke(sae_run, [str(spec_file), "--results", str(tmp_path), "--jobs", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("created:") and "4 cells trained, 0 reused" in r.stdout
    pooled = bundle_of(tmp_path)
    assert digest(pooled) == digest(reference)
    d = CliRunner().invoke(sae_diff, [str(reference), str(pooled)])
    assert d.exit_code == 0 and "identical" in d.output


def test_ray_gives_the_in_process_bytes(local_ray, spec_file, reference, tmp_path):
    r = CliRunner().invoke(sae_run, [str(spec_file), "--results", str(tmp_path), "--executor", "ray"])
    assert r.exit_code == 0, r.output
    assert "4 cells trained, 0 reused" in r.stdout
    assert "[cells 4/4]" in r.stderr
    on_ray = bundle_of(tmp_path)
    assert digest(on_ray) == digest(reference)
    d = CliRunner().invoke(sae_diff, [str(reference), str(on_ray)])
    assert d.exit_code == 0 and "identical" in d.output
    assert local_ray.is_initialized()  # a run does not shut down an instance it did not start


def test_ray_reuses_cells_finished_anywhere(local_ray, spec_file, reference, tmp_path):
    import shutil

    shutil.copytree(reference.parent / ".cells", tmp_path / ".cells")
    r = CliRunner().invoke(sae_run, [str(spec_file), "--results", str(tmp_path), "--executor", "ray", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "0 cells trained, 4 reused" in r.stdout
    assert digest(bundle_of(tmp_path)) == digest(reference)


def test_a_failing_cell_under_ray(local_ray, tmp_path):
    spec = tmp_path / "nan.yaml"
    spec.write_text(NAN_SPEC.replace("name: tiny", "name: nan"))
    plan = make_plan(load_spec(spec))
    bad = next(c for c in plan.cells if c.sae.lr > 1)
    good = next(c for c in plan.cells if c.sae.lr < 1)
    results = tmp_path / "r"
    r = CliRunner().invoke(sae_run, [str(spec), "--results", str(results), "--executor", "ray"])
    assert r.exit_code == 1, r.output
    assert f"error: cell {bad.id}: non-finite training loss at step 1" in r.stderr
    assert "Traceback" not in r.output
    assert cell_store(results).done(good.key) is not None and cell_store(results).done(bad.key) is None
    assert not [p for p in results.iterdir() if p.name.startswith("nan-")]
    # the rerun retries only the failed cell
    r = CliRunner().invoke(sae_run, [str(spec), "--results", str(results), "--executor", "ray"])
    assert r.exit_code == 1 and "1 of 2 cells already finished" in r.stderr and "[cells 1/1]" in r.stderr


def test_a_failing_cell_in_the_pool(tmp_path):
    spec = tmp_path / "nan.yaml"
    spec.write_text(NAN_SPEC.replace("name: tiny", "name: nan"))
    plan = make_plan(load_spec(spec))
    bad = next(c for c in plan.cells if c.sae.lr > 1)
    good = next(c for c in plan.cells if c.sae.lr < 1)
    r = CliRunner().invoke(sae_run, [str(spec), "--results", str(tmp_path / "r"), "--jobs", "1"])
    assert r.exit_code == 1, r.output
    assert f"error: cell {bad.id}: non-finite training loss at step 1" in r.stderr
    assert "Traceback" not in r.output
    assert cell_store(tmp_path / "r").done(good.key) is not None


def test_cli_executor_usage_errors(spec_file, tmp_path, monkeypatch):
    cli = CliRunner()
    r = cli.invoke(sae_run, [str(spec_file), "--executor", "ray", "--jobs", "2"])
    assert r.exit_code == 2 and "--jobs is for the local executor" in r.output
    r = cli.invoke(sae_run, [str(spec_file), "--address", "10.0.0.1:6379"])
    assert r.exit_code == 2 and "--address needs --executor ray" in r.output
    assert cli.invoke(sae_run, [str(spec_file), "--jobs", "0"]).exit_code == 2
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    r = cli.invoke(sae_run, [str(spec_file), "--results", str(tmp_path), "--executor", "ray"])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1] == "--executor ray: Ray is not installed; install it with: pip install 'sae-repro[ray]'"
    assert "Traceback" not in r.output


def wait_blocked_on(results, key, thread: threading.Thread, timeout: float = 60) -> None:
    """Until the kernel lists a waiter blocked on the lock file of ``key`` (``->`` lines of
    /proc/locks): then ``thread`` is provably waiting, not merely slow to start."""
    ino = os.stat(locks.lock_path(results, key)).st_ino
    end = time.monotonic() + timeout
    while not any(" -> " in line and f":{ino} " in line for line in open("/proc/locks")):
        assert thread.is_alive(), "the waiter returned while the lock was held"
        assert time.monotonic() < end, "the waiter never blocked on the lock"
        time.sleep(0.01)


def test_locks_exclude_and_are_freed(tmp_path):
    a = locks.try_lock(tmp_path, "k")
    assert a is not None
    assert locks.try_lock(tmp_path, "k") is None  # flock: another open file description
    assert locks.try_lock(tmp_path, "other") is not None
    waited = []
    t = threading.Thread(target=lambda: (locks.wait_unlocked(tmp_path, "k"), waited.append(True)))
    t.start()
    wait_blocked_on(tmp_path, "k", t)
    assert not waited
    a.release()
    t.join(5)
    assert waited
    b = locks.try_lock(tmp_path, "k")
    assert b is not None
    b.release()


def test_a_dead_holder_frees_its_lock(tmp_path):
    import subprocess

    hold = "import sys, time; from engine import locks; l = locks.try_lock(sys.argv[1], 'k'); print('held', flush=True); time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        assert locks.try_lock(tmp_path, "k") is None
    finally:
        p.kill()
        p.wait()
    lock = locks.try_lock(tmp_path, "k")
    assert lock is not None
    lock.release()


def test_run_group_skips_busy_cells_then_waits_for_them(spec_file, reference, tmp_path):
    plan = make_plan(load_spec(spec_file))
    group = [c for c in plan.cells if c.sae.m == plan.cells[0].sae.m]
    keys = [c.key for c in group]
    held = locks.try_lock(tmp_path, keys[0])  # "another run" is training the first cell
    r = run_group(plan, tmp_path, keys, code_info(), wait=False)
    assert r.busy == [keys[0]] and r.trained == keys[1:] and not r.failures
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", run_group(plan, tmp_path, keys, code_info(), wait=True)))
    t.start()
    wait_blocked_on(tmp_path, keys[0], t)
    assert "r" not in out  # waiting for the holder
    held.release()  # the holder died without finishing: the waiter trains the cell itself
    t.join(60)
    assert out["r"].trained == [keys[0]] and out["r"].reused == keys[1:]
    ref = json.loads((reference / "bundle.json").read_text())["files"]
    for c in group:
        assert (cell_store(tmp_path).dir(c.key) / "sae.safetensors").read_bytes() == (reference / f"cells/{c.id}/sae.safetensors").read_bytes()
        assert ref[f"cells/{c.id}/sae.safetensors"]
