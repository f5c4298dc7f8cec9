"""engine.features: labels with hand-computed precision/recall, planted top contexts, histograms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine import features as F
from engine.layout import metrics_from


def _keys(cur, prev, vocab=4):
    return F.pattern_keys(np.array(cur), np.array(prev), vocab)


# fit positions:      0   1   2   3   4   5
FIT_CUR = [1, 2, 1, 3, 1, 2]
FIT_PREV = [-1, 1, 2, 1, 3, 1]
# feature 0 fires where the token is 1; feature 1 where the previous token is 1;
# feature 2 once, at position 1 (token 2 after 1); feature 3 never.
FIT_POS = np.array([0, 2, 4, 1, 3, 5, 1])
FIT_FEAT = np.array([0, 0, 0, 1, 1, 1, 2])


def test_fit_labels_hand_computed():
    labels = F.fit_labels(_keys(FIT_CUR, FIT_PREV), FIT_POS, FIT_FEAT, m=4, min_support=1)
    # feature 0: token 1 occurs 3 times, fires on all 3, and only there: P = R = 1
    assert labels[0] == {"kind": "token", "key": 1, "f1": 1.0, "precision": 1.0, "recall": 1.0, "tp": 3, "matches": 3, "fires": 3}
    # feature 1: token 2 scores tp 2, matches 2, fires 3 -> F1 0.8; prev 1 matches all 3 -> F1 1
    assert labels[1]["kind"] == "prev" and labels[1]["key"] == 1 and labels[1]["f1"] == 1.0
    # feature 2: token 2 (tp 1, 2 matches: F1 2/3) ties bigram (1,2) (positions 1 and 5: F1 2/3)
    # and beats prev 1 (3 matches: F1 1/2); the tie goes to the simpler kind
    assert labels[2]["kind"] == "token" and labels[2]["key"] == 2
    assert labels[2]["precision"] == 0.5 and labels[2]["recall"] == 1.0 and labels[2]["f1"] == pytest.approx(2 / 3)
    assert labels[3] is None


def test_min_support_excludes_rare_patterns():
    labels = F.fit_labels(_keys(FIT_CUR, FIT_PREV), FIT_POS, FIT_FEAT, m=4, min_support=3)
    # token 2 and bigram (1,2) occur only twice: prev 1 (3 occurrences) is all that is left
    assert labels[2]["kind"] == "prev" and labels[2]["precision"] == pytest.approx(1 / 3) and labels[2]["recall"] == 1.0
    assert labels[0]["kind"] == "token"  # token 1 occurs 3 times


def test_bigram_label_and_key():
    # token 3 after 2 marks the feature; token 3 also follows 1, and 1 also follows 2: the
    # token and prev patterns reach precision 2/3, the bigram 1
    cur = [2, 3, 1, 3, 2, 3, 0, 2, 1]
    prev = [-1, 2, 3, 1, 3, 2, 3, 0, 2]
    labels = F.fit_labels(_keys(cur, prev), np.array([1, 5]), np.array([0, 0]), m=1, min_support=1)
    assert labels[0]["kind"] == "bigram" and labels[0]["key"] == 2 * 4 + 3
    assert labels[0]["precision"] == 1.0 and labels[0]["recall"] == 1.0
    assert F.describe("bigram", labels[0]["key"], 4, ["a", "b", "c", "d"]) == "bigram 'c' 'd'"


def test_score_labels_on_held_out_hand_computed():
    labels = F.fit_labels(_keys(FIT_CUR, FIT_PREV), FIT_POS, FIT_FEAT, m=4, min_support=1)
    # held out:  0   1   2   3
    cur = [1, 1, 2, 2]
    prev = [-1, 1, 1, 2]
    pos = np.array([0, 1, 3])
    feat = np.array([0, 1, 1])
    held = F.score_labels(labels, _keys(cur, prev), pos, feat, m=4)
    # feature 0 (token 1): token 1 at 0 and 1, fires at 0 -> P 1/2; fires once, on it -> R 1
    assert held[0] == {"precision": 0.5, "recall": 1.0, "tp": 1, "matches": 2, "fires": 1}
    # feature 1 (prev 1): prev 1 at 1 and 2, fires at 1 and 3 -> tp 1: P 1/2, R 1/2
    assert held[1] == {"precision": 0.5, "recall": 0.5, "tp": 1, "matches": 2, "fires": 2}
    # feature 2 (token 2): two matches, no firing: P 0, R undefined
    assert held[2]["precision"] == 0.0 and math.isnan(held[2]["recall"])
    assert held[3] is None
    assert F.is_labelled({"precision": 0.7, "recall": 0.5}) and not F.is_labelled({"precision": 0.69, "recall": 0.9})
    assert not F.is_labelled(held[2]) and not F.is_labelled(None)


def _codes(tokens, entries, m):
    """Codes from (window, t, feature, value) entries."""
    tokens = np.asarray(tokens, dtype=np.int64)
    T = tokens.shape[1]
    entries = sorted((w * T + t, f, v) for w, t, f, v in entries)
    return F.Codes(tokens, np.array([e[0] for e in entries], dtype=np.int64), np.array([e[1] for e in entries], dtype=np.int64),
                   np.array([e[2] for e in entries], dtype=np.float32), m)


def test_top_contexts_planted():
    tokens = np.arange(40).reshape(4, 10)  # window w holds tokens 10w .. 10w+9
    codes = _codes(tokens, [(0, 1, 0, 0.5), (2, 7, 0, 3.0), (3, 0, 0, 3.0), (1, 5, 0, 1.0), (1, 5, 1, 2.0)], m=3)
    ctx = F.top_contexts(codes, k=3, before=3, after=1)
    # feature 0: 3.0 at window 2 (pos 27) and at window 3 (pos 30) tie: the earlier position first
    assert ctx[0][0] == {"tokens": [24, 25, 26, 27, 28], "at": 3, "act": 3.0}
    assert ctx[0][1] == {"tokens": [30, 31], "at": 0, "act": 3.0}  # cut at the window's start
    assert ctx[0][2] == {"tokens": [12, 13, 14, 15, 16], "at": 3, "act": 1.0}
    assert ctx[1] == [{"tokens": [12, 13, 14, 15, 16], "at": 3, "act": 2.0}]
    assert ctx[2] == []
    vmax, hist = F.histograms(codes, bins=4)
    assert vmax.tolist() == [3.0, 2.0, 0.0]
    assert hist[0].tolist() == [1, 1, 0, 2]  # 0.5 -> bin 0, 1.0 -> bin 1, 3.0 (the max) -> the last bin
    assert hist[2].tolist() == [0, 0, 0, 0]


def test_analyse_labels_a_planted_token_feature_on_held_out_windows():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 30, size=(12, 32))
    tokens[:, 5] = 0  # token 0 at t = 5 in every window (6 times in each part: above MIN_SUPPORT)
    entries = [(w, 5, 0, 1.0 + w) for w in range(12)]  # feature 0 fires exactly on token 0
    entries += [(w, t, 1, 0.5) for w in range(12) for t in range(0, 32, 3)]  # feature 1: every third position
    codes = _codes(tokens, entries, m=3)
    out = F.analyse(codes, [f"t{i}" for i in range(30)])
    assert out["tokens"] == {"analysed": 384, "windows": 12, "context": 32, "fit": 192, "held_out": 192}
    f0 = out["features"][0]
    assert f0["label"]["text"] == "token 't0'" and f0["label"]["labelled"] is True
    assert f0["label"]["held_out"] == {"precision": 1.0, "recall": 1.0, "matches": 6, "fires": 6}
    assert f0["freq"] == pytest.approx(12 / 384, rel=1e-3) and f0["max"] == 12.0 and f0["contexts"][0]["act"] == 12.0
    assert not out["features"][1].get("label", {}).get("labelled", False)
    assert out["features"][2] == {"id": 2, "freq": 0.0, "fires": 0}
    assert out["summary"]["labelled"] == 1 and out["summary"]["live"] == 2


def test_analysis_windows_and_cell_choice():
    w = F.analysis_windows(np.arange(100), context=10, n_tokens=40)
    assert w.shape == (4, 10) and w[0, 0] == 0 and w[-1, 0] == 90 and (np.diff(w, axis=1) == 1).all()
    assert F.analysis_windows(np.arange(100), context=10, n_tokens=10_000).shape == (10, 10)
    with pytest.raises(ValueError, match="two windows"):
        F.analysis_windows(np.arange(15), context=10)
    def cell(source, m, l1):
        return {"source": source, "key": "k", "params": {}, "sae": {"kind": "relu_l1", "m": m, "l1": l1}, "metrics": {}}

    metrics = metrics_from({"schema": 1, "spec_hash": "h", "conventions": {}, "sources": {}, "analyses": {}, "cells": {
        "a": cell("lm", 64, 0.1), "b": cell("lm", 128, 1.0), "c": cell("lm", 128, 0.3), "d": cell("toy", 512, 0.1),
    }})
    assert F.choose_cell(metrics, "lm") == "c" and F.choose_cell(metrics, "none") is None


def test_encode_sparse_matches_dense():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g)
    W, b = torch.randn(6, 9, generator=g), torch.randn(9, generator=g) - 0.5
    codes = F.encode_sparse(x, lambda rows: torch.relu(torch.addmm(b, rows, W)), 9, np.zeros((5, 10), dtype=np.int64))
    dense = torch.relu(x @ W + b)
    rebuilt = torch.zeros(50, 9)
    rebuilt[codes.pos, codes.feat] = torch.from_numpy(codes.val)
    torch.testing.assert_close(rebuilt, dense)
    assert (codes.val > 0).all() and codes.m == 9
