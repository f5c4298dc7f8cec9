"""Reading activations out of the tiny LM, and cross-entropy with an activation replaced."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

EVAL_BATCH = 64


class _Collected(Exception):
    """Raised by the reading hook to stop the forward pass once the site has been read."""


@torch.no_grad()
def read_site(model: torch.nn.Module, windows: Tensor, site: str, batch: int = 64) -> Tensor:
    """Activations at ``site`` for every position of ``windows`` [N, T] int64: [N*T, width]
    float32, window by window. The forward pass stops at the site (the layers above it and the
    unembedding are not run)."""
    width = model.site_width(site)
    device = next(model.parameters()).device
    out = torch.empty(windows.shape[0], windows.shape[1], width, dtype=torch.float32)
    for lo in range(0, windows.shape[0], batch):

        def read(act: Tensor, lo: int = lo) -> None:
            out[lo : lo + act.shape[0]] = act.float().cpu()
            raise _Collected

        try:
            model(windows[lo : lo + batch].to(device), hooks={site: read})
        except _Collected:
            pass
    return out.reshape(-1, width)


@torch.no_grad()
def collect_activations(
    model: torch.nn.Module,
    tokens: np.ndarray,
    site: str,
    n_tokens: int,
    context: int,
    generator: torch.Generator,
    batch: int = 64,
) -> Tensor:
    """Activations at ``site``, one row per token position: [n_tokens, width] float32.

    ``ceil(n_tokens / context)`` windows of ``context`` tokens start at uniform random offsets
    drawn from ``generator``; every position of every window is read (position 0 included),
    then the rows are permuted with ``generator`` (so rows from many contexts mix) and the
    first ``n_tokens`` kept (``read_site``)."""
    stream = torch.from_numpy(np.asarray(tokens).astype(np.int64))
    if stream.numel() < context:
        raise ValueError(f"token stream has {stream.numel()} tokens, fewer than the context {context}")
    n_windows = math.ceil(n_tokens / context)
    starts = torch.randint(0, stream.numel() - context + 1, (n_windows,), generator=generator)
    rows = read_site(model, stream[starts[:, None] + torch.arange(context)], site, batch)
    perm = torch.randperm(rows.shape[0], generator=generator)[:n_tokens]
    return rows[perm]


def eval_windows(tokens: np.ndarray, n_tokens: int, context: int) -> Tensor:
    """Fixed evaluation windows [N, context+1] int64, N = ceil(n_tokens / context), starts evenly
    spaced over the whole stream (no RNG). Inputs are ``w[:, :-1]``, targets ``w[:, 1:]``."""
    stream = np.asarray(tokens).astype(np.int64)
    if stream.size < context + 1:
        raise ValueError(f"token stream has {stream.size} tokens, need at least context + 1 = {context + 1}")
    n = max(1, math.ceil(n_tokens / context))
    starts = np.linspace(0, stream.size - (context + 1), n).round().astype(np.int64)
    return torch.from_numpy(stream[starts[:, None] + np.arange(context + 1)])


@torch.no_grad()
def ce_loss(
    model: torch.nn.Module,
    windows: Tensor,
    site: str | None = None,
    replace: Callable[[Tensor], Tensor] | None = None,
) -> float:
    """Mean next-token cross-entropy (nats) over every position of ``windows`` [N, T+1], with the
    activation at ``site`` replaced by ``replace(act)`` ([B,T,width] -> same shape) if given.
    Batches of ``EVAL_BATCH`` windows; sums accumulate in float64."""
    if (site is None) != (replace is None):
        raise ValueError("give both site and replace, or neither")
    hooks = {site: replace} if site is not None else None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for lo in range(0, windows.shape[0], EVAL_BATCH):
        w = windows[lo : lo + EVAL_BATCH].to(device)
        logits = model(w[:, :-1], hooks=hooks)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), w[:, 1:].reshape(-1), reduction="sum")
        total += float(loss.double())
        count += w[:, 1:].numel()
    model.train(was_training)
    return total / count


def ce_recovered(clean: float, patched: float, zero_ablated: float) -> float:
    """Fraction of the CE loss recovered: (zero - patched) / (zero - clean). 1.0 = the patched
    model is as good as the clean one, 0.0 = as bad as zeroing the activation; NaN when zeroing
    does not change the loss (the ratio is undefined)."""
    denom = zero_ablated - clean
    if denom == 0:
        return float("nan")
    return (zero_ablated - patched) / denom
