"""SAELens (sae-lens 6.x, standard L1 SAE) against sae-repro on the toy problem, same run:
training throughput, and time to MMCS >= 0.99 on identical data.

    /tmp/slvenv/bin/python bench/saelens.py          # d=256, m=1024, batch 1024, 2 threads
    /tmp/slvenv/bin/python bench/saelens.py --quick  # tiny sizes (smoke test)

SAELens is not a dependency of this project: run this with an interpreter that has both
``sae-lens`` and this project installed (``pip install sae-lens`` in a separate virtualenv,
plus ``pip install -e .``). Without ``sae_lens`` the script exits with status 3.

1. Throughput at d=256, m=1024, batch 1024. SAELens: ``StandardTrainingSAE`` (defaults) driven
   by ``SAETrainer`` with the settings of ``sae_lens.synthetic.train_toy_sae``, one step being
   the body of ``SAETrainer.fit``'s loop (``maybe_reset_sparsity``, ``step``, step count; its
   tqdm/wandb logging is off), fed by its synthetic generator (``FeatureDictionary`` of 512
   features in 256 dims, default orthogonalising initializer; ``ActivationGenerator`` with
   firing probability 5/512, magnitude 1). sae-repro: ``ReluL1`` with the body of
   ``sae.train.train``'s loop (``loss_and_grad_``, finiteness check, Adam, renormalise), fed by
   the report's batch-correlated generator (512 features in 256 dims, 5 active). Both are
   also timed on one pre-generated batch, and each generator alone. Medians of interleaved
   rounds.

2. Steps and seconds to MMCS >= 0.99 (``sae.metrics.mmcs_truth``: mean over ground-truth
   features of the max signed cosine with any decoder atom). ONE data source for both: this
   project's ``ToyData`` with correlation "none", 512 features in 256 dims, 5 active on
   average, magnitudes U[0,1), and ``--decay 1`` (every feature fires with p = 5/512, as
   SAELens's constant-probability ``ActivationGenerator``; with the report's decay 0.99 the
   rarest features fire about once per three batches, and in a trial neither library reached
   0.99 within 3000 steps). At a given seed both libraries see the very same stream of batches. m=1024,
   batch 1024 for both. MMCS is checked every ``--every`` steps; evaluation time is excluded.
   Each library's best (lr, l1) is picked from a small grid (below), run in the order listed;
   after the first run that reaches the target, every later run is cut off at the best step
   count so far (it cannot win past it), so cut-off runs report "not by step N". The winner
   is rerun at the other seeds and medians are reported. SAELens keeps its default init and
   normalisation options (decoder rows at norm 0.1 with W_enc = W_dec^T, b_dec subtracted
   from the input, no activation normalisation, L1 weighted by decoder norms, grad-norm
   clipping at 1); sae-repro keeps the report's (orthogonal init, no b_dec, atoms
   renormalised to unit norm after every Adam step).

3. Ablations at seed 0, to say where a difference in steps comes from: each library at the
   other's best (lr, l1); SAELens with ``decoder_init_norm=1``; sae-repro with a tied init.

L1 conventions: sae-repro's loss is mean_{b,i}(x - x_hat)^2 + l1 * mean_b(sum_j c_j) / m;
SAELens sums the squared error over the d dims and does not divide by m, so
l1_coefficient = l1 * d / m gives the same optimum (REFERENCE.md section 2). Adam is
invariant to the overall scale of the loss (up to its eps), so one lr means the same step
size per weight in both; not the same step relative to the weights, since SAELens's atoms
start at norm 0.1 and ours are kept at 1.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time

import torch
from common import interleaved, parser, report, setup

from sae.metrics import mmcs_truth
from sae.relu_l1 import ReluL1
from sae.train import train
from toydata import ToyData, ToyDataConfig

TARGET = 0.99
# The search grids, tried in this order (the expected best first, so the cut-off bites early).
# l1 is in sae-repro's convention; SAELens gets l1_coefficient = l1 * d / m.
OURS_GRID = [(1e-2, 0.5), (1e-2, 0.3), (1e-2, 1.0), (5e-3, 0.5), (3e-3, 1.0), (2e-2, 0.3)]
SAELENS_GRID = [(5e-3, 1.0), (1e-2, 0.5), (1e-2, 1.0), (3e-3, 1.0), (3e-3, 0.5), (1e-3, 1.0)]


def import_sae_lens():
    """The SAELens names used here; exit 3 with an install hint when it is missing."""
    try:
        import sae_lens
        from sae_lens import SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig
        from sae_lens.config import LoggingConfig, SAETrainerConfig
        from sae_lens.synthetic import (
            ActivationGenerator,
            FeatureDictionary,
            SyntheticActivationIterator,
        )
    except ImportError as e:
        print(f"bench/saelens.py needs SAELens ({e}): pip install sae-lens (in a separate virtualenv, with this project installed)", file=sys.stderr)
        sys.exit(3)
    return {
        "version": sae_lens.__version__,
        "SAETrainer": SAETrainer,
        "StandardTrainingSAE": StandardTrainingSAE,
        "StandardTrainingSAEConfig": StandardTrainingSAEConfig,
        "LoggingConfig": LoggingConfig,
        "SAETrainerConfig": SAETrainerConfig,
        "ActivationGenerator": ActivationGenerator,
        "FeatureDictionary": FeatureDictionary,
        "SyntheticActivationIterator": SyntheticActivationIterator,
    }


# ---------------------------------------------------------------------------- SAELens
def saelens_trainer(sl, d, m, B, lr, l1_coefficient, batches, seed, steps, **sae_options):
    """A ``StandardTrainingSAE`` (defaults unless ``sae_options`` override config fields) and an
    ``SAETrainer`` configured as ``train_toy_sae`` configures it; returns (sae, one_step).
    SAELens draws its init from the global RNG."""
    torch.manual_seed(seed)
    sae = sl["StandardTrainingSAE"](sl["StandardTrainingSAEConfig"](d_in=d, d_sae=m, l1_coefficient=l1_coefficient, **sae_options))
    cfg = sl["SAETrainerConfig"](
        total_training_samples=steps * B,
        train_batch_size_samples=B,
        lr=lr,
        lr_end=lr,
        lr_scheduler_name="constant",
        adam_beta1=0.9,
        adam_beta2=0.999,
        dead_feature_window=1000,
        feature_sampling_window=2000,
        logger=sl["LoggingConfig"](log_to_wandb=False),
    )
    trainer = sl["SAETrainer"](cfg=cfg, sae=sae, data_provider=batches)

    def step():  # the body of SAETrainer.fit's loop, without its progress bar
        trainer.maybe_reset_sparsity()
        trainer.step(next(batches))
        trainer.n_training_steps += 1

    return sae, step


def saelens_generator(sl, n, d, B, seed):
    """SAELens's own synthetic data: n features in d dims, each firing with p = 5/n at magnitude 1."""
    feature_dict = sl["FeatureDictionary"](n, d, seed=seed)
    feature_dict.eval()
    acts = sl["ActivationGenerator"](n, firing_probabilities=5.0 / n)
    return sl["SyntheticActivationIterator"](feature_dict, acts, B)


