"""Record tests/golden/bundles.json (see cases.py): ``python tests/golden/make.py``."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "golden")]

from cases import RUNS, SHIPPED  # noqa: E402


def record() -> dict:
    import torch

    from engine.plan import make_plan
    from engine.runner import run
    from engine.spec import load_spec

    out = {"environment": {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}, "specs": {}, "runs": {}}
    for path in SHIPPED:
        plan = make_plan(load_spec(ROOT / path))
        out["specs"][path] = {"spec_hash": plan.spec_hash, "cells": [c.key for c in plan.cells]}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, overrides) in RUNS.items():
            plan = make_plan(load_spec(ROOT / path, overrides))
            outcome = run(plan, Path(tmp) / name)
            meta = json.loads((outcome.path / "bundle.json").read_text())
            out["runs"][name] = {"spec_hash": plan.spec_hash, "cells": [c.key for c in plan.cells], "content_digest": meta["content_digest"], "files": meta["files"]}
    return out


if __name__ == "__main__":
    (Path(__file__).parent / "bundles.json").write_text(json.dumps(record(), indent=1, sort_keys=True) + "\n")
