"""JumpReLU and Gated SAE kinds: hand-computed forward passes, losses and (straight-through)
gradients, ensemble bit-identity, persistence round trips and recovery of planted features."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load, save

from sae.base import get, kinds
from sae.gated import Gated
from sae.init import init_weights
from sae.jumprelu import JumpReLU, jump_relu, step
from sae.metrics import mmcs_truth
from toydata import ToyData, ToyDataConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: intra-op threads only add synchronisation on a loaded 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def close(a, b, atol=1e-6):
    torch.testing.assert_close(a, t(b) if not isinstance(b, torch.Tensor) else b, rtol=0, atol=atol)


# Shared hand example: d = 2, m = 3, B = 2, E = 1.
#   W_enc = [[1, 0, 1], [0, 1, -1]]  (latent 2 reads x0 - x1)
#   W_dec rows (atoms) = [1, 0], [0, 1], [0.6, 0.8]  (unit norm)
#   x = [[0.5, 0.2], [0.1, 0.9]]  ->  x @ W_enc = [[0.5, 0.2, 0.3], [0.1, 0.9, -0.8]]
W_ENC = t([[1, 0, 1], [0, 1, -1]])
W_DEC = t([[1, 0], [0, 1], [0.6, 0.8]])
X = t([[0.5, 0.2], [0.1, 0.9]])


def train_steps(model, batches, lr):
    """Adam over model.parameters() + loss_and_grad_ + after_step_ (the trainer's step);
    returns the per-step loss terms."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for x in batches:
        history.append(model.loss_and_grad_(x))
        opt.step()
        model.after_step_()
    return history


# ============================================================================= registry
def test_registered_and_built_from_init_weights():
    assert {"jumprelu", "gated"} <= set(kinds())
    assert get("jumprelu") is JumpReLU and get("gated") is Gated
    assert (JumpReLU.params, JumpReLU.sparsity, JumpReLU.tensor_format) == (
        ("sparsity_coef", "threshold_init", "bandwidth"),
        "sparsity_coef",
        "jumprelu/v1",
    )
    assert (Gated.params, Gated.sparsity, Gated.tensor_format) == (("l1",), "l1", "gated/v1")
    weights = [init_weights("orthogonal", 5, 7, gen(s)) for s in (0, 1)]
    j = JumpReLU.build(weights, [{"sparsity_coef": 0.1}, {"sparsity_coef": 0.2, "threshold_init": 0.5}], True)
    assert j.threshold_init.tolist() == pytest.approx([1e-3, 0.5])  # default 1e-3
    assert j.bandwidth.tolist() == pytest.approx([1e-3, 1e-3])
    close(j.log_threshold.exp(), torch.tensor([[1e-3] * 7, [0.5] * 7]))
    g = Gated.build(weights, [{"l1": 0.1}, {"l1": 0.2}])
    assert torch.equal(g.r_mag, torch.zeros(2, 7)) and torch.equal(g.b_mag, torch.zeros(2, 7))
    # the trainer's Adam runs over model.parameters(): the kinds' own parameters are in it
    assert [n for n, _ in j.named_parameters()] == ["W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"]
    assert [n for n, _ in g.named_parameters()] == ["W_enc", "b_enc", "W_dec", "r_mag", "b_mag"]
    x = torch.randn(4, 5, generator=gen(2))
    for model, keys in ((j, {"loss", "mse", "l0"}), (g, {"loss", "mse", "l1", "aux"})):
        x_hat, c = model(x)
        assert x_hat.shape == (2, 4, 5) and c.shape == (2, 4, 7) and (c >= 0).all()
        losses = model.losses(x)
        assert set(losses) == keys and all(v.shape == (2,) for v in losses.values())


def test_hyperparameter_validation():
    z = (torch.zeros(1, 2, 3), torch.zeros(1, 3), torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="sparsity_coef"):
        JumpReLU(*z, sparsity_coef=[-1.0])
    with pytest.raises(ValueError, match="threshold_init"):
        JumpReLU(*z, sparsity_coef=[1.0], threshold_init=[0.0])
    with pytest.raises(ValueError, match="bandwidth"):
        JumpReLU(*z, sparsity_coef=[1.0], bandwidth=[-1e-3])
    with pytest.raises(ValueError, match="log_threshold"):
        JumpReLU(*z, sparsity_coef=[1.0], log_threshold=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="one value per member"):
        JumpReLU(*z, sparsity_coef=[1.0, 2.0])
    with pytest.raises(ValueError, match="l1"):
        Gated(*z, l1=[-0.1])
    with pytest.raises(ValueError, match="r_mag"):
        Gated(*z, l1=[0.1], r_mag=torch.zeros(3))


# ============================================================================= JumpReLU by hand
def hand_jumprelu(decoder_bias=False):
    """theta = [0.4, 0.22, 0.28], eps = 0.1 (band: |pre - theta| < 0.05), sparsity_coef 0.01."""
    b_dec = t([[0.5, -0.5]]) if decoder_bias else None
    return JumpReLU(
        W_ENC[None], torch.zeros(1, 3), W_DEC[None], sparsity_coef=[0.01], threshold_init=[0.5],
        bandwidth=[0.1], decoder_bias=decoder_bias, b_dec=b_dec, log_threshold=t([[0.4, 0.22, 0.28]]).log(),
    )


def test_jumprelu_encode_by_hand():
    # pre = [[0.5, 0.2, 0.3], [0.1, 0.9, -0.8]] vs theta [0.4, 0.22, 0.28]:
    # sample 0: latents 0 (0.5 > 0.4) and 2 (0.3 > 0.28) pass, latent 1 (0.2 < 0.22) does not;
    # sample 1: only latent 1. A passing latent keeps its full pre-activation (the jump).
    model = hand_jumprelu()
    close(model.encode(X)[0], [[0.5, 0, 0.3], [0, 0.9, 0]])
    # the threshold is strict: with W_enc = I (pre = x exactly) pre == theta is off and the
    # next float32 above theta passes with its whole value
    ident = JumpReLU(torch.eye(2)[None], torch.zeros(1, 2), torch.eye(2)[None], sparsity_coef=[0.1],
                     log_threshold=t([[0.25, 0.5]]).log())
    theta = ident.member_threshold(0).detach()[None]
    above = torch.nextafter(theta, torch.ones_like(theta))
    assert torch.equal(ident.member_encode(theta, 0), torch.zeros(1, 2))
    assert torch.equal(ident.member_encode(above, 0), above)
    # with a decoder bias the encoder reads x - b_dec: x - [0.5, -0.5] = [[0, 0.7], [-0.4, 1.4]]
    # -> pre = [[0, 0.7, -0.7], [-0.4, 1.4, -1.8]]: only latent 1 passes, in both samples
    close(hand_jumprelu(decoder_bias=True).encode(X)[0], [[0, 0.7, 0], [0, 1.4, 0]])


def test_jumprelu_losses_by_hand():
    # z = [[0.5, 0, 0.3], [0, 0.9, 0]]; x_hat = z @ W_dec = [[0.68, 0.24], [0, 0.9]]
    # x_hat - x = [[0.18, 0.04], [-0.1, 0]]; mse = (0.0324 + 0.0016 + 0.01 + 0) / 4 = 0.011
    # l0 = mean_b(sum_j H) = (2 + 1) / 2 = 1.5 (not divided by m); loss = 0.011 + 0.01 * 1.5
    losses = hand_jumprelu().losses(X)
    close(losses["mse"], [0.011])
    assert losses["l0"].item() == 1.5
    close(losses["loss"], [0.026])
    close(hand_jumprelu().losses(X, sparsity_scale=0.5)["loss"], [0.011 + 0.0075])


def test_jumprelu_gradients_by_hand():
    """The straight-through estimator with the rectangle kernel, element by element.

    dL/dx_hat = 2 (x_hat - x) / (B d) = [[0.09, 0.02], [-0.05, 0]];
    dL/dz = that @ W_dec^T = [[0.09, 0.02, 0.07], [-0.05, 0, -0.03]].

    Band (|pre - theta| < eps/2 = 0.05): only (sample 0, latent 1: 0.2 vs 0.22) and
    (sample 0, latent 2: 0.3 vs 0.28). (sample 0, latent 0: 0.5 vs 0.4) passes the gate but is
    outside the band, so it gives theta no gradient although dL/dz = 0.09 there.

    theta gradient = via z: -(theta/eps) sum_b band * dL/dz      = [0, -2.2 * 0.02, -2.8 * 0.07]
                   + via L0: coef/B * -(1/eps) * sum_b band       = [0, -0.05, -0.05]
                   = [0, -0.094, -0.246];  log_threshold gradient = theta * that.
    pre gradient = dL/dz * H(pre - theta) (the L0 term adds nothing):
                   [[0.09, 0, 0.07], [0, 0, 0]]: latent 1 of sample 0 is in the band but off,
                   so it gets nothing although dL/dz = 0.02 there.
    """
    model = hand_jumprelu()
    model.loss_and_grad_(X)
    close(model.log_threshold.grad, [[0, -0.22 * 0.094, -0.28 * 0.246]])
    close(model.b_enc.grad, [[0.09, 0, 0.07]])
    close(model.W_enc.grad[0], [[0.5 * 0.09, 0, 0.5 * 0.07], [0.2 * 0.09, 0, 0.2 * 0.07]])
    # dW_dec = z^T dL/dx_hat
    close(model.W_dec.grad[0], [[0.045, 0.01], [-0.045, 0], [0.027, 0.006]])
    # with no sparsity penalty only the reconstruction's share of the theta gradient is left
    free = hand_jumprelu()
    free.sparsity_coef.zero_()
    free.loss_and_grad_(X)
    close(free.log_threshold.grad, [[0, -0.22 * 0.044, -0.28 * 0.196]])


def test_jumprelu_functions_match_the_estimator_formula():
    """jump_relu / step against the documented pseudo-derivatives on random inputs, with
    about a third of the pre-activations inside the band."""
    g = gen(0)
    pre = torch.rand(64, 9, generator=g).requires_grad_()
    theta = (torch.rand(9, generator=g) * 0.5 + 0.25).requires_grad_()
    eps = torch.tensor(0.3)
    up_z, up_h = torch.randn(64, 9, generator=g), torch.randn(64, 9, generator=g)
    z, h = jump_relu(pre, theta, eps), step(pre, theta, eps)
    on = (pre > theta).float()
    assert torch.equal(z, pre * on) and torch.equal(h, on)
    gp, gt = torch.autograd.grad((z * up_z).sum() + (h * up_h).sum(), (pre, theta))
    band = ((pre - theta).abs() < eps / 2).float()
    assert 0.2 < band.mean() < 0.5
    close(gp, up_z * on)
    close(gt, (-(theta / eps) * band * up_z - band * up_h / eps).sum(0), atol=1e-5)


def test_jumprelu_loss_and_grad_matches_autograd_of_losses():
    x = torch.randn(13, 6, generator=gen(3)) * 0.5
    weights = [init_weights("orthogonal", 6, 10, gen(s)) for s in (4, 5)]
    model = JumpReLU.build(weights, [{"sparsity_coef": 0.1, "bandwidth": 0.2, "threshold_init": 0.1},
                                     {"sparsity_coef": 1.0, "bandwidth": 0.05, "threshold_init": 0.2}], True)
    reference = model.losses(x, sparsity_scale=0.7)
    reference["loss"].sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert expected["log_threshold"].abs().sum() > 0  # some pre-activations in the band
    got = model.loss_and_grad_(x, sparsity_scale=0.7)
    for k in reference:
        assert torch.equal(got[k], reference[k].detach()), k
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, expected[n]), n


