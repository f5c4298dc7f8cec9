"""How long a plan will take, estimated before any work, and the refusal of absurd plans.

The estimate is arithmetic on the plan, calibrated on runs recorded on the 2-core CPU machine
this project is developed on (see README "Specs" and ``bench/roofline.py``):

- SAE training: ``step_flops`` (the step's five B x d x m matrix products) times steps, at
  ``SAE_FLOPS_PER_S`` = 100 GFLOP/s, plus ``GROUP_STEP_OVERHEAD_S`` per step of each batched
  group (optimizer, renormalisation and Python overhead that dominate tiny shapes). Measured:
  the report's ratio-2 column (2 cells, m = 1024, d = 256, 20k steps) ran at 96 GFLOP/s; the
  SAEs of ``toy_vs_lm`` at 63; ``toy_quick`` at 48 including its 1.2 ms per group-step
  overhead. 100 GFLOP/s is the fast end, so the estimate errs short, never long: a plan
  refused is one that would surely take longer than the limit.
- Toy data generation: ``2 * batch * n_features * dim`` FLOPs per group step (the sparse
  codes times the planted features), ``2 * n_features**2`` more per step for the ``batch``
  correlation's draw, and ``2.5 * n_features**3`` once to build its covariance factor, at the
  same rate.
- Evaluation: each curve point encodes and decodes the evaluation set (``4 * samples * d *
  m`` FLOPs per cell), and a toy source draws that set once.
- Each LM source: ``6 * params * tokens`` FLOPs (forward and backward) at
  ``LM_FLOPS_PER_S`` (engine.sources.lm) = 10 GFLOP/s: the tiny LM is far below the GEMM rate (``toy_vs_lm``'s
  54,528-parameter LM trained on 4M tokens in about 100 s, 13 GFLOP/s, corpus included).

Finished cells and cached LMs are not subtracted; ``--jobs`` and GPUs are not credited:
this is a single-process CPU estimate. A plan whose estimate exceeds ``LIMIT_S`` (7 days) is
refused unless ``--force``.
"""

from __future__ import annotations

import attrs

from engine import sources
from engine.errors import UserError
from engine.plan import Plan, step_flops
from engine.train_cells import make_groups

SAE_FLOPS_PER_S = 100e9
GROUP_STEP_OVERHEAD_S = 1e-3
LIMIT_S = 7 * 24 * 3600.0


class BudgetExceeded(UserError):
    """A plan that would run longer than the limit; ``--force`` overrides."""


@attrs.frozen
class Estimate:
    sae_s: float  # SAE training, data generation included
    lm_s: float  # training the LMs of LM sources
    cells: int
    stop_rule: bool = False  # some cells train to convergence: counted at max_steps, an upper bound

    @property
    def total_s(self) -> float:
        return self.sae_s + self.lm_s

    def line(self) -> str:
        lm = f" + {human(self.lm_s)} LM training" if self.lm_s else ""
        bound = "at most " if self.stop_rule else ""
        capped = "; cells with a stop rule counted at max_steps" if self.stop_rule else ""
        return (
            f"estimated time: {bound}{human(self.total_s)} ({cells(self.cells)}: {human(self.sae_s)} SAE training{lm}; "
            f"single process at {SAE_FLOPS_PER_S / 1e9:g} GFLOP/s{capped})"
        )


def cells(n: int) -> str:
    return f"{n} cell" if n == 1 else f"{n} cells"


def human(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``7.2 h``, ``12 days``, ``3.4e+07 years``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    days = seconds / 86400
    if days < 730:
        return f"{days:.0f} days"
    years = days / 365.25
    return f"{years:.0f} years" if years < 1e6 else f"{years:.1e} years"


def estimate(plan: Plan) -> Estimate:
    sae_s = 0.0
    for group in make_groups(list(plan.cells)):
        first = group[0]
        steps = first.sae.max_steps  # an upper bound with a stop rule
        flops = sum(step_flops(c) for c in group) * steps
        flops += sources.of(first.source.config).cost(first.source.config, plan.spec).step_flops(first.sae.batch) * steps
        # curves: the evaluation set encoded and decoded at 0, curve_every, ..., steps
        evals = steps // plan.spec.eval.curve_every + 2
        flops += evals * sum(4.0 * plan.spec.eval.samples * c.source.width * c.sae.m for c in group)
        sae_s += flops / SAE_FLOPS_PER_S + steps * GROUP_STEP_OVERHEAD_S
    lm_s = 0.0
    models = set()
    for sp in plan.sources:
        cost = sources.of(sp.config).cost(sp.config, plan.spec)
        sae_s += cost.setup_flops / SAE_FLOPS_PER_S
        if cost.model_seconds:
            if cost.model_identity in models:  # sources that differ only in their site share one model
                continue
            models.add(cost.model_identity)
            lm_s += cost.model_seconds
    return Estimate(sae_s, lm_s, len(plan.cells), any(c.sae.stop is not None for c in plan.cells))


def check(plan: Plan, force: bool = False, where: str | None = None) -> Estimate:
    """The estimate; raises ``BudgetExceeded`` (exit 2) above ``LIMIT_S`` unless ``force``.
    ``where`` (the spec file) starts the message; the spec's name by default."""
    est = estimate(plan)
    if est.total_s > LIMIT_S and not force:
        raise BudgetExceeded(
            f"{where or plan.spec.name}: refusing a plan estimated at {human(est.total_s)} ({cells(est.cells)}; "
            f"limit {human(LIMIT_S)}); see --dry-run, shrink the sweep, or pass --force to run it anyway"
        )
    return est
