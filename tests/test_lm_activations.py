"""engine.lm.activations: collected activations, CE with a patched site, CE recovered."""

import math

import numpy as np
import pytest
import torch

from engine.lm.activations import (
    ce_loss,
    ce_recovered,
    collect_activations,
    eval_windows,
)
from engine.lm.model import TinyLM
from engine.schema import LMModelSpec

CFG = LMModelSpec(d_model=16, n_layers=3, n_heads=4, d_mlp=64, context=16)
V = 50
SITE = "blocks.1.mlp.post"


@pytest.fixture(scope="module")
def model():
    return TinyLM(CFG, V, torch.Generator().manual_seed(0)).eval()


@pytest.fixture(scope="module")
def stream():
    return np.random.default_rng(0).integers(0, V, size=3000).astype(np.uint16)


def test_collect_equals_manual_forward(model, stream):
    n, ctx, batch = 200, CFG.context, 5
    acts = collect_activations(model, stream, SITE, n, ctx, torch.Generator().manual_seed(7), batch=batch)
    assert acts.shape == (n, 64) and acts.dtype == torch.float32
    # redo by hand: same draws from the same generator, full forward, read with a hook
    g = torch.Generator().manual_seed(7)
    n_windows = math.ceil(n / ctx)
    starts = torch.randint(0, len(stream) - ctx + 1, (n_windows,), generator=g)
    x = torch.from_numpy(stream.astype(np.int64))[starts[:, None] + torch.arange(ctx)]
    seen = []
    with torch.no_grad():
        for lo in range(0, n_windows, batch):
            model(x[lo : lo + batch], hooks={SITE: lambda a: seen.append(a.clone())})
    rows = torch.cat(seen).reshape(-1, 64)
    perm = torch.randperm(rows.shape[0], generator=g)[:n]
    assert torch.equal(acts, rows[perm])
    again = collect_activations(model, stream, SITE, n, ctx, torch.Generator().manual_seed(7), batch=batch)
    assert torch.equal(acts, again)
    # rows are mixed across contexts: consecutive rows rarely come from the same window
    assert not torch.equal(acts[:ctx], rows[:ctx])


def test_eval_windows_fixed_and_spread(stream):
    w = eval_windows(stream, 100, 16)
    assert w.shape == (7, 17) and w.dtype == torch.int64
    assert torch.equal(w, eval_windows(stream, 100, 16))
    assert torch.equal(w[0], torch.from_numpy(stream[:17].astype(np.int64)))
    assert torch.equal(w[-1], torch.from_numpy(stream[-17:].astype(np.int64)))
    with pytest.raises(ValueError):
        eval_windows(stream[:10], 100, 16)


def test_ce_loss_identity_and_zero_ablation(model, stream):
    w = eval_windows(stream, 1000, CFG.context)
    clean = ce_loss(model, w)
    # untrained: near uniform (unit-variance logits from the fan-in init add about 0.5 nats)
    assert clean == pytest.approx(math.log(V), abs=1.0)
    assert ce_loss(model, w, SITE, lambda a: a) == clean  # exactly
    zero = ce_loss(model, w, SITE, torch.zeros_like)
    assert zero != clean
    assert ce_recovered(clean, clean, zero) == 1.0
    assert ce_recovered(clean, zero, zero) == 0.0
    half = ce_loss(model, w, SITE, lambda a: 0.5 * a)
    assert ce_recovered(clean, half, zero) == (zero - half) / (zero - clean)
    with pytest.raises(ValueError):
        ce_loss(model, w, SITE)


def test_ce_recovered_values():
    assert ce_recovered(2.0, 2.5, 3.0) == 0.5
    assert ce_recovered(2.0, 3.5, 3.0) == -0.5  # worse than zero-ablation
    assert math.isnan(ce_recovered(2.0, 2.0, 2.0))
