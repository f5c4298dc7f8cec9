"""The tiny language model whose activations the LM sources feed to SAEs.

A plain library on texts, arrays and tensors: it knows ``engine.schema`` and nothing else of
the engine. The pipeline the runner drives, every random stream passed in as a generator:

    corpus = load_corpus(spec.corpus, cache_dir)                    # corpus.py
    tok    = build_tokenizer(spec.tokenizer, corpus.train)          # tokenizer.py
    train  = encode_documents(tok, corpus.train)                    # uint16 token stream
    val    = encode_documents(tok, corpus.val)
    model  = TinyLM(spec.model, tok.get_vocab_size(), init_gen)     # model.py
    result = train_lm(model, train, val, spec.train, data_gen)      # train.py
    base   = ngram_baselines(train, val, tok.get_vocab_size())
    acts   = collect_activations(model, train, site, n, ctx, gen)   # activations.py
    ce_loss(model, eval_windows(val, n, ctx), site, replace)
"""

from .activations import ce_loss, ce_recovered, collect_activations, eval_windows
from .corpus import Corpus, CorpusError, load_corpus
from .model import SITE_KINDS, TinyLM, hook_sites
from .tokenizer import EOT, build_tokenizer, encode_documents, eot_id
from .train import ngram_baselines, train_lm

__all__ = [
    "EOT",
    "SITE_KINDS",
    "Corpus",
    "CorpusError",
    "TinyLM",
    "build_tokenizer",
    "ce_loss",
    "ce_recovered",
    "collect_activations",
    "encode_documents",
    "eot_id",
    "eval_windows",
    "hook_sites",
    "load_corpus",
    "ngram_baselines",
    "train_lm",
]
