"""The headline spec, end to end at reduced size (through --set, as a user would)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from engine.cli import sae_run

SMALL = [
    "sources.lm.corpus.max_chars=150000",
    "sources.lm.tokenizer.vocab_size=300",
    "sources.lm.model.context=32",
    "sources.lm.train.tokens=40000",
    "sources.lm.train.eval_every=20",
    "sources.lm.train.eval_tokens=2048",
    "sources.lm.activations.tokens=8192",
    "sources.lm.activations.ce_tokens=1024",
    "sources.toy.n_features=48",
    "sae.dict_size=[16, 32, 64]",
    "sae.train.stop.window=30",  # the shipped stop rule and recipe, at a test's size
    "sae.train.stop.max_steps=120",
    "sae.train.batch=64",
    "eval.samples=512",
    "eval.curve_every=30",
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    results = tmp_path_factory.mktemp("tvl")
    args = ["specs/toy_vs_lm.yaml", "--results", str(results), "--quiet"]
    for s in SMALL:
        args += ["--set", s]
    r = CliRunner().invoke(sae_run, args)
    assert r.exit_code == 0, r.output
    (path,) = [p for p in results.iterdir() if p.name.startswith("toy_vs_lm-")]
    return path, results


def test_bundle_holds_lm_tokenizer_corpus_hash_cells_and_figures(bundle):
    path, _ = bundle
    files = json.loads((path / "bundle.json").read_text())["files"]
    for f in ("sources/lm/model.safetensors", "sources/lm/tokenizer.json", "sources/lm/lm.json", "sources/lm/training.json",
              "sources/toy/ground_truth.safetensors", "report/toy_vs_lm.png", "report/toy.png", "report/lm.png"):
        assert f in files, f
    lm = json.loads((path / "sources/lm/lm.json").read_text())
    assert len(lm["corpus"]["content_hash"]) == 64
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["sources"]["lm"]["corpus_hash"] == lm["corpus"]["content_hash"]
    by_source = {s: [c for c in metrics["cells"].values() if c["source"] == s] for s in ("toy", "lm")}
    assert len(by_source["toy"]) == len(by_source["lm"]) == 6
    for cell in by_source["lm"]:
        m = cell["metrics"]
        assert set(m) >= {"ce_clean", "ce_sae", "ce_zero", "ce_recovered", "dead", "l0", "fvu"}
        assert "mmcs_truth" not in m
    assert all("mmcs_truth" in c["metrics"] for c in by_source["toy"])
    assert set(metrics["analyses"]["feature_count"]) == {"toy", "lm"}
    rows = metrics["analyses"]["toy_vs_lm"]["rows"]
    assert [(r["l1"], r["m"]) for r in rows] == [(l1, m) for l1 in (1.0, 3.0) for m in (16, 32, 64)]
    assert all(r["toy_dead_frac"] is not None and r["lm_dead_frac"] is not None for r in rows)
    assert rows[0]["toy_mmcs_larger"] is not None and rows[2]["lm_mmcs_larger"] is None  # the largest has none
    assert (path / "report/toy_vs_lm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validation_loss_reported_with_baselines(bundle):
    path, _ = bundle
    training = json.loads((path / "sources/lm/training.json").read_text())
    assert set(training["baselines"]) >= {"unigram", "bigram"}
    assert training["val_loss"] < training["baselines"]["unigram"] + 1.0
    assert training["curves"]["val_loss"][-1] < training["curves"]["val_loss"][0]


def test_lm_weights_load_and_the_lm_is_reused(bundle, tmp_path):
    path, results = bundle
    state = load_file(path / "sources/lm/model.safetensors")
    assert "wte.weight" in state
    args = ["specs/toy_vs_lm.yaml", "--results", str(results), "--set", "sae.train.stop.max_steps=90"]
    for s in SMALL:
        if not s.startswith("sae.train.stop.max_steps"):
            args += ["--set", s]
    r = CliRunner().invoke(sae_run, args)
    assert r.exit_code == 0, r.output
    assert "reusing the LM" in r.output and "training the LM" not in r.output


def test_hub_corpus_offline_fails_fast_with_one_line(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    r = CliRunner().invoke(sae_run, ["specs/toy_vs_lm.yaml", "--results", str(tmp_path), "--set", "sources.lm.corpus={hf: roneneldan/TinyStories}"])
    assert no_network == []  # fails at once: offline mode tries no connection (no retries to wait out)
    assert r.exit_code == 2, r.output
    lines = [l for l in r.output.splitlines() if l.strip() and not l.startswith("[")]  # progress lines aside
    assert len(lines) == 1 and lines[0].startswith("sources.lm.corpus: ") and "files:" in lines[0]
    assert "Traceback" not in r.output