def test_jumprelu_threshold_rises_under_the_l0_penalty():
    """Codes far above the threshold are unaffected; the penalty pushes theta up through the
    band and so switches off the small pre-activations: the L0 falls, the big codes stay."""
    model = hand_jumprelu()
    model.sparsity_coef.fill_(1.0)
    x = t([[1.0, 0.0]]) * torch.linspace(0.1, 0.5, 64)[:, None]  # latent 0 and 2 pre in [0.1, 0.5]
    before = model.losses(x)["l0"].item()
    train_steps(model, [x] * 30, lr=0.02)
    after = model.losses(x)
    assert after["l0"].item() < before
    assert (model.log_threshold[0, [0, 2]].exp() > t([0.4, 0.28])).all()


# ============================================================================= Gated by hand
def hand_gated(decoder_bias=False):
    """b_gate = [0, -0.5, 0], r_mag = [0, log 2, 0] (latent 1's magnitude weights doubled),
    b_mag = [0.1, 0, -0.4], l1 = 0.3."""
    b_dec = t([[0.5, -0.5]]) if decoder_bias else None
    return Gated(
        W_ENC[None], t([[0, -0.5, 0]]), W_DEC[None], l1=[0.3], decoder_bias=decoder_bias, b_dec=b_dec,
        r_mag=t([[0, math.log(2), 0]]), b_mag=t([[0.1, 0, -0.4]]),
    )


