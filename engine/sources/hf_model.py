"""A user's own Hugging Face causal LM (a local ``save_pretrained`` directory) as a source.

Spec (``engine.schema.HFModelSource``)::

    mine:
      kind: hf_model
      path: models/my-gpt2          # model + tokenizer saved with save_pretrained
      module: transformer.h.1.mlp   # sweepable, like an LM source's site
      corpus: {files: [data/text.txt]}
      context: 128
      tokens: 1_000_000             # SAE training activations (training split)
      ce_tokens: 16_384             # CE-recovered tokens (validation split)

**Width at plan time.** The SAE input width is needed before anything runs (``dict_ratio``,
cost), so it is read from the model's ``config.json`` with the standard library only (no
``transformers``, no torch model): the hidden size (``hidden_size``, ``n_embd``, ``d_model``
or ``dim``, at the top level or in ``text_config``) when the module's last name component
says its output lives in the residual stream — a block (a number: ``transformer.h.1``), or one
of ``RESIDUAL_OUTPUTS`` (``mlp``, ``attn``, ``self_attn``, ``c_proj``, ``o_proj``,
``down_proj``, ...). Any other module (``mlp.c_fc``, ``mlp.act``, ``attn.c_attn``, ...) needs
``width:`` in the spec, and the spec check says so. Either way the width is checked against
the real output when the activations are read, and a mismatch is a one-line error that gives
the right ``width:``.

**Activations** are read by ``engine.hf_model`` (CPU, float32, eval mode, offline): the
corpus's training split, tokenized with the model's own tokenizer, gives ``tokens`` rows; its
validation split gives the evaluation set (``eval.samples`` rows) and the CE windows
(``ce_tokens`` tokens). They are cached in ``<results>/.acts/<key>/`` (``KeyedStore``), where
the key hashes the content of the model's files (``config.json``, weights, tokenizer files:
sha256 each), the corpus content hash, the module, context, token counts, evaluation samples,
root seed, threads and the torch/transformers versions: a rerun, or another spec that reads
the same module of the same model, reuses them.

**Changed model files.** The source key (and so every cell key) hashes the content of the
model's files (``HFModelKind.content_id``), so a model re-saved at the same path is another
source: nothing trained on the old one is reused. As a second guard, the source's file hashes
are pinned in ``<results>/.acts/pins/<source key>/`` when it is first prepared, and a run
whose files differ from the pin (changed between planning and reading) stops with one line.

``normalize`` scales activations to unit mean squared norm (scale recorded as
``activation_scale``, undone when a reconstruction is spliced back), as the LM source does.
``cell_metrics``: CE loss with the SAE's reconstruction spliced in at the module, and the
share recovered, as for the LM source. The tiny-LM feature analysis of reports does not apply
(``has_corpus`` is false).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from engine import convert, hf_model, schema
from engine import tensors as tensors_io
from engine.cellstore import KeyedStore
from engine.errors import SourceError
from engine.hashing import PROJECT, sha256_bytes, sha256_file, stable_json, tagged_hash
from engine.lm.activations import ce_recovered
from engine.lm.corpus import CorpusError, load_corpus
from engine.sources.base import Cost, SourceKind
from engine.sources.lm import LMSourceData, check_corpus
from engine.sweep import values_of

ACTS_KEY_VERSION = f"{PROJECT}/hf-acts/v1"
ACTS_FILES = ("train.safetensors", "eval.safetensors", "ce_windows.safetensors", "acts.json")
PIN_FILES = ("model.json",)
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim")
POSITION_KEYS = ("n_positions", "max_position_embeddings")
# last name components of modules whose output has the hidden size (besides block numbers)
RESIDUAL_OUTPUTS = frozenset(
    {
        "mlp", "attn", "self_attn", "attention", "c_proj", "o_proj", "down_proj", "out_proj", "dense_4h_to_h", "fc2",
        "ln_1", "ln_2", "ln_f", "norm", "final_layer_norm", "input_layernorm", "post_attention_layernorm", "wte", "embed_tokens",
    }
)
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model*.bin.index.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
    "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
)
UNKNOWN_WIDTH = 1 << 30  # ratio_bases of a source whose width the spec check already refused


# ------------------------------------------------------------------ config.json, files (no torch)


def read_config(path: str) -> dict:
    """The model's ``config.json`` as a dict; ``HFModelError`` (one line) if there is none."""
    p = Path(path).expanduser()
    if not path or not p.is_dir():
        raise hf_model.HFModelError(f"{path!r}: {hf_model.HUB_HINT}")
    f = p / "config.json"
    if not f.is_file():
        raise hf_model.HFModelError(f"{path}: no config.json (not a save_pretrained model directory)")
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise hf_model.HFModelError(f"{f}: unreadable ({type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise hf_model.HFModelError(f"{f}: not a JSON object")
    return cfg


def _lookup(cfg: dict, keys: tuple[str, ...]) -> int | None:
    for scope in (cfg, cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}):
        for k in keys:
            v = scope.get(k)
            if type(v) is int and v > 0:
                return v
    return None


