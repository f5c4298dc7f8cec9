"""engine.hf_model: a local Hugging Face causal LM (a tiny random GPT-2 saved here) as an
activation source. Nothing touches the network: the model and its tokenizer are built and
saved into tmp_path."""

from __future__ import annotations

import os
import socket
import sys

import numpy as np
import pytest
import torch

from engine import hf_model
from engine.errors import UserError
from engine.hf_model import HUB_HINT, HFModelError, ce_with_splice, collect, load, tokenize
from engine.lm.tokenizer import EOT, build_tokenizer
from engine.schema import TokenizerSpec

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "tree", "and", "then", "it", "was", "red", "big"]
VOCAB = 300


def _texts(n: int = 60) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(" ".join(rng.choice(WORDS, size=7)).capitalize() + "." for _ in range(3)) for _ in range(n)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A randomly initialised 2-layer GPT-2 and a byte-level BPE tokenizer trained here, saved
    with save_pretrained into one directory."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    tok = build_tokenizer(TokenizerSpec(kind="bpe", vocab_size=VOCAB), _texts())
    assert tok.get_vocab_size() <= VOCAB
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT, unk_token=EOT)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(root)
    fast.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def loaded(saved):
    return load(saved)


@pytest.fixture(scope="module")
def ids(loaded):
    _, tok = loaded
    return tokenize(tok, _texts(), context=16, n_tokens=200)


def test_load_gives_eval_model_and_tokenizer(loaded):
    model, tok = loaded
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert tok.eos_token == EOT and tok.eos_token_id == 0


def test_tokenize_shape_and_determinism(loaded, ids):
    _, tok = loaded
    assert ids.dtype == torch.long and tuple(ids.shape) == (13, 16)  # ceil(200 / 16) windows
    again = tokenize(tok, _texts(), context=16, n_tokens=200)
    assert torch.equal(ids, again)
    # windows are slices of the one stream (documents + EOS), evenly spaced, not overlapping
    stream = []
    for t in _texts():
        stream += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    stream = torch.tensor(stream)
    starts = [int((stream.unfold(0, 16, 1) == w).all(dim=1).nonzero()[0]) for w in ids]
    assert starts[0] == 0 and starts[-1] == len(stream) - 16
    assert all(b - a >= 16 for a, b in zip(starts, starts[1:]))
    with pytest.raises(HFModelError, match="fewer than the"):
        tokenize(tok, _texts(2), context=16, n_tokens=10_000)


def test_collect_matches_a_manual_forward(loaded, ids):
    model, _ = loaded
    acts = collect(model, "transformer.h.0", ids, batch=5)  # three batches, the last one short
    assert acts.dtype == torch.float32 and tuple(acts.shape) == (ids.numel(), 16)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[1]  # the output of block 0
    torch.testing.assert_close(acts, hidden.reshape(-1, 16), rtol=1e-6, atol=1e-6)
    mlp = collect(model, "transformer.h.1.mlp", ids)
    assert tuple(mlp.shape) == (ids.numel(), 16)
    captured = []
    handle = model.get_submodule("transformer.h.1.mlp").register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    torch.testing.assert_close(mlp, captured[0].reshape(-1, 16), rtol=1e-6, atol=1e-6)


def test_collect_is_deterministic(loaded, ids):
    model, _ = loaded
    a = collect(model, "transformer.h.1.mlp", ids)
    b = collect(model, "transformer.h.1.mlp", ids)
    assert a.numpy().tobytes() == b.numpy().tobytes()


def test_ce_with_splice(loaded, ids):
    model, _ = loaded
    clean, spliced, zero = ce_with_splice(model, "transformer.h.0.mlp", ids, lambda x: x)
    assert spliced == clean  # the identity splice changes nothing
    assert zero != clean and all(np.isfinite([clean, zero]))
    clean2, zeroed, zero2 = ce_with_splice(model, "transformer.h.0.mlp", ids, torch.zeros_like)
    assert (clean2, zero2) == (clean, zero) and zeroed == zero
    # a splice at a block (tuple output in some transformers versions) works the same way
    c, s, _ = ce_with_splice(model, "transformer.h.1", ids, lambda x: x.clone())
    assert s == c == clean
    with pytest.raises(HFModelError, match=r"replace_fn returned \[3\]"):
        ce_with_splice(model, "transformer.h.0.mlp", ids, lambda x: torch.zeros(3))


def test_missing_module_is_one_line(loaded, ids):
    model, _ = loaded
    with pytest.raises(HFModelError) as e:
        collect(model, "transformer.h.3.mlp", ids)
    msg = str(e.value)
    assert "\n" not in msg and "'transformer.h.3.mlp'" in msg and "transformer.h.1.mlp" in msg
    with pytest.raises(HFModelError, match="no such submodule"):
        ce_with_splice(model, "transformer.h.0.mpl", ids, lambda x: x)


def test_context_longer_than_the_model(loaded):
    model, tok = loaded
    long_ids = tokenize(tok, _texts(), context=65, n_tokens=65)
    with pytest.raises(HFModelError, match="longer than the model's 64 positions"):
        collect(model, "transformer.h.0", long_ids)


@pytest.mark.parametrize("name", ["gpt2", "openai-community/gpt2", "./no/such/dir"])
def test_hub_name_is_refused_before_any_network_or_transformers_call(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(hf_model, "_transformers", lambda: pytest.fail("transformers imported for a hub name"))
    with pytest.raises(HFModelError) as e:
        load(name)
    assert str(e.value) == f"{name}: {HUB_HINT}"
    assert isinstance(e.value, UserError) and e.value.exit_code == 2


def test_directory_without_a_model(tmp_path):
    with pytest.raises(HFModelError, match="no config.json"):
        load(tmp_path)


def test_missing_transformers_gives_a_message(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(HFModelError) as e:
        load(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "optional package 'transformers'" in msg and "pip install transformers" in msg


def test_loading_is_offline_and_local_only(saved, monkeypatch):
    """from_pretrained runs with HF_HUB_OFFLINE=1 and local_files_only=True; the environment is
    restored afterwards."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    seen = []
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = auto.from_pretrained

        def spy(*a, _original=original, **k):
            seen.append((os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"), k.get("local_files_only")))
            return _original(*a, **k)

        monkeypatch.setattr(auto, "from_pretrained", spy)
    load(saved)
    assert seen == [("1", "1", True), ("1", "1", True)]
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["TRANSFORMERS_OFFLINE"] == "0"
