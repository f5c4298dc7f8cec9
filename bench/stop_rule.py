"""How early does each stop rule stop? One toy SAE trained for a long fixed run; every rule of
``sae.stopping`` is replayed on its curves, and the MMCS with the truth where a rule stops is
set against the MMCS at the end of the long run.

    python bench/stop_rule.py                      # toy_vs_lm's toy source and recipe, m=512, l1=1, 20k steps
    python bench/stop_rule.py --lr 1e-3 --no-recipe   # the 2022 recipe
    python bench/stop_rule.py --quick

The SAE trains through ``sae.train.train_members`` (fixed ``--steps``) with a curve point
every 500 updates: the mean training loss of those 500 updates, the objective on a fixed
held-out set of 4,096 samples (``sae.stopping.eval_loss_metric``) and MMCS with the truth.
Each rule is then applied to those points by ``sae.stopping.replay``, the trainer's own test
(a loss window of W = k x 500 updates is the mean of k points), giving the step where it
would stop. Nothing here is a time: it measures how far from the end of a long run each rule's
"converged" is, in MMCS.
"""

from __future__ import annotations

import torch
from common import parser, report, setup

from sae.metrics import mmcs_truth
from sae.recipes import Recipe, build_relu_l1
from sae.stopping import StopRule, eval_loss_metric, replay
from sae.train import train_members
from toydata import ToyData, ToyDataConfig

POINT = 500  # updates per curve point


def stop_step(metric: str, tol: float, k: int, curves: dict, steps: int) -> int | None:
    """Where ``StopRule(metric, tol, window=k*POINT, max_steps=steps)`` stops on the recorded
    curves (``sae.stopping.replay``, the trainer's own test): a loss window is the mean of k
    consecutive points' training loss, a callback metric is read at every k-th point."""
    rule = StopRule(metric, tol, k * POINT, steps)
    if metric == "loss":
        points = curves["train_loss"][1:]  # point i >= 1: mean loss of updates (i-1)*POINT .. i*POINT - 1
        values = [sum(points[i : i + k]) / k for i in range(0, len(points) - k + 1, k)]
    else:
        values = curves[metric][::k]
    return replay(rule, values)


def main():
    p = parser(__doc__)
    p.add_argument("--m", type=int, default=512)
    p.add_argument("--l1", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--no-recipe", action="store_true", help="the 2022 recipe (orthogonal init, no clipping)")
    a = p.parse_args()
    setup(a.threads)
    n, d, steps = (512, 64, a.steps) if not a.quick else (32, 16, 2000)
    m = a.m if not a.quick else 32
    cfg = ToyDataConfig(n_features=n, dim=d, active_per_sample=5, decay=0.99, correlation="batch")
    data = ToyData.build(cfg, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    held_out = data.sample(4096, torch.Generator().manual_seed(3))[0]
    stream = torch.Generator().manual_seed(4)
    recipe = Recipe() if a.no_recipe else Recipe(decoder_init_norm=0.1, grad_clip=1.0)
    model = build_relu_l1(recipe, "orthogonal", d, m, [a.l1], [torch.Generator().manual_seed(5)])
    objective = eval_loss_metric(held_out)

    def evaluate(model):
        return {"eval_loss": objective(model), "mmcs_truth": torch.tensor([mmcs_truth(data.features, model.atoms(0))["mmcs_truth"]])}

    res = train_members(model, lambda s: data.sample(256, stream)[0], a.lr, steps=steps, options=recipe, evaluate=evaluate, curve_every=POINT)
    c = res.members[0].curves
    mmcs = c["mmcs_truth"]
    final = mmcs[-1]
    rules = [
        (f"{metric}, window {k * POINT}, rel_tol {tol:g}", stop_step(metric, tol, k, c, steps))
        for metric, tol, k in [("loss", 1e-3, 1), ("loss", 1e-3, 4), ("eval_loss", 1e-3, 1), ("eval_loss", 1e-3, 4), ("mmcs_truth", 1e-3, 1), ("mmcs_truth", 2e-3, 4)]
    ]
    rows = [("run", f"{n} features in {d} dims, m={m}, l1={a.l1:g}, lr={a.lr:g}, {'2022 recipe' if a.no_recipe else 'tied init 0.1 + clip 1'}, {steps} steps"),
            ("MMCS at the end", f"{final:.4f}")]
    for name, s in rules:
        if s is None:
            rows.append((name, f"does not stop within {steps} steps"))
        else:
            at = mmcs[s // POINT]
            rows.append((name, f"stops at {s}: MMCS {at:.4f}, {final - at:+.4f} to the end"))
    report("stop rules replayed on one long run", rows)


if __name__ == "__main__":
    main()
