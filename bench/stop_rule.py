"""How early does each stop rule stop? One toy SAE trained for a long fixed run; every rule of
``sae.stopping`` is replayed on its curves, and the MMCS with the truth where a rule stops is
set against the MMCS at the end of the long run.

    python bench/stop_rule.py                      # toy_vs_lm's toy source and recipe, m=512, l1=1, 20k steps
    python bench/stop_rule.py --lr 1e-3 --no-recipe   # the 2022 recipe
    python bench/stop_rule.py --quick

The SAE trains through ``sae.train.train_members`` (fixed ``--steps``) with a curve point
every 500 updates: the mean training loss of those 500 updates, the objective on a fixed
held-out set of 4,096 samples (``sae.stopping.eval_loss_metric``) and MMCS with the truth.
Each rule is then applied to those points exactly as ``sae.stopping.WindowJudge`` applies it
(a loss window of W = k x 500 updates is the mean of k points), giving the step where it
would stop. Nothing here is a time: it measures how far from the end of a long run each rule's
"converged" is, in MMCS.
"""

from __future__ import annotations

import torch
from common import parser, report, setup

from sae.metrics import mmcs_truth
from sae.recipes import Recipe, build_relu_l1
from sae.stopping import eval_loss_metric
from sae.train import train_members
from toydata import ToyData, ToyDataConfig

POINT = 500  # updates per curve point


def replay_loss(train_loss: list[float], k: int, tol: float) -> int | None:
    """The first boundary s (in updates) where the loss rule with window k*POINT fires."""
    windows = [sum(train_loss[i : i + k]) / k for i in range(0, len(train_loss) - k + 1, k)]
    for j in range(1, len(windows)):
        if abs(windows[j - 1] - windows[j]) <= tol * abs(windows[j - 1]):
            return (j + 1) * k * POINT
    return None


def replay_callback(values: list[float], k: int, tol: float, relative: bool) -> int | None:
    """``values[i]`` at update i*POINT (i = 0 before training); the eval_loss (relative) or
    mmcs_truth (absolute rise) rule with window k*POINT."""
    for j in range(k, len(values), k):
        prev, cur = values[j - k], values[j]
        if (prev - cur <= tol * abs(prev)) if relative else (cur - prev < tol):
            return j * POINT
    return None


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
        return {"eval_loss": objective(model), "mmcs": torch.tensor([mmcs_truth(data.features, model.atoms(0))["mmcs_truth"]])}

    res = train_members(model, lambda s: data.sample(256, stream)[0], a.lr, steps=steps, options=recipe, evaluate=evaluate, curve_every=POINT)
    c = res.members[0].curves
    mmcs = c["mmcs"]
    final = mmcs[-1]
    rules = [
        ("loss, window 500, rel_tol 1e-3", replay_loss(c["train_loss"][1:], 1, 1e-3)),
        ("loss, window 2000, rel_tol 1e-3", replay_loss(c["train_loss"][1:], 4, 1e-3)),
        ("eval_loss, window 500, rel_tol 1e-3", replay_callback(c["eval_loss"], 1, 1e-3, True)),
        ("eval_loss, window 2000, rel_tol 1e-3", replay_callback(c["eval_loss"], 4, 1e-3, True)),
        ("mmcs_truth, window 500, rel_tol 1e-3", replay_callback(mmcs, 1, 1e-3, False)),
        ("mmcs_truth, window 2000, rel_tol 2e-3", replay_callback(mmcs, 4, 2e-3, False)),
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