def inferred_width(cfg: dict, module: str) -> int | None:
    """The output width of ``module`` by its name and ``config.json``, where that is known."""
    leaf = module.rsplit(".", 1)[-1]
    if leaf.isdigit() or leaf in RESIDUAL_OUTPUTS:
        return _lookup(cfg, HIDDEN_KEYS)
    return None


def _width_problem(cfg: dict, module: str) -> str:
    hidden = _lookup(cfg, HIDDEN_KEYS)
    if hidden is None:
        return f"config.json has none of {', '.join(HIDDEN_KEYS)}, so the output width of {module!r} is unknown; give it as width: N"
    return (
        f"the output width of {module!r} cannot be inferred from config.json (the hidden size {hidden} is assumed only for "
        f"blocks and modules named {', '.join(sorted(RESIDUAL_OUTPUTS)[:6])}, ...); give it as width: N"
    )


def model_files(path: str) -> list[Path]:
    """The files that determine the activations: config.json, weights, tokenizer files."""
    p = Path(path).expanduser()
    found = {p / "config.json"}
    for pattern in WEIGHT_GLOBS:
        found.update(f for f in p.glob(pattern) if f.is_file())
    found.update(p / n for n in TOKENIZER_FILES if (p / n).is_file())
    return sorted(found)


_DIGESTS: dict[tuple, str] = {}


