"""An LM source: corpus -> tokenizer -> tiny LM (trained once, cached by key) -> activations.

The trained LM is kept under ``<results>/.lm/<lm key>/`` where the key hashes everything that
determines its bytes (root seed, corpus, tokenizer, model and training settings, threads), so
every spec that needs the same LM reuses it. Activations at the source's site are then read
once per run and shared by every cell on the source.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import tokenizers
import torch

from engine import convert, schema
from engine import tensors as tensors_io
from engine.cellstore import KeyedStore
from engine.errors import SourceError
from engine.hashing import PROJECT, stable_json, tagged_hash
from engine.lm.activations import (
    ce_loss,
    ce_recovered,
    collect_activations,
    eval_windows,
)
from engine.lm.corpus import CorpusError, load_corpus
from engine.lm.model import TinyLM
from engine.lm.tokenizer import build_tokenizer, encode_documents
from engine.lm.train import ngram_baselines, train_lm
from engine.seeding import torch_generator
from engine.sources.base import Cost, SourceKind
from engine.sweep import values_of

LM_KEY_VERSION = f"{PROJECT}/lm/v1"
LM_FILES = ("model.safetensors", "tokenizer.json", "lm.json", "training.json")


def lm_identity(spec, src) -> dict:
    """What determines the LM's numbers, the determinism context aside."""
    return {
        "seed": spec.seed,
        "corpus": convert.unstructure(src.corpus),
        "tokenizer": convert.unstructure(src.tokenizer),
        "model": convert.unstructure(src.model),
        "train": convert.unstructure(src.train),
    }


def lm_key(spec, src) -> str:
    """The cache key of a trained LM: its identity and the threads it was trained with."""
    return tagged_hash(LM_KEY_VERSION, {**lm_identity(spec, src), "threads": spec.run.threads})


def lm_stream_id(spec, src) -> str:
    """Seeds the LM's init and data order: equal across thread counts."""
    return tagged_hash(LM_KEY_VERSION, lm_identity(spec, src))


