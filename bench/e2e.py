"""End to end: wall time of `sae-run` on the shipped specs, and of a cache hit, in a fresh
results directory. The headline spec takes minutes; it runs with --full.

    python bench/e2e.py              # toy_quick, then the same again (a cache hit)
    python bench/e2e.py --full       # also toy_vs_lm and its cache hit
    python bench/e2e.py --quick      # toy_quick at 50 steps
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import parser, report

ROOT = Path(__file__).resolve().parent.parent


def sae_run(spec: str, results: Path, extra: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from engine.cli import sae_run; sae_run()", spec, "--results", str(results), "--quiet", *extra], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    p = parser(__doc__)
    p.add_argument("--full", action="store_true")
    a = p.parse_args()
    extra = ["--threads", str(a.threads)] + (["--set", "sae.train.steps=50"] if a.quick else [])
    specs = ["specs/toy_quick.yaml"] + (["specs/toy_vs_lm.yaml"] if a.full else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            first = sae_run(spec, Path(tmp), extra)
            again = sae_run(spec, Path(tmp), extra)
            rows.append((spec, f"{first:.1f} s; cache hit {again:.2f} s"))
    report("end to end: sae-run wall time in a fresh results directory", rows)


if __name__ == "__main__":
    main()