def test_gated_encode_by_hand():
    # x @ W_enc = [[0.5, 0.2, 0.3], [0.1, 0.9, -0.8]]
    # pi_gate = + b_gate         = [[0.5, -0.3, 0.3], [0.1, 0.4, -0.8]]
    # pi_mag  = x @ (W_enc * [1, 2, 1]) + b_mag = [[0.6, 0.4, -0.1], [0.2, 1.8, -1.2]]
    # f = H(pi_gate) relu(pi_mag): sample 0 latent 1 has a positive magnitude but a shut gate,
    # latent 2 an open gate but a negative magnitude: both 0.
    model = hand_gated()
    gate, mag = model.member_paths(X, 0)
    close(gate, [[0.5, -0.3, 0.3], [0.1, 0.4, -0.8]])
    close(mag, [[0.6, 0.4, -0.1], [0.2, 1.8, -1.2]])
    close(model.encode(X)[0], [[0.6, 0, 0], [0.2, 1.8, 0]])
    # x - b_dec = [[0, 0.7], [-0.4, 1.4]] -> gate [[0, 0.2, -0.7], [-0.4, 0.9, -1.8]] (0 is shut)
    # mag [[0.1, 1.4, -1.1], [-0.3, 2.8, -2.2]]
    close(hand_gated(decoder_bias=True).encode(X)[0], [[0, 1.4, 0], [0, 2.8, 0]])


