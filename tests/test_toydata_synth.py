"""Tests for toydata.synth: Zipfian firing, the feature hierarchy, the low-rank copula.

Statistical checks use fixed seeds (deterministic, never flaky) and bounds of 5-6 standard
errors, as in test_toydata.py.
"""

from __future__ import annotations

import math

import pytest
import safetensors.torch
import torch

from toydata import planted_features
from toydata.structure import copula_factor
from toydata.synth import SynthConfig, SynthData, hierarchy_parents, orthogonalize, zipf_probabilities


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(seed: int = 0, **kw) -> SynthData:
    kw.setdefault("n_features", 64)
    kw.setdefault("dim", 16)
    return SynthData.build(SynthConfig(**kw), gen(seed), gen(seed + 1000))


def draw(data: SynthData, rows: int, seed: int, batch: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    xs, cs = zip(*(data.sample(batch, g) for _ in range(rows // batch)))
    return torch.cat(xs), torch.cat(cs)


TREE = dict(n_features=40, dim=8, n_roots=3, branching=3, depth=2, p_max=0.6, p_min=0.05)  # 39 in the forest


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"n_features": 0}, "n_features"),
        ({"dim": -1}, "dim"),
        ({"zipf_exponent": -0.5}, "zipf_exponent"),
        ({"p_min": -0.1}, "p_min"),
        ({"p_max": 1.5}, "p_max"),
        ({"p_min": 0.5, "p_max": 0.4}, "p_min"),
        ({"n_roots": -1}, "n_roots"),
        ({"branching": 0}, "branching"),
        ({"depth": -1}, "depth"),
        ({"n_roots": 8, "branching": 2, "depth": 3}, "more than n_features"),  # 8 * 15 = 120 > 64
        ({"correlation_rank": 1.5}, "correlation_rank"),
        ({"correlation_scale": float("nan")}, "correlation_scale"),
        ({"magnitude_std": -1.0}, "magnitude_std"),
        ({"orthogonalize_steps": -2}, "orthogonalize_steps"),
        ({"orthogonalize_lr": 0.0}, "orthogonalize_lr"),
        ({"noise_std": -0.1}, "noise_std"),
    ],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        SynthConfig(**{"n_features": 64, "dim": 16, **kw})


def test_config_defaults():
    cfg = SynthConfig(n_features=16384, dim=768)
    assert (cfg.zipf_exponent, cfg.p_max, cfg.p_min) == (0.5, 0.4, 5e-4)
    assert (cfg.n_roots, cfg.orthogonalize_steps, cfg.magnitude_mean, cfg.magnitude_std) == (0, 0, 1.0, 0.5)
    SynthConfig(n_features=64, dim=16, n_roots=4, branching=3, depth=2)  # 4 * 13 = 52 fits


# ---------------------------------------------------------------- probabilities, hierarchy (by hand)


def test_zipf_probabilities_hand_check():
    # w = 1, 1/2, 1/3, 1/4 mapped linearly so that w_0 -> 0.5 and w_3 -> 0.1.
    p = zipf_probabilities(4, 1.0, 0.1, 0.5)
    w = torch.tensor([1, 1 / 2, 1 / 3, 1 / 4], dtype=torch.float64)
    torch.testing.assert_close(p, 0.1 + 0.4 * (w - 0.25) / 0.75)
    assert p.dtype == torch.float64 and float(p[0]) == 0.5 and float(p[-1]) == 0.1
    torch.testing.assert_close(zipf_probabilities(3, 0.0, 0.1, 0.5), torch.full((3,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(zipf_probabilities(1, 0.5, 0.1, 0.5), torch.full((1,), 0.5, dtype=torch.float64))


def test_zipf_probabilities_synthsaebench_settings():
    p = zipf_probabilities(16384, 0.5, 5e-4, 0.4)
    assert float(p[0]) == pytest.approx(0.4) and float(p[-1]) == pytest.approx(5e-4)
    assert bool((p[1:] <= p[:-1]).all())
    # Affine in (i + 1)^-0.5: p_i - p_min is proportional to w_i - w_{n-1}.
    w = torch.arange(1, 16385, dtype=torch.float64).rsqrt()
    ratio = (p[:-1] - 5e-4) / (w[:-1] - w[-1])
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio), rtol=1e-9, atol=0)


def test_hierarchy_parents_hand_check():
    # 2 roots, branching 2, depth 2: roots 0,1; children 2..5; grandchildren 6..13; 14, 15 free.
    parent = hierarchy_parents(16, 2, 2, 2)
    assert parent.tolist() == [-1, -1, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, -1, -1]
    assert hierarchy_parents(5, 2, 3, 0).tolist() == [-1] * 5  # depth 0: roots without children
    assert hierarchy_parents(4, 0, 2, 3).tolist() == [-1] * 4
    with pytest.raises(ValueError):
        hierarchy_parents(13, 2, 2, 2)
    data = build(**TREE)
    assert torch.equal(data.parent, hierarchy_parents(40, 3, 3, 2))
    assert data.parent[:3].tolist() == [-1, -1, -1] and data.parent[3:6].tolist() == [0, 0, 0]
    assert data.parent[12:15].tolist() == [3, 3, 3] and int(data.parent[39]) == -1


# ---------------------------------------------------------------- sampling: shapes, invariants


@pytest.mark.parametrize("rank", [0, 3])
def test_shapes_and_x_equals_codes_times_features(rank):
    data = build(**TREE, correlation_rank=rank)
    x, codes = data.sample(300, gen(1))
    assert x.shape == (300, 8) and codes.shape == (300, 40)
    assert x.dtype == codes.dtype == torch.float32 and x.is_contiguous() and codes.is_contiguous()
    assert bool((codes >= 0).all()) and bool((codes > 0).any())
    torch.testing.assert_close(x, codes @ data.features, rtol=0, atol=1e-5)
    x0, c0 = data.sample(0, gen(1))
    assert x0.shape == (0, 8) and c0.shape == (0, 40)
    with pytest.raises(ValueError):
        data.sample(-1, gen(0))


def check_hierarchy(parent: torch.Tensor, codes: torch.Tensor) -> int:
    """No child without its parent, at most one child per parent per row; returns #active children."""
    on = codes > 0
    child = torch.nonzero(parent >= 0).squeeze(1)
    child_on = on[:, child]
    assert not bool((child_on & ~on[:, parent[child]]).any()), "a child fired without its parent"
    per_parent = torch.zeros(codes.shape[0], codes.shape[1], dtype=torch.int64)
    per_parent.index_add_(1, parent[child], child_on.long())
    assert int(per_parent.max()) <= 1, "two children of one parent fired together"
    return int(child_on.sum())


@pytest.mark.parametrize("rank,scale", [(0, 0.0), (2, 3.0)])
def test_hierarchy_invariants(rank, scale):
    data = build(**TREE, correlation_rank=rank, correlation_scale=scale)
    _, codes = draw(data, 8192, seed=2)
    assert check_hierarchy(data.parent, codes) > 1000  # plenty of children fired
    # Grandchildren fire too (features 12 .. 38).
    assert int((codes[:, 12:39] > 0).sum()) > 100


def test_child_magnitude_is_scaled_by_parent_exactly():
    # magnitude_std = 0: every own magnitude is exactly 2, so codes are 2, 4, 8 by level.
    data = build(**TREE, magnitude_mean=2.0, magnitude_std=0.0)
    _, codes = data.sample(4096, gen(3))
    level = torch.zeros(40, dtype=torch.int64)
    level[3:12], level[12:39] = 1, 2
    on = codes > 0
    expected = (2.0 ** (level + 1).double()).float().expand_as(codes)
    assert torch.equal(codes[on], expected[on])
    assert bool(on[:, 12:39].any())


def folded_normal_mean(mu: float, sigma: float) -> float:
    return sigma * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * sigma**2)) + mu * (1 - 2 * 0.5 * math.erfc(mu / sigma / math.sqrt(2)))