def _file_digest(f: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a plan hashes weights once."""
    st = f.stat()
    key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(f)
    return _DIGESTS[key]


def _has_weights(path: str) -> bool:
    p = Path(path).expanduser()
    return any(f.is_file() for pattern in WEIGHT_GLOBS[:2] for f in p.glob(pattern))


def _param_count(path: str) -> int:
    """Parameters from the safetensors headers (else float32 .bin sizes); 0 if unreadable."""
    p = Path(path).expanduser()
    n = 0
    try:
        for f in sorted(p.glob("*.safetensors")):
            with open(f, "rb") as fh:
                header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
            n += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
        if n == 0:
            n = sum(f.stat().st_size for f in p.glob("pytorch_model*.bin")) // 4
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return n


# ------------------------------------------------------------------ the prepared source


class HFModelSourceData:
    """SAE inputs read at a module of a local HF model; also the model, for CE recovered."""

    truth = None
    corpus = None  # the report's feature analysis reads the tiny LM's files: not for this kind
    batches = LMSourceData.batches  # a fresh permutation per pass over self.train_x
    init_samples = LMSourceData.init_samples

    def __init__(self, plan, spec, results: Path, log: Callable[[str], None]):
        self.plan = plan
        src = plan.config
        self.seed = spec.seed
        where = f"sources.{plan.spec_name}"
        try:
            corpus = load_corpus(src.corpus, results / ".cache" / "corpus")
        except CorpusError as e:
            raise SourceError(f"{where}.corpus: {e}") from None
        self.text_corpus = corpus
        try:
            self.model_config = read_config(src.path)
        except hf_model.HFModelError as e:
            raise SourceError(f"{where}.path: {e}") from None
        self.config_bytes = (Path(src.path).expanduser() / "config.json").read_bytes()
        self.hashes = {f.name: sha256_bytes(self.config_bytes) if f.name == "config.json" else sha256_file(f) for f in model_files(src.path)}
        versions = {"torch": torch.__version__, "transformers": _transformers_version()}
        self.identity = {
            "model_files": self.hashes,
            "corpus_hash": corpus.content_hash,
            "module": src.module,
            "context": src.context,
            "tokens": src.tokens,
            "eval_samples": spec.eval.samples,
            "ce_tokens": src.ce_tokens,
            "seed": spec.seed,
            "threads": spec.run.threads,
            "versions": versions,
        }
        self.key = tagged_hash(ACTS_KEY_VERSION, self.identity)
        pins = self._check_pin(results, where)
        try:
            with _quiet_transformers():
                self.model, tokenizer = hf_model.load(src.path)
        except hf_model.HFModelError as e:
            raise SourceError(f"{where}.path: {e}") from None
        self.store = KeyedStore(results / ".acts", ACTS_FILES)
        if self.store.done(self.key) is None:
            log(f"[{plan.name}] reading {src.module} of {src.path} ({src.tokens} + {spec.eval.samples} tokens) ...")
            self._collect(src, spec, corpus, tokenizer, where)
        else:
            log(f"[{plan.name}] reusing the activations {self.key[:12]} from {self.store.root}")
        d = self.store.dir(self.key)
        self.train_x = tensors_io.from_bytes((d / "train.safetensors").read_bytes())["x"]
        self.eval_x = tensors_io.from_bytes((d / "eval.safetensors").read_bytes())["x"]
        self.ce_ids = tensors_io.from_bytes((d / "ce_windows.safetensors").read_bytes())["ids"]
        self.acts_info = self.store.read_json(self.key, "acts.json")
        self.ce_clean, self.ce_zero = self.acts_info["ce_clean"], self.acts_info["ce_zero"]
        width = int(self.train_x.shape[1])
        if width != plan.width:
            told = "given as width:" if src.width is not None else "assumed from config.json (the hidden size)"
            raise SourceError(f"{where}.module: {src.module!r} outputs width {width}, not the {plan.width} {told}; set width: {width}")
        self.scale = 1.0
        if src.normalize:
            mean_sq = float(self.train_x.double().pow(2).sum(dim=1).mean())
            self.scale = 1.0 / mean_sq**0.5 if mean_sq > 0 else 1.0
            self.train_x = self.train_x * self.scale
            self.eval_x = self.eval_x * self.scale
        # pinned once the source is ready (a failed first try, fixed in place, is no change)
        pin = {"path": src.path, "model_files": self.hashes}
        pins.put(plan.key, {"model.json": stable_json(pin).encode()}, {"note": "model files of a source"})

    def _check_pin(self, results: Path, where: str) -> KeyedStore:
        """Refuse a source whose model files changed since it was prepared in ``results``
        (cells trained on it then would be reused as if nothing had changed)."""
        pins = KeyedStore(results / ".acts" / "pins", PIN_FILES)
        key = self.plan.key
        if pins.done(key) is None:
            return pins
        pinned = pins.read_json(key, "model.json")["model_files"]
        if pinned != self.hashes:
            changed = sorted(n for n in set(pinned) | set(self.hashes) if pinned.get(n) != self.hashes.get(n))
            raise SourceError(
                f"{where}.path: the model files in {self.plan.config.path} ({', '.join(changed)}) changed since {results} "
                f"trained cells on this source (key {key[:12]}); its cached SAEs would be stale: save the changed model under "
                f"a new path, or use another --results directory"
            )
        return pins

    def _collect(self, src, spec, corpus, tokenizer, where: str) -> None:
        def windows(texts, n: int, split: str, field: str):
            try:
                return hf_model.tokenize(tokenizer, texts, src.context, n)
            except hf_model.HFModelError as e:
                raise SourceError(f"{where}.{field}: {split} split of the corpus: {e}") from None

        train_ids = windows(corpus.train, src.tokens, "training", "tokens")
        eval_ids = windows(corpus.val, spec.eval.samples, "validation", "corpus")
        ce_ids = windows(corpus.val, src.ce_tokens, "validation", "ce_tokens")
        try:
            train_x = hf_model.collect(self.model, src.module, train_ids)[: src.tokens]
            eval_x = hf_model.collect(self.model, src.module, eval_ids)[: spec.eval.samples]
            clean, same, zero = hf_model.ce_with_splice(self.model, src.module, ce_ids, lambda x: x)
        except hf_model.HFModelError as e:
            raise SourceError(f"{where}.module: {e}") from None
        if not math.isclose(same, clean, rel_tol=1e-6, abs_tol=1e-9):
            raise SourceError(
                f"{where}.module: splicing the unchanged output of {src.module!r} back in changes the loss ({clean:.6g} -> {same:.6g}); "
                "its output cannot be replaced cleanly, choose another module"
            )
        meta = {"format": "hf-acts/v1", "key": self.key}
        info = {
            **self.identity,
            "path": src.path,
            "ce_clean": clean,
            "ce_zero": zero,
            "train_windows": int(train_ids.shape[0]),
            "eval_windows": int(eval_ids.shape[0]),
            "ce_windows": int(ce_ids.shape[0]),
            "corpus": self.text_corpus.info,
        }
        self.store.put(
            self.key,
            {
                "train.safetensors": tensors_io.to_bytes({"x": train_x.contiguous()}, meta),
                "eval.safetensors": tensors_io.to_bytes({"x": eval_x.contiguous()}, meta),
                "ce_windows.safetensors": tensors_io.to_bytes({"ids": ce_ids.contiguous()}, meta),
                "acts.json": stable_json(info).encode(),
            },
            {"note": "hf_model activations"},
        )

    def files(self) -> dict[str, Path | bytes]:
        """``sources/<name>/``: the model's config.json and what was read from the model (the
        weights stay where they are; their hashes are recorded)."""
        model = {
            "path": self.plan.config.path,
            "module": self.plan.config.module,
            "model_files": self.hashes,
            "acts_key": self.key,
            "versions": self.identity["versions"],
            "corpus": {"content_hash": self.text_corpus.content_hash, **self.text_corpus.info},
            "windows": {k: self.acts_info[k] for k in ("train_windows", "eval_windows", "ce_windows")},
        }
        return {"config.json": self.config_bytes, "model.json": stable_json(model).encode()}

    def info(self) -> dict:
        src = self.plan.config
        return {
            "kind": "hf_model",
            "key": self.plan.key,
            "acts_key": self.key,
            "path": src.path,
            "module": src.module,
            "width": self.plan.width,
            "config": convert.unstructure(src),
            "model_type": self.model_config.get("model_type"),
            "model_files": self.hashes,
            "corpus_hash": self.text_corpus.content_hash,
            "ce_clean": self.ce_clean,
            "ce_zero": self.ce_zero,
            "activation_scale": self.scale,
        }

    def cell_metrics(self, reconstruct: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        """CE loss with the SAE's reconstruction spliced in at the module, and the share recovered."""

        def replace(flat: torch.Tensor) -> torch.Tensor:
            return reconstruct(flat * self.scale) / self.scale

        ce_sae = hf_model.ce_spliced(self.model, self.plan.config.module, self.ce_ids, replace)
        return {
            "ce_clean": self.ce_clean,
            "ce_sae": ce_sae,
            "ce_zero": self.ce_zero,
            "ce_recovered": ce_recovered(self.ce_clean, ce_sae, self.ce_zero),
        }