def test_gated_losses_by_hand():
    # x_hat = f @ W_dec = [[0.6, 0], [0.2, 1.8]]; x_hat - x = [[0.1, -0.2], [0.1, 0.9]]
    # mse = (0.01 + 0.04 + 0.01 + 0.81) / 4 = 0.2175
    # relu(pi_gate) = [[0.5, 0, 0.3], [0.1, 0.4, 0]]; l1 term = (0.8 + 0.5) / (B=2 * m=3) = 1.3/6
    # aux: relu(pi_gate) @ W_dec = [[0.68, 0.24], [0.1, 0.4]]; minus x = [[0.18, 0.04], [0, -0.5]]
    #      aux = (0.0324 + 0.0016 + 0 + 0.25) / 4 = 0.071
    # loss = 0.2175 + 0.3 * 1.3/6 + 0.071 = 0.3535
    losses = hand_gated().losses(X)
    close(losses["mse"], [0.2175])
    close(losses["l1"], [1.3 / 6])
    close(losses["aux"], [0.071])
    close(losses["loss"], [0.3535])
    close(hand_gated().losses(X, sparsity_scale=0.0)["loss"], [0.2175 + 0.071])


def test_gated_gradients_by_hand():
    """dL/dx_hat = (x_hat - x)/2 = [[0.05, -0.1], [0.05, 0.45]]; dL/df = that @ W_dec^T =
    [[0.05, -0.1, -0.05], [0.05, 0.45, 0.39]], passed where gate open and pi_mag > 0:
    [[0.05, 0, 0], [0.05, 0.45, 0]] = d pi_mag (so b_mag's gradient is its column sum).
    d relu(pi_gate) from aux = (aux residual)/2 @ W_dec^T = [[0.09, 0.02, 0.07], [0, -0.25, -0.2]],
    plus l1/(B m) = 0.05 from the sparsity term, where pi_gate > 0:
    d pi_gate = [[0.14, 0, 0.12], [0.05, -0.2, 0]] (b_gate's gradient is its column sum).
    r_mag_j: exp(r_j) sum_i W_enc_ij (x^T d pi_mag)_ij = [1 * 0.03, 2 * 0.405, 0].
    W_enc: x^T d pi_gate + exp(r) * x^T d pi_mag."""
    model = hand_gated()
    model.loss_and_grad_(X)
    close(model.b_mag.grad, [[0.1, 0.45, 0]])
    close(model.b_enc.grad, [[0.19, -0.2, 0.12]])
    close(model.r_mag.grad, [[0.03, 0.81, 0]])
    close(model.W_enc.grad[0], [[0.075 + 0.03, -0.02 + 0.09, 0.06], [0.073 + 0.055, -0.18 + 0.81, 0.024]])
    # dW_dec = f^T dL/dx_hat: only the main reconstruction; the aux residual (which would add
    # relu(pi_gate)^T (aux residual)/2 = [[0.09, 0.02], [0, -0.1], [0.054, 0.012]]) never reaches it
    close(model.W_dec.grad[0], [[0.04, 0.03], [0.09, 0.81], [0, 0]])


