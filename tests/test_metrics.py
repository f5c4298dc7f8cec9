"""sae.metrics against values computed by hand on tiny tensors."""

import math

import pytest
import torch

from sae import ReluL1
from sae.metrics import (
    cosine_matrix,
    evaluate,
    max_cosine,
    mmcs,
    mmcs_larger,
    mmcs_truth,
)

R2 = 1 / math.sqrt(2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: intra-op threads only add synchronisation (on a loaded 2-core
    box, 2 threads made these tests ~25x slower). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# ----------------------------------------------------------------------------- cosines
def test_cosine_matrix_hand_values():
    a = t([[1, 0], [0, 1], [1, 1]])
    b = t([[2, 0], [-1, 0], [0, 3]])  # norms differ on purpose: cosines ignore them
    expected = torch.tensor(
        [[1, -1, 0], [0, 0, 1], [R2, -R2, R2]], dtype=torch.float64
    )
    got = cosine_matrix(a, b)
    assert got.shape == (3, 3)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_cosine_zero_row_is_zero():
    got = cosine_matrix(t([[0, 0], [3, 4]]), t([[1, 0]]))
    torch.testing.assert_close(got, torch.tensor([[0.0], [0.6]], dtype=torch.float64), rtol=0, atol=1e-12)


def test_cosine_shape_errors():
    with pytest.raises(ValueError):
        cosine_matrix(t([[1, 0]]), t([[1, 0, 0]]))
    with pytest.raises(ValueError):
        mmcs(torch.zeros(0, 2), t([[1, 0]]))


# ----------------------------------------------------------------------------- mmcs
def test_mmcs_hand_value_and_asymmetry():
    a = t([[1, 0], [0, 1], [1, 1]])
    b = t([[2, 0], [-1, 0], [0, 3]])
    # rows of a: best matches 1 ([2,0]), 1 ([0,3]), 1/sqrt2
    assert mmcs(a, b) == pytest.approx((2 + R2) / 3, abs=1e-12)
    # rows of b: [2,0] -> 1, [-1,0] -> max(-1, 0, -1/sqrt2) = 0, [0,3] -> 1
    assert mmcs(b, a) == pytest.approx(2 / 3, abs=1e-12)
    torch.testing.assert_close(
        max_cosine(b, a), torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64), rtol=0, atol=1e-12
    )


def test_mmcs_is_signed_not_absolute():
    # an anti-parallel atom is not a recovery: signed max is -1, an |cos| max would be 1
    assert mmcs(t([[1, 0]]), t([[-1, 0]])) == pytest.approx(-1.0, abs=1e-12)
    assert mmcs(t([[1, 0]]), t([[-1, 0], [0, 1]])) == pytest.approx(0.0, abs=1e-12)
    assert mmcs(t([[1, 0]]), t([[-1, 0], [1, 1]])) == pytest.approx(R2, abs=1e-12)


def test_mmcs_blocked_equals_dense(monkeypatch):
    """Blocking the product over rows of ``a`` gives the dense result to float64 rounding.

    Not bit for bit: a block of 4 rows and the whole matrix may go to different BLAS kernels,
    which sum the d products of a dot product in different orders, so an entry may differ in
    its last bits (1.1e-16 seen on one machine). What the code promises is agreement to a few
    ULP of values in [-1, 1]: atol 1e-15 (about 9 ULP at 1.0), no relative slack."""
    import sae.metrics as M

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 5, generator=g), torch.randn(11, 5, generator=g)
    dense = cosine_matrix(a, b).amax(dim=1)
    monkeypatch.setattr(M, "_BLOCK_ELEMS", 11 * 4)  # 4 rows of `a` per block
    blocked = M.max_cosine(a, b)
    assert blocked.dtype == dense.dtype == torch.float64
    torch.testing.assert_close(blocked, dense, rtol=0, atol=1e-15)


def test_mmcs_larger_hand_value():
    atoms = t([[1, 0], [0, 1]])
    larger = t([[1, 0], [0.6, 0.8], [0, -1]])
    # atom [1,0] -> 1 ; atom [0,1] -> max(0, 0.8, -1) = 0.8
    assert mmcs_larger(atoms, larger) == pytest.approx(0.9, abs=1e-7)  # 0.6, 0.8 are float32


