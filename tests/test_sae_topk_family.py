"""TopK, BatchTopK and Matryoshka BatchTopK SAEs: hand-computed codes, losses and gradients,
the BatchTopK threshold, ensemble bit-identity, persistence and recovery of planted features."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load, save

from sae.base import get, kinds
from sae.batchtopk import BatchTopK
from sae.matryoshka_batchtopk import MatryoshkaBatchTopK, prefix_sizes
from sae.metrics import mmcs_truth
from sae.topk import TopK
from toydata import ToyData, ToyDataConfig

KINDS = (TopK, BatchTopK, MatryoshkaBatchTopK)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: intra-op threads only add synchronisation on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def options(cls, **kw):
    """Kind-specific options for tests: Matryoshka gets prefixes that fit small m."""
    if cls is MatryoshkaBatchTopK:
        kw.setdefault("prefixes", (0.25, 0.6, 1.0))
    return kw


# ----------------------------------------------------------------------------- hand example
# d = 2, m = 3. pre = [x1, x2, x1 + x2 - 0.5]; atoms e1, e2 and (0.6, 0.8) (unit norm).
W_ENC = t([[1, 0, 1], [0, 1, 1]])
B_ENC = t([0, 0, -0.5])
W_DEC = t([[1, 0], [0, 1], [0.6, 0.8]])
X = t([[2, 1], [-1, 3]])  # pre = [[2, 1, 2.5], [-1, 3, 1.5]]


def hand(cls, k=(1,), aux_coef=(0.0,), **kw):
    E = len(k)
    return cls(
        W_ENC.expand(E, 2, 3), B_ENC.expand(E, 3), W_DEC.expand(E, 3, 2), k=list(k), aux_coef=list(aux_coef), **kw
    )


def test_registered_with_their_declarations():
    for cls, kind, fmt in (
        (TopK, "topk", "topk/v1"),
        (BatchTopK, "batchtopk", "batchtopk/v1"),
        (MatryoshkaBatchTopK, "matryoshka_batchtopk", "matryoshka_batchtopk/v1"),
    ):
        assert kinds()[kind] is cls and get(kind) is cls
        assert cls.kind == kind and cls.tensor_format == fmt
        assert cls.params == ("k", "aux_coef") and cls.sparsity == "k" and cls.unit_decoder


def test_topk_hand_codes_and_loss():
    # k = 1 keeps each row's largest: latent 2 (2.5) in row 0, latent 1 (3) in row 1
    # x_hat = [[1.5, 2], [0, 3]]; x - x_hat = [[0.5, -1], [-1, 0]]; mse = 2.25 / 4
    # k = 2 keeps {0, 2} (2, 2.5) and {1, 2} (3, 1.5): x_hat = [[3.5, 2], [0.9, 4.2]],
    # x - x_hat = [[-1.5, -1], [-1.9, -1.2]]: mse = (2.25 + 1 + 3.61 + 1.44) / 4 = 2.075
    model = hand(TopK, k=(1, 2), aux_coef=(0.0, 0.0))
    c = model.encode(X)
    assert torch.equal(c[0], t([[0, 0, 2.5], [0, 3, 0]]))
    assert torch.equal(c[1], t([[2, 0, 2.5], [0, 3, 1.5]]))
    torch.testing.assert_close(model.decode(c)[1], t([[3.5, 2], [0.9, 4.2]]))
    losses = model.losses(X)
    assert set(losses) == {"loss", "mse", "auxk"}
    torch.testing.assert_close(losses["mse"], t([0.5625, 2.075]))
    torch.testing.assert_close(losses["loss"], t([0.5625, 2.075]))
    assert torch.equal(losses["auxk"], t([0, 0]))  # nothing dead yet
    # only positive pre-activations are kept, even when fewer than k
    assert torch.equal(hand(TopK, k=(3,)).encode(t([[-1, -2]]))[0], t([[0, 0, 0]]))


def test_topk_decoder_bias_is_subtracted_before_encoding():
    model = hand(TopK, k=(1,), decoder_bias=True, b_dec=t([[1, 1]]))
    # xc = x - 1 = [[1, 0], [-2, 2]]: pre = [[1, 0, 0.5], [-2, 2, -0.5]]
    pre, xc = model.member_pre(X, 0)
    torch.testing.assert_close(pre, t([[1, 0, 0.5], [-2, 2, -0.5]]))
    x_hat, c = model.member_forward(X, 0)
    assert torch.equal(c, t([[1, 0, 0], [0, 2, 0]]))
    torch.testing.assert_close(x_hat, t([[2, 1], [1, 3]]))  # + b_dec


def test_topk_auxk_and_gradients_by_hand():
    """Latent 2 dead (its count 100 >= dead_tokens 50); k = 1, k_aux = d // 2 = 1, aux_coef 0.5.

    Main: z = [[0, 0, 2.5], [0, 3, 0]], r = x_hat - x = [[-0.5, 1], [1, 0]], g = 2 r / (B d) = r / 2.
    AuxK: res = -r; the dead latent's pre [2.5, 1.5] -> res_hat = [[1.5, 2], [0.9, 1.2]],
    r_a = res_hat - res = [[1, 3], [1.9, 1.2]], auxk = 15.05 / 4 = 3.7625;
    loss = 0.5625 + 0.5 * 3.7625 = 2.44375.
    Gradients (g_a = 0.5 * r_a / 2 = [[.25, .75], [.475, .3]]):
      dW_dec[1] = 3 g[1] = [1.5, 0];   dW_dec[2] = 2.5 g[0] + 2.5 g_a[0] + 1.5 g_a[1] = [0.7125, 3.575]
      db_enc[2] = g[0].atom2 (0.25) + g_a[0].atom2 (0.75) + g_a[1].atom2 (0.525) = 1.525
      dW_enc[:, 2] = x[0] * (0.25 + 0.75) + x[1] * 0.525 = [1.475, 2.575]
    """
    model = hand(TopK, k=(1,), aux_coef=(0.5,), dead_tokens=50)
    assert model.k_aux == 1
    model.tokens_since_fired[0] = torch.tensor([0, 0, 100])
    assert model.dead_latents(0).tolist() == [2]
    got = model.loss_and_grad_(X)
    torch.testing.assert_close(got["mse"], t([0.5625]))
    torch.testing.assert_close(got["auxk"], t([3.7625]))
    torch.testing.assert_close(got["loss"], t([2.44375]))
    torch.testing.assert_close(model.W_dec.grad[0], t([[0, 0], [1.5, 0], [0.7125, 3.575]]))
    torch.testing.assert_close(model.b_enc.grad[0], t([0, 0, 1.525]))
    torch.testing.assert_close(model.W_enc.grad[0], t([[0, 0, 1.475], [0, 0, 2.575]]))
    # the step counted B = 2 samples for latent 0 and restarted the fired latents 1 and 2
    assert model.tokens_since_fired[0].tolist() == [2, 0, 0]
    # with no latent dead the AuxK term and its gradient vanish: dW_dec[2] = 2.5 g[0]
    got = model.loss_and_grad_(X)
    assert got["auxk"].tolist() == [0.0]
    torch.testing.assert_close(model.W_dec.grad[0], t([[0, 0], [1.5, 0], [-0.625, 1.25]]))
    torch.testing.assert_close(model.b_enc.grad[0], t([0, 0, 0.25]))


def test_batchtopk_selects_over_the_batch_and_learns_its_threshold():
    x = t([[2, 1], [1, 4]])  # pre = [[2, 1, 2.5], [1, 4, 4.5]]
    model = hand(BatchTopK, k=(1,), threshold_decay=0.5)
    assert model.threshold.tolist() == [0.0]
    # training keeps the k B = 2 largest of the batch, both in row 1: row 0 gets none
    # (TopK would keep latent 2 in each row). x_hat = [[0, 0], [2.7, 7.6]]
    # x - x_hat = [[2, 1], [-1.7, -3.6]]: mse = (4 + 1 + 2.89 + 12.96) / 4 = 5.2125
    assert torch.equal(model.train_mask(model.member_pre(x, 0)[0], 0), torch.tensor([[False] * 3, [False, True, True]]))
    got = model.loss_and_grad_(x)
    torch.testing.assert_close(got["mse"], t([5.2125]))
    # first update: theta = smallest kept value = 4
    assert model.threshold.tolist() == [4.0] and model.threshold_updates.tolist() == [1]
    assert model.tokens_since_fired[0].tolist() == [2, 0, 0]
    # second batch X keeps 3 and 2.5: theta = 0.5 * 4 + 0.5 * 2.5 = 3.25
    model.loss_and_grad_(X)
    assert model.threshold.tolist() == [3.25]
    # losses() is pure: no threshold or counter update
    model.losses(X)
    assert model.threshold.tolist() == [3.25] and model.tokens_since_fired[0].tolist() == [4, 0, 0]
    # inference: JumpReLU at 3.25, per sample: row 0 none, row 1 latents 1 and 2
    assert torch.equal(model.encode(x)[0], t([[0, 0, 0], [0, 4, 4.5]]))
    assert torch.equal(model.encode(X)[0], torch.zeros(2, 3))  # 3 and 2.5 are below 3.25
    assert torch.equal(model.encode(t([[4, 0]]))[0], t([[4, 0, 3.5]]))  # pre [4, 0, 3.5]
    # a batch with nothing positive keeps nothing and leaves theta alone
    model.loss_and_grad_(t([[-1, -1]]))
    assert model.threshold.tolist() == [3.25] and model.threshold_updates.tolist() == [2]


def test_batchtopk_default_threshold_decay():
    model = hand(BatchTopK, k=(1,))
    model.loss_and_grad_(t([[2, 1], [1, 4]]))
    model.loss_and_grad_(X)
    torch.testing.assert_close(model.threshold, t([0.99 * 4 + 0.01 * 2.5]), rtol=0, atol=1e-6)


def test_matryoshka_prefix_losses_and_gradient_by_hand():
    """Prefixes (1/3, 2/3, 1) -> sizes (1, 2, 3). BatchTopK k = 1 keeps 3 (row 1, latent 1)
    and 2.5 (row 0, latent 2): z = [[0, 0, 2.5], [0, 3, 0]].

    prefix 1 (atom 0):    x_hat = 0,                   mse = (4 + 1 + 1 + 9) / 4 = 3.75
    prefix 2 (atoms 0-1): x_hat = [[0, 0], [0, 3]],    mse = (4 + 1 + 1) / 4     = 1.5
    prefix 3 (all):       x_hat = [[1.5, 2], [0, 3]],  mse = 2.25 / 4            = 0.5625
    loss = 5.8125. Atom 1 is in prefixes 2 and 3: dW_dec[1] = 3 (g_2[1] + g_3[1]) with
    g_p = (x_hat_p - x) / 2: g_2[1] = g_3[1] = [0.5, 0], so [3, 0] (TopK: [1.5, 0]).
    Atom 2 only in prefix 3: dW_dec[2] = 2.5 g_3[0] = 2.5 [-0.25, 0.5] = [-0.625, 1.25].
    """
    model = hand(MatryoshkaBatchTopK, k=(1,), prefixes=(1 / 3, 2 / 3, 1.0))
    assert model.prefix_sizes == (1, 2, 3)
    losses = model.losses(X)
    assert set(losses) == {"loss", "mse", "auxk", "prefix_mse"}
    torch.testing.assert_close(losses["mse"], t([0.5625]))
    torch.testing.assert_close(losses["prefix_mse"], t([5.8125]))
    torch.testing.assert_close(losses["loss"], t([5.8125]))
    got = model.loss_and_grad_(X)
    torch.testing.assert_close(got["loss"], t([5.8125]))
    torch.testing.assert_close(model.W_dec.grad[0], t([[0, 0], [3, 0], [-0.625, 1.25]]))
    torch.testing.assert_close(model.b_enc.grad[0], t([0, 0, 0.25]))
    # a single prefix (1.0,) is plain BatchTopK
    single = hand(MatryoshkaBatchTopK, k=(1,), prefixes=(1.0,))
    torch.testing.assert_close(single.losses(X)["loss"], hand(BatchTopK, k=(1,)).losses(X)["loss"])


def test_prefix_sizes_validation():
    assert prefix_sizes((0.25, 0.5, 1.0), 16) == (4, 8, 16)
    assert prefix_sizes((1.0,), 5) == (5,)
    for bad in ((), (0.5,), (0.5, 0.25, 1.0), (0.0, 1.0), (0.5, 1.0, 1.0), (0.5, 1.5)):
        with pytest.raises(ValueError):
            prefix_sizes(bad, 16)
    with pytest.raises(ValueError, match="sizes"):
        prefix_sizes((0.01, 1.0), 16)  # rounds to 0 atoms
    with pytest.raises(ValueError, match="sizes"):
        prefix_sizes((0.5, 0.52, 1.0), 16)  # 8, 8, 16


def test_constructor_validation():
    for bad_k in (0, 1.5, 4):
        with pytest.raises(ValueError, match="k must be"):
            hand(TopK, k=(bad_k,))
    with pytest.raises(ValueError, match="aux_coef"):
        hand(BatchTopK, aux_coef=(-1.0,))
    with pytest.raises(ValueError, match="dead_tokens"):
        hand(TopK, dead_tokens=0)
    with pytest.raises(ValueError, match="k_aux"):
        hand(TopK, k_aux=0)
    with pytest.raises(ValueError, match="threshold_decay"):
        hand(BatchTopK, threshold_decay=1.0)
    with pytest.raises(KeyError, match="aux_coef"):
        TopK.build([(W_ENC, B_ENC, W_DEC)], [{"k": 1}])
    with pytest.raises(TypeError):
        TopK.build([(W_ENC, B_ENC, W_DEC)], [{"k": 1, "aux_coef": 0.0}], prefixes=(1.0,))


# ----------------------------------------------------------------------------- gradients
def toy_batch(d, B, seed, n=6):
    """x [B, d]: sparse non-negative combinations of n random unit directions."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    codes = torch.rand(B, n, generator=g) * (torch.rand(B, n, generator=g) < 0.4)
    return codes @ feats