@pytest.mark.parametrize("decoder_bias", [False, True])
def test_gated_aux_term_does_not_reach_the_decoder(decoder_bias):
    model = hand_gated(decoder_bias)
    losses = model.member_losses(X, 0)
    params = dict(model.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(losses["aux"], list(params.values()), allow_unused=True)))
    assert grads["W_dec"] is None
    assert grads["r_mag"] is None and grads["b_mag"] is None  # aux trains only the gate path
    assert grads["W_enc"].abs().sum() > 0 and grads["b_enc"].abs().sum() > 0
    if decoder_bias:
        # b_dec reaches aux only through the encoder's input x - b_dec, i.e. -(d pi_gate) @ W_enc^T
        gate, _ = model.member_paths(X, 0)
        frozen = torch.relu(gate) @ W_DEC + model.b_dec[0].detach()
        d_gate = ((frozen - X) / 2 @ W_DEC.T) * (gate > 0)
        close(grads["b_dec"], -(d_gate @ W_ENC.T).sum(0, keepdim=True).detach())
    # the total objective's decoder gradient is exactly that of the main mse
    (w_dec_mse,) = torch.autograd.grad(model.member_losses(X, 0)["mse"], [model.W_dec])
    model.loss_and_grad_(X)
    assert torch.equal(model.W_dec.grad, w_dec_mse)


def test_gated_loss_and_grad_matches_autograd_of_losses():
    x = torch.randn(13, 6, generator=gen(3))
    weights = [init_weights("tied", 6, 10, gen(s)) for s in (4, 5)]
    model = Gated.build(weights, [{"l1": 0.1}, {"l1": 2.0}], True)
    with torch.no_grad():
        model.r_mag.normal_(0, 0.3, generator=gen(6))
        model.b_mag.normal_(0, 0.3, generator=gen(7))
    reference = model.losses(x, sparsity_scale=0.5)
    reference["loss"].sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    got = model.loss_and_grad_(x, sparsity_scale=0.5)
    for k in reference:
        assert torch.equal(got[k], reference[k].detach()), k
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, expected[n]), n


# ============================================================================= both kinds
KINDS = {
    "jumprelu": (JumpReLU, [{"sparsity_coef": 0.01, "threshold_init": 0.05, "bandwidth": 0.05},
                            {"sparsity_coef": 0.1, "threshold_init": 0.01, "bandwidth": 0.02},
                            {"sparsity_coef": 1.0, "threshold_init": 0.1, "bandwidth": 0.1}]),
    "gated": (Gated, [{"l1": 0.03}, {"l1": 0.3}, {"l1": 3.0}]),
}


