"""Feature analysis of an SAE trained on an LM site: frequency, top contexts, histograms, labels.

What is analysed (:func:`analyse`):

- **Tokens**: ``n_tokens`` tokens of the validation split (never seen by the LM's or the SAE's
  training), as non-overlapping windows of the LM's context, spread evenly over the whole
  validation stream (no RNG). Windows alternate between a **fit** part (even windows) and a
  **held-out** part (odd windows).
- **Codes**: the LM runs up to the site; activations are scaled like the SAE's training data
  (the source's ``activation_scale``) and encoded with the cell's encoder,
  ``c = relu(x @ W_enc + b_enc)``. A feature **fires** on a token when its code is > 0 (the
  same rule as ``dead`` and ``firing_frequency``). Codes are kept sparse (position, feature,
  value), so memory follows the number of firings, not tokens x features.
- Per feature: **firing frequency** over all analysed tokens, its largest code, a **histogram**
  of its non-zero codes (``HIST_BINS`` equal bins from 0 to its largest code), and its
  ``TOP_K`` **top activating contexts** (``BEFORE`` tokens before and ``AFTER`` after the
  firing token, cut at the window's edges; ties broken by position).

Automatic labels (:func:`fit_labels`, :func:`score_labels`), no external model. A *pattern* is
one of: the current token is ``t`` (``token``), the previous token is ``t`` (``prev``), the
previous and current tokens are ``(s, t)`` (``bigram``). For a feature f and pattern p over a
set of positions:

    precision = #(positions matching p where f fires) / #(positions matching p)
    recall    = #(positions matching p where f fires) / #(positions where f fires)

On the fit part, every pattern occurring at least ``MIN_SUPPORT`` times is a candidate and the
one with the highest F1 = 2 tp / (#matching + #firing) is the feature's label (ties: token
before prev before bigram, then the smaller id). The label is then scored on the held-out
part; a feature is **labelled** when its held-out precision >= ``PRECISION_MIN`` and recall >=
``RECALL_MIN``. The first position of a window has no previous token (the LM did not see one),
so prev and bigram patterns never match there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import numpy as np
import torch
from torch import Tensor

from engine import layout
from engine.plan import kinds_of, sparsity_of

N_TOKENS = 1 << 17  # validation tokens analysed (fit + held-out)
TOP_K = 8  # top activating contexts kept per feature
BEFORE, AFTER = 10, 4  # context tokens shown before and after the firing token
HIST_BINS = 16
MIN_SUPPORT = 5  # a pattern must occur this often in the fit part to be a candidate
PRECISION_MIN = 0.7
RECALL_MIN = 0.5
KINDS = ("token", "prev", "bigram")
ENCODE_CHUNK = 8192  # positions encoded at once


def choose_cell(metrics: dict, source: str) -> str | None:
    """The cell analysed for ``source``: the largest dictionary at the smallest l1 (then the
    smallest cell id); among cells of several SAE kinds, of the first kind in ``kind_order``
    (relu_l1 first). None when the source has no cells."""
    cells = [(cid, c) for cid, c in metrics.cells.items() if c.source == source]
    if not cells:
        return None
    first = kinds_of(c.sae for _, c in cells)[0]
    cells = [(cid, c) for cid, c in cells if c.sae["kind"] == first]
    return min(cells, key=lambda kv: (-kv[1].sae["m"], sparsity_of(kv[1].sae)[1], kv[0]))[0]


def analysis_windows(tokens: np.ndarray, context: int, n_tokens: int = N_TOKENS) -> np.ndarray:
    """Non-overlapping windows [N, context] int64 of the stream ``tokens`` [L]:
    N = min(n_tokens // context, L // context) windows, evenly spread over the stream."""
    stream = np.asarray(tokens).astype(np.int64)
    available = stream.size // context
    n = min(max(1, n_tokens // context), available)
    if n < 2:
        raise ValueError(f"validation stream has {stream.size} tokens: need two windows of {context} for fit and held-out")
    idx = np.unique(np.linspace(0, available - 1, n).round().astype(np.int64))
    return stream[: available * context].reshape(available, context)[idx]


@attrs.frozen
class Codes:
    """Sparse SAE codes over analysed windows.

    tokens [N, T] int64; pos [nnz] int64 (flat index into ``tokens.ravel()``); feat [nnz]
    int64; val [nnz] float32 (> 0). Sorted by (pos, feat). m: dictionary size."""

    tokens: np.ndarray
    pos: np.ndarray
    feat: np.ndarray
    val: np.ndarray
    m: int


@torch.no_grad()
def encode_sparse(x: Tensor, encode, m: int, tokens: np.ndarray) -> Codes:
    """x [P, d] (P = tokens.size), ``encode``: [n, d] -> codes [n, m] (the cell's SAE at
    inference) -> the non-zero codes, sparse."""
    pos, feat, val = [], [], []
    for lo in range(0, x.shape[0], ENCODE_CHUNK):
        c = encode(x[lo : lo + ENCODE_CHUNK])
        nz = torch.nonzero(c > 0)  # row-major: sorted by (row, feature)
        pos.append(nz[:, 0].numpy() + lo)
        feat.append(nz[:, 1].numpy())
        val.append(c[nz[:, 0], nz[:, 1]].numpy())
    return Codes(np.asarray(tokens), np.concatenate(pos).astype(np.int64), np.concatenate(feat).astype(np.int64), np.concatenate(val), int(m))


# ----------------------------------------------------------------------------- labels


def pattern_keys(cur: np.ndarray, prev: np.ndarray, vocab: int) -> dict[str, np.ndarray]:
    """Per position [P] int64, the key of each pattern kind there (-1: none). ``prev`` is -1
    where there is no previous token. Bigram keys are ``prev * vocab + cur``."""
    cur = cur.astype(np.int64)
    prev = prev.astype(np.int64)
    return {"token": cur, "prev": prev, "bigram": np.where(prev >= 0, prev * vocab + cur, -1)}


def _counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct keys >= 0, their counts)."""
    return np.unique(keys[keys >= 0], return_counts=True)


def _lookup(table: tuple[np.ndarray, np.ndarray], keys: np.ndarray) -> np.ndarray:
    """Counts of ``keys`` in a ``_counts`` table (0 where absent)."""
    uniq, counts = table
    if uniq.size == 0:
        return np.zeros(keys.shape, dtype=np.int64)
    i = np.clip(np.searchsorted(uniq, keys), 0, uniq.size - 1)
    return np.where(uniq[i] == keys, counts[i], 0)


def fit_labels(keys: dict[str, np.ndarray], pos: np.ndarray, feat: np.ndarray, m: int, min_support: int = MIN_SUPPORT) -> list[dict | None]:
    """The best pattern per feature on these positions (see the module docstring).

    keys: :func:`pattern_keys` of the positions [P]; pos [n], feat [n]: the firings (position
    index into keys, feature). Returns per feature None (never fires, or no candidate) or
    ``{"kind", "key", "f1", "precision", "recall", "tp", "matches", "fires"}``."""
    fires = np.bincount(feat, minlength=m)
    best_f1 = np.full(m, -1.0)
    best: list[dict | None] = [None] * m
    for kind in KINDS:  # in order of preference: a later kind must beat an earlier one strictly
        k = keys[kind]
        occurrences = _counts(k)
        fk = k[pos]
        has = fk >= 0
        span = max(1, int(k.max()) + 1) if k.size else 1
        combined, tp = np.unique(feat[has] * span + fk[has], return_counts=True)
        f, key = combined // span, combined % span
        matches = _lookup(occurrences, key)
        ok = matches >= min_support
        f, key, tp, matches = f[ok], key[ok], tp[ok], matches[ok]
        f1 = 2.0 * tp / (matches + fires[f])
        order = np.lexsort((key, -f1, f))  # per feature: highest F1, then smallest key
        first = np.ones(order.size, dtype=bool)
        first[1:] = f[order][1:] != f[order][:-1]
        for i in order[first]:
            fi = int(f[i])
            if f1[i] > best_f1[fi]:
                best_f1[fi] = f1[i]
                best[fi] = {
                    "kind": kind,
                    "key": int(key[i]),
                    "f1": float(f1[i]),
                    "precision": float(tp[i] / matches[i]),
                    "recall": float(tp[i] / fires[fi]),
                    "tp": int(tp[i]),
                    "matches": int(matches[i]),
                    "fires": int(fires[fi]),
                }
    return best


def score_labels(labels: list[dict | None], keys: dict[str, np.ndarray], pos: np.ndarray, feat: np.ndarray, m: int) -> list[dict | None]:
    """Each label's precision and recall on these (held-out) positions: per feature None (no
    label) or ``{"precision", "recall", "tp", "matches", "fires"}``; a ratio with a zero
    denominator is NaN."""
    fires = np.bincount(feat, minlength=m)
    chosen = {kind: np.full(m, -2, dtype=np.int64) for kind in KINDS}
    for f, lab in enumerate(labels):
        if lab is not None:
            chosen[lab["kind"]][f] = lab["key"]
    tp = np.zeros(m, dtype=np.int64)
    for kind in KINDS:
        hit = keys[kind][pos] == chosen[kind][feat]
        tp += np.bincount(feat[hit], minlength=m)
    tables = {kind: _counts(keys[kind]) for kind in KINDS}
    out: list[dict | None] = []
    for f, lab in enumerate(labels):
        if lab is None:
            out.append(None)
            continue
        matches = int(_lookup(tables[lab["kind"]], np.array([lab["key"]]))[0])
        out.append(
            {
                "precision": tp[f] / matches if matches else math.nan,
                "recall": tp[f] / fires[f] if fires[f] else math.nan,
                "tp": int(tp[f]),
                "matches": matches,
                "fires": int(fires[f]),
            }
        )
    return out


def is_labelled(held_out: dict | None, precision_min: float = PRECISION_MIN, recall_min: float = RECALL_MIN) -> bool:
    """Held-out precision and recall both pass the thresholds (NaN never passes)."""
    return bool(held_out is not None and held_out["precision"] >= precision_min and held_out["recall"] >= recall_min)


# ----------------------------------------------------------------------------- per feature


def top_contexts(codes: Codes, k: int = TOP_K, before: int = BEFORE, after: int = AFTER) -> list[list[dict]]:
    """Per feature, its ``k`` largest codes (ties: earlier position first), each as
    ``{"tokens": [ids], "at": index of the firing token in tokens, "act": code}``."""
    T = codes.tokens.shape[1]
    flat = codes.tokens.ravel()
    order = np.lexsort((codes.pos, -codes.val, codes.feat))
    f_sorted = codes.feat[order]
    starts = np.searchsorted(f_sorted, np.arange(codes.m))
    ends = np.searchsorted(f_sorted, np.arange(codes.m), side="right")
    out: list[list[dict]] = []
    for f in range(codes.m):
        rows = []
        for i in order[starts[f] : min(ends[f], starts[f] + k)]:
            p = int(codes.pos[i])
            w, t = divmod(p, T)
            lo, hi = w * T + max(0, t - before), w * T + min(T, t + after + 1)
            rows.append({"tokens": flat[lo:hi].tolist(), "at": p - lo, "act": _round(codes.val[i])})
        out.append(rows)
    return out


def histograms(codes: Codes, bins: int = HIST_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(max code per feature [m] float64, counts [m, bins] int64 over (0, max] in equal bins)."""
    vmax = np.zeros(codes.m)
    np.maximum.at(vmax, codes.feat, codes.val.astype(np.float64))
    scale = np.where(vmax > 0, vmax, 1.0)[codes.feat]
    b = np.minimum((codes.val / scale * bins).astype(np.int64), bins - 1)
    counts = np.bincount(codes.feat * bins + b, minlength=codes.m * bins).reshape(codes.m, bins)
    return vmax, counts


def _round(v) -> float:
    return float(f"{float(v):.4g}")


def _ratio(v: float) -> float | None:
    return None if math.isnan(v) else round(float(v), 4)


def describe(kind: str, key: int, vocab: int, text: list[str]) -> str:
    """A label for people: ``token "x"``, ``after "x"`` or ``bigram "x" "y"``."""
    if kind == "token":
        return f"token {text[key]!r}"
    if kind == "prev":
        return f"after {text[key]!r}"
    return f"bigram {text[key // vocab]!r} {text[key % vocab]!r}"


def analyse(codes: Codes, vocab_text: list[str]) -> dict:
    """The per-feature analysis (JSON-ready) of ``codes``; see the module docstring.

    ``vocab_text`` [V]: the text of each token id."""
    vocab = len(vocab_text)
    N, T = codes.tokens.shape
    cur = codes.tokens.ravel()
    prev = np.concatenate([np.full((N, 1), -1, dtype=np.int64), codes.tokens[:, :-1]], axis=1).ravel()
    keys = pattern_keys(cur, prev, vocab)
    window = np.arange(N * T) // T
    fit_pos = window % 2 == 0
    parts = {}
    for name, mask in (("fit", fit_pos), ("held_out", ~fit_pos)):
        idx = np.flatnonzero(mask)  # positions of this part, in order
        local = np.full(N * T, -1, dtype=np.int64)
        local[idx] = np.arange(idx.size)
        sel = mask[codes.pos]
        parts[name] = ({k: v[idx] for k, v in keys.items()}, local[codes.pos[sel]], codes.feat[sel])
    labels = fit_labels(*parts["fit"], codes.m)
    held = score_labels(labels, *parts["held_out"], codes.m)
    fires = np.bincount(codes.feat, minlength=codes.m)
    vmax, hist = histograms(codes)
    contexts = top_contexts(codes)
    features = []
    by_kind = dict.fromkeys(KINDS, 0)
    for f in range(codes.m):
        entry: dict = {"id": f, "freq": _round(fires[f] / (N * T)), "fires": int(fires[f])}
        if fires[f]:
            entry.update(max=_round(vmax[f]), hist=hist[f].tolist(), contexts=contexts[f])
        lab, ho = labels[f], held[f]
        if lab is not None:
            ok = is_labelled(ho)
            by_kind[lab["kind"]] += ok
            entry["label"] = {
                "kind": lab["kind"],
                "pattern": [lab["key"] // vocab, lab["key"] % vocab] if lab["kind"] == "bigram" else [lab["key"]],
                "text": describe(lab["kind"], lab["key"], vocab, vocab_text),
                "fit": {"precision": _ratio(lab["precision"]), "recall": _ratio(lab["recall"]), "matches": lab["matches"]},
                "held_out": {"precision": _ratio(ho["precision"]), "recall": _ratio(ho["recall"]), "matches": ho["matches"], "fires": ho["fires"]},
                "labelled": ok,
            }
        features.append(entry)
    live = int((fires > 0).sum())
    return {
        "tokens": {"analysed": int(N * T), "windows": int(N), "context": int(T), "fit": int(fit_pos.sum()), "held_out": int((~fit_pos).sum())},
        "thresholds": {"precision": PRECISION_MIN, "recall": RECALL_MIN, "min_support": MIN_SUPPORT, "fires": "code > 0"},
        "summary": {"features": codes.m, "live": live, "labelled": sum(by_kind.values()), "labelled_by_kind": by_kind},
        "vocab": vocab_text,
        "features": features,
    }


def analyse_source(root: Path, source, metrics: dict, corpus) -> dict | None:
    """The analysis of LM source ``source`` (a ``SourcePlan``) from the files of a bundle (or a
    bundle being written) at ``root``: the LM and tokenizer from ``sources/<name>/``, the cell
    from ``cells/<id>/``, the validation text from ``corpus`` (a loaded ``Corpus`` whose hash
    the caller has checked). None when the source has no cells."""
    import tokenizers

    from engine import tensors as tensors_io
    from engine.lm.activations import read_site
    from engine.lm.model import TinyLM
    from engine.lm.tokenizer import encode_documents

    cid = choose_cell(metrics, source.name)
    if cid is None:
        return None
    src_dir = Path(root) / layout.source_file(source.name, "")
    lm_info = json.loads((src_dir / "lm.json").read_text(encoding="utf-8"))
    tok = tokenizers.Tokenizer.from_file(str(src_dir / "tokenizer.json"))
    model = TinyLM(source.config.model, lm_info["vocab_size"])
    model.load_state_dict(tensors_io.from_bytes((src_dir / "model.safetensors").read_bytes()))
    model.eval()
    windows = analysis_windows(encode_documents(tok, corpus.val), source.config.model.context)
    x = read_site(model, torch.from_numpy(windows), source.config.site)
    x = x * metrics.sources[source.name].get("activation_scale", 1.0)
    cell = metrics.cells[cid]
    model = layout.load_member(tensors_io.from_bytes((Path(root) / layout.cell_file(cid, layout.CELL_TENSORS)).read_bytes()), cell.sae)
    codes = encode_sparse(x, lambda rows: model.member_encode(rows, 0), model.m, windows)
    name, value = sparsity_of(cell.sae)
    return {
        "source": source.name,
        "cell": cid,
        "m": cell.sae["m"],
        name: value,
        "rule": f"the largest dictionary at the smallest {name} of the source",
        **analyse(codes, vocab_text(tok)),
    }


def vocab_text(tokenizer) -> list[str]:
    """The text of every token id of a ``tokenizers.Tokenizer`` (special tokens included)."""
    return [tokenizer.decode([i], skip_special_tokens=False) for i in range(tokenizer.get_vocab_size())]


__all__ = [
    "analyse",
    "analyse_source",
    "analysis_windows",
    "choose_cell",
    "encode_sparse",
    "fit_labels",
    "is_labelled",
    "pattern_keys",
    "score_labels",
    "top_contexts",
    "vocab_text",
]
