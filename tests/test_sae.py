"""ReluL1 ensembles, initialisations and the training loop."""

import pytest
import torch
from safetensors.torch import load, save

from sae import ReluL1, evaluate, init_weights, train


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: intra-op threads only add synchronisation (on a loaded 2-core
    box, 2 threads made these tests ~25x slower). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# ----------------------------------------------------------------------------- shapes
def test_shapes():
    E, d, m, B = 3, 8, 16, 5
    model = ReluL1.from_init("orthogonal", d, m, [0.1, 1.0, 3.0], gens(0, 1, 2))
    assert model.W_enc.shape == (E, d, m) and model.b_enc.shape == (E, m)
    assert model.W_dec.shape == (E, m, d) and model.b_dec is None
    assert model.l1.dtype == torch.float32 and model.l1.tolist() == pytest.approx([0.1, 1.0, 3.0])
    x = torch.randn(B, d, generator=gens(9)[0])
    c = model.encode(x)
    assert c.shape == (E, B, m) and (c >= 0).all()
    assert model.decode(c).shape == (E, B, d)
    x_hat, c2 = model(x)
    assert x_hat.shape == (E, B, d) and torch.equal(c, c2)
    # per-member input [E, B, d] with identical rows gives the same result as shared x
    x_hat3, c3 = model(x.expand(E, B, d))
    assert torch.equal(x_hat3, x_hat) and torch.equal(c3, c)
    losses = model.losses(x)
    assert set(losses) == {"loss", "mse", "l1"}
    assert all(v.shape == (E,) for v in losses.values())
    assert ReluL1.from_init("tied", d, m, [0.1], gens(0), decoder_bias=True).b_dec.shape == (1, d)
    with pytest.raises(ValueError):
        model.encode(torch.zeros(B, d + 1))
    with pytest.raises(ValueError):
        model.encode(torch.zeros(E + 1, B, d))


def test_constructor_validation():
    with pytest.raises(ValueError, match="one value per member"):
        ReluL1(torch.zeros(2, 4, 4), torch.zeros(2, 4), torch.zeros(2, 4, 4), [0.1])
    with pytest.raises(ValueError, match="W_dec"):
        ReluL1(torch.zeros(1, 4, 5), torch.zeros(1, 5), torch.zeros(1, 4, 5), [0.1])
    with pytest.raises(ValueError):
        ReluL1.from_init("orthogonal", 4, 4, [0.1, 0.2], gens(0))
    with pytest.raises(ValueError):
        ReluL1(torch.zeros(1, 4, 4), torch.zeros(1, 4), torch.zeros(1, 4, 4), [float("nan")])


# ----------------------------------------------------------------------------- loss formula
def hand_model(decoder_bias=False):
    """E=2, d=2, m=2, identity encoder and decoder; l1 = 0.5 and 3.0."""
    eye = torch.eye(2).expand(2, 2, 2)
    b_dec = torch.ones(2, 2) if decoder_bias else None
    return ReluL1(eye, torch.zeros(2, 2), eye, [0.5, 3.0], decoder_bias, b_dec=b_dec)


def test_loss_matches_hand_computation():
    x = t([[1, -2], [3, 4]])
    # c = relu(x) = [[1, 0], [3, 4]]; x_hat = c; x - x_hat = [[0, -2], [0, 0]]
    # mse = (0 + 4 + 0 + 0) / (B=2 * d=2) = 1.0      (a sum over dims would give 2.0)
    # l1 term = mean_b(sum_j c_j) / m = ((1 + 0) + (3 + 4)) / 2 / 2 = 2.0   (without /m: 4.0)
    # loss = 1.0 + l1 * 2.0 = 2.0 (l1 = 0.5) and 7.0 (l1 = 3.0)
    model = hand_model()
    losses = model.losses(x)
    torch.testing.assert_close(losses["mse"], t([1.0, 1.0]), rtol=0, atol=0)
    torch.testing.assert_close(losses["l1"], t([2.0, 2.0]), rtol=0, atol=0)
    torch.testing.assert_close(losses["loss"], t([2.0, 7.0]), rtol=0, atol=0)
    # the objective's gradient reaches each member only through its own loss
    losses["loss"].sum().backward()
    assert model.W_enc.grad is not None and model.W_enc.grad.shape == (2, 2, 2)
    # d loss / d b_enc[e, j] = sum_b [pre > 0] * (l1_e / (B m) - 2 (x - x_hat)_bj / (B d) * W_dec_jj)
    # j = 0: both samples active, residual 0: 2 * l1 / 4 ; j = 1: only sample 2 active, residual 0
    torch.testing.assert_close(model.b_enc.grad, t([[0.25, 0.125], [1.5, 0.75]]), rtol=0, atol=1e-7)


