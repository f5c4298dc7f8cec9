"""engine.lm.train: the loss goes down, training is bit-reproducible, the baselines are right."""

import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.lm.corpus import pydoc_topics
from engine.lm.model import TinyLM
from engine.lm.tokenizer import build_tokenizer, encode_documents
from engine.lm.train import lr_at, ngram_baselines, train_lm
from engine.schema import LMModelSpec, LMTrainSpec, TokenizerSpec

CFG = LMModelSpec(d_model=16, n_layers=2, n_heads=4, d_mlp=64, context=32)
SPEC = LMTrainSpec(tokens=30 * 8 * 32, batch=8, lr=1e-2, warmup=3, eval_every=10, eval_tokens=512)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops gain nothing from a second thread, and lose a lot when the cores are shared."""
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(was)


@pytest.fixture(scope="module")
def streams():
    """Byte-level token streams from the pydoc topics (train: most topics, val: the last 5)."""
    docs = [t for _, t in pydoc_topics(Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py")]
    tok = build_tokenizer(TokenizerSpec(kind="bytes"), [])
    return encode_documents(tok, docs[:40]), encode_documents(tok, docs[-5:]), tok.get_vocab_size()


@pytest.fixture
def deterministic():
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was)


def _train(streams, seed=0, on_step=None, spec=SPEC):
    train, val, V = streams
    model = TinyLM(CFG, V, torch.Generator().manual_seed(seed))
    out = train_lm(model, train, val, spec, torch.Generator().manual_seed(seed + 1), on_step=on_step)
    return model, out


@pytest.fixture(scope="module")
def trained(streams):
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    calls = []
    try:
        model, out = _train(streams, on_step=calls.append)
    finally:
        torch.use_deterministic_algorithms(was)
    return model, out, calls


def test_training_lowers_the_loss(trained):
    _, out, calls = trained
    c = out["curves"]
    assert out["steps"] == 30 and out["tokens"] == SPEC.tokens
    assert c["step"] == [0, 10, 20, 30]
    assert c["tokens"] == [s * SPEC.batch * CFG.context for s in c["step"]]
    assert len(c["train_loss"]) == len(c["val_loss"]) == 4
    assert c["val_loss"][0] == pytest.approx(math.log(257), abs=1.0)  # near uniform at init
    assert c["val_loss"][-1] < c["val_loss"][0] - 1.0
    assert c["train_loss"][-1] < c["train_loss"][0] - 1.0
    assert out["val_loss"] == c["val_loss"][-1]
    assert [d["step"] for d in calls] == list(range(1, 31))
    assert [d["step"] for d in calls if "val_loss" in d] == [10, 20, 30]


def test_training_is_bit_identical(trained, streams, deterministic):
    model, out, _ = trained
    model2, out2 = _train(streams)
    assert out2 == out
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    short = LMTrainSpec(tokens=2 * 8 * 32, batch=8, eval_tokens=512)
    _, a = _train(streams, spec=short)
    _, b = _train(streams, seed=5, spec=short)
    assert a["curves"]["train_loss"] != b["curves"]["train_loss"]


def test_lr_schedule():
    spec = LMTrainSpec(lr=1.0, warmup=10)
    lrs = [lr_at(s, 110, spec) for s in range(110)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_ngram_baselines_by_hand():
    # train: 0 1 0 1 0 2 ; val: 0 1 ; V = 3
    train = np.array([0, 1, 0, 1, 0, 2])
    val = np.array([0, 1])
    b = ngram_baselines(train, val, 3)
    assert b["uniform"] == pytest.approx(math.log(3))
    k = b["unigram_k"]
    uni = lambda t: ({0: 3, 1: 2, 2: 1}[t] + k) / (6 + 3 * k)
    assert b["unigram"] == pytest.approx(-(math.log(uni(0)) + math.log(uni(1))) / 2)
    k = b["bigram_k"]
    # bigrams in train: 0->1 twice, 1->0 twice, 0->2 once; count(prev=0) = 3
    assert b["bigram"] == pytest.approx(-math.log((2 + k) / (3 + 3 * k)))
    assert b["bigram"] < b["unigram"] < b["uniform"]
