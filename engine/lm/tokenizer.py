"""Tokenizers for the tiny LM, built with the ``tokenizers`` library.

``bpe``   byte-level BPE (GPT-2 style byte alphabet and pre-tokenisation regex, no prefix space,
          no normalisation) trained on the training documents to ``vocab_size`` entries. The
          trainer is fed exactly one input form: an iterator over whole documents, in corpus
          order. Files, line iterators and paragraph iterators each give a different
          vocabulary, so nothing else is ever fed. Same documents -> byte-identical
          ``to_str()``.
``bytes`` the 256 bytes (id = byte value), no training.

Both have one special token, ``<|endoftext|>`` (``EOT``), placed after every document by
:func:`encode_documents`. Both decode back to the exact text (byte-level, lossless).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from engine.schema import TokenizerSpec

EOT = "<|endoftext|>"


def build_tokenizer(spec: TokenizerSpec, train_texts: Sequence[str]) -> tokenizers.Tokenizer:
    """A byte-level BPE trained on ``train_texts`` (``spec.kind == 'bpe'``) or the byte vocabulary.

    The BPE vocabulary is 256 bytes + EOT + merges, at most ``spec.vocab_size`` entries (fewer if
    the corpus runs out of pairs seen at least twice). EOT has id 0 in BPE, 256 in bytes: use
    :func:`eot_id`."""
    if spec.kind == "bytes":
        byte_chars = _bytes_to_unicode()
        vocab = {byte_chars[b]: b for b in range(256)}
        tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([EOT])  # id 256
        return tok
    if spec.kind != "bpe":
        raise ValueError(f"unknown tokenizer kind {spec.kind!r} (known: 'bpe', 'bytes')")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter(train_texts), trainer=trainer, length=len(train_texts))
    return tok


def eot_id(tok: tokenizers.Tokenizer) -> int:
    i = tok.token_to_id(EOT)
    if i is None:
        raise ValueError(f"tokenizer has no {EOT} token")
    return i


def encode_documents(tok: tokenizers.Tokenizer, texts: Sequence[str]) -> np.ndarray:
    """One token stream: each document's ids followed by EOT. Shape [N]; uint16 when the
    vocabulary fits, else int32. A literal "<|endoftext|>" inside a document is encoded as
    plain text, never as the EOT id."""
    eot = eot_id(tok)
    dtype = np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.int32
    was = tok.encode_special_tokens
    tok.encode_special_tokens = True  # not serialised by to_str(), so set it on every call
    try:
        parts = []
        for enc in tok.encode_batch(list(texts), add_special_tokens=False):
            parts.append(np.asarray(enc.ids, dtype=dtype))
            parts.append(np.asarray([eot], dtype=dtype))
    finally:
        tok.encode_special_tokens = was
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ByteLevel uses internally)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars
