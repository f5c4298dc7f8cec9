"""engine.lm.tokenizer: deterministic BPE, lossless bytes, the document stream."""

import sysconfig
from pathlib import Path

import numpy as np
import pytest

from engine.lm.corpus import pydoc_topics
from engine.lm.tokenizer import EOT, build_tokenizer, encode_documents, eot_id
from engine.schema import TokenizerSpec

TEXTS = ["Hello wörld — naïve café 🤖\n\ttabs and  double  spaces", "", "x" * 50, "line one\r\nline two\n\n\nend"]


@pytest.fixture(scope="module")
def docs():
    """The pydoc topics: ~0.46 MB of English prose, parsed in well under a second."""
    return [t for _, t in pydoc_topics(Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py")]


def test_bpe_is_byte_identical_across_builds(docs):
    spec = TokenizerSpec(kind="bpe", vocab_size=512)
    a = build_tokenizer(spec, docs).to_str()
    b = build_tokenizer(spec, docs).to_str()
    assert a == b
    tok = build_tokenizer(spec, docs)
    assert tok.get_vocab_size() == 512
    assert eot_id(tok) == 0
    assert build_tokenizer(TokenizerSpec(kind="bpe", vocab_size=300), docs).to_str() != a


def test_bpe_round_trips_and_compresses(docs):
    tok = build_tokenizer(TokenizerSpec(kind="bpe", vocab_size=512), docs)
    for t in TEXTS + docs[:3]:
        assert tok.decode(tok.encode(t).ids) == t
    stream = encode_documents(tok, docs[:10])
    assert sum(map(len, docs[:10])) / len(stream) > 2.0  # chars per token


def test_bytes_tokenizer_round_trips():
    tok = build_tokenizer(TokenizerSpec(kind="bytes"), [])
    assert tok.get_vocab_size() == 257 and eot_id(tok) == 256
    for t in TEXTS:
        ids = tok.encode(t).ids
        assert ids == list(t.encode("utf-8"))  # id = byte value
        assert tok.decode(ids) == t


def test_encode_documents_stream():
    tok = build_tokenizer(TokenizerSpec(kind="bytes"), [])
    s = encode_documents(tok, ["ab", "c", f"d{EOT}e"])
    assert s.dtype == np.uint16 and s.ndim == 1
    eot = eot_id(tok)
    # each document followed by EOT; a literal EOT string in a document is plain text
    assert s.tolist() == [97, 98, eot, 99, eot, 100, *EOT.encode(), 101, eot]
    assert tok.encode_special_tokens is False  # the caller's tokenizer is left as it was
    assert encode_documents(tok, []).shape == (0,)
