"""Training loop for an ensemble of SAEs of any kind (``sae.base.SAE``): Adam, curves, recipes,
and members that stop on their own when they have converged.

The hot loop is: fetch batch -> ``model.loss_and_grad_(x, sparsity_scale)`` (for ``relu_l1``
a closed-form forward and gradients, five matrix products) -> Adam -> ``model.after_step_()``
(for ``relu_l1`` with unit atoms: renormalise them) -> a finiteness check on the E loss values.
Metrics run only at curve points. With every ``Recipe`` option off there is no other per-step
work, and the bytes are those of the 2022 loop.

Two entry points:

- ``train(model, next_batch, steps, lr, evaluate, curve_every, on_step)``: every member trains
  for ``steps`` updates in place; returns the curves dict (one list of E floats per point).
- ``train_members(model, next_batch, lr, steps=... | stop=StopRule(...), options=Recipe(...))``:
  returns a ``TrainResult`` with each member's final tensors, its stop step and reason, and
  its own curves. With a stop rule, a member that stops is taken out of the ensemble.

Removing a stopped member: every parameter (all carry the member dimension E first) is
replaced in place (``p.data = p.data[keep]``, the same ``nn.Parameter`` objects, so the
optimiser keeps them), every buffer whose first dimension is E is sliced the same way, and
Adam's per-parameter ``exp_avg`` / ``exp_avg_sq`` are sliced to the kept members (the shared
step count is the same for all of them). Adam's update is elementwise, and every op that mixes
one member's elements runs on that member's own slice, so the remaining members continue with
exactly the bytes they would have had in the full ensemble (tests/test_train_recipes.py).
A per-member input batch [E, B, d] is indexed by the *original* member order; the trainer picks
the rows of the members still training.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import attrs
import torch
from torch import Tensor

from .base import SAE, split_members
from .recipes import Recipe, lr_factor, sparsity_scale
from .stopping import StopRule, WindowJudge

__all__ = [
    "FLUSH_EVERY",
    "MemberResult",
    "NonFiniteLoss",
    "TrainResult",
    "curve_points",
    "flush_subnormal_moments_",
    "train",
    "train_members",
]

_CLIP_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_
_NORM_EPS = 1e-12


def curve_points(steps: int, curve_every: int) -> list[int]:
    """The steps at which curves are recorded: 0, curve_every, 2*curve_every, ..., and steps.

    A point s means "after s optimiser updates". Duplicates are removed (steps itself is
    recorded once even when it is a multiple of curve_every).
    """
    if curve_every <= 0:
        raise ValueError(f"curve_every must be positive, got {curve_every}")
    points = list(range(0, steps + 1, curve_every))
    if points[-1] != steps:
        points.append(steps)
    return points


def _as_floats(v: Tensor) -> list:
    v = torch.as_tensor(v).detach().cpu()
    if v.dtype.is_floating_point:
        return v.double().tolist()
    return v.tolist()


# ---------------------------------------------------------------------- results


@attrs.frozen
class MemberResult:
    """One member's outcome.

    - ``index``: its position in the ensemble given to ``train_members``.
    - ``tensors``: ``model.member_tensors`` at its stop step (copies).
    - ``hyper``: its hyperparameters (``model.member_hyper``).
    - ``stop``: ``{"step": s, "reason": r}``, s the number of updates it got; r is
      ``"converged"`` or ``"max_steps"`` with a stop rule, ``"steps"`` with a fixed length.
    - ``curves``: ``{"step": [s, ...], key: [float, ...], ...}``: the points 0, every
      ``curve_every``, and its stop step; keys as in ``train``.
    """

    index: int
    tensors: dict[str, Tensor]
    hyper: dict[str, float]
    stop: dict
    curves: dict[str, list]


@attrs.frozen
class TrainResult:
    """Every member's ``MemberResult`` (``members``, in the input order), the kind's class and
    whether it has a decoder bias (to rebuild an ensemble with ``model()``)."""

    kind: type
    decoder_bias: bool
    members: tuple[MemberResult, ...]

    def __len__(self) -> int:
        return len(self.members)

    def member_tensors(self, e: int) -> dict[str, Tensor]:
        return self.members[e].tensors

    @property
    def stops(self) -> list[dict]:
        return [m.stop for m in self.members]

    def model(self, device: torch.device | str | None = None) -> SAE:
        """An ensemble of the final members (``kind.from_member_tensors``), for inference and
        evaluation (its forward pass gives every member's own bytes). Constructor options that
        only matter for training (e.g. ``ReluL1``'s ``decoder_norm``) are not carried."""
        model = self.kind.from_member_tensors([m.tensors for m in self.members], [m.hyper for m in self.members])
        return model if device is None else model.to(device)

    def stacked_curves(self) -> dict[str, list]:
        """The curves in ``train``'s layout (one list of E floats per point); needs every
        member to have the same curve steps (always so with a fixed length)."""
        steps = self.members[0].curves["step"]
        if any(m.curves["step"] != steps for m in self.members):
            raise ValueError("stacked_curves: members stopped at different steps; use members[e].curves")
        out: dict[str, list] = {"step": list(steps)}
        for k in self.members[0].curves:
            if k != "step":
                out[k] = [[m.curves[k][i] for m in self.members] for i in range(len(steps))]
        return out


# ---------------------------------------------------------------------- the loop


def train(
    model: SAE,
    next_batch: Callable[[int], Tensor],
    steps: int,
    lr: float,
    evaluate: Callable[[SAE], dict[str, Tensor]] | None = None,
    curve_every: int = 500,
    on_step: Callable[[int], None] | None = None,
    *,
    options: Recipe | None = None,
    resample_generators: Sequence[torch.Generator] | None = None,
    resample_pool: Callable[[int], Tensor] | None = None,
) -> dict[str, list]:
    """Train every member of ``model`` in place for ``steps`` steps.

    Per step t = 0 .. steps-1: ``x = next_batch(t)`` ([B, d], shared by all members, or
    [E, B, d]); ``model.loss_and_grad_(x, sparsity_scale)`` (the gradient of
    ``losses(x)['loss'].sum()``; ``sparsity_scale`` is 1 unless ``options.l1_warmup_steps``);
    one ``torch.optim.Adam(model.parameters(), lr)`` step (default betas and eps, no weight
    decay; with the default ``options`` a constant lr, no warm-up, no clipping), after which
    every ``FLUSH_EVERY`` (100) steps Adam's moment entries below the smallest normal float
    are set to 0 (an atom that stopped firing would otherwise keep subnormal moments, slow
    on CPUs; see ``flush_subnormal_moments_``); ``model.after_step_()`` (``relu_l1``:
    renormalise the atoms); then ``on_step(t + 1)`` (the number of updates done) if given. ``options`` (a
    ``sae.recipes.Recipe``) switches on the recipes' trainer options, see there.

    Curves are recorded at ``curve_points(steps, curve_every)`` (0, every curve_every, and
    the end; a point s is taken after s updates). The returned dict holds
    ``'step': [s, ...]`` and, for each key, one list of E per-member floats per point:

    - ``'train_loss'``, ``'train_mse'``, ``'train_l1'``: the training-batch values of
      ``loss_and_grad_`` (``'loss'``, ``'mse'``, unweighted ``'l1'``), averaged over the steps
      since the previous point, i.e. over steps prev .. s-1, each computed on its batch
      before its update. At point 0 (no update yet) they are the values on batch 0 with the
      initial weights. (Named ``train_*`` so they cannot clash with ``evaluate``'s keys.)
    - every key returned by ``evaluate(model)`` (called under ``torch.no_grad`` at each
      point; values are [E] tensors).

    Raises ``NonFiniteLoss`` (a ``FloatingPointError``) naming the member (and step) as soon as
    a member's training loss is NaN or infinite. Randomness: none here (the batches come from
    ``next_batch``; resampling draws from ``resample_generators``).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    result = train_members(
        model, next_batch, lr, steps=steps, options=options, evaluate=evaluate, curve_every=curve_every,
        on_step=on_step, resample_generators=resample_generators, resample_pool=resample_pool, _keep_tensors=False,
    )
    return result.stacked_curves()


def train_members(
    model: SAE,
    next_batch: Callable[[int], Tensor],
    lr: float,
    *,
    steps: int | None = None,
    stop: StopRule | None = None,
    options: Recipe | None = None,
    evaluate: Callable[[SAE], dict[str, Tensor]] | None = None,
    curve_every: int = 500,
    on_step: Callable[[int], None] | None = None,
    stop_metric: Callable[[SAE], Tensor] | None = None,
    resample_generators: Sequence[torch.Generator] | None = None,
    resample_pool: Callable[[int], Tensor] | None = None,
    _keep_tensors: bool = True,
) -> TrainResult:
    """Train the members of ``model``; give each one's final tensors, stop and curves.

    Exactly one of ``steps`` (every member trains that many updates, as ``train``; stop
    reason ``"steps"``) or ``stop`` (a ``StopRule``: each member stops at its first converged
    window boundary, else at ``stop.max_steps``; see ``sae.stopping``). The step is that of
    ``train`` (same ops, same bytes with ``options=None``); ``options`` is a
    ``sae.recipes.Recipe``.

    - ``evaluate(model)``: per-member metrics ([E] values for the *current* members) at the
      curve points; each member gets points at 0, every ``curve_every`` and its stop step.
    - ``on_step(t + 1)`` after every update (while any member trains).
    - ``stop_metric(model)``: [E] values for the current members, needed by
      ``StopRule(metric="mmcs_truth")`` (e.g. ``sae.stopping.mmcs_truth_metric(features)``).
    - ``resample_generators``: one ``torch.Generator`` per member (input order), needed when
      ``options.resample_dead_every`` is set; ``resample_pool(s)``: optional [P, d] inputs to
      resample from at boundary s (default: the last ``options.resample_pool_batches``
      training batches).

    With a stop rule, a member that stops is removed from ``model`` (see the module docstring);
    on return ``model`` holds the members that were still training at the last update (all of
    them with ``steps``). Use ``TrainResult.members[e].tensors`` or ``TrainResult.model()``.
    Raises ``NonFiniteLoss`` naming the members (input order) whose loss is not finite.
    """
    if (steps is None) == (stop is None):
        raise ValueError("train_members: give exactly one of steps= or stop=")
    if steps is not None and steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if curve_every <= 0:
        raise ValueError(f"curve_every must be positive, got {curve_every}")
    opts = options if options is not None else Recipe()
    T = steps if stop is None else stop.max_steps
    E0 = model.n_members
    alive = list(range(E0))  # input index of each current member
    resampling = opts.resample_dead_every > 0
    if resampling:
        if resample_generators is None or len(resample_generators) != E0:
            raise ValueError(f"resample_dead_every needs resample_generators, one torch.Generator per member ({E0})")
    hypers = [model.member_hyper(e) for e in range(E0)]
    results: list[MemberResult | None] = [None] * E0
    _TRAIN_KEYS = tuple(model.loss_terms)  # recorded as train_<term> curves
    curves: list[dict[str, list]] = [{"step": [], **{f"train_{k}": [] for k in _TRAIN_KEYS}} for _ in range(E0)]

    def record(s: int, rows: list[int], train_means: Tensor) -> None:
        """Curve point s for the current members at positions ``rows``; train_means [3, E]."""
        per = [_as_floats(train_means[i]) for i in range(len(_TRAIN_KEYS))]
        metrics = {}
        if evaluate is not None:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                metrics = evaluate(model)
            model.train(was_training)
            for k in metrics:
                if k == "step" or k.startswith("train_"):
                    raise ValueError(f"evaluate returned reserved key {k!r}")
            metrics = {k: _as_floats(v) for k, v in metrics.items()}
        for j in rows:
            c = curves[alive[j]]
            c["step"].append(s)
            for i, k in enumerate(_TRAIN_KEYS):
                c[f"train_{k}"].append(per[i][j])
            for k, v in metrics.items():
                c.setdefault(k, []).append(v[j])

    def finish(j: int, s: int, reason: str) -> None:
        e = alive[j]
        tensors = model.member_tensors(j) if _keep_tensors else {}
        results[e] = MemberResult(e, tensors, hypers[e], {"step": s, "reason": reason}, curves[e])

    if T == 0:
        with torch.no_grad():
            losses = model.losses(next_batch(0))
        _check_finite(losses["loss"], 0, alive)
        record(0, list(range(E0)), torch.stack([losses[k].detach().double().cpu() for k in _TRAIN_KEYS]))
        for j in range(E0):
            finish(j, 0, "steps")
        return TrainResult(type(model), model.b_dec is not None, tuple(results))

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    judge = WindowJudge(stop, E0, opts.warmup, stop_metric, model) if stop is not None else None
    acc = torch.zeros(len(_TRAIN_KEYS), E0, dtype=torch.float64)  # running sums of the loss terms
    n_acc = 0
    fired = None
    recent: deque = deque(maxlen=opts.resample_pool_batches)
    report_before = getattr(model, "report_firing", None)
    if resampling and report_before is not None:
        model.report_firing = True
    alive_idx: Tensor | None = None  # set once members have been removed

    try:
        for t in range(T):
            x_raw = next_batch(t)
            x = x_raw
            if alive_idx is not None and x.dim() == 3:
                x = x.index_select(0, alive_idx.to(x.device))
            scale = sparsity_scale(opts, t) if opts.l1_warmup_steps else 1.0
            losses = model.loss_and_grad_(x, scale)
            _check_finite(losses["loss"], t, alive)
            if t == 0:  # point 0: the initial weights on batch 0
                record(0, list(range(len(alive))), torch.stack([losses[k].detach().double().cpu() for k in _TRAIN_KEYS]))
            vals = torch.stack([losses[k].detach() for k in _TRAIN_KEYS]).cpu()
            acc += vals
            n_acc += 1
            if judge is not None:
                judge.add_losses(vals[0])
            if resampling:
                recent.append(x_raw)
                f = losses.get("fired")
                if f is None:
                    with torch.no_grad():
                        f = (model.encode(x) > 0).any(dim=1)
                fired = f.clone() if fired is None else fired.logical_or_(f)

            if opts.grad_clip is not None:
                _clip_grad_per_member_(model, opts.grad_clip)
            if opts.schedules_lr:
                for group in opt.param_groups:
                    group["lr"] = lr * lr_factor(opts, t, T)
            opt.step()
            if (t + 1) % FLUSH_EVERY == 0:
                flush_subnormal_moments_(opt)
            model.after_step_()
            if on_step is not None:
                on_step(t + 1)

            s = t + 1
            stopping: list[int] = []
            reasons: list[str] = []
            if judge is not None and (judge.is_boundary(s) or s == T):
                conv = judge.judge(s, model) if judge.is_boundary(s) else torch.zeros(len(alive), dtype=torch.bool)
                for j in range(len(alive)):
                    if bool(conv[j]) or s == T:
                        stopping.append(j)
                        reasons.append("converged" if bool(conv[j]) else "max_steps")
            elif judge is None and s == T:
                stopping, reasons = list(range(len(alive))), ["steps"] * len(alive)

            on_grid = s % curve_every == 0
            if on_grid or stopping:
                record(s, list(range(len(alive))) if on_grid else stopping, acc / n_acc)
                if on_grid:
                    acc.zero_()
                    n_acc = 0
            for j, reason in zip(stopping, reasons):
                finish(j, s, reason)
            if len(stopping) == len(alive):
                break
            if stopping:
                keep = [j for j in range(len(alive)) if j not in set(stopping)]
                keep_t = torch.tensor(keep, dtype=torch.long)
                _keep_members_(model, opt, keep_t)
                acc = acc[:, keep_t]
                if judge is not None:
                    judge.keep(keep_t)
                if fired is not None:
                    fired = fired[keep_t.to(fired.device)]
                alive = [alive[j] for j in keep]
                alive_idx = torch.tensor(alive, dtype=torch.long)

            if resampling and s % opts.resample_dead_every == 0 and s < T:
                for j, e in enumerate(alive):
                    pool = resample_pool(s) if resample_pool is not None else torch.cat([b if b.dim() == 2 else b[e] for b in recent])
                    if pool.dim() == 3:
                        pool = pool[e]
                    resample_dead_(model, opt, j, ~fired[j], pool, resample_generators[e], opts.resample_encoder_scale)
                fired = None
    finally:
        if resampling and report_before is not None:
            model.report_firing = report_before
    return TrainResult(type(model), model.b_dec is not None, tuple(results))


# ---------------------------------------------------------------------- pieces


def _clip_grad_per_member_(model: SAE, max_norm: float) -> Tensor:
    """Scale member e's gradients by min(1, max_norm / (N_e + 1e-6)), N_e the L2 norm over
    member e's slices of every parameter's gradient; returns N [E] (before clipping).

    Each member's norm is a reduction over its own slices (one ``vector_norm`` per parameter
    and member); the norms are combined and applied elementwise, so members stay independent."""
    sq = None
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    for g in grads:
        n = torch.stack([torch.linalg.vector_norm(gs) for gs in split_members(g)]).to(torch.float32)
        sq = n * n if sq is None else sq + n * n
    total = sq.sqrt()
    coef = (max_norm / (total + _CLIP_EPS)).clamp_(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
    return total


_TINY = torch.finfo(torch.float32).tiny  # the smallest normal float32
FLUSH_EVERY = 100  # steps between flushes; after every step a flush cost 13% of a 64 x 2048
# step and saved less than that (bench/subnormal.py --flush-every 1), every 100 steps it is free


@torch.no_grad()
def flush_subnormal_moments_(opt: torch.optim.Optimizer) -> None:
    """Set Adam's moment entries below the smallest normal float to 0.

    An atom that stops firing gets zero gradients, and its ``exp_avg`` decays by 0.9 a step
    into the subnormal range, where rounding holds it at the smallest subnormal for good; every
    later Adam step then does arithmetic on subnormals, which x86 CPUs run through a slow
    microcode path (``bench/subnormal.py``: a 64 x 2048 ensemble's step slowed by 28% over
    6,000 steps as 28% of its first moments turned subnormal; with the flush it did not).
    A flushed entry stays 0 for as long as its gradient does, so the trainer flushes every
    ``FLUSH_EVERY`` steps rather than every step. Zeroing them changes an update by at most
    lr * 1.4e-45 / eps ~ 1e-37, below the last bit of any weight larger than ~1e-30, so the
    weights come out bit-identical in practice (checked: the golden bundles; ``toy_vs_lm``'s
    toy cells of 1,024-2,048 atoms, 8,000-14,000 steps with up to two thirds of the atoms
    dead, train to the same bytes with a flush after every step as without it, and the whole
    ``toy_vs_lm`` bundle is the same bytes flushing every step or every 100).
    ``torch.set_flush_denormal`` would do this for every op of the process, the LM's training
    and the user's own code included, and so change results elsewhere; this flushes the
    optimizer's state only."""
    for state in opt.state.values():
        for k in ("exp_avg", "exp_avg_sq"):
            t = state.get(k)
            if t is not None and t.dim() > 0:
                t.masked_fill_(t.abs() < _TINY, 0.0)


@torch.no_grad()
def _keep_members_(model: SAE, opt: torch.optim.Optimizer, keep: Tensor) -> None:
    """Keep only the members at positions ``keep`` [k] (long) of ``model`` and of Adam's state."""
    E = model.n_members
    for p in model.parameters():
        if p.dim() == 0 or p.shape[0] != E:
            raise ValueError(f"cannot remove members: a parameter of shape {tuple(p.shape)} has no leading member dimension {E}")
    for p in list(model.parameters()):
        idx = keep.to(p.device)
        p.data = p.data.index_select(0, idx)
        p.grad = None
        state = opt.state.get(p)
        if state:
            for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if k in state and state[k].dim() > 0:
                    state[k] = state[k].index_select(0, idx)
    for mod in model.modules():
        for name, b in list(mod._buffers.items()):
            if b is not None and b.dim() >= 1 and b.shape[0] == E:
                mod._buffers[name] = b.index_select(0, keep.to(b.device))


@torch.no_grad()
def resample_dead_(
    model: SAE,
    opt: torch.optim.Optimizer | None,
    e: int,
    dead: Tensor,
    pool: Tensor,
    generator: torch.Generator,
    encoder_scale: float = 0.2,
) -> Tensor:
    """Re-initialise member e's dead atoms (``dead`` [m] bool) from inputs ``pool`` [P, d]
    ("Towards Monosemanticity", Anthropic 2023); returns the chosen pool rows [n_dead].

    One input per dead atom is drawn with replacement (``torch.multinomial`` on the CPU with
    ``generator``), with probability proportional to its squared reconstruction error
    ||x - x_hat||^2 under member e (uniform over the non-zero inputs if every error is 0;
    zero-norm inputs never). The atom becomes x / ||x||, its encoder column that direction
    times ``encoder_scale`` * (the mean L2 norm of the encoder columns of the atoms not dead; 1
    if all are), its encoder bias 0 (``model.reset_atoms_``). Adam's ``exp_avg`` and
    ``exp_avg_sq`` at those rows of W_dec, columns of W_enc and entries of b_enc are zeroed."""
    idx = dead.nonzero().flatten()
    n = idx.numel()
    if n == 0:
        return idx
    pool = pool.to(device=model.W_dec.device, dtype=torch.float32)
    x_hat, _ = model.member_forward(pool, e)
    err = (pool - x_hat).pow(2).sum(dim=1).double().cpu()
    norms = torch.linalg.vector_norm(pool, dim=1)
    usable = (norms > _NORM_EPS).cpu()
    w = err * usable
    if not bool(w.sum() > 0):
        w = usable.double()
        if not bool(w.sum() > 0):
            return idx[:0]
    pick = torch.multinomial(w, n, replacement=True, generator=generator)
    pick_d = pick.to(pool.device)
    directions = pool[pick_d] / norms[pick_d].unsqueeze(1)
    alive = ~dead.to(model.W_enc.device)
    if bool(alive.any()):
        mean_norm = float(torch.linalg.vector_norm(model.W_enc[e], dim=0)[alive].mean())
    else:
        mean_norm = 1.0
    idx_d = idx.to(model.W_dec.device)
    model.reset_atoms_(e, idx_d, directions, encoder_scale * mean_norm)
    if opt is not None:
        for p in (model.W_dec, model.W_enc, model.b_enc):
            state = opt.state.get(p) or {}
            for k in ("exp_avg", "exp_avg_sq"):
                if k in state:
                    if p is model.W_enc:  # [E, d, m]: the atoms are columns
                        state[k][e][:, idx_d] = 0.0
                    else:  # W_dec [E, m, d] rows, b_enc [E, m] entries
                        state[k][e, idx_d] = 0.0
    return pick


class NonFiniteLoss(FloatingPointError):
    """A member's training loss became NaN or infinite; ``members`` lists every such member."""

    def __init__(self, members: list[int], step: int, value: float):
        self.members = members
        self.step = step
        super().__init__(
            f"SAE member {members[0]} has a non-finite training loss ({value}) at step {step}; "
            f"non-finite members: {members}"
        )


def _check_finite(loss_vec: Tensor, step: int, alive: list[int] | None = None) -> None:
    """Raise NonFiniteLoss naming the members (input order via ``alive``) whose loss is not finite."""
    finite = torch.isfinite(loss_vec.detach())
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        value = loss_vec[bad[0]].item()
        if alive is not None:
            bad = [alive[j] for j in bad]
        raise NonFiniteLoss(bad, step, value)