def saelens_converge(sl, data, d, m, B, lr, l1, seed, cap, every, **sae_options):
    """Train SAELens on ``data`` until MMCS >= TARGET or ``cap`` steps; eval time excluded."""
    gen = torch.Generator().manual_seed(1000 + seed)
    batches = (data.sample(B, gen)[0] for _ in itertools.count())
    sae, step = saelens_trainer(sl, d, m, B, lr, l1 * d / m, batches, seed, cap, **sae_options)
    seconds, mmcs = 0.0, float("nan")
    for s in range(1, cap + 1):
        t = time.perf_counter()
        step()
        seconds += time.perf_counter() - t
        if s % every == 0 or s == cap:
            mmcs = mmcs_truth(data.features, sae.W_dec.detach())["mmcs_truth"]
            if mmcs >= TARGET:
                break
    norm = float(sae.W_dec.detach().norm(dim=1).median())
    return {"steps": s if mmcs >= TARGET else None, "seconds": seconds, "mmcs": mmcs, "last": s, "atom_norm": norm}


# ---------------------------------------------------------------------------- sae-repro
def ours_step(d, m, B, lr, l1, next_batch, seed):
    """One step of sae.train.train's loop on a fresh orthogonal-init ReluL1."""
    model = ReluL1.from_init("orthogonal", d, m, [l1], [torch.Generator().manual_seed(seed)])
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step():
        losses = model.loss_and_grad_(next_batch())
        if not bool(torch.isfinite(losses["loss"]).all()):
            raise FloatingPointError("non-finite loss")
        opt.step()
        model.renormalise_decoder_()

    return step


class _Reached(Exception):
    pass


