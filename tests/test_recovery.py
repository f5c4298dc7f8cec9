"""Property tests: a ReLU-L1 SAE recovers planted features, and training stays well-formed.

Recovery region of ``test_recovers_planted_features`` (established by experiment on a 2-core
CPU, torch 2.13: ~150 random configurations from a wider box, 2-4 SAE init seeds each, l1
rules k = 0.05 / 0.1 / 0.2 / 0.3, MMCS every 500 steps):

- data: ``toydata``, ``correlation="none"``, U[0,1) magnitudes, ``n_features`` 8-32,
  ``dim`` from ``max(n, 10)`` to ``2 n``, ``active_per_sample`` 1-3 but at most ``n / 5``
  (codes at most 20% dense), ``decay`` 1.0 or 0.99;
- SAE: ``relu_l1``, orthogonal init, ``m = round(ratio * n)`` with ratio 1.5 or 2,
  ``l1 = 0.1 * m / dim`` (the MSE is a per-dim mean, so the reconstruction term scales like
  1/dim, and the L1 term is divided by m: this keeps the balance fixed across sizes),
  Adam lr 3e-3, batch 256, 2,000 steps.

Inside the box all 152 runs we made (36 configurations x 2 init seeds in the sweep, plus a
check of 40 configurations x 2 seeds drawn exactly as below) ended with MMCS >= 0.983,
almost all >= 0.99, so the 0.95 bar has a margin. The box stops where recovery stops being dependable at this budget:

- ``dim <= n / 2`` (2x superposition or more): MMCS 0.87-0.95 after 3,000 steps whatever the
  l1 (0.05-0.3 x m/dim); random features in so few dimensions overlap strongly;
- dense codes, ``active_per_sample > n / 5`` with small n and dim (e.g. n=8, dim=10,
  3 active): 0.91-0.97;
- very small dim (< 10) even at dim ~ n (n=8, dim=7: 0.77-0.92);
- ratio 1: 0.95-0.96 typically, one or two features merged or unmatched;
- lr 1e-3 (the report's): the same end point needs about twice the steps.

Each example trains one SAE (~1.5-2.5 s of CPU); ``derandomize=True`` keeps CI stable.
"""

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
    dim = draw(st.integers(max(n, 10), 2 * n))
    active = draw(st.sampled_from([a for a in (1.0, 1.5, 2.0, 2.5, 3.0) if a <= n / 5]))
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
