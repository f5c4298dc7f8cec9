"""Behaviour pinned across refactors: every shipped spec's spec hash and cell keys, and the
exact bytes (file manifest) of a small bundle of each, recorded in tests/golden/bundles.json
by tests/golden/make.py before the engine was reshaped.

Spec hashes and cell keys depend on nothing but the code, so they are checked everywhere.
Bundle bytes are promised on the same machine and software only (DESIGN.md section 4), so the
byte check runs where torch's version and CPU capability equal the recorded ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "golden"))
from cases import RUNS, SHIPPED  # noqa: E402

from engine.plan import make_plan  # noqa: E402
from engine.runner import run  # noqa: E402
from engine.spec import load_spec  # noqa: E402

GOLDEN = json.loads((ROOT / "tests" / "golden" / "bundles.json").read_text())
SAME_MACHINE = GOLDEN["environment"] == {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_spec_hash_and_cell_keys(path):
    plan = make_plan(load_spec(ROOT / path))
    assert plan.spec_hash == GOLDEN["specs"][path]["spec_hash"]
    assert [c.key for c in plan.cells] == GOLDEN["specs"][path]["cells"]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_small_bundle_bytes(name, tmp_path):
    path, overrides = RUNS[name]
    plan = make_plan(load_spec(ROOT / path, overrides))
    want = GOLDEN["runs"][name]
    assert plan.spec_hash == want["spec_hash"]
    assert [c.key for c in plan.cells] == want["cells"]
    if not SAME_MACHINE:
        pytest.skip(f"bytes recorded with {GOLDEN['environment']}; here torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}")
    meta = json.loads((run(plan, tmp_path).path / "bundle.json").read_text())
    changed = sorted(p for p in set(want["files"]) | set(meta["files"]) if want["files"].get(p) != meta["files"].get(p))
    assert not changed, f"files whose bytes changed: {changed}"
    assert meta["content_digest"] == want["content_digest"]