def test_magnitudes_folded_normal_and_child_ratio():
    mu, sigma = 0.3, 1.0  # folds often: mean ~0.834, not 0.3
    data = build(**TREE, magnitude_mean=mu, magnitude_std=sigma, correlation_rank=0)
    _, codes = draw(data, 16384, seed=4)
    expected = folded_normal_mean(mu, sigma)
    second = sigma**2 + mu**2  # E[|X|^2]
    sd = math.sqrt(second - expected**2)
    free = codes[:, 39][codes[:, 39] > 0].double()
    roots = codes[:, :3][codes[:, :3] > 0].double()
    on = codes > 0
    c = torch.arange(3, 12)
    both = on[:, c]
    ratio = (codes[:, c] / codes[:, data.parent[c]].clamp_min(1e-30))[both].double()
    for values in (free, roots, ratio):
        assert values.numel() > 500
        assert abs(float(values.mean()) - expected) < 6 * sd / math.sqrt(values.numel())


def test_child_choice_is_proportional_to_p():
    # Root 0 with children 1, 2 (independent candidates, no copula): w = 1, 1/2, 1/3 ->
    # p = 0.8, 0.425, 0.3. Child 1 fires iff the root fires and either only child 1 is a
    # candidate, or both are and child 1 wins with probability p1 / (p1 + p2).
    data = build(n_features=3, dim=4, n_roots=1, branching=2, depth=1, zipf_exponent=1.0,
                 p_max=0.8, p_min=0.3, correlation_rank=0)
    p0, p1, p2 = data.probs.double().tolist()
    assert (p0, p1, p2) == pytest.approx((0.8, 0.425, 0.3), abs=1e-7)
    rows = 65536
    _, codes = draw(data, rows, seed=5, batch=8192)
    on = (codes > 0).double()
    q1 = p0 * (p1 * (1 - p2) + p1 * p2 * p1 / (p1 + p2))
    q2 = p0 * (p2 * (1 - p1) + p1 * p2 * p2 / (p1 + p2))
    for col, q in [(0, p0), (1, q1), (2, q2)]:
        assert abs(float(on[:, col].mean()) - q) < 5 * math.sqrt(q * (1 - q) / rows), col
    assert float((on[:, 1] * on[:, 2]).sum()) == 0
    # "first candidate wins" would give child 1 rate p0 * p1 = 0.34 vs 0.298 here (SE 0.0018).
    assert abs(p0 * p1 - q1) > 20 * math.sqrt(q1 * (1 - q1) / rows)