@pytest.mark.parametrize("cls", KINDS)
@pytest.mark.parametrize("decoder_bias", [False, True])
@pytest.mark.parametrize("d,m,B", [(7, 12, 9), (16, 32, 64)])
def test_closed_form_gradients_match_autograd(cls, decoder_bias, d, m, B):
    model = cls.from_init(
        "orthogonal", d, m, [{"k": 2, "aux_coef": 0.5}, {"k": 3, "aux_coef": 1 / 32}], gens(1, 2),
        decoder_bias=decoder_bias, **options(cls, dead_tokens=5, k_aux=3),
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.b_enc.normal_(0, 0.2, generator=g)
        if decoder_bias:
            model.b_dec.normal_(0, 0.2, generator=g)
    model.tokens_since_fired[:, ::2] = 10  # every other latent dead: AuxK is on
    x = toy_batch(d, B, seed=3)
    reference = model.losses(x)
    reference["loss"].sum().backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert float(reference["auxk"].detach().min()) > 0
    got = model.loss_and_grad_(x)
    assert set(got) == set(reference)
    for key in got:
        torch.testing.assert_close(got[key], reference[key].detach(), rtol=1e-5, atol=1e-7)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------- ensembles
def train_steps(model, batches, lr=3e-3):
    """Our own loop (sae.train still expects relu_l1's terms): loss_and_grad_, Adam, after_step_."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    curve = []
    for x in batches:
        curve.append(model.loss_and_grad_(x))
        opt.step()
        model.after_step_()
    return curve


@pytest.mark.parametrize("cls", KINDS)
@pytest.mark.parametrize("d,m,B,decoder_bias", [(7, 13, 37, True), (16, 32, 64, False)])
def test_ensemble_bit_identical(cls, d, m, B, decoder_bias):
    """A member trained 20 steps alone and as member 1 of 3 (other k, aux_coef, init) ends with
    the same bytes: weights, saved tensors, training terms, dead counters and threshold.
    dead_tokens = 2 B makes latents die within the run, so AuxK is exercised."""
    batches = [toy_batch(d, B, seed=s) for s in range(20)]
    hyper = [{"k": 1, "aux_coef": 1.0}, {"k": 3, "aux_coef": 1 / 32}, {"k": 5, "aux_coef": 0.0}]
    opts = options(cls, dead_tokens=2 * B)
    ens = cls.from_init("orthogonal", d, m, hyper, gens(5, 6, 7), decoder_bias=decoder_bias, **opts)
    alone = cls.from_init("orthogonal", d, m, hyper[1:2], gens(6), decoder_bias=decoder_bias, **opts)
    ens_curve, alone_curve = train_steps(ens, batches), train_steps(alone, batches)
    assert any(float(c["auxk"][0]) > 0 for c in alone_curve)  # AuxK was on at some step
    for name, value in alone.member_tensors(0).items():
        assert torch.equal(value, ens.member_tensors(1)[name]), name
    for a, b in zip(alone_curve, ens_curve):
        for key in a:
            assert torch.equal(a[key][0], b[key][1]), key
    assert torch.equal(alone.tokens_since_fired[0], ens.tokens_since_fired[1])
    if isinstance(alone, BatchTopK):
        assert torch.equal(alone.threshold[0], ens.threshold[1]) and float(alone.threshold[0]) > 0
    x = batches[0]
    assert torch.equal(alone.encode(x)[0], ens.encode(x)[1])
    torch.testing.assert_close(ens.W_dec.norm(dim=-1), torch.ones(3, m), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("cls", KINDS)
@pytest.mark.parametrize("decoder_bias", [False, True])
def test_member_tensors_round_trip(cls, decoder_bias):
    d, m, B = 6, 12, 32
    hyper = [{"k": 2, "aux_coef": 0.1}, {"k": 4, "aux_coef": 0.2}]
    model = cls.from_init("orthogonal", d, m, hyper, gens(1, 2), decoder_bias=decoder_bias, **options(cls, dead_tokens=B))
    train_steps(model, [toy_batch(d, B, seed=s) for s in range(5)])
    members = [load(save(model.member_tensors(e))) for e in range(2)]  # through safetensors bytes
    expected = {"decoder", "encoder.weight", "encoder.bias"} | ({"decoder.bias"} if decoder_bias else set())
    if cls is not TopK:
        expected.add("threshold")
        assert members[1]["threshold"].shape == (1,) and members[1]["threshold"].item() == model.threshold[1].item()
    if cls is MatryoshkaBatchTopK:
        expected.add("prefixes")
        assert members[0]["prefixes"].dtype == torch.float64
        assert tuple(members[0]["prefixes"].tolist()) == (0.25, 0.6, 1.0)
    assert set(members[0]) == expected
    again = cls.from_member_tensors(members, [model.member_hyper(e) for e in range(2)])
    assert [again.member_hyper(e) for e in range(2)] == [model.member_hyper(e) for e in range(2)]
    for name, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    x = toy_batch(d, 50, seed=99)
    for a, b in zip(model(x), again(x)):
        assert torch.equal(a, b)
    if cls is MatryoshkaBatchTopK:
        assert again.prefix_sizes == model.prefix_sizes == (3, 7, 12)
        with pytest.raises(ValueError, match="prefixes"):
            cls.from_member_tensors(members, [model.member_hyper(e) for e in range(2)], prefixes=(0.5, 1.0))
    # a copy, not a view on the parameters or the threshold
    for t_ in members[0].values():
        t_.zero_()
    assert not torch.equal(model.W_dec[0], torch.zeros(m, d))
    if cls is not TopK:
        assert float(model.threshold[0]) > 0


def test_reset_atoms_restarts_their_dead_count():
    model = hand(TopK, k=(1,), dead_tokens=10)
    model.tokens_since_fired[0] = torch.tensor([20, 30, 40])
    direction = t([[0.0, 1.0]])
    model.reset_atoms_(0, torch.tensor([1]), direction, 0.5)
    assert model.tokens_since_fired[0].tolist() == [20, 0, 40]
    assert torch.equal(model.W_dec[0, 1], t([0, 1])) and torch.equal(model.W_enc[0][:, 1], t([0, 0.5]))


# ----------------------------------------------------------------------------- recovery
RECOVERY_STEPS = 1200
RECOVERY_LR = 3e-3
RECOVERY_BATCH = 256
RECOVERY_MMCS = {"topk": 0.9, "batchtopk": 0.8, "matryoshka_batchtopk": 0.7}


@st.composite
def recovery_configs(draw):
    n = draw(st.integers(8, 24))
    dim = draw(st.integers(max(n, 10), 2 * n))
    active = draw(st.sampled_from([a for a in (1.0, 1.5, 2.0, 2.5, 3.0) if a <= n / 4]))
    ratio = draw(st.sampled_from([1.0, 1.5, 2.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    return n, dim, active, ratio, seed


def recovery_mmcs(cls, n, dim, active, ratio, seed, steps=RECOVERY_STEPS, decay=1.0):
    """Train one member (tied init, k = ceil(active), aux_coef 1/32, dead after 16 batches) on
    fresh toydata batches; its mmcs_truth against the planted features (steps = 0: the init)."""
    cfg = ToyDataConfig(n_features=n, dim=dim, active_per_sample=active, decay=decay, correlation="none")
    data = ToyData.build(cfg, torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1))
    batch_gen = torch.Generator().manual_seed(seed + 2)
    m = round(ratio * n)
    model = cls.from_init(
        "tied", dim, m, [{"k": math.ceil(active), "aux_coef": 1 / 32}], gens(seed + 3),
        dead_tokens=16 * RECOVERY_BATCH,
    )
    train_steps(model, (data.sample(RECOVERY_BATCH, batch_gen)[0] for _ in range(steps)), lr=RECOVERY_LR)
    return mmcs_truth(data.features, model.atoms(0))["mmcs_truth"]


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.kind)
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(config=recovery_configs())
def test_recovers_planted_features(cls, config):
    """Each kind recovers the planted features of small drawn toy data within 1,200 steps.

    Box (``recovery_configs``): toydata ``correlation="none"``, ``decay=1.0``, U[0,1)
    magnitudes, n = 8-24 features, dim = max(n, 10)..2n, 1-3 active per sample (at most
    n / 4); dictionary m = round(ratio n), ratio 1, 1.5 or 2; k = ceil(active), aux_coef 1/32,
    dead after 16 batches; tied init (W_enc = W_dec^T, Gao et al.), Adam lr 3e-3, batch 256.

    Measured (2-core CPU, torch 2.13; 60 draws per kind from this box, seeded as here,
    mmcs_truth after training / of the initial, random dictionary):

    ================== ===== ===== ===== ====== ===== ===========================
    kind               min   p5    p10   median max   untrained: median / max
    ================== ===== ===== ===== ====== ===== ===========================
    topk               0.942 0.964 0.976 0.998  0.999 0.41 / 0.65
    batchtopk          0.840 0.893 0.903 0.968  1.000 0.41 / 0.65
    matryoshka (55)    0.752 0.794 0.810 0.884  0.939 0.40 / 0.65
    ================== ===== ===== ===== ====== ===== ===========================

    The lows are ratio-1 dictionaries (a merged or split feature leaves one feature
    unmatched). Matryoshka scores lower by design on this data: every prefix must reconstruct
    x alone, so the first quarter of the atoms learns mixtures of the (equally frequent)
    features, and those atoms match no single feature (decay 0.9 did not change that:
    median 0.880 over 24 draws). The bars (0.9 / 0.8 / 0.7) sit about 0.04-0.05 under each
    measured minimum and above every untrained dictionary (max 0.65, typically 0.3-0.5), so
    a dictionary that has not learned fails them. ~1.2 s of CPU per example."""
    n, dim, active, ratio, seed = config
    score = recovery_mmcs(cls, n, dim, active, ratio, seed)
    print(f"recovery {cls.kind} n={n} dim={dim} active={active} ratio={ratio}: {score:.4f}")
    assert score >= RECOVERY_MMCS[cls.kind], (cls.kind, config, score)
