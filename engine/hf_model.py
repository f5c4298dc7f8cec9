"""A user's own local Hugging Face causal LM as an activation source (pure functions).

What a source kind ``hf_model`` (spec fields ``path``, ``module``, ``corpus``, ``context``,
``tokens``, ``ce_tokens``, ``normalize``) is built from::

    model, tok = load(path)                                  # a save_pretrained directory
    texts      = load_corpus(spec.corpus, cache).train       # engine.lm.corpus, as for 'lm'
    ids        = tokenize(tok, texts, context, tokens)       # LongTensor [N, context]
    acts       = collect(model, module, ids)                 # [N * context, width] float32
    ce_clean, ce_spliced, ce_zero = ce_with_splice(model, module, val_ids, replace_fn)
    # CE loss recovered = (ce_zero - ce_spliced) / (ce_zero - ce_clean)

Nothing here reaches the network: ``path`` must be an existing local directory (a hub name is
refused before ``transformers`` is imported), ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are
set while loading (and restored after), and every ``from_pretrained`` call gets ``local_files_only=True``. Everything runs on the
CPU in eval mode under ``torch.no_grad`` and is deterministic (same inputs -> same bytes).
``transformers`` is an optional dependency, imported only when a model is loaded.

``module`` names a submodule (``model.get_submodule``), e.g. ``transformer.h.3.mlp`` for GPT-2;
its output (``output[0]`` when it returns a tuple) must be ``[batch, tokens, width]``.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from engine.errors import SourceError

__all__ = ["HFModelError", "ce_spliced", "ce_with_splice", "collect", "load", "module_names", "tokenize"]

HUB_HINT = "not a local directory; hub models cannot be downloaded here, save it with save_pretrained and give its path"


class HFModelError(SourceError):
    """An hf_model source that cannot be used: one line, exit status 2."""


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise HFModelError(
            f"the hf_model source needs the optional package 'transformers', which cannot be imported ({e}); install it with: pip install transformers"
        ) from None
    return transformers


OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@contextlib.contextmanager
def _offline():
    """HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 while loading, restored afterwards (a
    process-wide change would alter how a hub *corpus* of another source is fetched)."""
    saved = {v: os.environ.get(v) for v in OFFLINE_VARS}
    os.environ.update({v: "1" for v in OFFLINE_VARS})
    try:
        yield
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def load(path: str | os.PathLike):
    """``(model, tokenizer)`` from a local ``save_pretrained`` directory: the model as
    ``AutoModelForCausalLM`` in float32 on the CPU in eval mode, the tokenizer as
    ``AutoTokenizer``. Anything that is not an existing directory (a hub name such as
    ``gpt2``) is refused before ``transformers`` is imported."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise HFModelError(f"{path}: {HUB_HINT}")
    if not (p / "config.json").is_file():
        raise HFModelError(f"{path}: no config.json (not a save_pretrained model directory)")
    with _offline():
        tf = _transformers()
        try:
            model = tf.AutoModelForCausalLM.from_pretrained(p, local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise HFModelError(f"{path}: cannot load the model ({_one_line(e)})") from None
        try:
            tokenizer = tf.AutoTokenizer.from_pretrained(p, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise HFModelError(f"{path}: cannot load the tokenizer ({_one_line(e)}); save it into the same directory with tokenizer.save_pretrained") from None
    model.to("cpu").eval()
    return model, tokenizer


def tokenize(tokenizer, texts: Sequence[str], context: int, n_tokens: int) -> Tensor:
    """Windows of ``context`` tokens: LongTensor ``[N, context]``, ``N = ceil(n_tokens / context)``.

    The documents are encoded in order without special tokens, each followed by the
    tokenizer's EOS token if it has one, into one stream; the N windows start at evenly spaced
    offsets over the whole stream (no RNG, no overlap). Refuses a stream shorter than
    ``N * context`` tokens."""
    if context < 2 or n_tokens < 1:
        raise HFModelError(f"context must be >= 2 and tokens >= 1, got context={context}, tokens={n_tokens}")
    eos = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]:
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)
    n = math.ceil(n_tokens / context)
    if len(stream) < n * context:
        raise HFModelError(f"the corpus gives {len(stream)} tokens, fewer than the {n * context} needed ({n} windows of {context}); use a larger corpus or fewer tokens")
    t = torch.tensor(stream, dtype=torch.long)
    starts = torch.linspace(0, len(stream) - context, n, dtype=torch.float64).round().long() if n > 1 else torch.zeros(1, dtype=torch.long)
    return t[starts[:, None] + torch.arange(context)]


