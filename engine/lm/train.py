"""Training the tiny LM, and the n-gram baselines its validation loss is judged against."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from engine.schema import LMTrainSpec

from .activations import ce_loss, eval_windows

BETAS = (0.9, 0.95)
GRAD_CLIP = 1.0
MIN_LR_FRACTION = 0.1


def lr_at(step: int, steps: int, spec: LMTrainSpec) -> float:
    """Learning rate for update ``step`` (0-based): linear warm-up over ``spec.warmup`` updates,
    then cosine decay from ``spec.lr`` to ``MIN_LR_FRACTION * spec.lr`` at the last update."""
    if step < spec.warmup:
        return spec.lr * (step + 1) / (spec.warmup + 1)
    decay_steps = max(1, steps - 1 - spec.warmup)
    progress = min(1.0, (step - spec.warmup) / decay_steps)
    min_lr = MIN_LR_FRACTION * spec.lr
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (spec.lr - min_lr)


def train_lm(
    model: torch.nn.Module,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    spec: LMTrainSpec,
    generator: torch.Generator,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Train ``model`` in place; returns its curves and final validation loss.

    AdamW (betas 0.9/0.95; weight decay on matrices and embeddings, not on biases and LayerNorm
    gains), gradient clipping at norm 1, ``lr_at`` schedule. ``steps = ceil(spec.tokens /
    (spec.batch * context))`` updates, each on ``spec.batch`` windows of ``context + 1`` tokens
    at uniform random starts drawn from ``generator`` (its only use). Validation loss every
    ``spec.eval_every`` updates and after the last, on a fixed set of ``spec.eval_tokens``
    tokens of evenly spaced validation windows.

    Returns ``{"curves": {"step", "tokens", "train_loss", "val_loss"}, "val_loss", "steps",
    "tokens", "params"}``. Curve point ``s`` is after ``s`` updates; its ``train_loss`` is the
    mean training-batch loss over the updates since the previous point (at s = 0: the first
    batch's loss before any update). ``on_step(info)`` is called after every update with
    ``step, steps, tokens, lr, train_loss`` (and ``val_loss`` at curve points)."""
    context = model.context
    device = next(model.parameters()).device  # batches are drawn on the CPU, then moved
    data = torch.from_numpy(np.asarray(train_tokens).astype(np.int64))
    if data.numel() < context + 1:
        raise ValueError(f"training stream has {data.numel()} tokens, need at least context + 1 = {context + 1}")
    if len(val_tokens) < context + 1:
        raise ValueError(f"validation stream has {len(val_tokens)} tokens, need at least context + 1 = {context + 1} (more text or a larger corpus.val_fraction)")
    val_windows = eval_windows(val_tokens, spec.eval_tokens, context)
    tokens_per_step = spec.batch * context
    steps = max(1, math.ceil(spec.tokens / tokens_per_step))
    offsets = torch.arange(context + 1)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr, betas=BETAS, foreach=False,
    )

    curves: dict[str, list] = {"step": [], "tokens": [], "train_loss": [], "val_loss": []}

    def record(step: int, train_loss: float) -> float:
        val = ce_loss(model, val_windows)
        model.train()
        curves["step"].append(step)
        curves["tokens"].append(step * tokens_per_step)
        curves["train_loss"].append(train_loss)
        curves["val_loss"].append(val)
        return val

    model.train()
    since_eval: list[float] = []
    for step in range(steps):
        starts = torch.randint(0, data.numel() - context, (spec.batch,), generator=generator)
        windows = data[starts[:, None] + offsets].to(device)  # [B, context+1]
        x, y = windows[:, :-1], windows[:, 1:]
        logits = model(x)  # [B,T,V]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        loss_value = loss.item()
        if step == 0:
            record(0, loss_value)
        lr = lr_at(step, steps, spec)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP, foreach=False)
        opt.step()
        since_eval.append(loss_value)
        done = step + 1
        info = {"step": done, "steps": steps, "tokens": done * tokens_per_step, "lr": lr, "train_loss": loss_value}
        if done % spec.eval_every == 0 or done == steps:
            info["val_loss"] = record(done, float(np.mean(since_eval)))
            since_eval = []
        if on_step is not None:
            on_step(info)
    model.eval()
    return {
        "curves": curves,
        "val_loss": curves["val_loss"][-1],
        "steps": steps,
        "tokens": steps * tokens_per_step,
        "params": sum(p.numel() for p in model.parameters()),
    }


def ngram_baselines(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> dict:
    """Validation cross-entropy (nats/token) of add-k smoothed unigram and bigram models fit on
    the training stream, so a reader can see the LM learned more than token frequencies.

    k is picked from ``(1e-3, 1e-2, 0.1, 1)`` by validation loss: an optimistic baseline, which
    only makes "the LM beats it" a stricter claim. The bigram CE is over the val stream's
    len - 1 transitions, the unigram over all its tokens; ``uniform`` is ln V.

    Caveat for tiny widths: the LM's logits have rank <= d_model, a count bigram's do not. On the
    builtin corpus with BPE-1024 the best d_model-16 network that sees only the previous token
    reaches ~4.37 nats against the count bigram's 4.03, and the default LM lands between the
    two; with the bytes tokenizer (V = 257) the bound is nearly free and the LM beats the bigram
    clearly."""
    tr = np.asarray(train_tokens).astype(np.int64)
    va = np.asarray(val_tokens).astype(np.int64)
    V = int(vocab_size)
    ks = (1e-3, 1e-2, 0.1, 1.0)

    uni = np.bincount(tr, minlength=V).astype(np.float64)
    uni_ce = {k: float(-np.mean(np.log((uni[va] + k) / (uni.sum() + k * V)))) for k in ks}

    # bigram counts only where the val stream needs them: sparse, so any V works
    pairs = np.unique(tr[:-1] * V + tr[1:], return_counts=True)
    prev_count = np.bincount(tr[:-1], minlength=V).astype(np.float64)
    q = va[:-1] * V + va[1:]
    pos = np.clip(np.searchsorted(pairs[0], q), 0, len(pairs[0]) - 1)
    c_ab = np.where(pairs[0][pos] == q, pairs[1][pos], 0).astype(np.float64)
    c_a = prev_count[va[:-1]]
    bi_ce = {k: float(-np.mean(np.log((c_ab + k) / (c_a + k * V)))) for k in ks}

    uk = min(uni_ce, key=uni_ce.get)
    bk = min(bi_ce, key=bi_ce.get)
    return {"uniform": math.log(V), "unigram": uni_ce[uk], "unigram_k": uk, "bigram": bi_ce[bk], "bigram_k": bk}
