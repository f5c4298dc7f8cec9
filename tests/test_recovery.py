"""Property tests: a ReLU-L1 SAE recovers planted features, and training stays well-formed.

Recovery region (``test_recovers_planted_features``), established by experiment on a 2-core
CPU (random configurations drawn from a wider box, 2 SAE init seeds x 4 l1 values each,
MMCS recorded every 500 steps; torch 2.13, see the report of the change that added this file):

- data: ``toydata`` with ``correlation="none"``, U[0,1) magnitudes, ``n_features`` 8-32,
  ``active_per_sample`` 1-3, ``decay`` 1.0 or 0.99, ``dim`` from ``ceil(0.75 n)`` to ``2 n``;
- SAE: ``relu_l1``, orthogonal init, ``m = round(ratio * n)`` with ratio 1.5-2,
  ``l1 = 0.1 * m / d`` (the report's per-dim MSE makes the reconstruction term scale like
  1/d and the report divides the L1 term by m, so this keeps the balance fixed across sizes),
  Adam lr 3e-3, batch 256, 2,000 steps.

In that box every run we saw ended with MMCS >= 0.98 (typically 0.99+), so the 0.95 bar
has a margin. Outside it recovery is *not* reliable at this budget, which is why the box
stops where it does:

- ``dim <= n / 2`` (2x superposition or more): MMCS 0.87-0.95 after 3,000 steps for every
  l1 tried (0.05-0.3 x m/d); random features in so few dimensions overlap strongly;
- ratio 1: 0.95-0.96 typically, with one or two features merged or unmatched; not a
  dependable >= 0.95;
- lr 1e-3 (the report's): the same end point needs roughly 2x the steps.

Each example trains one SAE for ~1-3 s; ``derandomize=True`` keeps CI stable.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sae import ReluL1, mmcs_truth, train
from toydata import ToyData, ToyDataConfig

RECOVERY_STEPS = 2000
RECOVERY_LR = 3e-3
BATCH = 256


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: intra-op threads only add synchronisation (on a loaded 2-core
    box, 2 threads made these tests ~25x slower). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@st.composite
def recovery_configs(draw):
    n = draw(st.integers(8, 32))
    dim = draw(st.integers(math.ceil(0.75 * n), 2 * n))
    active = draw(st.sampled_from([1.0, 1.5, 2.0, 2.5, 3.0]))
    decay = draw(st.sampled_from([1.0, 0.99]))
    ratio = draw(st.sampled_from([1.5, 2.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    return n, dim, active, decay, ratio, seed


def toy(n, dim, active, decay, seed):
    cfg = ToyDataConfig(
        n_features=n, dim=dim, active_per_sample=active, decay=decay, correlation="none"
    )
    data = ToyData.build(cfg, torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1))
    batch_gen = torch.Generator().manual_seed(seed + 2)
    return data, (lambda step: data.sample(BATCH, batch_gen)[0])


@settings(max_examples=16, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(recovery_configs())
def test_recovers_planted_features(config):
    n, dim, active, decay, ratio, seed = config
    data, next_batch = toy(n, dim, active, decay, seed)
    m = round(ratio * n)
    model = ReluL1.from_init(
        "orthogonal", dim, m, [0.1 * m / dim], [torch.Generator().manual_seed(seed + 3)]
    )
    train(model, next_batch, RECOVERY_STEPS, RECOVERY_LR)
    result = mmcs_truth(data.features, model.atoms(0))
    assert result["mmcs_truth"] >= 0.95, (config, result)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    d=st.integers(2, 24),
    m=st.integers(1, 48),
    E=st.integers(1, 3),
    kind=st.sampled_from(["orthogonal", "tied", "data_samples"]),
    decoder_bias=st.booleans(),
    log_l1=st.floats(-3, 2),
    log_lr=st.floats(-4, -1),
    log_scale=st.floats(-2, 2),
    seed=st.integers(0, 2**31 - 1),
)
def test_training_keeps_unit_atoms_and_finite_weights(
    d, m, E, kind, decoder_bias, log_l1, log_lr, log_scale, seed
):
    """Whatever the sizes, l1 (1e-3-100), lr (1e-4-0.1) or data scale (0.01-100): after
    every step each atom has unit norm and no parameter is NaN or infinite."""
    g = torch.Generator().manual_seed(seed)
    scale = 10.0**log_scale
    data = torch.rand(41, 16, d, generator=g) * (torch.rand(41, 16, d, generator=g) < 0.3) * scale
    samples = data[0] + 1e-3  # no all-zero rows for data_samples
    l1 = [10.0**log_l1 * (e + 1) for e in range(E)]
    gens = [torch.Generator().manual_seed(seed + 1 + e) for e in range(E)]
    model = ReluL1.from_init(kind, d, m, l1, gens, samples=samples, decoder_bias=decoder_bias)
    bad = []

    def check(step):
        norms = model.W_dec.detach().norm(dim=-1)
        if not torch.allclose(norms, torch.ones_like(norms), rtol=0, atol=1e-5):
            bad.append((step, "norm", norms.min().item(), norms.max().item()))
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            bad.append((step, "non-finite"))

    train(model, lambda s: data[s], 40, 10.0**log_lr, on_step=check)
    assert not bad, bad