def ours_converge(data, d, m, B, lr, l1, seed, cap, every, init="orthogonal"):
    """``sae.train.train`` on ``data`` until MMCS >= TARGET or ``cap`` steps; eval time excluded."""
    gen = torch.Generator().manual_seed(1000 + seed)
    model = ReluL1.from_init(init, d, m, [l1], [torch.Generator().manual_seed(seed)])
    state = {"eval_s": 0.0, "mmcs": float("nan"), "step": 0}

    def evaluate(model):
        t = time.perf_counter()
        state["mmcs"] = mmcs_truth(data.features, model.atoms(0))["mmcs_truth"]
        state["eval_s"] += time.perf_counter() - t
        if state["step"] > 0 and state["mmcs"] >= TARGET:
            raise _Reached
        return {"mmcs_truth": torch.tensor([state["mmcs"]])}

    def on_step(s):
        state["step"] = s

    t = time.perf_counter()
    try:
        train(model, lambda s: data.sample(B, gen)[0], cap, lr, evaluate=evaluate, curve_every=every, on_step=on_step)
        reached = False
    except _Reached:
        reached = True
    seconds = time.perf_counter() - t - state["eval_s"]
    return {"steps": state["step"] if reached else None, "seconds": seconds, "mmcs": state["mmcs"], "last": state["step"]}


# ---------------------------------------------------------------------------- the comparison
def throughput(sl, a):
    """Part 1: per-step medians of interleaved rounds, each library with its own generator."""
    d, m, B, n = a.d, a.m, a.batch, 2 * a.d
    g = torch.Generator().manual_seed(0)
    ours_data = ToyData.build(ToyDataConfig(n_features=n, dim=d, active_per_sample=5, correlation="batch"), g, g)
    torch.manual_seed(0)
    sl_data = saelens_generator(sl, n, d, B, seed=0)
    x_ours, x_sl = ours_data.sample(B, g)[0], next(sl_data)
    _, sl_step = saelens_trainer(sl, d, m, B, 1e-3, 1.0 * d / m, sl_data, 0, 10**6)
    fixed = itertools.repeat(x_sl)
    _, sl_fixed = saelens_trainer(sl, d, m, B, 1e-3, 1.0 * d / m, fixed, 0, 10**6)
    cases = {
        "saelens": sl_step,
        "ours": ours_step(d, m, B, 1e-3, 1.0, lambda: ours_data.sample(B, g)[0], 0),
        "saelens fixed": sl_fixed,
        "ours fixed": ours_step(d, m, B, 1e-3, 1.0, lambda: x_ours, 0),
        "saelens data": lambda: next(sl_data),
        "ours data": lambda: ours_data.sample(B, g),
    }
    return interleaved(cases, reps=a.reps, rounds=a.rounds, warmup=3)


def describe(r):
    norm = f", median atom norm {r['atom_norm']:.2f}" if "atom_norm" in r else ""
    if r["steps"] is not None:
        return f"MMCS {r['mmcs']:.4f} at step {r['steps']}, {r['seconds']:.1f} s training ({r['seconds'] / r['steps'] * 1e3:.1f} ms/step){norm}"
    return f"not by step {r['last']} (MMCS {r['mmcs']:.4f} there), {r['seconds']:.1f} s{norm}"


def _rank(r):
    """Sort key: reached before not reached; then fewer steps, then fewer seconds; a run that
    did not reach ranks by its final MMCS."""
    if r["steps"] is None:
        return (1, 0, -r["mmcs"])
    return (0, r["steps"], r["seconds"])


def search(name, grid, run, cap):
    """Try the grid in order; later runs are cut off at the best step count so far. Returns the
    best (setting, result) by steps then seconds, or the highest MMCS if none reached."""
    best = None
    for lr, l1 in grid:
        limit = min(cap, best[1]["steps"]) if best and best[1]["steps"] else cap
        r = run(lr, l1, limit)
        print(f"  {name:9s} lr={lr:g} l1={l1:g}: {describe(r)}", flush=True)
        if best is None or _rank(r) < _rank(best[1]):
            best = ((lr, l1), r)
    return best