def planted(d, n, B, steps, seed):
    """[steps, B, d]: ~2 of n random unit features active per sample, U[0,1) magnitudes."""
    g = gen(seed)
    feats = torch.randn(n, d, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    codes = torch.rand(steps, B, n, generator=g) * (torch.rand(steps, B, n, generator=g) < 2 / n)
    return codes @ feats


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("d,m,B,decoder_bias", [(5, 11, 7, True), (16, 32, 64, False), (16, 48, 37, True)])
def test_ensemble_bit_identical(kind, d, m, B, decoder_bias):
    """A member trained 20 steps (Adam + after_step_) inside an ensemble of 3 with different
    hyperparameters ends with the same bytes as the same member trained alone."""
    cls, hyper = KINDS[kind]
    data = planted(d, max(2, m // 2), B, 20, seed=1)
    weights = [init_weights("orthogonal", d, m, gen(10 + e)) for e in range(3)]
    ens = cls.build(weights, hyper, decoder_bias)
    ens_hist = train_steps(ens, data, lr=1e-2)
    for e in range(3):
        single = cls.build([weights[e]], [hyper[e]], decoder_bias)
        hist = train_steps(single, data, lr=1e-2)
        for name, value in single.member_tensors(0).items():
            assert torch.equal(value, ens.member_tensors(e)[name]), (e, name)
        for k in hist[0]:
            assert [h[k][0].item() for h in hist] == [h[k][e].item() for h in ens_hist], (e, k)
        x = data[-1]
        assert torch.equal(single.member_forward(x, 0)[1], ens.member_forward(x, e)[1])


def trained(kind, decoder_bias, steps=15):
    cls, hyper = KINDS[kind]
    data = planted(6, 5, 32, steps, seed=2)
    model = cls.build([init_weights("orthogonal", 6, 9, gen(20 + e)) for e in range(3)], hyper, decoder_bias)
    train_steps(model, data, lr=1e-2)
    return model, data


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("decoder_bias", [False, True])
def test_member_tensors_round_trip(kind, decoder_bias):
    model, data = trained(kind, decoder_bias)
    cls = type(model)
    extra = {"jumprelu": {"threshold": (9,)}, "gated": {"r_mag": (9,), "b_mag": (9,)}}[kind]
    members = []
    for e in range(3):
        tensors = model.member_tensors(e)
        expected = {"decoder": (9, 6), "encoder.weight": (6, 9), "encoder.bias": (9,), **extra}
        if decoder_bias:
            expected["decoder.bias"] = (6,)
        assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
        members.append(load(save(tensors)))  # through safetensors bytes
    again = cls.from_member_tensors(members, [model.member_hyper(e) for e in range(3)])
    x = torch.cat([data[-1], torch.randn(50, 6, generator=gen(3))])
    for e in range(3):
        for a, b in zip(model.member_forward(x, e), again.member_forward(x, e)):
            assert torch.equal(a, b), e
        for name, value in model.member_tensors(e).items():
            assert torch.equal(value, again.member_tensors(e)[name]), (e, name)
    assert all(torch.equal(getattr(model, p), getattr(again, p)) for p in cls.params)
    broken = dict(members[0])
    del broken[next(iter(extra))]
    with pytest.raises(KeyError):
        cls.from_member_tensors([broken], [model.member_hyper(0)])


def test_jumprelu_threshold_survives_log_exp_round_trip():
    """Thresholds near 1 (log near 0) are where float32 log then exp may miss by an ulp; the
    loader's one-step nudge makes exp(log_threshold) reproduce every saved threshold."""
    g = gen(0)
    lt = torch.cat([torch.rand(100_000, generator=g) * 25 - 20, torch.rand(100_000, generator=g) * 2 - 1])
    saved = lt.exp()
    assert (saved.log().exp() != saved).sum() > 10  # the plain inverse misses some
    model = JumpReLU(torch.zeros(1, 1, lt.numel()), torch.zeros(1, lt.numel()), torch.zeros(1, lt.numel(), 1),
                     sparsity_coef=[0.1])
    model.load_extra_(0, {"threshold": saved})
    assert torch.equal(model.member_threshold(0).detach(), saved)
    with pytest.raises(ValueError):
        model.load_extra_(0, {"threshold": -saved})


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reset_atoms(kind):
    model, _ = trained(kind, decoder_bias=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    idx = torch.tensor([1, 4])
    dirs = torch.nn.functional.normalize(torch.randn(2, 6, generator=gen(9)), dim=1)
    model.reset_atoms_(2, idx, dirs, encoder_norm=0.5)
    assert torch.equal(model.W_dec[2, idx], dirs) and torch.equal(model.W_enc[2][:, idx], dirs.T * 0.5)
    assert torch.equal(model.b_enc[2, idx], torch.zeros(2))
    if kind == "jumprelu":
        close(model.log_threshold[2, idx].exp(), model.threshold_init[2].expand(2))
        own = ["log_threshold"]
    else:
        assert torch.equal(model.r_mag[2, idx], torch.zeros(2)) and torch.equal(model.b_mag[2, idx], torch.zeros(2))
        own = ["r_mag", "b_mag"]
    for name in ["b_enc", *own]:  # nothing else moved: other atoms, other members
        keep = torch.ones_like(before[name], dtype=torch.bool)
        keep[2, idx] = False
        assert torch.equal(getattr(model, name)[keep], before[name][keep]), name
    assert torch.equal(model.W_dec[:2], before["W_dec"][:2])


# ============================================================================= recovery
# Chosen from exploratory sweeps (10 draws of the box below per setting, then 60 fresh draws
# for the chosen one): JumpReLU sparsity_coef 0.01-0.4 / dim, threshold_init 0.001-0.1,
# bandwidth 0.01-0.05; Gated l1 0.1-1.0 m / dim; lr 1e-2 / 2e-2; 800-1,200 steps. Too weak a
# penalty leaves the dictionary unidentified (JumpReLU 0.01/dim: median 0.96; Gated 0.1 m/dim:
# 0.90), too strong merges features at m ~ n; the paper's threshold_init 0.001 and bandwidth
# 0.001 assume unit mean squared norm and pre-activations of that scale: on this data (|x|^2 ~
# active/3 + ..., codes U[0,1)) threshold_init 0.001 (with bandwidth 0.01) moves the threshold
# too slowly (10 draws: min 0.76, median 0.96 at 1,200 steps).
# Gated at lr 2e-2 plateaus lower on m = n draws (60-draw min 0.89) than at 1e-2 for 1,000 steps.
BATCH = 256
JUMPRELU_STEPS, JUMPRELU_LR = 800, 1e-2
GATED_STEPS, GATED_LR = 1000, 1e-2


@st.composite
def recovery_configs(draw):
    n = draw(st.integers(8, 24))
    dim = draw(st.integers(max(n, 10), 2 * n))
    active = draw(st.sampled_from([1.0, 1.5, 2.0, 2.5, 3.0]))
    m = draw(st.integers(n, 2 * n))
    seed = draw(st.integers(0, 2**31 - 1))
    return n, dim, active, m, seed


def bar(n, dim, active, m):
    """The recovery threshold: 0.90 where recovery is dependable (m >= 1.5 n, dim >= 12 and
    codes at most 20% dense, active <= n / 5, the region of tests/test_recovery.py), else 0.75:
    at m ~ n two features may share one atom or one stay unmatched, and at small dim (random
    features overlap, |cos| ~ 0.3) or dense codes a run can settle in such a state for good
    (more steps do not help); see the tests' docstrings."""
    return 0.90 if m >= 1.5 * n and dim >= 12 and active <= n / 5 else 0.75


def recover(cls, config, hyper, lr, steps):
    """Train one member on fresh toydata batches; its mmcs_truth and a random dictionary's."""
    n, dim, active, m, seed = config
    cfg = ToyDataConfig(n_features=n, dim=dim, active_per_sample=active, decay=1.0, correlation="none")
    data = ToyData.build(cfg, gen(seed), gen(seed + 1))
    batches = gen(seed + 2)
    model = cls.build([init_weights("orthogonal", dim, m, gen(seed + 3))], [hyper])
    train_steps(model, (data.sample(BATCH, batches)[0] for _ in range(steps)), lr)
    random_atoms = torch.randn(m, dim, generator=gen(seed + 4))
    return (mmcs_truth(data.features, model.atoms(0))["mmcs_truth"],
            mmcs_truth(data.features, random_atoms)["mmcs_truth"])


def jumprelu_hyper(n, dim, m):
    """sparsity_coef = 0.2 / dim: the MSE is a per-dim mean, so a latent firing at u on its
    own feature saves ~u^2 / dim of it and costs sparsity_coef; the break-even threshold
    sqrt(sparsity_coef * dim) = 0.45 is then the same for every size (U[0,1) magnitudes)."""
    return {"sparsity_coef": 0.2 / dim, "threshold_init": 0.05, "bandwidth": 0.05}


def gated_hyper(n, dim, m):
    """l1 = 0.3 * m / dim: the per-dim MSE scales like 1/dim and the sparsity term is divided
    by m, so this keeps their balance across sizes (as tests/test_recovery.py for relu_l1)."""
    return {"l1": 0.3 * m / dim}


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(recovery_configs())
def test_jumprelu_recovers_planted_features(config):
    """JumpReLU (orthogonal init, threshold_init 0.05, bandwidth 0.05, sparsity_coef 0.2/dim,
    Adam lr 1e-2, batch 256, 800 steps) recovers toydata features: n 8-24, dim
    max(n, 10)-2n, 1-3 active (uncorrelated, U[0,1) magnitudes), m n-2n.

    Thresholds (``bar``) from exploratory runs (2-core CPU, torch 2.13). 60 draws of this box:
    mmcs_truth min 0.943, 5th percentile 0.959, median 0.998, max 0.999; of the 30 inside
    ``bar``'s dependable region (m >= 1.5 n, dim >= 12, active <= n / 5): min 0.978, so the bar
    there is 0.90 (dense codes at small n are the other weak corner, see the Gated test).
    The tail is m ~ n and small dim: 16 draws with m = n or n + 1 (4 at n = 8, dim = 10, m = 8): min 0.898, median
    0.954; 10 corner draws (n 8-9, dim 10-11, m 9-16): min 0.835 ((8, 10, 1 active, m 10),
    seed 0), 0.914 even at m = 1.5 n. Hence 0.75 outside the dependable region: still far
    above chance, since a random Gaussian dictionary of the same size scores 0.29-0.54
    (median 0.40) on these draws (checked below 0.7 here)."""
    n, dim, active, m, seed = config
    got, chance = recover(JumpReLU, config, jumprelu_hyper(n, dim, m), JUMPRELU_LR, JUMPRELU_STEPS)
    assert got >= bar(n, dim, active, m) and chance < 0.7, (config, got, chance)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(recovery_configs())
def test_gated_recovers_planted_features(config):
    """Gated (orthogonal init, r_mag = b_mag = 0, l1 0.3 m/dim, Adam lr 1e-2, batch 256,
    1,000 steps) on the same box as the JumpReLU test.

    Thresholds (``bar``) from the same exploratory draws as the JumpReLU test. 60 draws of the
    box: min 0.931, 5th percentile 0.959, median 0.9997; the 30 inside the dependable region:
    min 0.983 (bar 0.90). Outside that region the tail is longer than JumpReLU's: 16 m ~ n
    draws min 0.898, median 0.944; corner draws (n 8-9, dim 10-11) down to 0.821
    ((8, 10, 1 active, m 10), seed 0: the same with l1 0.15-0.6 m/dim or 2,000 steps stays
    at 0.82-0.88) and 0.911 at m = 1.5 n; hypothesis found (8, 12, 2.5 active, 15) at 0.918
    (31% dense codes); bar 0.75."""
    n, dim, active, m, seed = config
    got, chance = recover(Gated, config, gated_hyper(n, dim, m), GATED_LR, GATED_STEPS)
    assert got >= bar(n, dim, active, m) and chance < 0.7, (config, got, chance)
