"""sae.matching (MCC by one-to-one matching, per-latent F1) against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

import sae.matching as matching
from sae.matching import F1Counter, abs_cosine_cost, assign_latents, latent_f1, mcc


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def atoms_with_cosines(cos: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Features = the first n basis vectors of R^(n+1); atom j = column j of ``cos`` [n, m] plus
    the component along e_n that makes it unit, so cos(feature_i, atom_j) = cos[i][j] exactly."""
    c = torch.tensor(cos, dtype=torch.float64)
    n, m = c.shape
    rest = (1 - (c * c).sum(0)).clamp_min(0).sqrt()
    atoms = torch.cat([c.T, rest[:, None]], dim=1)
    features = torch.eye(n, n + 1, dtype=torch.float64)
    return features, atoms


# ----------------------------------------------------------------------------- MCC
def test_hungarian_differs_from_greedy():
    # |cos|: feature 0 likes atom 0 best (0.7), feature 1 too (0.6). Greedy (feature 0 first)
    # gives 0.7 + 0.1; per-feature argmax uses atom 0 twice; the one-to-one optimum is
    # f0 -> a1, f1 -> a0 with 0.6 + 0.6. Signs are mixed: MCC uses |cos|.
    features, atoms = atoms_with_cosines([[0.7, -0.6], [-0.6, 0.1]])
    out = mcc(features, atoms)
    assert out["mcc"] == pytest.approx(0.6, abs=1e-12)
    assert out["feature_to_atom"].tolist() == [1, 0]
    assert out["atom_to_feature"].tolist() == [1, 0]
    torch.testing.assert_close(out["matched_abs_cos"], torch.tensor([0.6, 0.6], dtype=torch.float64))
    assert out["n_matched"] == 2 and out["matched_0.9"] == 0 and out["matched_0.9_frac"] == 0.0
    # ... while the per-latent max-|cos| rule sends both latents to feature 0.
    assert assign_latents(features, atoms).tolist() == [0, 0]
    assert assign_latents(features, atoms, rule="hungarian").tolist() == [1, 0]


def test_mcc_three_by_three_hand_value():
    # Greedy by largest entry picks (0,0)=0.8, then (1,1)=0.5, then (2,2)=0.1: 1.4. Enumerating
    # the 6 permutations, the optimum is f0->a2 (0.5), f1->a0 (0.55), f2->a1 (0.5): 1.55.
    cos = [[0.8, 0.3, 0.5], [0.55, 0.5, 0.0], [0.1, 0.5, 0.1]]
    features, atoms = atoms_with_cosines(cos)
    best = max(
        sum(cos[i][p[i]] for i in range(3))
        for p in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    )
    assert best == pytest.approx(1.55)
    out = mcc(features, atoms)
    assert out["mcc"] == pytest.approx(1.55 / 3, abs=1e-12)
    assert out["feature_to_atom"].tolist() == [2, 0, 1]


def test_mcc_fewer_atoms_than_features():
    # n = 3 features, m = 2 atoms: only 2 pairs are matched and averaged; feature 2 is unmatched.
    features, atoms = atoms_with_cosines([[0.95, 0.0], [0.0, 0.5], [0.2, 0.6]])
    out = mcc(features, atoms)
    assert out["n_matched"] == 2
    assert out["mcc"] == pytest.approx((0.95 + 0.6) / 2, abs=1e-12)
    assert out["feature_to_atom"].tolist() == [0, -1, 1]
    assert out["atom_to_feature"].tolist() == [0, 2]
    assert math.isnan(float(out["matched_abs_cos"][1]))
    assert out["matched_0.9"] == 1 and out["matched_0.9_frac"] == pytest.approx(1 / 3)


def test_mcc_more_atoms_than_features():
    features, atoms = atoms_with_cosines([[0.3, -0.92, 0.1], [0.9, 0.2, 0.91]])
    out = mcc(features, atoms, threshold=0.905)
    assert out["n_matched"] == 2
    # f0 -> a1 (0.92), f1 -> a2 (0.91); a0 unmatched.
    assert out["feature_to_atom"].tolist() == [1, 2]
    assert out["atom_to_feature"].tolist() == [-1, 0, 1]
    assert out["mcc"] == pytest.approx((0.92 + 0.91) / 2, abs=1e-12)
    assert out["matched_0.905"] == 2 and out["matched_0.905_frac"] == 1.0
    assert assign_latents(features, atoms, rule="hungarian").tolist() == [-1, 0, 1]
    assert assign_latents(features, atoms).tolist() == [1, 0, 1]