@contextlib.contextmanager
def _quiet_transformers():
    """No 'Loading weights' progress bar from transformers while the model loads (restored)."""
    logging = _transformers_module().utils.logging
    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def _transformers_module():
    hf_model._transformers()  # the one-line error when it is missing
    import transformers

    return transformers


def _transformers_version() -> str:
    return _transformers_module().__version__


# ------------------------------------------------------------------ the kind


class HFModelKind(SourceKind):
    kind = "hf_model"
    spec = schema.HFModelSource
    # false: the report's feature analysis (engine.features) reads the tiny LM's own files
    has_corpus = False

    @staticmethod
    def width(config) -> int:
        if config.width is not None:
            return config.width
        try:
            cfg = read_config(config.path)
        except hf_model.HFModelError as e:
            raise SourceError(f"source path: {e}") from None
        w = inferred_width(cfg, config.module)
        if w is None:
            raise SourceError(f"source module: {_width_problem(cfg, config.module)}")
        return w

    @staticmethod
    def ratio_bases(config) -> tuple[int, ...]:
        if config.width is not None:
            return (config.width,)
        try:
            cfg = read_config(config.path)
        except hf_model.HFModelError:
            return (UNKNOWN_WIDTH,)
        widths = tuple(w for m in values_of(config.module) if (w := inferred_width(cfg, m)) is not None)
        return widths or (UNKNOWN_WIDTH,)

    @staticmethod
    def check(config, path: tuple) -> list[tuple[tuple, str]]:
        out = check_corpus(config.corpus, path + ("corpus",))
        try:
            cfg = read_config(config.path)
        except hf_model.HFModelError as e:
            return out + [(path + ("path",), str(e))]
        if not _has_weights(config.path):
            out.append((path + ("path",), f"{config.path}: no weights file (model.safetensors or pytorch_model.bin); save the model with save_pretrained"))
        limit = _lookup(cfg, POSITION_KEYS)
        if limit is not None and config.context > limit:
            out.append((path + ("context",), f"context {config.context} is longer than the model's {limit} positions (config.json)"))
        if config.width is None:
            for m in values_of(config.module):
                if inferred_width(cfg, m) is None:
                    out.append((path + ("module",), _width_problem(cfg, m)))
                    break
        return out

    @staticmethod
    def cost(config, spec) -> Cost:
        flops = 2.0 * _param_count(config.path) * (config.tokens + spec.eval.samples + 3 * config.ce_tokens)
        return Cost(setup_flops=flops)

    @staticmethod
    def content_id(config) -> str | None:
        """sha256 of the model's files (config, weights, tokenizer) by name: a model re-saved
        at the same path is another source, so no SAE trained on the old one is reused."""
        files = model_files(config.path)
        if not all(f.is_file() for f in files):
            return None  # check() reports the missing files
        return tagged_hash(f"{PROJECT}/hf-model-files/v1", {f.name: _file_digest(f) for f in files})

    @staticmethod
    def prepare(plan, spec, results, log) -> HFModelSourceData:
        return HFModelSourceData(plan, spec, results, log)
