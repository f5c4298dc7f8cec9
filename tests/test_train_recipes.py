"""The generic trainer's recipes (sae.recipes), stopping rule (sae.stopping) and member removal."""

import importlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sae import ReluL1, evaluate, init_weights
from sae.recipes import RECIPES, Recipe, build_relu_l1, lr_factor, recipe, sparsity_scale
from sae.stopping import StopRule, WindowJudge, eval_loss_metric, mmcs_truth_metric, replay
from sae.train import _clip_grad_per_member_, _keep_members_, resample_dead_, train, train_members


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def planted_stream(d, n, B, steps, seed):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    codes = torch.rand(steps, B, n, generator=g) * (torch.rand(steps, B, n, generator=g) < 2 / n)
    return codes @ feats, feats


def hand_model(W_enc, W_dec, l1, b_enc=None, **options):
    W_enc, W_dec = t(W_enc), t(W_dec)
    b = torch.zeros(1, W_enc.shape[1]) if b_enc is None else t([b_enc])
    return ReluL1(W_enc.unsqueeze(0), b, W_dec.unsqueeze(0), l1=[l1], **options)


# ----------------------------------------------------------------------------- defaults
def test_default_recipe_is_2022_and_train_members_matches_train():
    assert Recipe() == recipe("interim_2022", 1000)
    assert not Recipe().schedules_lr and Recipe().warmup == 0
    data, feats = planted_stream(16, 8, 32, 40, seed=1)
    ev = lambda mdl: evaluate(mdl, data[0], feats)  # noqa: E731
    a = ReluL1.from_init("orthogonal", 16, 48, [0.1, 1.0], gens(3, 4))
    curves = train(a, lambda s: data[s], 40, 1e-3, ev, curve_every=15)
    b = ReluL1.from_init("orthogonal", 16, 48, [0.1, 1.0], gens(3, 4))
    res = train_members(b, lambda s: data[s], 1e-3, steps=40, options=Recipe(), evaluate=ev, curve_every=15)
    assert res.stacked_curves() == curves
    assert res.stops == [{"step": 40, "reason": "steps"}] * 2
    for e in range(2):
        for k, v in a.member_tensors(e).items():
            assert torch.equal(v, res.member_tensors(e)[k]) and torch.equal(v, b.member_tensors(e)[k])
    again = res.model()
    assert torch.equal(again.W_dec, a.W_dec) and again.l1.tolist() == a.l1.tolist()
    with pytest.raises(ValueError, match="exactly one"):
        train_members(b, lambda s: data[s], 1e-3)


# ----------------------------------------------------------------------------- lr schedule
def test_lr_warmup_and_decay_hand_values(monkeypatch):
    o = Recipe(lr_warmup_steps=4, lr_decay="linear", lr_decay_frac=0.25)
    want = {0: 0.25, 1: 0.5, 2: 0.75, 3: 1.0, 10: 1.0, 14: 1.0, 15: 1.0, 16: 0.8, 17: 0.6, 18: 0.4, 19: 0.2}
    for step, f in want.items():
        assert lr_factor(o, step, 20) == pytest.approx(f), step
    assert lr_factor(Recipe(lr_warmup_steps=4, lr_decay="linear", lr_decay_frac=0.5), 1, 4) == pytest.approx(0.5 * 1.0)
    assert lr_factor(Recipe(), 7, 20) == 1.0
    # the optimiser sees lr * factor at each update
    seen = []
    step = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    data, _ = planted_stream(8, 4, 16, 20, seed=0)
    model = ReluL1.from_init("orthogonal", 8, 8, [0.1], gens(0))
    train(model, lambda s: data[s], 20, 1e-2, options=o)
    assert seen == pytest.approx([1e-2 * want.get(i, 1.0) for i in range(20)])
    # with a stop rule the decay runs over max_steps
    seen.clear()
    model = ReluL1.from_init("orthogonal", 8, 8, [0.1], gens(0))
    train_members(model, lambda s: data[s], 1e-2, stop=StopRule("loss", 0.0, 5, 20), options=Recipe(lr_decay="linear", lr_decay_frac=0.5))
    assert seen == pytest.approx([1e-2 * (1.0 if i < 10 else (20 - i) / 10) for i in range(20)])