class LMSourceData:
    """SAE inputs read from a site of the tiny LM; also the LM itself, for CE-recovered."""

    truth = None

    def __init__(self, plan, spec, results: Path, log: Callable[[str], None]):
        self.plan = plan
        src = plan.config
        self.seed = spec.seed
        self.site = src.site
        self.key = lm_key(spec, src)
        self.stream_id = lm_stream_id(spec, src)
        self.store = KeyedStore(results / ".lm", LM_FILES)
        try:
            corpus = load_corpus(src.corpus, results / ".cache" / "corpus")
        except CorpusError as e:
            raise SourceError(f"sources.{plan.spec_name}.corpus: {e}") from None
        self.corpus = corpus
        if self.store.done(self.key) is None:
            log(f"[{plan.name}] training the LM {self.key[:12]} on {corpus.info.get('chars', '?')} characters ...")
            self._train(src, corpus, log)
        else:
            log(f"[{plan.name}] reusing the LM {self.key[:12]} from {self.store.root}")
        d = self.store.dir(self.key)
        self.tokenizer = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
        self.lm_info = self.store.read_json(self.key, "lm.json")
        self.training = self.store.read_json(self.key, "training.json")
        self.model = TinyLM(src.model, self.lm_info["vocab_size"])
        self.model.load_state_dict(tensors_io.from_bytes((d / "model.safetensors").read_bytes()))
        self.model.eval()

        train_tokens = encode_documents(self.tokenizer, corpus.train)
        val_tokens = encode_documents(self.tokenizer, corpus.val)
        ctx = src.model.context
        self.train_x = collect_activations(
            self.model, train_tokens, src.site, src.activations.tokens, ctx, torch_generator(self.seed, "lm_acts", plan.key)
        )
        self.eval_x = collect_activations(
            self.model, val_tokens, src.site, spec.eval.samples, ctx, torch_generator(self.seed, "lm_eval_acts", plan.key)
        )
        self.scale = 1.0
        if src.activations.normalize:
            mean_sq = float(self.train_x.double().pow(2).sum(dim=1).mean())
            self.scale = 1.0 / mean_sq**0.5 if mean_sq > 0 else 1.0
            self.train_x *= self.scale
            self.eval_x *= self.scale
        self.windows = eval_windows(val_tokens, src.activations.ce_tokens, ctx)
        self.ce_clean = ce_loss(self.model, self.windows)
        self.ce_zero = ce_loss(self.model, self.windows, src.site, torch.zeros_like)

    def _train(self, src, corpus, log) -> None:
        tok = build_tokenizer(src.tokenizer, corpus.train)
        train_tokens = encode_documents(tok, corpus.train)
        val_tokens = encode_documents(tok, corpus.val)
        vocab = tok.get_vocab_size()
        model = TinyLM(src.model, vocab, generator=torch_generator(self.seed, "lm_init", self.stream_id))
        def progress(info: dict) -> None:
            tenth = max(1, info["steps"] // 10)
            if info["step"] % tenth == 0 or info["step"] == info["steps"]:
                val = f", val {info['val_loss']:.3f}" if "val_loss" in info else ""
                log(f"[{self.plan.name}] LM step {info['step']}/{info['steps']}: train loss {info['train_loss']:.3f}{val}")

        result = train_lm(model, train_tokens, val_tokens, src.train, torch_generator(self.seed, "lm_data", self.stream_id), on_step=progress)
        baselines = ngram_baselines(train_tokens, val_tokens, vocab)
        log(
            f"[{self.plan.name}] LM validation loss {result['val_loss']:.3f} nats/token "
            f"(unigram {baselines['unigram']:.3f}, bigram {baselines['bigram']:.3f})"
        )
        lm_info = {
            "key": self.key,
            "vocab_size": vocab,
            "model": convert.unstructure(src.model),
            "tokenizer": convert.unstructure(src.tokenizer),
            "params": result.get("params"),
            "corpus": {"content_hash": self.corpus.content_hash, **self.corpus.info},
            "train_tokens": len(train_tokens),
            "val_tokens": len(val_tokens),
        }
        training = {
            "train": convert.unstructure(src.train),
            "val_loss": result["val_loss"],
            "baselines": baselines,
            "steps": result.get("steps"),
            "tokens": result.get("tokens"),
            "curves": result["curves"],
        }
        state = {k: v.detach() for k, v in model.state_dict().items()}
        self.store.put(
            self.key,
            {
                "model.safetensors": tensors_io.to_bytes(state, {"format": "tiny-lm/v1", "lm_key": self.key}),
                "tokenizer.json": tok.to_str().encode(),
                "lm.json": stable_json(lm_info).encode(),
                "training.json": stable_json(training).encode(),
            },
            {"note": "trained LM"},
        )

    def batches(self, batch: int) -> Callable[[int], torch.Tensor]:
        """Batches in the order of a fresh permutation per pass over the activations."""
        g = torch_generator(self.seed, "act_order", self.plan.key, batch)
        n = self.train_x.shape[0]
        state = {"perm": torch.randperm(n, generator=g), "pos": 0}

        def next_batch(step: int) -> torch.Tensor:
            if state["pos"] + batch > n:
                state["perm"], state["pos"] = torch.randperm(n, generator=g), 0
            rows = state["perm"][state["pos"] : state["pos"] + batch]
            state["pos"] += batch
            return self.train_x[rows]

        return next_batch

    def init_samples(self, n: int, generator: torch.Generator) -> torch.Tensor:
        rows = torch.randint(0, self.train_x.shape[0], (n,), generator=generator)
        return self.train_x[rows]

    def files(self) -> dict[str, Path | bytes]:
        d = self.store.dir(self.key)
        return {name: d / name for name in LM_FILES}

    def info(self) -> dict:
        return {
            "kind": "lm",
            "key": self.plan.key,
            "lm_key": self.key,
            "site": self.site,
            "width": self.plan.width,
            "config": convert.unstructure(self.plan.config),
            "corpus_hash": self.corpus.content_hash,
            "val_loss": self.training["val_loss"],
            "baselines": self.training["baselines"],
            "ce_clean": self.ce_clean,
            "ce_zero": self.ce_zero,
            "activation_scale": self.scale,
        }

    def cell_metrics(self, reconstruct: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        """CE loss with the SAE's reconstruction spliced in at the site, and the share recovered."""

        def replace(act: torch.Tensor) -> torch.Tensor:
            flat = act.reshape(-1, act.shape[-1]) * self.scale
            return (reconstruct(flat) / self.scale).reshape(act.shape)

        with torch.no_grad():
            ce_sae = ce_loss(self.model, self.windows, self.site, replace)
        return {
            "ce_clean": self.ce_clean,
            "ce_sae": ce_sae,
            "ce_zero": self.ce_zero,
            "ce_recovered": ce_recovered(self.ce_clean, ce_sae, self.ce_zero),
        }




def lm_params(model: schema.LMModelSpec, vocab: int) -> int:
    """Weights of the tiny LM: embeddings, unembedding, per layer attention and MLP."""
    d, ff, layers, ctx = model.d_model, model.d_mlp, model.n_layers, model.context
    return 2 * vocab * d + ctx * d + layers * (4 * d * d + 2 * d * ff)


LM_FLOPS_PER_S = 10e9  # calibrated on the 2-core reference machine (engine.budget)


def check_corpus(c: schema.CorpusSpec, path: tuple) -> list[tuple[tuple, str]]:
    """Exactly one of builtin, hf or files, and a non-empty file list (every corpus-reading kind)."""
    out = []
    given = [k for k in ("builtin", "hf", "files") if getattr(c, k) is not None]
    if len(given) != 1:
        out.append((path, f"give exactly one of builtin, hf or files (got {', '.join(given) or 'none'})"))
    if c.files is not None and not c.files:
        out.append((path + ("files",), "expected at least one file"))
    return out


class LMKind(SourceKind):
    kind = "lm"
    spec = schema.LMSource
    has_corpus = True

    @staticmethod
    def width(config) -> int:
        return config.model.d_mlp if ".mlp." in config.site else config.model.d_model

    @staticmethod
    def ratio_bases(config) -> tuple[int, ...]:
        return values_of(config.model.d_mlp) + values_of(config.model.d_model)

    @staticmethod
    def check(config, path: tuple) -> list[tuple[tuple, str]]:
        out = check_corpus(config.corpus, path + ("corpus",))
        m = config.model
        for d in values_of(m.d_model):
            bad = [h for h in values_of(m.n_heads) if d % h]
            if bad:
                out.append((path + ("model", "n_heads"), f"d_model {d} is not divisible by n_heads {bad[0]}"))
                break
        layers = max(values_of(m.n_layers))
        for site in values_of(config.site):
            layer = int(site.split(".")[1])
            if layer >= layers:
                out.append((path + ("site",), f"layer {layer} does not exist: the model has {layers} layers (0-{layers - 1})"))
        return out

    @staticmethod
    def cost(config, spec) -> Cost:
        identity = stable_json({k: convert.unstructure(getattr(config, k)) for k in ("corpus", "tokenizer", "model", "train")})
        vocab = config.tokenizer.vocab_size if config.tokenizer.kind == "bpe" else 256
        seconds = 6.0 * lm_params(config.model, vocab) * config.train.tokens / LM_FLOPS_PER_S
        return Cost(model_seconds=seconds, model_identity=identity)

    @staticmethod
    def prepare(plan, spec, results, log) -> LMSourceData:
        return LMSourceData(plan, spec, results, log)

    @staticmethod
    def load_corpus(config, cache: Path):
        return load_corpus(config.corpus, cache)
