"""engine.lm.model: shapes, hook sites, hooks that read or replace activations."""

import pytest
import torch

from engine.lm.model import SITE_KINDS, TinyLM, hook_sites
from engine.schema import LMModelSpec

CFG = LMModelSpec(d_model=16, n_layers=3, n_heads=4, d_mlp=64, context=32)
V = 97


@pytest.fixture(scope="module")
def model():
    return TinyLM(CFG, V, torch.Generator().manual_seed(0)).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, V, (3, 20), generator=torch.Generator().manual_seed(1))


def test_forward_shape_and_init_determinism(model, tokens):
    logits = model(tokens)
    assert logits.shape == (3, 20, V) and logits.dtype == torch.float32
    again = TinyLM(CFG, V, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    other = TinyLM(CFG, V, torch.Generator().manual_seed(1))
    assert not torch.equal(model.wte.weight, other.wte.weight)
    # no generator: a fixed seed, not the global RNG
    torch.manual_seed(123)
    a = TinyLM(CFG, V).wte.weight.clone()
    torch.manual_seed(456)
    assert torch.equal(a, TinyLM(CFG, V).wte.weight)


def test_causal(model, tokens):
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % V
    assert torch.equal(model(tokens)[:, :10], model(changed)[:, :10])
    assert not torch.equal(model(tokens)[:, 10:], model(changed)[:, 10:])


def test_every_site_readable_with_its_width(model, tokens):
    assert model.sites == hook_sites(CFG.n_layers)
    assert len(model.sites) == CFG.n_layers * len(SITE_KINDS)
    seen = {}
    hooks = {s: (lambda act, s=s: seen.__setitem__(s, act.clone())) for s in model.sites}
    model(tokens, hooks=hooks)
    assert list(seen) == list(model.sites)  # forward order
    for site, act in seen.items():
        width = model.site_width(site)
        assert act.shape == (3, 20, width)
        assert width == (CFG.d_mlp if ".mlp." in site else CFG.d_model)
    assert torch.equal(seen["blocks.0.resid.post"], seen["blocks.1.resid.pre"])
    assert torch.equal(seen["blocks.1.resid.mid"], seen["blocks.1.resid.pre"] + seen["blocks.1.attn.out"])
    assert torch.equal(seen["blocks.2.mlp.post"], torch.nn.functional.gelu(seen["blocks.2.mlp.pre"]))


def test_none_and_identity_hooks_leave_logits_bit_identical(model, tokens):
    clean = model(tokens)
    assert torch.equal(model(tokens, hooks={s: (lambda a: None) for s in model.sites}), clean)
    assert torch.equal(model(tokens, hooks={s: (lambda a: a) for s in model.sites}), clean)
    assert torch.equal(model(tokens, hooks={s: (lambda a: a.clone()) for s in model.sites}), clean)


def _store(d, key):
    def hook(act):
        d[key] = act.clone()  # returns None: leave the activation as it is

    return hook


def test_replacing_an_activation_changes_downstream_only(model, tokens):
    seen, ref = {}, {}
    out = model(tokens, hooks={"blocks.1.mlp.post": torch.zeros_like, "blocks.1.mlp.pre": _store(seen, "pre"), "blocks.1.resid.post": _store(seen, "post")})
    model(tokens, hooks={"blocks.1.mlp.pre": _store(ref, "pre"), "blocks.1.resid.post": _store(ref, "post")})
    assert not torch.equal(out, model(tokens))
    assert torch.equal(seen["pre"], ref["pre"])  # upstream of the replacement: unchanged
    assert not torch.equal(seen["post"], ref["post"])  # downstream: changed
    # with the MLP hidden zeroed, the block adds only the output bias c_proj.bias
    mid = {}
    model(tokens, hooks={"blocks.1.mlp.post": torch.zeros_like, "blocks.1.resid.mid": _store(mid, "mid")})
    assert torch.allclose(seen["post"], mid["mid"] + model.blocks[1].mlp.c_proj.bias)


def test_unknown_sites_and_bad_replacements(model, tokens):
    for bad in ["blocks.3.mlp.post", "blocks.0.mlp", "resid.pre", "blocks.-1.attn.out"]:
        with pytest.raises(ValueError, match="blocks.2.mlp.post"):
            model.site_width(bad)
        with pytest.raises(ValueError, match="valid sites"):
            model(tokens, hooks={bad: lambda a: None})
    with pytest.raises(ValueError, match="shape"):
        model(tokens, hooks={"blocks.0.mlp.post": lambda a: a[..., :3]})
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, CFG.context + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        TinyLM(LMModelSpec(d_model=16, n_heads=3), V)


def test_default_size():
    m = TinyLM(LMModelSpec(), 1024)
    assert m.site_width("blocks.2.mlp.post") == 64 and m.site_width("blocks.5.resid.post") == 16
    per_block = sum(p.numel() for p in m.blocks[0].parameters())
    assert per_block == 3280  # 3,072 weights (the report's ~3.1k) + biases and LN