def test_loss_with_decoder_bias():
    x = t([[1, -2], [3, 4]])
    # x_hat = c + 1 = [[2, 1], [4, 5]]; x - x_hat = [[-1, -3], [-1, -1]]; mse = 12 / 4 = 3
    losses = hand_model(decoder_bias=True).losses(x)
    torch.testing.assert_close(losses["mse"], t([3.0, 3.0]), rtol=0, atol=0)
    torch.testing.assert_close(losses["loss"], t([3.0 + 1.0, 3.0 + 6.0]), rtol=0, atol=0)


# ----------------------------------------------------------------------------- renormalisation
def test_renormalise_makes_unit_rows():
    g = gens(0)[0]
    model = ReluL1.from_init("orthogonal", 6, 10, [0.1, 0.2], gens(1, 2))
    with torch.no_grad():
        model.W_dec.mul_(torch.rand(2, 10, 1, generator=g) * 5 + 0.1)
        model.W_dec[1, 3] = 0.0
    model.renormalise_decoder_()
    norms = model.W_dec.norm(dim=-1)
    assert torch.equal(model.W_dec[1, 3], torch.zeros(6))  # a zero atom stays zero
    norms[1, 3] = 1.0
    torch.testing.assert_close(norms, torch.ones(2, 10), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- inits
@pytest.mark.parametrize("d,m", [(8, 16), (16, 8), (8, 8)])
def test_init_orthogonal(d, m):
    W_enc, b_enc, W_dec = init_weights("orthogonal", d, m, gens(0)[0])
    assert W_enc.shape == (d, m) and b_enc.shape == (m,) and W_dec.shape == (m, d)
    assert torch.equal(b_enc, torch.zeros(m))
    # the encoder is semi-orthogonal: orthonormal rows (m >= d) or columns (m < d)
    gram = W_enc @ W_enc.T if m >= d else W_enc.T @ W_enc
    torch.testing.assert_close(gram, torch.eye(min(d, m)), rtol=0, atol=1e-5)
    torch.testing.assert_close(W_dec.norm(dim=1), torch.ones(m), rtol=0, atol=1e-6)
    if m <= d:  # atoms are orthonormal
        torch.testing.assert_close(W_dec @ W_dec.T, torch.eye(m), rtol=0, atol=1e-5)
    # the documented recipe: nn.Linear layouts, encoder drawn first, then decoder
    g = gens(0)[0]
    enc = torch.nn.init.orthogonal_(torch.empty(m, d), generator=g)
    dec = torch.nn.init.orthogonal_(torch.empty(d, m), generator=g)
    assert torch.equal(W_enc, enc.T)
    torch.testing.assert_close(W_dec, dec.T / dec.T.norm(dim=1, keepdim=True), rtol=0, atol=0)
    # encoder and decoder are drawn independently (not tied)
    assert not torch.allclose(W_enc, W_dec.T)
    # all randomness from the generator
    again = init_weights("orthogonal", d, m, gens(0)[0])
    assert all(torch.equal(a, b) for a, b in zip((W_enc, b_enc, W_dec), again))
    other = init_weights("orthogonal", d, m, gens(1)[0])
    assert not torch.equal(W_dec, other[2])


def test_init_tied():
    W_enc, b_enc, W_dec = init_weights("tied", 8, 6, gens(3)[0])
    assert torch.equal(W_enc, W_dec.T) and W_enc.is_contiguous()
    assert torch.equal(b_enc, torch.zeros(6))
    torch.testing.assert_close(W_dec @ W_dec.T, torch.eye(6), rtol=0, atol=1e-5)


def test_init_data_samples():
    g = gens(4)[0]
    samples = torch.randn(20, 5, generator=g)
    samples[[2, 7]] = 0.0  # zero samples cannot be normalised and are never chosen
    W_enc, b_enc, W_dec = init_weights("data_samples", 5, 12, gens(5)[0], samples)
    assert torch.equal(W_enc, W_dec.T) and torch.equal(b_enc, torch.zeros(12))
    normed = samples / samples.norm(dim=1, keepdim=True).clamp_min(1e-12)
    # every atom equals a normalised, non-zero sample; drawn without replacement (N >= m)
    match = (W_dec[:, None, :] == normed[None, :, :]).all(-1)  # [m, N]
    assert match.any(1).all()
    idx = match.float().argmax(1)
    assert len(set(idx.tolist())) == 12 and not {2, 7} & set(idx.tolist())
    torch.testing.assert_close(W_dec.norm(dim=1), torch.ones(12), rtol=0, atol=1e-6)
    # fewer candidates than atoms: drawn with replacement
    W_enc, _, W_dec = init_weights("data_samples", 5, 30, gens(5)[0], samples)
    assert ((W_dec[:, None, :] == normed[None, :, :]).all(-1)).any(1).all()


def test_init_errors():
    g = gens(0)[0]
    with pytest.raises(ValueError, match="unknown init kind"):
        init_weights("kaiming", 4, 4, g)
    with pytest.raises(ValueError, match="samples"):
        init_weights("data_samples", 4, 4, g)
    with pytest.raises(ValueError, match="shape"):
        init_weights("data_samples", 4, 4, g, torch.randn(10, 3))
    with pytest.raises(ValueError, match="non-zero"):
        init_weights("data_samples", 4, 4, g, torch.zeros(10, 4))
    with pytest.raises(ValueError, match="unknown init kind"):
        ReluL1.from_init("nope", 4, 4, [0.1], gens(0))


def test_from_init_members_use_only_their_generator():
    model = ReluL1.from_init("orthogonal", 6, 9, [0.1, 0.2, 0.3], gens(10, 11, 12))
    for e, seed in enumerate((10, 11, 12)):
        W_enc, b_enc, W_dec = init_weights("orthogonal", 6, 9, gens(seed)[0])
        assert torch.equal(model.W_enc[e], W_enc) and torch.equal(model.W_dec[e], W_dec)
        assert torch.equal(model.b_enc[e], b_enc)


# ----------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("decoder_bias", [False, True])
def test_member_tensors_round_trip(decoder_bias):
    model = ReluL1.from_init("orthogonal", 5, 7, [0.1, 0.2, 0.3], gens(1, 2, 3), decoder_bias=decoder_bias)
    with torch.no_grad():
        model.b_enc.normal_(generator=gens(4)[0])
        if decoder_bias:
            model.b_dec.normal_(generator=gens(5)[0])
    members = []
    for e in range(3):
        tensors = model.member_tensors(e)
        expected = {"decoder": (7, 5), "encoder.weight": (5, 7), "encoder.bias": (7,)}
        if decoder_bias:
            expected["decoder.bias"] = (5,)
        assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
        assert all(v.is_contiguous() for v in tensors.values())
        members.append(load(save(tensors)))  # through safetensors bytes
    again = ReluL1.from_member_tensors(members, model.l1)
    assert again.decoder_bias == decoder_bias
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    # a copy, not a view on the parameters
    members[0]["decoder"].zero_()
    assert not torch.equal(model.W_dec[0], torch.zeros(7, 5))
    with pytest.raises(IndexError):
        model.member_tensors(3)


# ----------------------------------------------------------------------------- training
def planted_stream(d, n, B, steps, seed):
    """A few planted unit features, ~2 active per sample with U[0,1) magnitudes: [steps, B, d]."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    codes = torch.rand(steps, B, n, generator=g) * (torch.rand(steps, B, n, generator=g) < 2 / n)
    return codes @ feats, feats


def run(kind, d, m, B, steps, l1, seeds, decoder_bias=False, curve_every=10, with_eval=True):
    data, feats = planted_stream(d, max(2, m // 2), B, steps, seed=123)
    x_eval = data[:4].reshape(-1, d)
    model = ReluL1.from_init(kind, d, m, l1, gens(*seeds), samples=data[0], decoder_bias=decoder_bias)
    ev = (lambda mdl: evaluate(mdl, x_eval, feats, chunk=100)) if with_eval else None
    curves = train(model, lambda s: data[s], steps, 1e-3, evaluate=ev, curve_every=curve_every)
    return model, curves


@pytest.mark.parametrize(
    "kind,d,m,B,decoder_bias,threads",
    [
        ("orthogonal", 64, 256, 64, False, 2),  # aligned, vectorised sizes
        ("orthogonal", 64, 256, 64, False, 1),
        ("data_samples", 5, 11, 7, True, 2),  # odd sizes: scalar tails, unaligned member slices
        ("tied", 16, 48, 37, False, 2),  # aligned weights, odd batch: the per-member loop
        ("orthogonal", 16, 48, 32, True, 2),  # the batched (bmm) path with a decoder bias
        ("orthogonal", 64, 1024, 32, False, 2),  # aligned but large: the per-member loop
    ],
)
def test_ensemble_bit_identical(kind, d, m, B, decoder_bias, threads):
    """Each member of a 3-member ensemble ends bit-identical to the same member trained alone
    (same init generator, same batches, same lr): weights, training curves and eval metrics."""
    l1, seeds, steps = [0.03, 0.3, 3.0], [7, 8, 9], 30
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ens, ens_curves = run(kind, d, m, B, steps, l1, seeds, decoder_bias)
        singles = [run(kind, d, m, B, steps, [l1[e]], [seeds[e]], decoder_bias) for e in range(3)]
    finally:
        torch.set_num_threads(before)
    for e, (single, curves) in enumerate(singles):
        for name, value in single.member_tensors(0).items():
            assert torch.equal(value, ens.member_tensors(e)[name]), (e, name)
        assert curves["step"] == ens_curves["step"]
        for key in curves:
            if key != "step":
                assert [p[0] for p in curves[key]] == [p[e] for p in ens_curves[key]], (e, key)


@pytest.mark.parametrize(
    "d,m,B,decoder_bias", [(16, 32, 64, False), (16, 32, 64, True), (5, 11, 7, True), (64, 1024, 16, True)]
)
def test_closed_form_gradients_match_autograd(d, m, B, decoder_bias):
    data, _ = planted_stream(d, 6, B, 1, seed=3)
    model = ReluL1.from_init("orthogonal", d, m, [0.1, 2.0], gens(0, 1), decoder_bias=decoder_bias)
    with torch.no_grad():
        model.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(5))  # some codes off
    assert model.batched == (d % 16 == 0 and m % 16 == 0 and d * m <= 32768)
    reference = model.losses(data[0])
    reference["loss"].sum().backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
    got = model.loss_and_grad_(data[0])
    for key in ("loss", "mse", "l1"):
        torch.testing.assert_close(got[key], reference[key].detach(), rtol=1e-5, atol=1e-7)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_training_lowers_loss_and_records_curves():
    calls = []
    model, curves = run("orthogonal", 16, 32, 64, 300, [0.01, 0.1], [0, 1], curve_every=100)
    assert curves["step"] == [0, 100, 200, 300]
    for key in ("train_loss", "train_mse", "train_l1", "mse", "fvu", "l0", "dead", "mmcs_truth"):
        assert len(curves[key]) == 4 and all(len(p) == 2 for p in curves[key]), key
    for e in range(2):
        assert curves["train_loss"][-1][e] < 0.5 * curves["train_loss"][0][e]
        assert curves["mse"][-1][e] < 0.5 * curves["mse"][0][e]
    torch.testing.assert_close(model.W_dec.norm(dim=-1), torch.ones(2, 32), rtol=0, atol=1e-5)
    # no evaluate: only the training curves; the last point is the end even off the grid
    _, curves = run("orthogonal", 8, 8, 16, 25, [0.1], [0], curve_every=10, with_eval=False)
    assert curves["step"] == [0, 10, 20, 25]
    assert set(curves) == {"step", "train_loss", "train_mse", "train_l1"}
    # on_step sees every update count
    model = ReluL1.from_init("orthogonal", 4, 4, [0.1], gens(0))
    train(model, lambda s: torch.ones(2, 4), 5, 1e-3, on_step=calls.append)
    assert calls == [1, 2, 3, 4, 5]


def test_training_curve_point_zero_is_initial_weights():
    data, feats = planted_stream(8, 4, 16, 3, seed=0)
    model = ReluL1.from_init("orthogonal", 8, 8, [0.1], gens(0))
    initial = model.losses(data[0])
    curves = train(model, lambda s: data[s], 3, 1e-3, curve_every=2)
    assert curves["step"] == [0, 2, 3]
    assert curves["train_loss"][0][0] == pytest.approx(initial["loss"].item())


def test_non_finite_loss_names_the_member():
    data, _ = planted_stream(8, 4, 16, 10, seed=0)
    model = ReluL1.from_init("orthogonal", 8, 8, [0.1, 0.1, 0.1], gens(0, 1, 2))

    def poison(done):
        if done == 3:
            with torch.no_grad():
                model.W_enc[1].fill_(float("inf"))

    with pytest.raises(FloatingPointError, match=r"member 1 .*step 3"):
        train(model, lambda s: data[s], 10, 1e-3, on_step=poison)