def convergence(sl, a):
    """Part 2: each library's best grid setting, then that setting at every seed; then the
    ablations (seed 0) that test where a difference in steps comes from. Returns
    ({library: ((lr, l1), [result per seed])}, [(label, result) per ablation])."""
    d, m, B = a.d, a.m, a.batch
    g = torch.Generator().manual_seed(0)
    data = ToyData.build(ToyDataConfig(n_features=2 * d, dim=d, active_per_sample=5, decay=a.decay, correlation="none"), g, g)
    runs = {
        "sae-repro": lambda lr, l1, seed, cap, **k: ours_converge(data, d, m, B, lr, l1, seed, cap, a.every, **k),
        "SAELens": lambda lr, l1, seed, cap, **k: saelens_converge(sl, data, d, m, B, lr, l1, seed, cap, a.every, **k),
    }
    grids = {"sae-repro": a.ours_grid, "SAELens": a.saelens_grid}
    best = {}
    print(f"# search (seed 0; l1 in sae-repro's convention, SAELens l1_coefficient = l1*{d}/{m}):", flush=True)
    for name, run in runs.items():
        (lr, l1), r0 = search(name, grids[name], lambda lr, l1, cap, run=run: run(lr, l1, 0, cap), a.cap)
        results = [r0] + [run(lr, l1, s, a.cap) for s in range(1, a.seeds)]
        for s, r in enumerate(results[1:], 1):
            print(f"  {name:9s} lr={lr:g} l1={l1:g} seed {s}: {describe(r)}", flush=True)
        best[name] = ((lr, l1), results)

    # Ablations, seed 0, capped at 4x the slower winner's steps: same hyperparameters for both
    # libraries, SAELens without its 0.1 decoder-norm init, sae-repro with a tied init.
    reached = [r[0]["steps"] for _, r in best.values() if r[0]["steps"]]
    cap = min(a.cap, 4 * max(reached)) if len(reached) == 2 else a.cap
    (o_lr, o_l1), (s_lr, s_l1) = best["sae-repro"][0], best["SAELens"][0]
    cases = [
        (f"sae-repro at SAELens's best (lr {s_lr:g}, l1 {s_l1:g})", lambda: runs["sae-repro"](s_lr, s_l1, 0, cap)),
        (f"SAELens at sae-repro's best (lr {o_lr:g}, l1 {o_l1:g})", lambda: runs["SAELens"](o_lr, o_l1, 0, cap)),
        ("SAELens best, decoder_init_norm=1 (unit atoms)", lambda: runs["SAELens"](s_lr, s_l1, 0, cap, decoder_init_norm=1.0)),
        ("sae-repro best, tied init (W_enc = W_dec^T)", lambda: runs["sae-repro"](o_lr, o_l1, 0, cap, init="tied")),
    ]
    print(f"# ablations (seed 0, cap {cap} steps):", flush=True)
    ablations = []
    for label, fn in cases:
        r = fn()
        print(f"  {label}: {describe(r)}", flush=True)
        ablations.append((label, r))
    return best, ablations


def median_or_none(values):
    return None if any(v is None for v in values) else statistics.median(values)


def parse_grid(text):
    return [tuple(float(v) for v in pair.split(":")) for pair in text.split(",")]