# ----------------------------------------------------------------------------- mmcs_truth
def test_mmcs_truth_hand_values():
    features = t([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    atoms = t([[1, 0, 0], [0.6, 0.8, 0]])
    r = mmcs_truth(features, atoms)
    # recall: f1 -> 1, f2 -> 0.8, f3 -> 0  => 0.6 ; precision: a1 -> 1, a2 -> 0.8 => 0.9
    assert r["mmcs_truth"] == pytest.approx(0.6, abs=1e-7)  # 0.6, 0.8 are float32
    assert r["mmcs_truth_precision"] == pytest.approx(0.9, abs=1e-7)
    assert r["recovered_0.9"] == 1
    assert r["recovered_0.9_frac"] == pytest.approx(1 / 3)
    assert set(r) == {"mmcs_truth", "mmcs_truth_precision", "recovered_0.9", "recovered_0.9_frac"}


def test_recovered_threshold_behaviour():
    def at_cos(c):  # unit vector at cosine c to e1 in the plane
        return [c, math.sqrt(1 - c * c)]

    features = t([[1, 0], [1, 0], [1, 0]])
    assert mmcs_truth(features, t([at_cos(0.95)]))["recovered_0.9"] == 3
    assert mmcs_truth(features, t([at_cos(0.85)]))["recovered_0.9"] == 0
    # strictly greater: cos exactly 1.0 does not exceed a threshold of 1.0
    r = mmcs_truth(features, t([[1, 0]]), threshold=1.0)
    assert r["recovered_1"] == 0 and r["recovered_1_frac"] == 0
    # per-feature counting
    feats = t([[1, 0], [0, 1]])
    r = mmcs_truth(feats, t([[1, 0], at_cos(0.8)[::-1]]), threshold=0.75)  # [0.6, 0.8]: cos 0.8 to e2
    assert r["recovered_0.75"] == 2
    r = mmcs_truth(feats, t([[1, 0], [-1, -1]]))
    assert r["recovered_0.9"] == 1 and r["recovered_0.9_frac"] == 0.5


# ----------------------------------------------------------------------------- evaluate
def hand_model():
    """E=2, d=2, m=3.

    member 0: c = relu(x) on atoms e1, e2; atom 3 = e1 with bias -10 (never fires); x_hat = x
              for x >= 0.
    member 1: encoder 0 and bias 0, so c = 0 everywhere and x_hat = 0.
    """
    W_enc = torch.zeros(2, 2, 3)
    W_enc[0] = t([[1, 0, 0], [0, 1, 0]])
    b_enc = t([[0, 0, -10], [0, 0, 0]])
    W_dec = torch.stack([t([[1, 0], [0, 1], [1, 0]]), t([[1, 0], [0, 1], [R2, R2]])])
    return ReluL1(W_enc, b_enc, W_dec, [0.1, 0.2])


X = t([[1, 0], [0, 2], [1, 1], [0, 0]])


def test_evaluate_hand_values():
    r = evaluate(hand_model(), X)
    assert set(r) == {"mse", "fvu", "l0", "dead", "dead_frac"}
    for v in r.values():
        assert v.shape == (2,) and v.dtype == torch.float64
    # member 0: perfect reconstruction; active counts per sample 1, 1, 2, 0 ; atom 3 dead
    assert r["mse"][0] == 0 and r["fvu"][0] == 0
    assert r["l0"][0] == pytest.approx(1.0)
    assert r["dead"][0] == 1 and r["dead_frac"][0] == pytest.approx(1 / 3)
    # member 1: x_hat = 0 -> SSE = sum x^2 = 1 + 4 + 2 + 0 = 7, mse = 7 / (4 * 2)
    # mean_x = (0.5, 0.75): SST = 4 * 0.25 + (0.5625 + 1.5625 + 0.0625 + 0.5625) = 3.75
    assert r["mse"][1] == pytest.approx(7 / 8)
    assert r["fvu"][1] == pytest.approx(7 / 3.75)
    assert r["l0"][1] == 0
    assert r["dead"][1] == 3 and r["dead_frac"][1] == 1


def test_evaluate_fvu_one_when_predicting_the_mean():
    # encoder silent (bias -1 -> c = 0), decoder bias = mean of X: x_hat = mean_x for all samples
    mean = X.mean(0)
    model = ReluL1(
        torch.zeros(1, 2, 3), torch.full((1, 3), -1.0), torch.eye(3, 2)[None], [0.0],
        decoder_bias=True, b_dec=mean[None],
    )
    r = evaluate(model, X)
    assert r["fvu"][0] == pytest.approx(1.0, abs=1e-7)
    assert r["dead"][0] == 3 and r["l0"][0] == 0


def test_evaluate_dead_counts_an_atom_firing_once_as_alive():
    # member 0's third atom gets weights (1, 1) and bias -2.5: pre-activations on X are
    # -1.5, -0.5, -0.5, -2.5 (never fires) and 0.5 on the extra sample [1, 2] (fires once)
    model = hand_model()
    with torch.no_grad():
        model.W_enc[0, :, 2] = torch.tensor([1.0, 1.0])
        model.b_enc[0, 2] = -2.5
    x = torch.cat([X, t([[1, 2]])])
    r = evaluate(model, x)
    assert r["dead"][0] == 0
    # active per sample: 1, 1, 2, 0, 3
    assert r["l0"][0] == pytest.approx(7 / 5)


def test_evaluate_chunking_and_truth_entries():
    model = hand_model()
    features = t([[1, 0], [0, 1]])
    full = evaluate(model, X, features=features)
    chunked = evaluate(model, X, features=features, chunk=1)
    assert full.keys() == chunked.keys()
    for k in full:
        torch.testing.assert_close(full[k], chunked[k], rtol=0, atol=1e-15)
    # member 0 atoms e1, e2, e1: both features exactly recovered; precision 1
    assert full["mmcs_truth"][0] == pytest.approx(1.0)
    assert full["mmcs_truth_precision"][0] == pytest.approx(1.0)
    assert full["recovered_0.9"][0] == 2 and full["recovered_0.9_frac"][0] == 1
    # member 1 atoms e1, e2, (e1+e2)/sqrt2: recall 1; precision (1 + 1 + 1/sqrt2) / 3
    assert full["mmcs_truth_precision"][1] == pytest.approx((2 + R2) / 3)


def test_evaluate_rejects_bad_shapes():
    with pytest.raises(ValueError):
        evaluate(hand_model(), torch.zeros(4, 3))