def module_names(model: torch.nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def _module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = module_names(model)
        near = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f"near names: {', '.join(near)}" if near else f"e.g. {', '.join(names[:5])}"
        raise HFModelError(f"module {name!r}: no such submodule in {type(model).__name__} ({hint})") from None


def _check_ids(model: torch.nn.Module, ids: Tensor) -> None:
    if ids.dim() != 2 or ids.dtype != torch.long:
        raise HFModelError(f"token windows must be a LongTensor [N, context], got {ids.dtype} {list(ids.shape)}")
    cfg = getattr(model, "config", None)
    limit = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    if limit is not None and ids.shape[1] > limit:
        raise HFModelError(f"context {ids.shape[1]} is longer than the model's {limit} positions")
    vocab = getattr(cfg, "vocab_size", None)
    if vocab is not None and ids.numel() and int(ids.max()) >= vocab:
        raise HFModelError(f"token id {int(ids.max())} is outside the model's vocabulary of {vocab}; is the tokenizer the model's own?")


def _output(out, name: str) -> Tensor:
    act = out[0] if isinstance(out, tuple) else out
    if not isinstance(act, Tensor) or act.dim() != 3:
        shape = list(act.shape) if isinstance(act, Tensor) else type(act).__name__
        raise HFModelError(f"module {name!r}: its output ({shape}) is not a [batch, tokens, width] tensor")
    return act


class _Stop(Exception):
    """Raised by the reading hook to end the forward pass once the module has been read."""


@torch.no_grad()
def collect(model: torch.nn.Module, module_name: str, ids: Tensor, batch: int = 32) -> Tensor:
    """The output of ``module_name`` at every position of ``ids`` [N, context]: float32
    ``[N * context, width]`` (window-major). The forward pass stops at the module."""
    _check_ids(model, ids)
    mod = _module(model, module_name)
    model.eval()
    parts: list[Tensor] = []

    def read(_m, _inp, out):
        parts.append(_output(out, module_name).detach().float().cpu().clone())
        raise _Stop

    handle = mod.register_forward_hook(read)
    try:
        for lo in range(0, ids.shape[0], batch):
            try:
                model(input_ids=ids[lo : lo + batch], use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    acts = torch.cat(parts)
    if acts.shape[:2] != ids.shape:
        raise HFModelError(f"module {module_name!r}: output shape {list(acts.shape)} does not match the token windows {list(ids.shape)}")
    return acts.reshape(-1, acts.shape[-1])


def _ce(model, ids: Tensor, batch: int) -> float:
    total, count = 0.0, 0
    for lo in range(0, ids.shape[0], batch):
        w = ids[lo : lo + batch]
        logits = model(input_ids=w, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), w[:, 1:].reshape(-1), reduction="sum")
        total += float(loss.double())
        count += w[:, 1:].numel()
    return total / count


@torch.no_grad()
def ce_with_splice(
    model: torch.nn.Module, module_name: str, ids: Tensor, replace_fn: Callable[[Tensor], Tensor], batch: int = 32
) -> tuple[float, float, float]:
    """``(ce_clean, ce_spliced, ce_zero)``: mean next-token cross-entropy (nats) over every
    position of ``ids`` [N, context] that has a next token (targets ``ids[:, 1:]``), as is, with
    the output of ``module_name`` replaced by ``replace_fn`` (``[rows, width] -> [rows, width]``,
    e.g. an SAE's reconstruction, scale handling included), and with it replaced by zeros.
    Sums accumulate in float64."""
    _check_ids(model, ids)
    mod = _module(model, module_name)
    model.eval()

    def splice(fn: Callable[[Tensor], Tensor]):
        def hook(_m, _inp, out):
            act = _output(out, module_name)
            new = fn(act.reshape(-1, act.shape[-1]))
            if not isinstance(new, Tensor) or new.shape != (act.shape[0] * act.shape[1], act.shape[2]):
                got = list(new.shape) if isinstance(new, Tensor) else type(new).__name__
                raise HFModelError(f"replace_fn returned {got}, expected [{act.shape[0] * act.shape[1]}, {act.shape[2]}]")
            new = new.to(act.dtype).reshape(act.shape)
            return (new, *out[1:]) if isinstance(out, tuple) else new

        return hook

    clean = _ce(model, ids, batch)
    results = []
    for fn in (replace_fn, torch.zeros_like):
        handle = mod.register_forward_hook(splice(fn))
        try:
            results.append(_ce(model, ids, batch))
        finally:
            handle.remove()
    return clean, results[0], results[1]


@torch.no_grad()
def ce_spliced(model: torch.nn.Module, module_name: str, ids: Tensor, replace_fn: Callable[[Tensor], Tensor], batch: int = 32) -> float:
    """The middle value of ``ce_with_splice`` alone (one pass instead of three): the mean
    next-token cross-entropy with the output of ``module_name`` replaced by ``replace_fn``.
    For scoring many reconstructions against one ``ce_clean`` / ``ce_zero``."""
    _check_ids(model, ids)
    mod = _module(model, module_name)
    model.eval()

    def hook(_m, _inp, out):
        act = _output(out, module_name)
        new = replace_fn(act.reshape(-1, act.shape[-1]))
        if not isinstance(new, Tensor) or new.shape != (act.shape[0] * act.shape[1], act.shape[2]):
            got = list(new.shape) if isinstance(new, Tensor) else type(new).__name__
            raise HFModelError(f"replace_fn returned {got}, expected [{act.shape[0] * act.shape[1]}, {act.shape[2]}]")
        new = new.to(act.dtype).reshape(act.shape)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    handle = mod.register_forward_hook(hook)
    try:
        return _ce(model, ids, batch)
    finally:
        handle.remove()
