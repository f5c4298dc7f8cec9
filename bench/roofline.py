"""Roofline: one relu_l1 training step against the machine's float32 GEMM rate, same run.

A step has five matrix products of B x d x m (encoder and decoder forward, the decoder's two
gradients, the encoder's weight gradient): 10 B d m FLOPs. The floor is those five products
timed alone; a step's share of the roofline is floor / step. Data generation (the report's
batch-correlated toy generator) is included in every step, as in training.

    python bench/roofline.py                 # d=256, m=1024, batch 1024, 2 threads
    python bench/roofline.py --quick         # tiny sizes (smoke test)
    python bench/roofline.py --profile       # also: where a step's time goes, by operator
    python bench/roofline.py --kinds         # also: every SAE kind's training step, same run
"""

from __future__ import annotations

import torch
from common import interleaved, parser, report, setup

from sae import base as sae_kinds
from sae.init import init_weights
from sae.relu_l1 import ReluL1
from toydata import ToyData, ToyDataConfig


def gemms(B, d, m, g):
    x, W, Wd = torch.randn(B, d, generator=g), torch.randn(d, m, generator=g), torch.randn(m, d, generator=g)
    c, r = torch.randn(B, m, generator=g), torch.randn(B, d, generator=g)

    def five():
        x @ W  # encoder forward
        c @ Wd  # decoder forward
        c.T @ r  # decoder weight gradient
        r @ Wd.T  # gradient into the codes
        x.T @ c  # encoder weight gradient

    return five


def ours(data, B, d, m, g):
    W_enc, b_enc, W_dec = init_weights("orthogonal", d, m, g)
    model = ReluL1(W_enc[None], b_enc[None], W_dec[None], l1=[1.0])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # as sae.train.train

    def step():
        x = data.sample(B, g)[0]
        model.loss_and_grad_(x)
        opt.step()
        model.renormalise_decoder_()

    return step


# one setting per hyperparameter, for timing only (k: a typical L0 at this width)
HYPER = {"l1": 1.0, "k": 32.0, "aux_coef": 1 / 32, "sparsity_coef": 1.0, "threshold_init": 1e-3, "bandwidth": 1e-3}


def kind_step(kind, data, B, d, m, g):
    """One training step of ``kind`` as ``sae.train`` runs it: loss and gradients, Adam,
    ``after_step_``."""
    model = kind.build([init_weights("tied", d, m, g)], [{p: HYPER[p] for p in kind.params}])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        x = data.sample(B, g)[0]
        model.loss_and_grad_(x)
        opt.step()
        model.after_step_()

    return step


def plain(data, B, d, m, g):
    """What a researcher writes first: nn.Linear layers, autograd, Adam, renormalise."""
    enc, dec = torch.nn.Linear(d, m), torch.nn.Linear(m, d, bias=False)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)

    def step():
        x = data.sample(B, g)[0]
        c = torch.relu(enc(x))
        loss = (dec(c) - x).pow(2).mean() + c.sum(dim=1).mean() / m
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            dec.weight /= dec.weight.norm(dim=0, keepdim=True)

    return step


def main():
    p = parser(__doc__)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--m", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--profile", action="store_true", help="also print the step's time by operator (torch.profiler)")
    p.add_argument("--kinds", action="store_true", help="also time every registered SAE kind's training step")
    a = p.parse_args()
    if a.quick:
        a.d, a.m, a.batch, a.reps, a.rounds = 32, 64, 64, 2, 2
    setup(a.threads)
    g = torch.Generator().manual_seed(0)
    data = ToyData.build(ToyDataConfig(n_features=2 * a.d, dim=a.d, active_per_sample=5), g, g)
    B, d, m = a.batch, a.d, a.m
    cases = {"gemm floor": gemms(B, d, m, g), "sae-repro step": ours(data, B, d, m, g), "plain loop": plain(data, B, d, m, g), "data only": lambda: data.sample(B, g)}
    kinds = sorted(sae_kinds.kinds().items()) if a.kinds else []
    for name, kind in kinds:
        cases[f"kind {name}"] = kind_step(kind, data, B, d, m, g)
    t = interleaved(cases, reps=a.reps, rounds=a.rounds)
    flops = 10 * B * d * m
    floor = t["gemm floor"]
    rows = [("shape", f"B={B} d={d} m={m}, 10*B*d*m = {flops / 1e9:.2f} GFLOP per step"), ("gemm rate", f"{flops / floor / 1e9:.1f} GFLOP/s (five products alone: {floor * 1e3:.2f} ms)")]
    for name in ("sae-repro step", "plain loop"):
        rows.append((name, f"{t[name] * 1e3:.2f} ms = {floor / t[name] * 100:.0f}% of the roofline"))
    rows.append(("data generation", f"{t['data only'] * 1e3:.2f} ms per batch ({t['data only'] / t['sae-repro step'] * 100:.0f}% of a step)"))
    rows.append(("speed-up over plain", f"{t['plain loop'] / t['sae-repro step']:.2f}x"))
    for name, _ in kinds:
        rows.append((f"kind {name}", f"{t[f'kind {name}'] * 1e3:.2f} ms = {floor / t[f'kind {name}'] * 100:.0f}% of the roofline, {t[f'kind {name}'] / t['sae-repro step']:.2f}x the relu_l1 step"))
    report("roofline: one relu_l1 training step vs the GEMM rate (medians of interleaved rounds)", rows)
    if a.profile:
        profile(ours(data, B, d, m, g), a.reps)


def profile(step, reps: int) -> None:
    """Self CPU time by operator over ``reps`` steps, as shares of the profiled total."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [(e.key, f"{e.self_cpu_time_total / reps / 1e3:6.2f} ms per step  {e.self_cpu_time_total / total * 100:5.1f}%  ({e.count // reps} calls)") for e in events[:12]]
    rows.append(("all operators", f"{total / reps / 1e3:6.2f} ms per step (profiler overhead included)"))
    report("profile: the sae-repro step by operator (self CPU time)", rows)


if __name__ == "__main__":
    main()