@pytest.mark.parametrize("rank,scale", [(0, 0.0), (3, 2.0)])
def test_root_and_free_firing_rates_match_p(rank, scale):
    data = build(**TREE, correlation_rank=rank, correlation_scale=scale)
    rows = 32768
    _, codes = draw(data, rows, seed=6, batch=4096)
    freq = (codes > 0).double().mean(0)
    p = data.probs.double()
    idx = torch.nonzero(data.parent < 0).squeeze(1)  # roots 0..2 and free feature 39
    # Binomial(rows, p_i) counts per feature (rows are independent): 5 SE each.
    se = (p[idx] * (1 - p[idx]) / rows).sqrt()
    assert float(((freq[idx] - p[idx]).abs() / se).max()) < 5.0
    # Children fire less often than their p (they need their parent and to win among siblings).
    child = torch.nonzero(data.parent >= 0).squeeze(1)
    assert bool((freq[child] < p[child]).all())


def test_no_hierarchy_all_rates_match_p():
    data = build(n_features=32, dim=4, zipf_exponent=0.5, p_max=0.4, p_min=0.01, correlation_rank=2)
    rows = 32768
    _, codes = draw(data, rows, seed=7, batch=4096)
    freq = (codes > 0).double().mean(0)
    p = data.probs.double()
    # chi-square over the 32 independent binomial counts: E = 32, sd = 8; 32 + 6 * 8 = 80.
    chi2 = float((((freq - p) ** 2) / (p * (1 - p) / rows)).sum())
    assert chi2 < 80.0


def test_copula_correlates_firing():
    data = build(n_features=16, dim=4, zipf_exponent=0.0, p_max=0.25, p_min=0.25,
                 correlation_rank=1, correlation_scale=3.0)
    k = data.ground_truth()["copula_factor"]
    corr = k @ k.T
    corr.fill_diagonal_(0)
    i, j = divmod(int(corr.argmax()), 16)
    assert float(corr[i, j]) > 0.5
    _, codes = draw(data, 16384, seed=8, batch=4096)
    on = (codes > 0).double()
    assert float((on[:, i] * on[:, j]).mean()) > 0.1  # independent: 0.0625


# ---------------------------------------------------------------- structure, features


def test_copula_factor_rank_and_reuse():
    data = build(n_features=50, dim=8, correlation_rank=4, correlation_scale=1.5, seed=3)
    gt = data.ground_truth()
    k, r = gt["copula_factor"].double(), gt["copula_residual_std"].double()
    assert k.shape == (50, 4) and int(torch.linalg.matrix_rank(k)) == 4
    corr = k @ k.T + torch.diag(r**2)
    torch.testing.assert_close(corr.diagonal(), torch.ones(50, dtype=torch.float64), rtol=0, atol=1e-6)
    ref_k, ref_r = copula_factor(50, 4, 1.5, gen(1003))  # drawn from structure_gen
    assert torch.equal(gt["copula_factor"], ref_k.float()) and torch.equal(gt["copula_residual_std"], ref_r.float())
    torch.testing.assert_close(gt["copula_threshold"], torch.special.ndtri(data.probs.double()).float())
    # No copula: rank 0 factor, unit residual.
    for kw in ({"correlation_rank": 0}, {"correlation_rank": 4, "correlation_scale": 0.0}):
        gt0 = build(n_features=50, dim=8, **kw).ground_truth()
        assert gt0["copula_factor"].shape == (50, 0) and torch.equal(gt0["copula_residual_std"], torch.ones(50))


