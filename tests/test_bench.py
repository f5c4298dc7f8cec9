"""Smoke test: every benchmark script runs at tiny size and prints its figures.

Benchmarks are not tests: nothing here asserts a time, only that each script still runs and
reports what it measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, "--quick", *args], cwd=BENCH, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "script,expect",
    [
        ("roofline.py", ["gemm rate", "% of the roofline", "speed-up over plain"]),
        ("sweep.py", ["batched", "one after another", "speed-up"]),
        ("datagen.py", ["generate (batch)", "M samples/s", "SAE step"]),
        ("e2e.py", ["specs/toy_quick.yaml", "cache hit"]),
        ("stop_rule.py", ["MMCS at the end", "loss, window 2000", "mmcs_truth, window 500"]),
        ("grid.py", ["FLOP floor", "wall time", "converged", "full grid, projected"]),
        ("subnormal.py", ["flush/keep", "subnormal exp_avg", "weights bit-identical  yes"]),
    ],
)
def test_benchmark_runs(script, expect):
    r = run(script)
    assert r.returncode == 0, r.stderr
    for text in expect:
        assert text in r.stdout, (text, r.stdout)


def test_roofline_profile_runs():
    r = run("roofline.py", "--profile")
    assert r.returncode == 0, r.stderr
    assert "by operator" in r.stdout and "all operators" in r.stdout, r.stdout


def test_saelens_benchmark_runs_or_names_the_missing_dependency():
    r = run("saelens.py")
    try:
        import sae_lens  # noqa: F401
    except ImportError:
        assert r.returncode == 3 and "pip install sae-lens" in r.stderr, (r.returncode, r.stderr)
    else:
        assert r.returncode == 0, r.stderr
        assert "steps/s" in r.stdout and "MMCS" in r.stdout


def test_roofline_times_every_kind():
    from sae import base as sae_kinds

    r = run("roofline.py", "--kinds")
    assert r.returncode == 0, r.stderr
    for name in sae_kinds.kinds():
        assert f"kind {name} " in r.stdout, (name, r.stdout)