# ----------------------------------------------------------------------------- l1 warm-up
def test_l1_warmup_scale_and_relu_l1_at_half_scale():
    o = Recipe(l1_warmup_steps=4)
    assert [sparsity_scale(o, i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert sparsity_scale(Recipe(), 0) == 1.0
    # x = [1, 2], W_enc = I, atoms (1, 1), (0, 1), l1 = 2 at scale 0.5:
    # c = [1, 2], x_hat = [1, 3], r = [0, 1], mse = 1/2, l1 term = mean(c) = 1.5,
    # loss = 0.5 + 2 * 0.5 * 1.5 = 2; g = 2 r / (B d) = [0, 1]; dW_dec = c^T g = [[0, 1], [0, 2]];
    # dc = g W_dec^T + 2 * 0.5 / (B m) = [1, 1] + 0.5; dW_enc = x^T dc; db_enc = dc.
    model = hand_model([[1, 0], [0, 1]], [[1, 1], [0, 1]], 2.0)
    x = t([[1, 2]])
    out = model.loss_and_grad_(x, 0.5)
    assert out["loss"].tolist() == [2.0] and out["mse"].tolist() == [0.5] and out["l1"].tolist() == [1.5]
    assert model.W_dec.grad[0].tolist() == [[0, 1], [0, 2]]
    assert model.W_enc.grad[0].tolist() == [[1.5, 1.5], [3, 3]]
    assert model.b_enc.grad[0].tolist() == [1.5, 1.5]
    ref = model.losses(x, 0.5)
    assert ref["loss"].tolist() == [2.0]
    # batched path against autograd at scale 0.5
    data, _ = planted_stream(16, 6, 64, 1, seed=3)
    model = ReluL1.from_init("orthogonal", 16, 32, [0.1, 2.0], gens(0, 1))
    assert model.batched
    model.losses(data[0], 0.5)["loss"].sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.loss_and_grad_(data[0], 0.5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-6, msg=n)


# ----------------------------------------------------------------------------- clipping
def test_grad_clip_per_member_hand_example():
    model = ReluL1.from_init("orthogonal", 2, 2, [0.1, 0.1], gens(0, 1))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.W_enc.grad[0, 0, 0] = 3.0  # member 0: norm sqrt(3^2 + 4^2) = 5 over two parameters
    model.W_dec.grad[0, 1, 1] = 4.0
    model.W_enc.grad[1, 1, 0] = 0.3  # member 1: norm 0.5 <= 1, unchanged
    model.b_enc.grad[1, 1] = 0.4
    norms = _clip_grad_per_member_(model, 1.0)
    assert norms.tolist() == pytest.approx([5.0, 0.5])
    assert model.W_enc.grad[0, 0, 0].item() == pytest.approx(3.0 / (5.0 + 1e-6))
    assert model.W_dec.grad[0, 1, 1].item() == pytest.approx(4.0 / (5.0 + 1e-6))
    assert model.W_enc.grad[1, 1, 0].item() == pytest.approx(0.3) and model.b_enc.grad[1, 1].item() == pytest.approx(0.4)
    # the same as torch's clip_grad_norm_ on member 0 alone
    alone = [t([[3, 0], [0, 0]]), t([[0, 0], [0, 4]])]
    ps = [torch.nn.Parameter(torch.zeros(2, 2)) for _ in alone]
    for p, g in zip(ps, alone):
        p.grad = g
    torch.nn.utils.clip_grad_norm_(ps, 1.0)
    torch.testing.assert_close(ps[0].grad, model.W_enc.grad[0])
    torch.testing.assert_close(ps[1].grad, model.W_dec.grad[0])


# ----------------------------------------------------------------------------- init and free decoder
def test_tied_small_init():
    W_enc, b_enc, W_dec = init_weights("tied_small", 6, 10, torch.Generator().manual_seed(0), decoder_init_norm=0.05)
    torch.testing.assert_close(W_dec.norm(dim=1), torch.full((10,), 0.05))
    assert torch.equal(W_enc, W_dec.T) and torch.equal(b_enc, torch.zeros(10))
    default = init_weights("tied_small", 6, 10, torch.Generator().manual_seed(0))[2]
    torch.testing.assert_close(default, W_dec * 2)  # same directions, default norm 0.1
    assert not torch.equal(default, init_weights("tied_small", 6, 10, torch.Generator().manual_seed(1))[2])
    with pytest.raises(ValueError):
        init_weights("tied_small", 6, 10, torch.Generator(), decoder_init_norm=0.0)
    model = build_relu_l1(recipe("anthropic_2024_04", 100), "orthogonal", 6, 10, [0.1], gens(0))
    assert model.options() == {"decoder_norm": "free", "l1_weighting": "decoder_norm"} and not model.unit_decoder
    torch.testing.assert_close(model.W_dec[0].norm(dim=1), torch.full((10,), 0.1))


def test_free_decoder_norm_is_not_renormalised():
    data, _ = planted_stream(8, 4, 16, 30, seed=0)
    free = ReluL1.from_init("tied_small", 8, 12, [0.1], gens(0), decoder_norm="free")
    train(free, lambda s: data[s], 30, 1e-2)
    norms = free.W_dec[0].norm(dim=1)
    assert (norms - 0.1).abs().max() > 1e-3 and (norms - 1).abs().min() > 0.1
    unit = ReluL1.from_init("tied_small", 8, 12, [0.1], gens(0))
    train(unit, lambda s: data[s], 3, 1e-2)
    torch.testing.assert_close(unit.W_dec[0].norm(dim=1), torch.ones(12))
    with pytest.raises(ValueError):
        ReluL1.from_init("orthogonal", 4, 4, [0.1], gens(0), decoder_norm="other")
    with pytest.raises(ValueError):
        ReluL1.from_init("orthogonal", 4, 4, [0.1], gens(0), l1_weighting="other")


# ----------------------------------------------------------------------------- decoder-norm-weighted L1
def test_decoder_norm_weighted_l1_hand_example():
    # x = [1, 1], W_enc = I, atoms (2, 0), (0, 1) (norms 2, 1), l1 = 2:
    # c = [1, 1], x_hat = [2, 1], r = [1, 0], mse = 1/2; weighted l1 = mean(c * n) = 1.5; loss = 3.5.
    # g = [1, 0]; dW_dec = c^T g + l1/(B m) (sum_b c_j) W_j / n_j = [[1, 0], [1, 0]] + [[1, 0], [0, 1]];
    # dc = g W_dec^T + l1 n_j / (B m) = [2, 0] + [2, 1] = [4, 1]; dW_enc = x^T dc; db_enc = dc.
    model = hand_model([[1, 0], [0, 1]], [[2, 0], [0, 1]], 2.0, l1_weighting="decoder_norm")
    x = t([[1, 1]])
    out = model.loss_and_grad_(x)
    assert out["loss"].tolist() == [3.5] and out["l1"].tolist() == [1.5]
    assert model.W_dec.grad[0].tolist() == [[2, 0], [1, 1]]
    assert model.W_enc.grad[0].tolist() == [[4, 1], [4, 1]]
    assert model.b_enc.grad[0].tolist() == [4, 1]
    assert model.losses(x)["loss"].tolist() == [3.5]


@pytest.mark.parametrize(
    "d,m,B,decoder_bias", [(16, 32, 64, False), (16, 32, 64, True), (5, 11, 7, True), (64, 1024, 16, True)]
)
def test_decoder_norm_weighted_l1_matches_autograd(d, m, B, decoder_bias):
    data, _ = planted_stream(d, 6, B, 1, seed=3)
    model = ReluL1.from_init("orthogonal", d, m, [0.1, 2.0], gens(0, 1), decoder_bias=decoder_bias, l1_weighting="decoder_norm", decoder_norm="free")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model.b_enc.normal_(0, 0.1, generator=g)
        model.W_dec.mul_(torch.rand(2, m, 1, generator=g) + 0.3)  # atoms off unit norm
    ref = model.losses(data[0], 0.7)
    ref["loss"].sum().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = None
    got = model.loss_and_grad_(data[0], 0.7)
    for k in ("loss", "mse", "l1"):
        torch.testing.assert_close(got[k], ref[k].detach(), rtol=1e-5, atol=1e-7)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("d,m,B", [(16, 32, 64), (5, 11, 7)])
def test_report_firing(d, m, B):
    data, _ = planted_stream(d, 6, B, 1, seed=3)
    model = ReluL1.from_init("orthogonal", d, m, [0.1, 2.0], gens(0, 1))
    with torch.no_grad():
        model.b_enc.normal_(0, 0.5, generator=torch.Generator().manual_seed(5))
    assert "fired" not in model.loss_and_grad_(data[0])
    model.report_firing = True
    fired = model.loss_and_grad_(data[0])["fired"]
    assert torch.equal(fired, (model.encode(data[0]) > 0).any(dim=1))


# ----------------------------------------------------------------------------- resampling
def test_resample_dead_atom_hand_case():
    # two members, d = 4, m = 3: atoms e1, e2, e3, encoder = atoms^T (member 1: columns 2 e1, 4 e2,
    # e3); atom 2 never fires (bias -100). Pool: e1 and e2 are reconstructed exactly, 3 e4 has the
    # only non-zero error (9), so member 0's dead atom must become e4, encoder 0.2 * mean(1, 1) e4.
    W_dec = torch.eye(4)[:3].repeat(2, 1, 1)
    W_enc = W_dec.transpose(1, 2).clone()
    W_enc[1] *= t([2, 4, 1])
    model = ReluL1(W_enc, t([[0, 0, -100], [0, 0, -100]]), W_dec, l1=[0.1, 0.1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.loss_and_grad_(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)))
    opt.step()
    with torch.no_grad():  # back to the hand weights
        model.W_enc.copy_(W_enc), model.W_dec.copy_(W_dec), model.b_enc.copy_(t([[0, 0, -100], [0, 0, -100]]))
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():  # a non-zero Adam state everywhere
        for k in ("exp_avg", "exp_avg_sq"):
            opt.state[p][k].uniform_(1, 2, generator=g)
    before = {n: {k: opt.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq")} for n, p in model.named_parameters()}
    W_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pool = t([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 3]])
    pick = resample_dead_(model, opt, 0, torch.tensor([False, False, True]), pool, torch.Generator().manual_seed(0), encoder_scale=0.2)
    assert pick.tolist() == [2]
    assert model.W_dec[0, 2].tolist() == [0, 0, 0, 1]
    torch.testing.assert_close(model.W_enc[0][:, 2], t([0, 0, 0, 0.2]))
    assert model.b_enc[0, 2].item() == 0.0
    masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    masks["W_dec"][0, 2] = True
    masks["W_enc"][0][:, 2] = True
    masks["b_enc"][0, 2] = True
    for n, p in model.named_parameters():
        # weights: only the resampled atom of member 0 changed
        assert torch.equal(p.detach()[~masks[n]], W_before[n][~masks[n]]), n
        # Adam state zeroed there and only there
        for k in ("exp_avg", "exp_avg_sq"):
            now = opt.state[p][k]
            assert (now[masks[n]] == 0).all(), (n, k)
            assert torch.equal(now[~masks[n]], before[n][k][~masks[n]]), (n, k)


def test_resample_encoder_norm_is_mean_of_alive_atoms():
    W_dec = torch.eye(4)[:3].unsqueeze(0)
    model = ReluL1(W_dec.transpose(1, 2).clone() * t([2, 4, 1]), t([[0, 0, -100]]), W_dec, l1=[0.1])
    pool = t([[0, 0, 0, 3]])  # the only usable input; error 9
    resample_dead_(model, None, 0, torch.tensor([False, False, True]), pool, torch.Generator().manual_seed(0), encoder_scale=0.2)
    torch.testing.assert_close(model.W_enc[0][:, 2], t([0, 0, 0, 0.2 * 3.0]))  # mean(2, 4) = 3


def test_resampling_in_training_revives_dead_atoms():
    data, _ = planted_stream(8, 4, 32, 40, seed=0)
    model = ReluL1.from_init("orthogonal", 8, 12, [0.1], gens(0))
    with torch.no_grad():
        model.b_enc[0, :4] = -100.0  # four atoms that never fire
    train(model, lambda s: data[s], 20, 1e-3, options=Recipe(resample_dead_every=10), resample_generators=gens(1))
    assert (model.b_enc[0, :4] > -50).all()
    assert model.report_firing is False
    with pytest.raises(ValueError, match="resample_generators"):
        train(model, lambda s: data[s], 20, 1e-3, options=Recipe(resample_dead_every=10))


# ----------------------------------------------------------------------------- every option: members stay independent
ALL_ON = Recipe(
    lr_warmup_steps=5, lr_decay="linear", lr_decay_frac=0.3, l1_warmup_steps=8, grad_clip=0.05,
    resample_dead_every=10, resample_pool_batches=2, decoder_init_norm=0.1, decoder_norm="free", l1_weighting="decoder_norm",
)


@pytest.mark.parametrize("d,m,B,decoder_bias", [(5, 11, 7, True), (16, 48, 32, False)])
def test_all_options_ensemble_bit_identical(d, m, B, decoder_bias):
    l1, seeds, steps = [0.03, 0.3, 3.0], [7, 8, 9], 30
    data, feats = planted_stream(d, max(2, m // 2), B, steps, seed=123)

    def run(members):
        model = build_relu_l1(ALL_ON, "orthogonal", d, m, [l1[e] for e in members], gens(*[seeds[e] for e in members]), decoder_bias=decoder_bias)
        with torch.no_grad():
            model.b_enc[:, :3] = -100.0  # dead atoms to resample
        ev = lambda mdl: evaluate(mdl, data[0], feats)  # noqa: E731
        res = train_members(model, lambda s: data[s], 1e-2, steps=steps, options=ALL_ON, evaluate=ev, curve_every=7, resample_generators=gens(*[100 + seeds[e] for e in members]))
        return res

    ens = run([0, 1, 2])
    assert (ens.member_tensors(0)["encoder.bias"][:3] > -50).all()  # resampled
    for e in range(3):
        alone = run([e])
        for k, v in alone.member_tensors(0).items():
            assert torch.equal(v, ens.member_tensors(e)[k]), (e, k)
        assert alone.members[0].curves == ens.members[e].curves


# ----------------------------------------------------------------------------- stopping
def test_window_judge_loss_rule_hand_values():
    rule = StopRule("loss", 0.01, 2, 100)
    j = WindowJudge(rule, 2, 0, None, None)
    seq = [[1.0, 1.0], [1.0, 1.0], [0.9, 1.0], [0.9, 1.0], [0.899, 0.5], [0.899, 0.5]]
    flags = {}
    for i, v in enumerate(seq):
        j.add_losses(torch.tensor(v, dtype=torch.float64))
        if j.is_boundary(i + 1):
            flags[i + 1] = j.judge(i + 1, None).tolist()
    # s=2: no previous window; s=4: |1 - .9| > .01; member 1 unchanged -> converged;
    # s=6: |.9 - .899| = .001 <= .009 converged; member 1 |1 - .5| not
    assert flags == {2: [False, False], 4: [False, True], 6: [True, False]}
    with pytest.raises(ValueError):
        StopRule("loss", -1.0, 2, 10)
    with pytest.raises(ValueError):
        StopRule("other", 0.1, 2, 10)
    with pytest.raises(ValueError):
        StopRule("loss", 0.1, 0, 10)


def test_loss_rule_waits_for_warmup():
    data, _ = planted_stream(8, 4, 16, 40, seed=0)

    def stop_step(options):
        model = ReluL1.from_init("orthogonal", 8, 8, [0.1], gens(0))
        res = train_members(model, lambda s: data[0], 0.0, stop=StopRule("loss", 1e-6, 2, 40), options=options)  # lr 0: constant loss
        return res.stops[0]

    assert stop_step(None) == {"step": 4, "reason": "converged"}  # first check: s = 2 window
    # warm-up 3 updates: the earlier compared window must start at >= 3: s - 4 >= 3 -> s = 8
    assert stop_step(Recipe(l1_warmup_steps=3)) == {"step": 8, "reason": "converged"}


def test_mmcs_rule_hand_sequence_and_removal_slices_buffers():
    # the metric depends on the member (found by its l1, so the l1 buffer must follow removals)
    # and on the boundary (call count): window 5, tolerance 0.01 absolute
    seqs = {0.1: [0.1, 0.5, 0.8, 0.805, 0.9], 0.2: [0.1, 0.2, 0.3, 0.4, 0.5], 0.3: [0.5, 0.5, 0.6, 0.6, 0.6]}
    calls = []

    def metric(model):
        k = len(calls)
        calls.append(model.l1.tolist())
        return torch.tensor([seqs[round(v, 6)][k] for v in model.l1.tolist()])

    data, _ = planted_stream(8, 4, 16, 20, seed=0)
    model = ReluL1.from_init("orthogonal", 8, 8, [0.1, 0.2, 0.3], gens(0, 1, 2))
    res = train_members(model, lambda s: data[s], 1e-3, stop=StopRule("mmcs_truth", 0.01, 5, 20), stop_metric=metric, curve_every=4)
    assert res.stops == [{"step": 15, "reason": "converged"}, {"step": 20, "reason": "max_steps"}, {"step": 5, "reason": "converged"}]
    assert [m.curves["step"] for m in res.members] == [[0, 4, 8, 12, 15], [0, 4, 8, 12, 16, 20], [0, 4, 5]]
    assert [len(c) for c in calls] == [3, 3, 2, 2, 1]
    assert model.n_members == 1 and model.l1.tolist() == pytest.approx([0.2])
    with pytest.raises(ValueError, match="stop_metric"):
        train_members(model, lambda s: data[s], 1e-3, stop=StopRule("mmcs_truth", 0.01, 5, 20))
    # the real metric helper is per member
    _, feats = planted_stream(8, 4, 16, 1, seed=0)
    two = ReluL1.from_init("orthogonal", 8, 8, [0.1, 0.2], gens(0, 1))
    assert mmcs_truth_metric(feats)(two).tolist() == evaluate(two, data[0], feats)["mmcs_truth"].tolist()


def test_eval_loss_rule_hand_sequence_relative_improvement():
    # window 5, tolerance 0.1 relative: converged when prev - cur <= 0.1 * prev
    seqs = {0.1: [1.0, 0.5, 0.46, 0.3, 0.2], 0.2: [1.0, 0.95, 0.5, 0.4, 0.3], 0.3: [1.0, 0.5, 0.2, 0.1, 0.05]}
    calls = []

    def metric(model):
        k = len(calls)
        calls.append(k)
        return torch.tensor([seqs[round(v, 6)][k] for v in model.l1.tolist()])

    data, _ = planted_stream(8, 4, 16, 20, seed=0)
    model = ReluL1.from_init("orthogonal", 8, 8, [0.1, 0.2, 0.3], gens(0, 1, 2))
    res = train_members(model, lambda s: data[s], 1e-3, stop=StopRule("eval_loss", 0.1, 5, 20), stop_metric=metric)
    # l1 0.1: 0.5 -> 0.46 improves by 0.04 <= 0.05 at s=10; l1 0.2: 1.0 -> 0.95 at s=5 (a rise
    # would stop it too); l1 0.3 keeps halving to max_steps
    assert res.stops == [{"step": 10, "reason": "converged"}, {"step": 5, "reason": "converged"}, {"step": 20, "reason": "max_steps"}]
    with pytest.raises(ValueError, match="eval_loss_metric"):
        train_members(model, lambda s: data[s], 1e-3, stop=StopRule("eval_loss", 0.1, 5, 20))
    # the real helper: each member's objective on the held-out set, whatever the chunking
    two = ReluL1.from_init("orthogonal", 8, 8, [0.1, 0.2], gens(0, 1))
    x = data[0]
    with torch.no_grad():
        expect = [float(two.member_losses(x, e)["loss"]) for e in range(2)]
    assert eval_loss_metric(x)(two).tolist() == pytest.approx(expect, rel=1e-12)
    assert eval_loss_metric(x, chunk=5)(two).tolist() == pytest.approx(expect, rel=1e-6)


class _OneMember:
    n_members = 1


@given(
    metric=st.sampled_from(["loss", "eval_loss", "mmcs_truth"]),
    values=st.lists(st.sampled_from([0.5, 0.8, 0.9, 0.9005, 0.95, 1.0, float("nan")]), min_size=1, max_size=12),
    window=st.integers(1, 3),
    warmup=st.integers(0, 7),
    max_windows=st.integers(1, 12),
)
def test_replay_decides_as_the_window_judge(metric, values, window, warmup, max_windows):
    """``replay`` on a record gives the boundary at which ``WindowJudge`` first says converged."""
    rule = StopRule(metric, 2e-3, window, window * max_windows)
    if metric == "loss":
        judge = WindowJudge(rule, 1, warmup, None, None)
        boundaries = [(i + 1) * window for i in range(len(values))]
    else:
        feed = iter(values)
        judge = WindowJudge(rule, 1, warmup, lambda model: torch.tensor([next(feed)]), _OneMember())
        boundaries = [i * window for i in range(1, len(values))]
    seen = None
    for i, s in enumerate(boundaries):
        if s > rule.max_steps:
            break
        if metric == "loss":
            for _ in range(window):
                judge.add_losses(torch.tensor([values[i]], dtype=torch.float64))
        if bool(judge.judge(s, _OneMember())[0]):
            seen = s
            break
    assert replay(rule, values, warmup) == seen


def test_removed_members_keep_their_bytes():
    """Drop a member mid-training (parameters, l1 buffer and Adam state sliced): the others go on
    exactly as in the full ensemble."""
    data, _ = planted_stream(16, 8, 32, 20, seed=2)

    def steps(model, opt, ts):
        for s in ts:
            model.loss_and_grad_(data[s])
            opt.step()
            model.after_step_()

    full = ReluL1.from_init("orthogonal", 16, 48, [0.03, 0.3, 3.0], gens(7, 8, 9))
    opt_full = torch.optim.Adam(full.parameters(), lr=1e-2)
    steps(full, opt_full, range(20))
    cut = ReluL1.from_init("orthogonal", 16, 48, [0.03, 0.3, 3.0], gens(7, 8, 9))
    opt_cut = torch.optim.Adam(cut.parameters(), lr=1e-2)
    steps(cut, opt_cut, range(10))
    _keep_members_(cut, opt_cut, torch.tensor([0, 2]))
    assert cut.n_members == 2 and cut.l1.tolist() == pytest.approx([0.03, 3.0])
    assert opt_cut.state[cut.W_dec]["exp_avg"].shape == (2, 48, 16)
    steps(cut, opt_cut, range(10, 20))
    for j, e in enumerate([0, 2]):
        for k, v in full.member_tensors(e).items():
            assert torch.equal(v, cut.member_tensors(j)[k]), (e, k)
        assert torch.equal(opt_full.state[full.W_enc]["exp_avg_sq"][e], opt_cut.state[cut.W_enc]["exp_avg_sq"][j])


@pytest.mark.parametrize("d,m,B", [(16, 48, 32), (5, 11, 7)])
def test_stop_rule_same_in_ensemble_as_alone(d, m, B):
    """Members stop at different steps; each member's stop, tensors and curves are those it gets
    alone, and those of a fixed-length run of its stop step (removal changes nothing)."""
    l1, seeds = [0.03, 0.3, 3.0], [7, 8, 9]
    data, feats = planted_stream(d, max(2, m // 2), B, 200, seed=123)
    rule = StopRule("loss", 0.02, 10, 200)
    ev = lambda mdl: evaluate(mdl, data[0], feats)  # noqa: E731

    def run(members, **kw):
        model = ReluL1.from_init("orthogonal", d, m, [l1[e] for e in members], gens(*[seeds[e] for e in members]), decoder_bias=True)
        return train_members(model, lambda s: data[s], 1e-2, evaluate=ev, curve_every=25, **kw)

    ens = run([0, 1, 2], stop=rule)
    stops = [s["step"] for s in ens.stops]
    assert len(set(stops)) >= 2, ens.stops
    assert ens.stops == run([0, 1, 2], stop=rule).stops  # rerun
    for e in range(3):
        alone = run([e], stop=rule)
        assert alone.stops == [ens.stops[e]]
        assert alone.members[0].curves == ens.members[e].curves
        fixed = run([e], steps=stops[e])
        for k, v in ens.member_tensors(e).items():
            assert torch.equal(v, alone.member_tensors(0)[k]), (e, k)
            assert torch.equal(v, fixed.member_tensors(0)[k]), (e, k)
        c = ens.members[e].curves
        assert c["step"][-1] == stops[e] and all(s % 25 == 0 for s in c["step"][:-1])


def test_presets():
    assert set(RECIPES) == {"interim_2022", "anthropic_2023", "anthropic_2024_04"}
    r = recipe("anthropic_2024_04", 1000)
    assert (r.l1_warmup_steps, r.lr_decay, r.lr_decay_frac, r.grad_clip, r.decoder_init_norm) == (50, "linear", 0.2, 1.0, 0.1)
    assert recipe("anthropic_2023", 1000).resample_dead_every == 250
    with pytest.raises(KeyError):
        recipe("nope", 10)
    with pytest.raises(ValueError):
        Recipe(grad_clip=0.0)


def test_per_member_batches_and_errors_follow_removals():
    """Batches [E, B, d] are indexed by the input order after a member is removed, and a
    non-finite loss names the member by its input index."""
    seqs = {0.1: [0.1, 0.2, 0.3, 0.4, 0.5], 0.2: [0.5, 0.5], 0.3: [0.1, 0.3, 0.5, 0.7, 0.9]}

    def metric_fn():
        calls = []

        def metric(model):
            calls.append(None)
            return torch.tensor([seqs[round(v, 6)][len(calls) - 1] for v in model.l1.tolist()])

        return metric

    data, _ = planted_stream(8, 4, 16, 60, seed=0)
    per = data.reshape(20, 3, 16, 8)
    rule = StopRule("mmcs_truth", 0.01, 5, 20)
    l1, seeds = [0.1, 0.2, 0.3], [0, 1, 2]
    model = ReluL1.from_init("orthogonal", 8, 8, l1, gens(*seeds))
    ens = train_members(model, lambda s: per[s], 1e-2, stop=rule, stop_metric=metric_fn())
    assert [s["step"] for s in ens.stops] == [20, 5, 20]
    for e in range(3):
        alone = train_members(ReluL1.from_init("orthogonal", 8, 8, [l1[e]], gens(seeds[e])), lambda s: per[s][e : e + 1], 1e-2, stop=rule, stop_metric=metric_fn())
        for k, v in alone.member_tensors(0).items():
            assert torch.equal(v, ens.member_tensors(e)[k]), (e, k)

    model = ReluL1.from_init("orthogonal", 8, 8, l1, gens(*seeds))

    def poison(done):
        if done == 12:  # member 1 left at 5: position 1 is input member 2
            with torch.no_grad():
                model.W_enc[1].fill_(float("inf"))

    with pytest.raises(FloatingPointError, match=r"member 2 .*step 12"):
        train_members(model, lambda s: per[s], 1e-2, stop=rule, stop_metric=metric_fn(), on_step=poison)


# ----------------------------------------------------------------------------- subnormal moments
def test_subnormal_adam_moments_are_flushed_without_changing_the_weights(monkeypatch):
    """After the first step every gradient is 0 (zero inputs, no atom fires), so Adam's
    first moments decay by 0.9 a step into the subnormal range (~800 steps); the trainer
    flushes them to 0, and the weights are the bytes of a run that keeps them."""
    sae_train = importlib.import_module("sae.train")  # (``sae.train`` the attribute is the function)
    tiny = torch.finfo(torch.float32).tiny
    data, _ = planted_stream(8, 4, 16, 1, seed=5)
    batch = lambda s: data[0] if s == 0 else torch.zeros_like(data[0])  # noqa: E731
    real = sae_train.flush_subnormal_moments_
    runs = {}
    for flush in (True, False):
        seen = []

        def spy(opt, flush=flush, seen=seen):
            if flush:
                real(opt)
            seen[:] = [st[k].clone() for st in opt.state.values() for k in ("exp_avg", "exp_avg_sq")]

        monkeypatch.setattr(sae_train, "flush_subnormal_moments_", spy)
        model = ReluL1.from_init("orthogonal", 8, 12, [0.01, 0.1], gens(1, 2))
        res = train_members(model, batch, 1e-3, steps=1200, options=Recipe())
        runs[flush] = (res, seen)
    kept = torch.cat([m.flatten() for m in runs[False][1]])
    flushed = torch.cat([m.flatten() for m in runs[True][1]])
    assert ((kept != 0) & (kept.abs() < tiny)).sum() > 0  # the case arises without the flush
    assert ((flushed != 0) & (flushed.abs() < tiny)).sum() == 0
    for e in range(2):
        for k, v in runs[False][0].member_tensors(e).items():
            assert torch.equal(v.view(torch.int32), runs[True][0].member_tensors(e)[k].view(torch.int32)), k