def test_mcc_permuted_copy_is_one_and_invariant_to_scale_sign():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(20, 8, generator=g)
    perm = torch.randperm(20, generator=g)
    signs = torch.where(torch.rand(20, generator=g) < 0.5, -1.0, 1.0)[:, None]
    atoms = f[perm] * signs * 3.0
    out = mcc(f, atoms)
    assert out["mcc"] == pytest.approx(1.0, abs=1e-12)
    assert out["matched_0.9"] == 20
    assert torch.equal(perm[out["feature_to_atom"]], torch.arange(20))


def test_mcc_zero_row_and_shape_errors():
    out = mcc(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
    assert out["feature_to_atom"].tolist() == [-1, 0]
    assert out["mcc"] == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    with pytest.raises(ValueError):
        mcc(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        mcc(torch.zeros(0, 3), torch.zeros(2, 3))


def test_cost_blocks_equal_dense_and_determinism(monkeypatch):
    g = torch.Generator().manual_seed(1)
    f, a = torch.randn(13, 5, generator=g), torch.randn(29, 5, generator=g)
    dense = abs_cosine_cost(f, a)
    ref = -(torch.nn.functional.normalize(f.double(), dim=1) @ torch.nn.functional.normalize(a.double(), dim=1).T).abs()
    torch.testing.assert_close(torch.from_numpy(dense), ref, rtol=0, atol=1e-12)
    first = mcc(f, a)
    monkeypatch.setattr(matching, "_COST_BLOCK_ELEMS", 29 * 3)  # 3 rows per block
    assert (abs_cosine_cost(f, a) == dense).all()
    second = mcc(f, a)
    assert first["mcc"] == second["mcc"]
    assert torch.equal(first["feature_to_atom"], second["feature_to_atom"])
    # The transposed build (n > m) gives the same matching as solving the wide problem.
    tall = mcc(a, f)
    assert tall["mcc"] == pytest.approx(first["mcc"], abs=1e-12)
    assert torch.equal(tall["atom_to_feature"], first["feature_to_atom"])


def test_assign_latents_bad_rule():
    with pytest.raises(ValueError, match="rule"):
        assign_latents(torch.eye(2), torch.eye(2), rule="greedy")


# ----------------------------------------------------------------------------- F1
def test_latent_f1_six_samples_by_hand():
    # 6 samples, n = 2 features, m = 4 latents; latent j is scored against feature f(j).
    acts = torch.tensor([[1.0, 0], [0.5, 0], [0, 2.0], [0, 0], [1.0, 1.0], [0.3, 0]])  # f0 on 0,1,4,5; f1 on 2,4
    codes = torch.tensor(
        [
            # l0  l1   l2  l3
            [0.9, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.2, 1.0, 0.0, 0.0],
            [0.0, 0.5, 0.0, 0.0],
            [0.7, 0.0, 0.0, 0.1],
            [0.4, -1.0, 0.0, 0.0],  # a negative code is not firing
        ]
    )
    assignment = torch.tensor([0, 1, 0, -1])
    out = latent_f1(codes, acts, assignment)
    # l0 fires on 0,2,4,5 (F=4); f0 active on 0,1,4,5 (A=4); both on 0,4,5 (C=3): P = R = 3/4.
    # l1 fires on 2,3 (F=2); f1 active on 2,4 (A=2); both on 2 (C=1): P = 1/2, R = 1/2.
    # l2 never fires: dead -> 0, not live. l3 unassigned -> 0, not live.
    torch.testing.assert_close(out["precision"], torch.tensor([0.75, 0.5, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(out["recall"], torch.tensor([0.75, 0.5, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(out["f1"], torch.tensor([0.75, 0.5, 0, 0], dtype=torch.float64))
    assert out["fires"].tolist() == [4, 2, 0, 1]
    assert out["feature_active"].tolist() == [4, 2, 4, 0]
    assert out["cofires"].tolist() == [3, 1, 0, 0]
    assert out["n_live"] == 2
    assert out["f1_mean"] == pytest.approx(0.625) and out["precision_mean"] == pytest.approx(0.625)
    assert out["f1_mean_all"] == pytest.approx(1.25 / 4)

    # Reassign l1 to feature 0: F=2, A=4, C=0 -> all 0 but still live.
    # Reassign l2 to feature 1 and l3 to feature 0: l3 fires once (sample 4) with f0 active:
    # P = 1, R = 1/4, F1 = 2 * 0.25 / 1.25 = 0.4.
    out = latent_f1(codes, acts, torch.tensor([0, 0, 1, 0]))
    torch.testing.assert_close(out["f1"], torch.tensor([0.75, 0.0, 0.0, 0.4], dtype=torch.float64))
    torch.testing.assert_close(out["precision"], torch.tensor([0.75, 0.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(out["recall"], torch.tensor([0.75, 0.0, 0.0, 0.25], dtype=torch.float64))
    assert out["n_live"] == 3
    assert out["f1_mean"] == pytest.approx((0.75 + 0.4) / 3)
    assert out["recall_mean"] == pytest.approx((0.75 + 0.25) / 3)


def test_latent_f1_feature_never_active_and_no_live_latents():
    acts = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])  # feature 1 is never active
    codes = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    out = latent_f1(codes, acts, torch.tensor([0, 1]))
    # l0 dead; l1 fires twice but its feature never fires: P = 0, R undefined -> 0, F1 = 0.
    assert out["f1"].tolist() == [0.0, 0.0] and out["recall"].tolist() == [0.0, 0.0]
    assert out["n_live"] == 1 and out["f1_mean"] == 0.0
    dead = latent_f1(torch.zeros(3, 2), acts, torch.tensor([0, 1]))
    assert dead["n_live"] == 0 and math.isnan(dead["f1_mean"]) and dead["f1_mean_all"] == 0.0


def test_latent_f1_chunks_and_mcc_dict():
    g = torch.Generator().manual_seed(3)
    n, m, N = 6, 9, 101
    acts = torch.relu(torch.randn(N, n, generator=g) - 0.5)
    codes = torch.relu(torch.randn(N, m, generator=g) - 0.8)
    assignment = torch.randint(-1, n, (m,), generator=g)
    whole = latent_f1(codes, acts, assignment, chunk=N)
    for chunk in (1, 7, 1000):
        part = latent_f1(codes, acts, assignment, chunk=chunk)
        for k in ("precision", "recall", "f1", "fires", "cofires", "feature_active"):
            assert torch.equal(whole[k], part[k]), k
    # Brute force with dense float products.
    on, act = (codes > 0).double(), (acts > 0).double()
    for j in range(m):
        i = int(assignment[j])
        if i < 0:
            assert whole["f1"][j] == 0
            continue
        c, f, a = float((on[:, j] * act[:, i]).sum()), float(on[:, j].sum()), float(act[:, i].sum())
        p = c / f if f else 0.0
        r = c / a if a else 0.0
        assert float(whole["f1"][j]) == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
    # An mcc() result is accepted as the assignment (its atom_to_feature).
    features, atoms = torch.randn(n, 4, generator=g), torch.randn(m, 4, generator=g)
    result = mcc(features, atoms)
    via_dict = latent_f1(codes, acts, result)
    via_rule = latent_f1(codes, acts, assign_latents(features, atoms, rule="hungarian"))
    assert torch.equal(via_dict["f1"], via_rule["f1"])
    assert int((result["atom_to_feature"] >= 0).sum()) == n  # m > n: 3 latents unassigned


def test_latent_f1_errors():
    with pytest.raises(ValueError):
        latent_f1(torch.zeros(3, 2), torch.zeros(4, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        latent_f1(torch.zeros(3, 2), torch.zeros(3, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError):
        latent_f1(torch.zeros(3, 2), torch.zeros(3, 2), torch.tensor([0]))
    with pytest.raises(ValueError):
        latent_f1(torch.zeros(3, 2), torch.zeros(3, 2), torch.tensor([0, 1]), chunk=0)


def test_f1_counter_streaming_equals_whole():
    g = torch.Generator().manual_seed(4)
    n, m, N = 5, 7, 60
    acts = torch.relu(torch.randn(N, n, generator=g))
    codes = torch.relu(torch.randn(N, m, generator=g) - 0.3)
    assignment = torch.randint(-1, n, (m,), generator=g)
    whole = latent_f1(codes, acts, assignment)
    counter = F1Counter(assignment, n, chunk=4)
    for lo, hi in [(0, 13), (13, 31), (31, N)]:
        counter.update(codes[lo:hi], acts[lo:hi])
    counter.update(codes[26:26], acts[26:26])  # an empty chunk adds nothing
    assert counter.samples == N
    part = counter.result()
    for k in ("precision", "recall", "f1", "fires", "cofires", "feature_active"):
        assert torch.equal(whole[k], part[k]), k
    assert whole["f1_mean"] == part["f1_mean"]
    with pytest.raises(ValueError):
        counter.update(codes[:, :3], acts)
