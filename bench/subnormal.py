"""Subnormal Adam moments: the trainer's flush against a step that keeps them, same run.

An atom that stops firing gets zero gradients, and Adam's first moment for its weights decays
by 0.9 a step into float32's subnormal range, where x86 arithmetic takes a slow path.
``sae.train`` sets such entries to 0 every ``FLUSH_EVERY`` steps, after the Adam step
(``flush_subnormal_moments_``). This trains two copies of one ensemble step for step (same
init, same batches, interleaved so that machine noise hits both alike), one with the flush
and one without, and prints each copy's ms/step per window of steps (the flush's own cost
included), the share of subnormal first-moment entries in the copy that keeps them, and at
the end whether the two copies' weights are still bit-identical.

The step is the trainer's for ``toy_vs_lm``'s shipped recipe, less gradient clipping: closed-
form loss and gradients, Adam at lr 3e-3, decoder atoms initialised at norm 0.1 (``tied_small``),
renormalisation. Data: ``toy_vs_lm``'s toy source (512 planted features in 64 dims, batch 256).

    python bench/subnormal.py                # m=2048, l1 1 and 3 (one ensemble), 6000 steps
    python bench/subnormal.py --flush-every 1   # the flush after every step instead
    python bench/subnormal.py --quick        # tiny sizes (smoke test)
"""

from __future__ import annotations

import time

import torch
from common import parser, report, setup

from sae.recipes import Recipe, build_relu_l1
from sae.train import FLUSH_EVERY, flush_subnormal_moments_
from toydata import ToyData, ToyDataConfig


def subnormal_share(opt: torch.optim.Optimizer) -> float:
    """Share of Adam ``exp_avg`` entries that are subnormal (non-zero, below float32's tiny)."""
    tiny = torch.finfo(torch.float32).tiny
    n = hit = 0
    for state in opt.state.values():
        m = state["exp_avg"]
        n += m.numel()
        hit += int(((m != 0) & (m.abs() < tiny)).sum())
    return hit / max(n, 1)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=2048)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--window", type=int, default=1000)
    p.add_argument("--flush-every", type=int, default=FLUSH_EVERY, help="steps between flushes (the trainer's by default)")
    args = p.parse_args()
    setup(args.threads)
    n, d, m, B, steps, window = 512, 64, args.m, 256, args.steps, args.window
    if args.quick:
        n, d, m, B, steps, window = 64, 16, 128, 32, 300, 100
    g = torch.Generator().manual_seed(0)
    data = ToyData.build(ToyDataConfig(n_features=n, dim=d), torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    copies = {}
    for name in ("keep", "flush"):
        gens = [torch.Generator().manual_seed(10 + e) for e in range(2)]
        model = build_relu_l1(Recipe(decoder_init_norm=0.1), "orthogonal", d, m, [1.0, 3.0], gens)
        copies[name] = (model, torch.optim.Adam(model.parameters(), lr=3e-3))
    rows, spent = [], {k: 0.0 for k in copies}
    in_window = dict(spent)
    for t in range(steps):
        x = data.sample(B, g)[0]
        for name in ("keep", "flush") if t % 2 == 0 else ("flush", "keep"):  # either goes first
            model, opt = copies[name]
            start = time.perf_counter()
            model.loss_and_grad_(x)
            opt.step()
            if name == "flush" and (t + 1) % args.flush_every == 0:
                flush_subnormal_moments_(opt)
            model.after_step_()
            in_window[name] += time.perf_counter() - start
        if (t + 1) % window == 0:
            keep, flush = (1e3 * in_window[k] / window for k in ("keep", "flush"))
            share = subnormal_share(copies["keep"][1])
            rows.append((f"steps {t + 1 - window:>5}-{t + 1:<5}", f"keep {keep:7.2f} ms  flush {flush:7.2f} ms  flush/keep {flush / keep:.3f}  subnormal exp_avg (keep) {share:6.1%}"))
            for k in spent:
                spent[k] += in_window[k]
                in_window[k] = 0.0
    (mk, _), (mf, _) = copies["keep"], copies["flush"]
    same = all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(mk.parameters(), mf.parameters()))
    rows.append(("total", f"keep {spent['keep']:.1f} s  flush {spent['flush']:.1f} s  flush/keep {spent['flush'] / spent['keep']:.3f}"))
    rows.append(("weights bit-identical", "yes" if same else "NO"))
    report(f"subnormal Adam moments: relu_l1 d={d} m={m} E=2 (l1 1, 3), batch {B}, {steps} steps, flush every {args.flush_every}", rows)


if __name__ == "__main__":
    main()
