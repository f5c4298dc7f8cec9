"""Toy data generation: samples per second of each generator, against the SAE step that
consumes them (d=256, n=512 as in the interim report), same run.

    python bench/datagen.py
    python bench/datagen.py --quick
"""

from __future__ import annotations

import torch
from common import interleaved, parser, report, setup

from sae.init import init_weights
from sae.relu_l1 import ReluL1
from toydata import ToyData, ToyDataConfig


def main():
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--m", type=int, default=1024)
    p.add_argument("--reps", type=int, default=50)
    a = p.parse_args()
    n, d = 512, 256
    if a.quick:
        n, d, a.m, a.reps, a.rounds = 32, 16, 32, 2, 1
    setup(a.threads)
    g = torch.Generator().manual_seed(0)
    gens = {c: ToyData.build(ToyDataConfig(n_features=n, dim=d, active_per_sample=5, correlation=c), g, g) for c in ("batch", "none", "per_sample")}
    W_enc, b_enc, W_dec = init_weights("orthogonal", d, a.m, g)
    model = ReluL1(W_enc[None], b_enc[None], W_dec[None], l1=[1.0])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = gens["batch"].sample(a.batch, g)[0]

    def sae_step():
        model.loss_and_grad_(x)
        opt.step()
        model.renormalise_decoder_()

    cases = {f"generate ({c})": (lambda data=data: data.sample(a.batch, g)) for c, data in gens.items()}
    cases["SAE step (pre-generated batch)"] = sae_step
    t = interleaved(cases, reps=a.reps, rounds=a.rounds)
    step = t["SAE step (pre-generated batch)"]
    rows = [("shape", f"n={n} features in d={d}, batch {a.batch}; SAE m={a.m}")]
    for name, sec in t.items():
        extra = "" if name.startswith("SAE") else f", {sec / step * 100:.1f}% of an SAE step"
        rows.append((name, f"{sec * 1e3:.3f} ms per batch = {a.batch / sec / 1e6:.2f} M samples/s{extra}"))
    report("toy data generation vs the SAE step that consumes it (medians of interleaved rounds)", rows)


if __name__ == "__main__":
    main()
