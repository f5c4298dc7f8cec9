"""Tests for toydata: synthetic sparse-feature data with planted ground truth.

Statistical checks use fixed seeds (so they are deterministic, never flaky) and tolerances of
5-6 standard errors, so that a correct generator passes for essentially every seed while a wrong
rescaling (e.g. the original uncorrelated mode's ~0.97 active instead of 5) fails by a wide margin.
"""

from __future__ import annotations

import math

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from toydata import ToyData, ToyDataConfig, planted_features
from toydata.probability import base_probabilities, batch_probabilities, decay_weights
from toydata.sampling import assemble, bernoulli_positions, fill_empty_rows
from toydata.structure import batch_covariance, copula_factor, single_thread

MODES = ("batch", "none", "per_sample")
MAGNITUDES = ("uniform", "constant", "product")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Like the engine's 1-thread workers; keeps timings sane when other processes load the cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(seed: int = 0, **kw) -> ToyData:
    kw.setdefault("n_features", 64)
    kw.setdefault("dim", 16)
    return ToyData.build(ToyDataConfig(**kw), gen(seed), gen(seed + 1000))


def draw(data: ToyData, rows: int, seed: int, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate ``rows // batch`` consecutive calls to ``sample(batch)`` from one generator."""
    g = gen(seed)
    xs, cs = zip(*(data.sample(batch, g) for _ in range(rows // batch)))
    return torch.cat(xs), torch.cat(cs)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kw",
    [
        {"n_features": 0},
        {"n_features": -3},
        {"n_features": 2.0},
        {"n_features": True},
        {"dim": 0},
        {"active_per_sample": 0.0},
        {"active_per_sample": -1.0},
        {"active_per_sample": float("nan")},
        {"active_per_sample": 65.0},  # > n_features
        {"decay": 0.0},
        {"decay": 1.5},
        {"decay": -0.5},
        {"decay": float("nan")},
        {"correlation": "full"},
        {"magnitude": "gaussian"},
        {"correlation_rank": 0},
        {"correlation_strength": -0.1},
        {"correlation_strength": float("inf")},
        {"noise_std": -1.0},
        {"noise_std": float("nan")},
    ],
)
def test_config_rejects_bad_values(kw):
    args = {"n_features": 64, "dim": 16, **kw}
    with pytest.raises(ValueError, match=next(iter(kw))):
        ToyDataConfig(**args)


def test_config_accepts_edges():
    ToyDataConfig(n_features=4, dim=1, active_per_sample=4, decay=1.0, correlation_strength=0.0)
    cfg = ToyDataConfig(n_features=512, dim=256)
    assert (cfg.active_per_sample, cfg.decay, cfg.correlation, cfg.magnitude) == (5.0, 0.99, "batch", "uniform")


# ---------------------------------------------------------------- features


def test_planted_features_unit_rows():
    f = planted_features(300, 40, gen(0))
    assert f.shape == (300, 40) and f.dtype == torch.float32
    torch.testing.assert_close(f.norm(dim=1), torch.ones(300), rtol=0, atol=1e-6)
    # Random directions, not orthogonalised: a 300 x 40 set cannot be orthogonal anyway.
    assert not torch.equal(f, planted_features(300, 40, gen(1)))


def test_planted_features_hand_check_1d():
    # In one dimension the unit vectors are the signs of the N(0,1) draws.
    f = planted_features(5, 1, gen(3))
    expected = torch.sign(torch.randn(5, 1, generator=gen(3)))
    assert torch.equal(f, expected)


@pytest.mark.parametrize("mode", MODES)
def test_features_independent_of_correlation_settings(mode):
    ref = build(seed=7, correlation="none")
    other = build(seed=7, correlation=mode, correlation_rank=3, correlation_strength=2.0, active_per_sample=2.0)
    assert torch.equal(ref.features, other.features)
    assert torch.equal(ref.features, planted_features(64, 16, gen(7)))


# ---------------------------------------------------------------- probabilities (hand-checked)


def test_base_probabilities_hand_check():
    w = decay_weights(3, 0.5)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64))
    # Plain rescale: 1 * [1, .5, .25] / 1.75.
    torch.testing.assert_close(base_probabilities(w, 1.0), torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=torch.float64))
    # 2.5 / 1.75 * w would give p_0 = 1.43 > 1: clip it, then 1.5 / 0.75 = 2 for the rest -> p_1 = 1 too.
    torch.testing.assert_close(base_probabilities(w, 2.5), torch.tensor([1.0, 1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(base_probabilities(w, 3.0), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(base_probabilities(w, 2.0), torch.tensor([1.0, 2 / 3, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(base_probabilities(decay_weights(4, 1.0), 1.0), torch.full((4,), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("n,decay,active", [(512, 0.99, 5.0), (100, 0.5, 7.3), (10, 0.9, 10.0), (1000, 0.999, 600.0)])
def test_base_probabilities_sum_to_active(n, decay, active):
    p = base_probabilities(decay_weights(n, decay), active)
    assert float(p.sum()) == pytest.approx(active, rel=1e-12)
    assert float(p.min()) >= 0 and float(p.max()) <= 1
    assert bool((p[1:] <= p[:-1]).all())


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    decay=st.floats(0.5, 1.0),
    frac=st.floats(0.001, 1.0),
)
def test_base_probabilities_properties(n, decay, frac):
    active = max(frac * n, 1e-3)
    w = decay_weights(n, decay)
    p = base_probabilities(w, active)
    assert float(p.sum()) == pytest.approx(active, rel=1e-9, abs=1e-12)
    assert float(p.min()) >= 0 and float(p.max()) <= 1
    assert bool((p[1:] <= p[:-1]).all())
    unclipped = p < 1
    if bool(unclipped.sum() >= 2):  # the unclipped part keeps the decay shape
        ratio = p[unclipped] / w[unclipped]
        torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))


def test_base_probabilities_report_settings():
    # The report's settings never clip: p = 0.99**i * 5 / sum(0.99**i).
    w = decay_weights(512, 0.99)
    torch.testing.assert_close(base_probabilities(w, 5.0), w * 5 / w.sum())
    # The original uncorrelated mode (no rescale) averages ~0.97 active features instead.
    assert float((w * 5 / 512).sum()) == pytest.approx(0.97, abs=0.005)


def test_base_probabilities_underflow_is_an_error():
    with pytest.raises(ValueError, match="underflow"):
        ToyData.build(ToyDataConfig(n_features=400, dim=2, decay=0.01, active_per_sample=400), gen(0), gen(1))


def test_batch_probabilities_hand_check():
    z = torch.zeros(2, dtype=torch.float64)  # Phi(0) = 1/2
    w = decay_weights(2, 0.5)  # [1, 0.5] -> raw = [0.5, 0.25], mean 0.375
    torch.testing.assert_close(batch_probabilities(z, w, 1.0), torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    # Target mean 0.9 -> [1.2, 0.6], clipped to [1, 0.6] (faithfully loses the clipped mass).
    torch.testing.assert_close(batch_probabilities(z, w, 1.8), torch.tensor([1.0, 0.6], dtype=torch.float64))
    z = torch.tensor([1.0, -1.0], dtype=torch.float64)
    phi = 0.5 * (1 + math.erf(1 / math.sqrt(2)))  # Phi(1); Phi(-1) = 1 - Phi(1)
    raw = torch.tensor([phi, 0.5 * (1 - phi)], dtype=torch.float64)
    torch.testing.assert_close(batch_probabilities(z, w, 1.0), raw / raw.mean() * 0.5)


# ---------------------------------------------------------------- correlation structures (hand-checked)


def test_batch_covariance_hand_check_2x2():
    a = torch.rand(2, 2, generator=gen(5), dtype=torch.float64)
    s00, s11, s01 = float(a[0, 0]), float(a[1, 1]), float(a[0, 1] + a[1, 0]) / 2
    lam_min = (s00 + s11) / 2 - math.sqrt(((s00 - s11) / 2) ** 2 + s01**2)
    shift = -1.001 * lam_min if lam_min < 0 else 0.0
    expected = torch.tensor([[s00 + shift, s01], [s01, s11 + shift]], dtype=torch.float64)
    torch.testing.assert_close(batch_covariance(2, gen(5)), expected)
    # ToyData draws the same structure from structure_gen and stores its Cholesky factor.
    data = ToyData.build(ToyDataConfig(n_features=2, dim=3, active_per_sample=1.0), gen(0), gen(5))
    chol = data.ground_truth()["covariance_cholesky"]
    torch.testing.assert_close(chol @ chol.T, expected)


def test_batch_covariance_report_facts():
    s = batch_covariance(512, gen(0))
    with single_thread():
        eig = torch.linalg.eigvalsh(s)
    assert float(eig[0]) > 0  # positive definite after the shift
    assert 8.5 < float(s.diagonal().mean()) < 10.5  # REFERENCE: diagonal ~ 9.6
    assert 250 < float(eig[-1]) < 280  # REFERENCE: top eigenvalue ~ 265


def test_copula_factor_hand_check_rank1():
    strength = 1.7
    w = torch.randn(2, 1, generator=gen(9), dtype=torch.float64)
    w1, w2 = float(w[0, 0]), float(w[1, 0])
    c12 = strength**2 * w1 * w2 / math.sqrt((1 + strength**2 * w1**2) * (1 + strength**2 * w2**2))
    factor, residual_std = copula_factor(2, 1, strength, gen(9))
    corr = factor @ factor.T + torch.diag(residual_std**2)
    torch.testing.assert_close(corr, torch.tensor([[1.0, c12], [c12, 1.0]], dtype=torch.float64))


def test_copula_correlation_unit_diagonal_and_pd():
    factor, residual_std = copula_factor(200, 8, 3.0, gen(0))
    corr = factor @ factor.T + torch.diag(residual_std**2)
    torch.testing.assert_close(corr.diagonal(), torch.ones(200, dtype=torch.float64))
    with single_thread():
        assert float(torch.linalg.eigvalsh(corr)[0]) > 0
    zero, resid = copula_factor(10, 4, 0.0, gen(0))
    assert torch.equal(zero, torch.zeros(10, 4, dtype=torch.float64)) and torch.equal(resid, torch.ones(10, dtype=torch.float64))


# ---------------------------------------------------------------- sampling: shapes, determinism


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_shapes_dtypes_and_magnitudes(mode, magnitude):
    data = build(correlation=mode, magnitude=magnitude, n_features=64, dim=16, active_per_sample=4.0)
    x, codes = data.sample(512, gen(1))
    assert x.shape == (512, 16) and codes.shape == (512, 64)
    assert x.dtype == codes.dtype == torch.float32
    assert x.is_contiguous() and codes.is_contiguous()
    assert data.features.shape == (64, 16) and data.probs.shape == (64,) and data.probs.dtype == torch.float32
    assert bool((codes >= 0).all())
    values = codes[codes != 0]
    filled = torch.zeros_like(values, dtype=torch.bool)
    if mode == "batch":  # filled empty rows carry exactly 1.0, whatever the magnitude law
        filled = (values == 1.0) & ((codes != 0).sum(1) == 1)[codes.nonzero()[:, 0]]
    if magnitude == "constant":
        assert bool((values == 1.0).all())
    else:
        assert bool((values[~filled] < 1.0).all())
    torch.testing.assert_close(x, codes @ data.features, rtol=0, atol=1e-5)


def test_sample_zero_rows_and_bad_batch():
    data = build()
    x, codes = data.sample(0, gen(0))
    assert x.shape == (0, 16) and codes.shape == (0, 64)
    with pytest.raises(ValueError):
        data.sample(-1, gen(0))


@pytest.mark.parametrize("mode", MODES)
def test_deterministic_given_seeds(mode):
    kw = dict(correlation=mode, noise_std=0.1, magnitude="product")
    a, b = build(seed=3, **kw), build(seed=3, **kw)
    for key, value in a.ground_truth().items():
        assert torch.equal(value, b.ground_truth()[key]), key
    ga, gb = gen(11), gen(11)
    for _ in range(3):  # consecutive calls are fresh draws, and equal across equal generators
        (xa, ca), (xb, cb) = a.sample(300, ga), b.sample(300, gb)
        assert torch.equal(xa, xb) and torch.equal(ca, cb)
    x1, c1 = a.sample(300, gen(11))
    x2, c2 = a.sample(300, ga)
    assert not torch.equal(c1, c2) and not torch.equal(x1, x2)
    x3, c3 = a.sample(300, gen(12))
    assert not torch.equal(c1, c3)
    other = build(seed=4, **kw)
    assert not torch.equal(a.features, other.features)


@pytest.mark.parametrize("mode", MODES)
def test_sample_independent_of_thread_count(mode):
    data = build(n_features=512, dim=64, correlation=mode, noise_std=0.1)
    x1, c1 = data.sample(512, gen(0))
    torch.set_num_threads(2)
    try:
        x2, c2 = data.sample(512, gen(0))
    finally:
        torch.set_num_threads(1)
    assert torch.equal(c1, c2) and torch.equal(x1, x2)


def test_structure_seed_changes_structure_not_features():
    a = ToyData.build(ToyDataConfig(64, 16, correlation="per_sample"), gen(0), gen(1))
    b = ToyData.build(ToyDataConfig(64, 16, correlation="per_sample"), gen(0), gen(2))
    assert torch.equal(a.features, b.features)
    assert not torch.equal(a.ground_truth()["copula_factor"], b.ground_truth()["copula_factor"])


def test_build_restores_thread_count():
    torch.set_num_threads(2)
    try:
        build(correlation="batch")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    for mode in MODES:
        build(correlation=mode, noise_std=0.5).sample(64, gen(0))
    assert torch.equal(before, torch.random.get_rng_state())


# ---------------------------------------------------------------- sampling: statistics


def mean_count_tolerance(counts: torch.Tensor) -> float:
    """Six standard errors of the mean of per-row active counts."""
    return 6 * float(counts.std()) / math.sqrt(counts.numel())


@pytest.mark.parametrize("mode", ["none", "per_sample"])
def test_mean_active_count_clean_modes(mode):
    data = build(n_features=512, dim=8, correlation=mode)
    _, codes = draw(data, 20480, seed=1, batch=1024)
    counts = (codes != 0).sum(1).double()
    # sum(p) == 5 exactly; rows are independent, so the sample mean is within 6 SE (~0.1).
    assert abs(float(counts.mean()) - 5.0) < mean_count_tolerance(counts)
    assert float(counts.min()) == 0  # no empty-row filling in the clean modes


def test_mean_active_count_batch_mode():
    data = build(n_features=512, dim=8, correlation="batch")
    _, codes = draw(data, 20480, seed=1, batch=256)
    counts = (codes != 0).sum(1).double()
    assert float(counts.min()) >= 1  # no empty rows
    # Each batch's p is rescaled to sum exactly to 5 (no clipping at these settings), so given the
    # batch the rows are independent with mean 5; filling empty rows adds at most
    # P(empty) <= exp(-5) ~ 0.007 on top.
    assert 5.0 - mean_count_tolerance(counts) < float(counts.mean()) < 5.0 + math.exp(-5) + mean_count_tolerance(counts)


def test_none_mode_original_rescaling_would_fail():
    # Guard against the original's unrescaled probabilities (0.97 active): the tolerance above is ~0.1.
    data = build(n_features=512, dim=8, correlation="none")
    assert float(data.probs.sum()) == pytest.approx(5.0, rel=1e-6)


@pytest.mark.parametrize("mode,strength", [("none", 1.0), ("per_sample", 0.0), ("per_sample", 1.0), ("per_sample", 3.0)])
def test_marginals_match_probs(mode, strength):
    data = build(n_features=64, dim=4, decay=0.95, active_per_sample=6.0, correlation=mode,
                 correlation_rank=2, correlation_strength=strength)
    rows = 40960
    _, codes = draw(data, rows, seed=2, batch=4096)
    freq = (codes != 0).double().mean(0)
    p = data.probs.double()
    se = (p * (1 - p) / rows).sqrt()
    # Rows are independent: each feature's firing count is Binomial(rows, p_i); 5 SE per feature
    # (64 features) leaves a ~4e-5 chance of a false alarm for any seed.
    assert float(((freq - p).abs() / se).max()) < 5.0


def test_per_sample_copula_correlates_features():
    data = build(n_features=16, dim=4, decay=1.0, active_per_sample=4.0, correlation="per_sample",
                 correlation_rank=1, correlation_strength=3.0)
    gt = data.ground_truth()
    corr = gt["copula_factor"] @ gt["copula_factor"].T
    corr.fill_diagonal_(0)
    i, j = divmod(int(corr.argmax()), 16)
    k, m = divmod(int(corr.argmin()), 16)
    assert float(corr[i, j]) > 0.5 and float(corr[k, m]) < -0.5
    _, codes = draw(data, 20480, seed=3, batch=4096)
    on = (codes != 0).double()
    # Independent features would co-fire with probability 0.25 * 0.25 = 0.0625.
    assert float((on[:, i] * on[:, j]).mean()) > 0.1
    assert float((on[:, k] * on[:, m]).mean()) < 0.03


def test_batch_mode_firing_is_shared_within_a_batch():
    """The per-batch z makes features fire together within a batch: per-batch firing counts are
    far more dispersed across batches than independent Bernoulli(p) counts would be."""

    def dispersion(mode: str) -> float:
        data = build(n_features=512, dim=8, correlation=mode)
        g = gen(4)
        counts = torch.stack([(data.sample(256, g)[1][:, :40] != 0).sum(0) for _ in range(60)]).double()
        # Variance across batches over the binomial variance implied by the mean rate.
        rate = counts.mean(0) / 256
        return float((counts.var(0) / (256 * rate * (1 - rate))).mean())

    assert 0.6 < dispersion("none") < 1.5  # control: independent draws have dispersion ~1
    assert dispersion("batch") > 5.0  # REFERENCE: per batch ~25% of features at max p, ~1/3 near 0


def test_batch_mode_fills_empty_rows_with_one():
    data = build(n_features=16, dim=4, active_per_sample=0.05, correlation="batch")
    _, codes = draw(data, 8192, seed=5, batch=1024)
    nonzero = codes != 0
    assert bool((nonzero.sum(1) >= 1).all())
    single = nonzero.sum(1) == 1
    ones = (codes == 1.0).any(1)
    # U[0,1) magnitudes are never exactly 1.0, so a 1.0 marks a filled row (a lone feature).
    assert bool((single[ones]).all())
    assert float(ones.double().mean()) > 0.9  # sum(p) = 0.05: ~95% of rows start empty
    # The filled feature is uniform over the 16 features: counts ~ 7800/16 ~ 490 +- 21.
    cols = codes[ones].argmax(1)
    per_col = torch.bincount(cols, minlength=16).double()
    expected = ones.sum() / 16
    assert float((per_col - expected).abs().max()) < 6 * math.sqrt(float(expected))


def test_fill_empty_rows_hand_check():
    features = torch.arange(8.0).view(4, 2)
    rows, cols = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 3])
    values = torch.tensor([0.0, 0.5, 0.25])  # row 0 holds only an explicit zero: it counts as empty
    codes, x = assemble(rows, cols, values, features, 3)
    candidates = torch.randint(0, 4, (3,), generator=gen(2))  # the draw fill_empty_rows makes
    fill_empty_rows(rows, values, codes, x, features, gen(2))
    c0, c2 = int(candidates[0]), int(candidates[2])
    expected = torch.zeros(3, 4)
    expected[0, c0] = 1.0
    expected[1, 0], expected[1, 3] = 0.5, 0.25
    expected[2, c2] = 1.0
    assert torch.equal(codes, expected)
    assert torch.equal(x, torch.stack([features[c0], 0.5 * features[0] + 0.25 * features[3], features[c2]]))
    # Nothing to fill: unchanged (the column draw is still made).
    codes, x = assemble(rows[1:] - 1, cols[1:], values[1:], features, 1)
    before = (codes.clone(), x.clone())
    fill_empty_rows(rows[1:] - 1, values[1:], codes, x, features, gen(2))
    assert torch.equal(codes, before[0]) and torch.equal(x, before[1])


def test_batch_mode_clipped_feature_always_fires():
    # 8 features, 7 active on average: p_0 = 7 Phi(z_0) / sum_i Phi(z_i) 0.5**i exceeds 1 (and is
    # clipped) whenever Phi(z_0) > ~0.17, i.e. in most batches; clipped columns take the dense path.
    data = build(n_features=8, dim=4, active_per_sample=7.0, decay=0.5, correlation="batch", magnitude="constant")
    g = gen(0)
    clipped = 0
    for _ in range(16):
        _, codes = data.sample(256, g)
        clipped += bool((codes[:, 0] == 1.0).all())
        assert float((codes != 0).sum(1).double().mean()) < 7.0 + 0.5  # sum(p) <= 7, rows independent
    assert clipped >= 8


@pytest.mark.parametrize("mode", ["none", "per_sample"])
def test_no_filling_outside_batch_mode(mode):
    data = build(n_features=16, dim=4, active_per_sample=0.05, correlation=mode, magnitude="uniform")
    _, codes = data.sample(4096, gen(0))
    assert float((codes != 0).any(1).double().mean()) < 0.1
    assert not bool((codes == 1.0).any())


def test_magnitude_distributions():
    for magnitude, mean in [("uniform", 0.5), ("product", 0.25)]:
        data = build(n_features=64, dim=4, correlation="none", magnitude=magnitude, active_per_sample=8.0)
        _, codes = data.sample(8192, gen(6))
        values = codes[codes != 0].double()
        # ~65k values with std <= 0.29: SE < 0.0012.
        assert float(values.mean()) == pytest.approx(mean, abs=0.01)
        assert float(values.max()) < 1.0


def test_hand_check_single_feature():
    # n = 1 and active_per_sample = 1 force p = [1]: every row is exactly the one feature.
    data = build(n_features=1, dim=3, active_per_sample=1.0, correlation="none", magnitude="constant")
    torch.testing.assert_close(data.probs, torch.ones(1))
    x, codes = data.sample(5, gen(0))
    assert torch.equal(codes, torch.ones(5, 1))
    assert torch.equal(x, data.features.expand(5, 3))


def test_hand_check_three_features_exact_x():
    # With constant magnitudes x is a plain sum of planted rows; check each row by hand.
    data = build(n_features=3, dim=5, active_per_sample=1.5, correlation="none", magnitude="constant")
    x, codes = data.sample(50, gen(8))
    f = data.features
    for row in range(50):
        expected = torch.zeros(5)
        for i in range(3):
            if codes[row, i] == 1.0:
                expected = expected + f[i]
        torch.testing.assert_close(x[row], expected, rtol=0, atol=1e-6)
    assert set(codes.unique().tolist()) <= {0.0, 1.0}


def test_noise_scale_and_codes_unchanged():
    clean = build(n_features=64, dim=64, correlation="per_sample")
    noisy = build(n_features=64, dim=64, correlation="per_sample", noise_std=0.3)
    x0, c0 = clean.sample(4096, gen(9))
    x1, c1 = noisy.sample(4096, gen(9))
    assert torch.equal(c0, c1)  # noise is drawn after the codes
    noise = (x1 - x0).double()
    # 262k N(0, 0.09) draws: the std estimate has relative SE 1/sqrt(2N) ~ 0.14%.
    assert float(noise.std()) == pytest.approx(0.3, rel=0.01)
    assert abs(float(noise.mean())) < 0.005


def test_bernoulli_positions_edge_probabilities():
    p = torch.tensor([0.0, 1.0, 0.3, 0.0])
    rows, cols = bernoulli_positions(p, 1000, gen(0))
    lin = rows * 4 + cols
    assert bool((lin[1:] > lin[:-1]).all())  # row-major, unique
    counts = torch.bincount(cols, minlength=4)
    assert counts[0] == 0 and counts[3] == 0 and counts[1] == 1000
    assert abs(int(counts[2]) - 300) < 6 * math.sqrt(1000 * 0.3 * 0.7)
    rows, cols = bernoulli_positions(torch.zeros(5), 10, gen(0))
    assert rows.numel() == 0
    # p = 1e-12 over 1e4 entries: expected 1e-8 hits, so none (for any seed, almost surely).
    rows, cols = bernoulli_positions(torch.full((100,), 1e-12), 100, gen(0))
    assert rows.numel() == 0


def test_bernoulli_positions_marginals_and_independence():
    # Sparse (Poisson) columns and dense (p > 1/2) columns; check marginals and that neighbouring
    # entries are independent, both within a column (rows b, b+1) and within a row.
    p = torch.tensor([0.3, 0.3, 0.05, 0.7])
    batch = 20000
    rows, cols = bernoulli_positions(p, batch, gen(1))
    on = torch.zeros(batch, 4, dtype=torch.float64)
    on[rows, cols] = 1.0
    for i in range(4):
        pi = float(p[i])
        assert abs(float(on[:, i].mean()) - pi) < 6 * math.sqrt(pi * (1 - pi) / batch)
    for joint, q in [
        (on[:-1, 0] * on[1:, 0], 0.09),  # consecutive rows, same column
        (on[:-1, 2] * on[1:, 2], 0.0025),
        (on[:, 0] * on[:, 1], 0.09),  # same row, neighbouring columns
        (on[:, 1] * on[:, 3], 0.21),  # sparse x dense column
    ]:
        assert abs(float(joint.mean()) - q) < 6 * math.sqrt(q * (1 - q) / batch)


# ---------------------------------------------------------------- ground truth


@pytest.mark.parametrize(
    "mode,keys",
    [
        ("batch", {"features", "probs", "covariance_cholesky"}),
        ("none", {"features", "probs"}),
        ("per_sample", {"features", "probs", "copula_factor", "copula_residual_std", "copula_threshold"}),
    ],
)
def test_ground_truth_serialisable(mode, keys):
    data = build(correlation=mode, correlation_rank=3)
    gt = data.ground_truth()
    assert set(gt) == keys
    assert all(t.is_contiguous() for t in gt.values())
    assert gt["features"].shape == (64, 16) and gt["probs"].shape == (64,)
    blob = safetensors.torch.save(gt)
    assert blob == safetensors.torch.save(data.ground_truth())  # deterministic bytes
    loaded = safetensors.torch.load(blob)
    assert set(loaded) == keys and all(torch.equal(loaded[k], gt[k]) for k in keys)
    gt["features"].zero_()  # copies: mutating them leaves the source intact
    assert float(data.features.norm(dim=1).min()) > 0.99
    if mode == "batch":
        assert gt["covariance_cholesky"].shape == (64, 64)
    if mode == "per_sample":
        assert gt["copula_factor"].shape == (64, 3)