def test_features_planted_and_orthogonalised():
    plain = build(n_features=48, dim=12, seed=5)
    assert torch.equal(plain.features, planted_features(48, 12, gen(5)))
    # Features do not depend on the hierarchy / copula settings.
    assert torch.equal(build(n_features=48, dim=12, seed=5, n_roots=2, correlation_rank=0).features, plain.features)
    orth = build(n_features=48, dim=12, seed=5, orthogonalize_steps=50)
    again = build(n_features=48, dim=12, seed=5, orthogonalize_steps=50)
    assert torch.equal(orth.features, again.features)  # deterministic
    torch.testing.assert_close(orth.features.norm(dim=1), torch.ones(48), rtol=0, atol=1e-6)

    def rms_offdiag(f):
        c = f.double() @ f.double().T
        c.fill_diagonal_(0)
        return float((c**2).sum() / (48 * 47)) ** 0.5

    welch = math.sqrt((48 - 12) / (12 * 47))
    assert rms_offdiag(plain.features) > welch + 0.02
    assert rms_offdiag(orth.features) == pytest.approx(welch, abs=2e-3)
    # n <= d: the rows become orthonormal.
    f = orthogonalize(planted_features(6, 16, gen(0)), 100, 0.5)
    torch.testing.assert_close(f @ f.T, torch.eye(6), rtol=0, atol=1e-5)
    assert orthogonalize(plain.features, 0, 0.5) is plain.features


# ---------------------------------------------------------------- determinism, ground truth


@pytest.mark.parametrize("rank", [0, 2])
def test_deterministic_given_seeds(rank):
    kw = dict(TREE, correlation_rank=rank, noise_std=0.1)
    a, b = build(seed=3, **kw), build(seed=3, **kw)
    for key, value in a.ground_truth().items():
        assert torch.equal(value, b.ground_truth()[key]), key
    ga, gb = gen(11), gen(11)
    for _ in range(3):
        (xa, ca), (xb, cb) = a.sample(500, ga), b.sample(500, gb)
        assert xa.numpy().tobytes() == xb.numpy().tobytes() and ca.numpy().tobytes() == cb.numpy().tobytes()
    x1, c1 = a.sample(500, gen(11))
    x3, c3 = a.sample(500, gen(12))
    assert not torch.equal(c1, c3) and not torch.equal(x1, x3)
    assert not torch.equal(a.features, build(seed=4, **kw).features)


def test_thread_count_and_global_rng():
    data = build(n_features=256, dim=32, n_roots=8, branching=4, depth=2, correlation_rank=4, orthogonalize_steps=3)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    x1, c1 = data.sample(512, gen(0))
    torch.set_num_threads(2)
    try:
        x2, c2 = data.sample(512, gen(0))
        rebuilt = build(n_features=256, dim=32, n_roots=8, branching=4, depth=2, correlation_rank=4, orthogonalize_steps=3)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(c1, c2) and torch.equal(x1, x2)
    assert torch.equal(rebuilt.features, data.features)
    assert torch.equal(before, torch.random.get_rng_state())


@pytest.mark.parametrize("rank", [0, 3])
def test_ground_truth_serialisable(rank):
    data = build(**TREE, correlation_rank=rank)
    gt = data.ground_truth()
    assert set(gt) == {"features", "probs", "parent", "copula_factor", "copula_residual_std", "copula_threshold"}
    assert gt["features"].shape == (40, 8) and gt["features"].dtype == torch.float32
    assert gt["probs"].shape == (40,) and gt["probs"].dtype == torch.float32
    assert gt["parent"].dtype == torch.int64 and torch.equal(gt["parent"], hierarchy_parents(40, 3, 3, 2))
    assert gt["copula_factor"].shape == (40, rank)
    torch.testing.assert_close(gt["probs"], zipf_probabilities(40, 0.5, 0.05, 0.6).float())
    blob = safetensors.torch.save(gt)
    assert blob == safetensors.torch.save(data.ground_truth())
    loaded = safetensors.torch.load(blob)
    assert all(torch.equal(loaded[k], gt[k]) for k in gt)
    gt["features"].zero_()
    gt["parent"].fill_(7)
    assert float(data.features.norm(dim=1).min()) > 0.99 and int(data.parent[0]) == -1
