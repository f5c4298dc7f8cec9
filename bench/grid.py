"""The report's toy grid trained to convergence: wall time against its FLOP floor, same run.

    python bench/grid.py                     # a slice of specs/toy_report.yaml: every ratio, 3 of the 17 l1 values
    python bench/grid.py --l1-every 1        # the whole grid (136 cells)
    python bench/grid.py --set sae.train.lr=1.0e-3 --set sae.train.recipe=null   # another recipe
    python bench/grid.py --quick             # tiny sizes (smoke test)

The shipped spec runs through the engine (``engine.runner.run``, one process, ``--threads``)
in a fresh temporary results directory; ``--l1-every N`` keeps every N-th of the spec's l1
values (the first and the last always), so a slice is the very cells of the grid.

Printed, all from this run:

- wall time of the run (source setup, training, evaluation, bundle);
- FLOPs trained: the sum over cells of (stop step) x 10 B d m (the five B x d x m products of a
  step; ``engine.plan.step_flops``), and the GEMM rate of this machine measured in the same
  run (those five products at the grid's median dictionary size, timed alone), so the
  **FLOP floor** = FLOPs / rate and the run's share of it = floor / wall;
- how many cells converged and how many stopped at ``max_steps``;
- the claims the slice tests (``metrics.json`` ``claims``), so two recipes can be compared;
- a projection to the full grid when a slice ran: each ratio's stop step at the l1 values not
  run is interpolated linearly in log l1 between the nearest run values; projected floor =
  projected FLOPs / rate, projected wall = projected floor / (the slice's share of the floor).
  A projection is labelled as such; only the slice was measured.
"""

from __future__ import annotations

import bisect
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import interleaved, parser, report, setup
from roofline import gemms

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "toy_report.yaml"


def every_nth(values: list[float], n: int) -> list[float]:
    """Every n-th value, the first and the last always."""
    keep = values[::n]
    return keep if keep[-1] == values[-1] else [*keep, values[-1]]


def gemm_rate(B: int, d: int, m: int, rounds: int) -> float:
    """FLOP/s of the five products of a step at this shape (medians of ``rounds``)."""
    five = gemms(B, d, m, torch.Generator().manual_seed(0))
    t = interleaved({"five": five}, reps=5, rounds=rounds)["five"]
    return 10.0 * B * d * m / t


def interpolate_steps(run: dict[float, int], l1: float) -> float:
    """A stop step at ``l1`` from the steps at the run l1 values, linear in log l1."""
    xs = sorted(run)
    if l1 in run:
        return float(run[l1])
    i = bisect.bisect_left(xs, l1)
    lo, hi = xs[max(0, i - 1)], xs[min(len(xs) - 1, i)]
    if lo == hi:
        return float(run[lo])
    w = (math.log(l1) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (1 - w) * run[lo] + w * run[hi]


def main():
    p = parser(__doc__)
    p.add_argument("--l1-every", type=int, default=8, help="keep every N-th l1 value of the spec (1: the whole grid)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE", help="a spec override, as sae-run's --set")
    p.add_argument("--spec", default=str(SPEC))
    a = p.parse_args()
    setup(a.threads)

    from engine import layout
    from engine.plan import make_plan, step_flops
    from engine.runner import run
    from engine.spec import load_spec

    overrides = [*a.overrides, f"run.threads={a.threads}"]
    if a.quick:
        overrides += ["sources.toy.n_features=32", "sources.toy.dim=16", "sae.dict_ratio=[0.5, 2]", "sae.l1=[0.1, 1.0, 10.0]",
                      "sae.train.stop.max_steps=200", "sae.train.stop.window=50", "eval.samples=256"]
    full = make_plan(load_spec(a.spec, overrides))
    l1s = sorted({c.sae.hyper["l1"] for c in full.cells})
    kept = every_nth(l1s, a.l1_every)
    plan = make_plan(load_spec(a.spec, [*overrides, f"sae.l1=[{', '.join(repr(v) for v in kept)}]"]))

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        out = run(plan, Path(tmp))
        wall = time.perf_counter() - t
        metrics = layout.read_metrics(out.path)
        cells = metrics.cells

    by_id = {c.id: c for c in plan.cells}
    steps = {cid: cell.stop["step"] for cid, cell in cells.items()}
    reasons = [cell.stop["reason"] for cell in cells.values()]
    flops = sum(steps[cid] * step_flops(by_id[cid]) for cid in cells)
    ms = sorted(c.sae.m for c in plan.cells)
    first = plan.cells[0]
    rate = gemm_rate(first.sae.batch, first.source.width, int(statistics.median(ms)), a.rounds)
    floor = flops / rate

    rows = [
        ("cells", f"{len(cells)} of the grid's {len(full.cells)} (l1 in {', '.join(f'{v:g}' for v in kept)}; every ratio)"),
        ("wall time", f"{wall:.1f} s"),
        ("stop", f"{reasons.count('converged')} converged, {reasons.count('max_steps')} at max_steps; stop steps {min(steps.values())}-{max(steps.values())} (median {statistics.median(steps.values()):g})"),
        ("FLOPs trained", f"{flops / 1e12:.3g} TFLOP (sum of stop step x 10 B d m)"),
        ("gemm rate", f"{rate / 1e9:.1f} GFLOP/s (five products at B={first.sae.batch} d={first.source.width} m={int(statistics.median(ms))}, this run)"),
        ("FLOP floor", f"{floor:.1f} s; the run is {floor / wall:.0%} of it (floor / wall)"),
    ]
    if len(kept) < len(l1s):
        per_m: dict[int, dict[float, int]] = {}
        for cid, s in steps.items():
            per_m.setdefault(by_id[cid].sae.m, {})[by_id[cid].sae.hyper["l1"]] = s
        projected = sum(interpolate_steps(per_m[c.sae.m], c.sae.hyper["l1"]) * step_flops(c) for c in full.cells)
        pfloor = projected / rate
        rows += [
            ("full grid, projected", f"{projected / 1e12:.3g} TFLOP; floor {pfloor / 60:.1f} min; at this run's share of the floor {pfloor / (floor / wall) / 60:.1f} min (stop steps interpolated in log l1; not measured)"),
        ]
    rows += [(f"claim {c['id']}", f"{c['verdict']} ({c['metric']} = {c['value']})") for c in metrics.claims]
    report("the report's toy grid to convergence (specs/toy_report.yaml)", rows)


if __name__ == "__main__":
    main()
