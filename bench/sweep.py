"""Sweeps: 16 SAEs on 64-dim inputs trained batched (one ensemble per dictionary size) vs one
after another, same data, same steps, same run.

    python bench/sweep.py            # sizes 64, 256, 512, 1024 x four l1 values, 300 steps
    python bench/sweep.py --quick
"""

from __future__ import annotations

import torch
from common import interleaved, parser, report, setup

from sae.relu_l1 import ReluL1
from sae.train import train
from toydata import ToyData, ToyDataConfig

L1 = (0.3, 1.0, 3.0, 10.0)


def gens(n, seed):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def batched(data, sizes, steps, batch):
    def run():
        for m in sizes:
            g = torch.Generator().manual_seed(1)
            model = ReluL1.from_init("orthogonal", data.config.dim, m, list(L1), gens(len(L1), m))
            train(model, lambda s: data.sample(batch, g)[0], steps, 1e-3)

    return run


def sequential(data, sizes, steps, batch):
    def run():
        for m in sizes:
            for i, l1 in enumerate(L1):
                g = torch.Generator().manual_seed(1)
                model = ReluL1.from_init("orthogonal", data.config.dim, m, [l1], gens(1, m + i))
                train(model, lambda s: data.sample(batch, g)[0], steps, 1e-3)

    return run


def main():
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=256)
    a = p.parse_args()
    sizes = (64, 256, 512, 1024)
    if a.quick:
        sizes, a.steps, a.rounds = (16, 32), 5, 1
    setup(a.threads)
    g = torch.Generator().manual_seed(0)
    data = ToyData.build(ToyDataConfig(n_features=512, dim=64, active_per_sample=5), g, g)
    t = interleaved({"batched": batched(data, sizes, a.steps, a.batch), "one after another": sequential(data, sizes, a.steps, a.batch)}, reps=1, rounds=a.rounds, warmup=0)
    n = len(sizes) * len(L1)
    rows = [
        ("sweep", f"{n} SAEs, d=64, m in {sizes}, l1 in {L1}, {a.steps} steps of batch {a.batch}"),
        ("batched", f"{t['batched']:.2f} s ({n * a.steps / t['batched']:.0f} SAE-steps/s)"),
        ("one after another", f"{t['one after another']:.2f} s ({n * a.steps / t['one after another']:.0f} SAE-steps/s)"),
        ("speed-up", f"{t['one after another'] / t['batched']:.2f}x"),
    ]
    report("sweeps: batched ensembles vs one SAE after another (medians of interleaved rounds)", rows)


if __name__ == "__main__":
    main()