def main():
    p = parser(__doc__)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--m", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--cap", type=int, default=3000, help="step cap of a convergence run")
    p.add_argument("--every", type=int, default=10, help="MMCS is checked every this many steps")
    p.add_argument("--seeds", type=int, default=3, help="seeds for each library's best setting")

    def fmt(grid):
        return ",".join(f"{lr:g}:{l1:g}" for lr, l1 in grid)

    p.add_argument("--ours-grid", type=parse_grid, default=OURS_GRID, help=f"lr:l1,... (default {fmt(OURS_GRID)})")
    p.add_argument("--saelens-grid", type=parse_grid, default=SAELENS_GRID, help=f"lr:l1,... with l1 in sae-repro's convention (default {fmt(SAELENS_GRID)})")
    p.add_argument("--decay", type=float, default=1.0, help="feature i fires with p proportional to decay**i (1: all equally often)")
    p.add_argument("--skip-throughput", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.d, a.m, a.batch, a.reps, a.rounds = 32, 64, 64, 2, 2
        a.cap, a.every, a.seeds = 100, 20, 1
        a.ours_grid, a.saelens_grid = OURS_GRID[:1], SAELENS_GRID[:1]
    sl = import_sae_lens()
    setup(a.threads)
    d, m, B = a.d, a.m, a.batch
    t0 = time.perf_counter()
    rows = [("SAELens", f"sae-lens {sl['version']}, StandardTrainingSAE + SAETrainer (train_toy_sae's trainer settings)")]

    if not a.skip_throughput:
        t = throughput(sl, a)
        rate = {k: 1 / v for k, v in t.items()}
        rows += [
            ("1. throughput", f"d={d} m={m} batch {B}; lr 1e-3, l1 1 (SAELens l1_coefficient {d / m:g}); medians of {a.rounds} interleaved rounds x {a.reps} steps"),
            ("SAELens step + its generator", f"{t['saelens'] * 1e3:.2f} ms = {rate['saelens']:.1f} steps/s"),
            ("sae-repro step + its generator", f"{t['ours'] * 1e3:.2f} ms = {rate['ours']:.1f} steps/s"),
            ("ratio ours/SAELens", f"{rate['ours'] / rate['saelens']:.2f}x steps/s"),
            ("SAELens step, pre-generated", f"{t['saelens fixed'] * 1e3:.2f} ms = {rate['saelens fixed']:.1f} steps/s"),
            ("sae-repro step, pre-generated", f"{t['ours fixed'] * 1e3:.2f} ms = {rate['ours fixed']:.1f} steps/s"),
            ("ratio ours/SAELens, pre-generated", f"{rate['ours fixed'] / rate['saelens fixed']:.2f}x steps/s"),
            ("SAELens generator alone", f"{t['saelens data'] * 1e3:.2f} ms per batch (FeatureDictionary + ActivationGenerator, p=5/{2 * d}, magnitude 1)"),
            ("sae-repro generator alone", f"{t['ours data'] * 1e3:.2f} ms per batch (ToyData correlation 'batch', 5 active, U[0,1) magnitudes)"),
        ]

    conv, ablations = convergence(sl, a)
    rows.append(
        (
            "2. to MMCS >= 0.99",
            (f"data: sae-repro ToyData(n_features={2 * d}, dim={d}, active_per_sample=5, decay={a.decay:g}, correlation 'none', U[0,1) magnitudes), "
            f"same batches for both; m={m}, batch {B}; MMCS every {a.every} steps (eval time excluded); cap {a.cap} steps; seeds 0..{a.seeds - 1}"),
        )
    )
    rows.append(("searched sae-repro (lr:l1)", ", ".join(f"{lr:g}:{l1:g}" for lr, l1 in a.ours_grid) + "; orthogonal init, unit-norm atoms, no b_dec, Adam defaults"))
    rows.append(
        (
            "searched SAELens (lr:l1)",
            ", ".join(f"{lr:g}:{l1:g}" for lr, l1 in a.saelens_grid)
            + f" (l1_coefficient = l1*{d}/{m}); defaults: decoder_init_norm 0.1, tied init, apply_b_dec_to_input, normalize_activations 'none', grad clip 1, betas (0.9, 0.999)",
        )
    )
    summary = {}
    for name, ((lr, l1), results) in conv.items():
        steps = median_or_none([r["steps"] for r in results])
        secs = statistics.median(r["seconds"] for r in results)
        extra = f" (l1_coefficient {l1 * d / m:g})" if name == "SAELens" else ""
        per_seed = ", ".join(str(r["steps"]) if r["steps"] else f">{r['last']}" for r in results)
        if steps is None:
            mm = statistics.median(r["mmcs"] for r in results)
            rows.append((f"{name} best", f"lr {lr:g}, l1 {l1:g}{extra}: median MMCS {mm:.4f} at the cap of {a.cap} steps (steps per seed: {per_seed}), {secs:.1f} s"))
        else:
            rows.append((f"{name} best", f"lr {lr:g}, l1 {l1:g}{extra}: median {steps:.0f} steps, {secs:.1f} s to MMCS >= 0.99 (steps per seed: {per_seed})"))
        summary[name] = (steps, secs)
    (s_o, t_o), (s_s, t_s) = summary["sae-repro"], summary["SAELens"]
    if s_o is not None and s_s is not None:
        fewer = "sae-repro" if s_o < s_s else "SAELens" if s_s < s_o else "neither"
        sooner = "sae-repro" if t_o < t_s else "SAELens"
        rows.append(("ratio ours/SAELens", f"steps {s_o / s_s:.2f}x, seconds {t_o / t_s:.2f}x: fewer steps: {fewer}; less wall time: {sooner}"))
    else:
        rows.append(("ratio ours/SAELens", "n/a: not every run reached MMCS 0.99 within the cap"))
    rows.append(("3. ablations", "seed 0, same data and batches, one run each (cap: 4x the slower winner's steps)"))
    for label, r in ablations:
        rows.append((f"  {label}", describe(r)))
    rows.append(("total wall time", f"{time.perf_counter() - t0:.0f} s (after importing sae_lens)"))
    report("SAELens vs sae-repro: training steps/s and time to MMCS >= 0.99 (same run)", rows)


if __name__ == "__main__":
    main()
