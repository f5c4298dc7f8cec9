"""The ``hf_model`` source kind end to end: a tiny random GPT-2 saved with save_pretrained into
tmp_path, a spec naming it, a run, a rerun, errors, and the SAELens export. Nothing touches the
network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import tensors as tensors_io
from engine.errors import BundleError, SourceError, SpecError, UserError
from engine.export import export
from engine.hf_model import HUB_HINT
from engine.lm.tokenizer import EOT, build_tokenizer
from engine.plan import make_plan
from engine.runner import run
from engine.schema import TokenizerSpec
from engine.spec import load_spec_text

transformers = pytest.importorskip("transformers")

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "tree", "and", "then", "it", "was", "red", "big"]

SPEC = """\
name: tiny_hf
seed: 0
sources:
  mine:
    kind: hf_model
    path: {path}
    module: {module}
    corpus: {{files: ["{corpus}"], val_fraction: 0.3}}
    context: 16
    tokens: 1024
    ce_tokens: 128
sae:
  dict_ratio: [2]
  l1: [0.03, 0.3]
  decoder_bias: true
  train: {{steps: 30, batch: 32, lr: 3.0e-3}}
eval: {{samples: 128, curve_every: 15}}
analyses: [dead, l0, mse, fvu, ce_recovered]
"""


def _texts(n: int = 80) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(" ".join(rng.choice(WORDS, size=7)).capitalize() + "." for _ in range(3)) for _ in range(n)]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer GPT-2 and its tokenizer (save_pretrained), and a corpus."""
    root = tmp_path_factory.mktemp("hfsrc")
    model_dir = root / "tiny-gpt2"
    tok = build_tokenizer(TokenizerSpec(kind="bpe", vocab_size=300), _texts())
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT, unk_token=EOT)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=300, n_positions=64, bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(model_dir)
    fast.save_pretrained(model_dir)
    (root / "corpus.txt").write_text("\n\n".join(_texts()) + "\n", encoding="utf-8")
    return root


def _spec(root: Path, path: str | Path | None = None, module: str = "transformer.h.1.mlp", extra: str = "") -> str:
    text = SPEC.format(path=path if path is not None else root / "tiny-gpt2", module=module, corpus=root / "corpus.txt")
    return text.replace("    ce_tokens: 128\n", f"    ce_tokens: 128\n{extra}")


@pytest.fixture(scope="module")
def bundle(root) -> Path:
    out = run(make_plan(load_spec_text(_spec(root), "spec.yaml")), root / "results")
    assert out.status == "created"
    return out.path


def _meta(b: Path) -> dict:
    return json.loads((b / "bundle.json").read_text())


def _metrics(b: Path) -> dict:
    return json.loads((b / "metrics.json").read_text())


def test_run_gives_cells_with_ce_recovered(bundle, root):
    m = _metrics(bundle)
    assert len(m["cells"]) == 2
    for cell in m["cells"].values():
        metrics = cell["metrics"]
        assert {"ce_recovered", "fvu", "dead"} <= set(metrics)
        assert np.isfinite(metrics["ce_recovered"]) and np.isfinite(metrics["fvu"])
    src = m["sources"]["mine"]
    assert src["kind"] == "hf_model" and src["module"] == "transformer.h.1.mlp" and src["width"] == 16
    assert src["path"] == str(root / "tiny-gpt2") and src["config"]["context"] == 16
    assert set(src["model_files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert len(src["corpus_hash"]) == 64 and src["activation_scale"] > 0 and src["ce_zero"] != src["ce_clean"]
    assert (bundle / "sources" / "mine" / "config.json").read_bytes() == (root / "tiny-gpt2" / "config.json").read_bytes()
    # the activations are cached by key under results/.acts/
    (acts,) = [d for d in (root / "results" / ".acts").iterdir() if d.name == src["acts_key"]]
    x = tensors_io.from_bytes((acts / "train.safetensors").read_bytes())["x"]
    assert tuple(x.shape) == (1024, 16)
    # normalised: unit mean squared norm on the training activations, as for the LM source
    assert float((x.double() * src["activation_scale"]).pow(2).sum(1).mean()) == pytest.approx(1.0, rel=1e-9)


def test_rerun_in_a_fresh_results_dir_is_identical(bundle, root, tmp_path):
    again = run(make_plan(load_spec_text(_spec(root), "spec.yaml")), tmp_path / "results")
    assert again.status == "created"
    assert _meta(again.path)["content_digest"] == _meta(bundle)["content_digest"]
    assert (again.path / "metrics.json").read_bytes() == (bundle / "metrics.json").read_bytes()


def test_acts_are_reused(root, tmp_path):
    """A spec that reads the same module of the same model (other SAEs) reuses the activations."""
    lines = []
    text = _spec(root).replace("l1: [0.03, 0.3]", "l1: [0.1]")
    run(make_plan(load_spec_text(text, "spec.yaml")), root / "results", log=lines.append)
    assert any("reusing the activations" in line for line in lines), lines


@pytest.mark.parametrize("name", ["gpt2", "openai-community/gpt2"])
def test_hub_name_is_a_located_spec_error(root, name):
    with pytest.raises(SpecError) as e:
        load_spec_text(_spec(root, path=name), "spec.yaml")
    (line,) = e.value.lines()
    assert line == f"spec.yaml:6:11: sources.mine.path: {name!r}: {HUB_HINT}"
    assert isinstance(e.value, UserError) and e.value.exit_code == 2


def test_missing_module_is_one_line(root, tmp_path):
    plan = make_plan(load_spec_text(_spec(root, module="transformer.h.3.mlp"), "spec.yaml"))
    with pytest.raises(SourceError) as e:
        run(plan, tmp_path / "results")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("sources.mine.module: module 'transformer.h.3.mlp': no such submodule")
    assert "transformer.h.1.mlp" in msg  # near names


def test_width_not_inferable_needs_width_field(root, tmp_path):
    with pytest.raises(SpecError) as e:
        load_spec_text(_spec(root, module="transformer.h.1.mlp.c_fc"), "spec.yaml")
    (line,) = e.value.lines()
    assert line.startswith("spec.yaml:7:13: sources.mine.module: the output width of 'transformer.h.1.mlp.c_fc' cannot be inferred")
    assert "give it as width: N" in line
    # with width: given, it runs (c_fc outputs 4 * n_embd = 64); a wrong width is caught when read
    spec = load_spec_text(_spec(root, module="transformer.h.1.mlp.c_fc", extra="    width: 64\n"), "spec.yaml")
    out = run(make_plan(spec), tmp_path / "r1")
    assert _metrics(out.path)["sources"]["mine"]["width"] == 64
    wrong = make_plan(load_spec_text(_spec(root, module="transformer.h.1.mlp.c_fc", extra="    width: 16\n"), "spec.yaml"))
    with pytest.raises(SourceError, match=r"^sources.mine.module: 'transformer.h.1.mlp.c_fc' outputs width 64, not the 16 given as width:; set width: 64$"):
        run(wrong, tmp_path / "r2")


def test_context_longer_than_the_model(root):
    with pytest.raises(SpecError, match=r"sources.mine.context: context 65 is longer than the model's 64 positions"):
        load_spec_text(_spec(root).replace("context: 16", "context: 65"), "spec.yaml")


def test_a_changed_model_is_another_source(root, tmp_path):
    """The source key hashes the model's files: a model re-saved in place gets new cell keys
    (nothing trained on the old one is reused); files changed after planning are refused."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(root / "tiny-gpt2", model)
    text = _spec(root, path=model)
    before = make_plan(load_spec_text(text, "spec.yaml"))
    run(before, tmp_path / "results")
    m = transformers.GPT2LMHeadModel.from_pretrained(model, local_files_only=True)
    with torch.no_grad():
        m.transformer.h[0].mlp.c_fc.weight.mul_(2)
    m.save_pretrained(model)
    after = make_plan(load_spec_text(text, "spec.yaml"))
    assert {c.key for c in after.cells}.isdisjoint({c.key for c in before.cells})
    with pytest.raises(BundleError, match="holds other cells than this spec now plans"):
        run(after, tmp_path / "results")  # the old bundle is not passed off as this one
    out = run(after, tmp_path / "results", rerun=True)
    assert out.trained == len(after.cells)
    # files changed between planning and reading: the pin refuses them
    with torch.no_grad():
        m.transformer.h[0].mlp.c_fc.weight.mul_(2)
    planned = make_plan(load_spec_text(text, "spec.yaml"))
    run(planned, tmp_path / "results")
    m.transformer.h[0].mlp.c_fc.weight.data.mul_(2)
    m.save_pretrained(model)
    with pytest.raises(SourceError, match=r"^sources.mine.path: the model files in .* \(model.safetensors\) changed since"):
        run(planned, tmp_path / "results", rerun=True)


def test_export_to_saelens(bundle, tmp_path):
    written = export(bundle, tmp_path / "out")
    assert len(written) == 2
    src = _metrics(bundle)["sources"]["mine"]
    for d in written:
        cfg = json.loads((d / "cfg.json").read_text())
        assert cfg["metadata"]["hook_name"] == "transformer.h.1.mlp"
        assert cfg["metadata"]["context_size"] == 16 and cfg["d_in"] == 16 and cfg["d_sae"] == 32
        assert cfg["metadata"]["model_name"] == src["path"]
        assert cfg["metadata"]["sae_repro"]["activation_scale_folded"] == src["activation_scale"]
        # the folded weights take raw activations: reconstruction = ours of x * s, divided by s
        st = tensors_io.from_bytes((d / "sae_weights.safetensors").read_bytes())
        ours = tensors_io.from_bytes((bundle / "cells" / d.name / "sae.safetensors").read_bytes())
        s = src["activation_scale"]
        x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0)) / s
        theirs = torch.relu(x @ st["W_enc"] + st["b_enc"]) @ st["W_dec"] + st["b_dec"]
        mine = (torch.relu((x * s) @ ours["encoder.weight"] + ours["encoder.bias"]) @ ours["decoder"] + ours["decoder.bias"]) / s
        torch.testing.assert_close(theirs, mine, rtol=1e-4, atol=1e-5)


def test_resolved_spec_round_trips(root):
    from engine.spec import dump_spec, spec_hash

    spec = load_spec_text(_spec(root), "spec.yaml")
    again = load_spec_text(dump_spec(spec), "resolved.yaml")
    assert again == spec and spec_hash(again) == spec_hash(spec)
    src = spec.sources["mine"]
    assert (src.normalize, src.width, src.context) == (True, None, 16)


def test_ce_spliced_is_the_middle_of_ce_with_splice(root):
    from engine import hf_model

    model, tok = hf_model.load(root / "tiny-gpt2")
    ids = hf_model.tokenize(tok, _texts(), 16, 160)
    half = lambda x: x * 0.5  # noqa: E731
    clean, spliced, _ = hf_model.ce_with_splice(model, "transformer.h.0.mlp", ids, half)
    assert hf_model.ce_spliced(model, "transformer.h.0.mlp", ids, half) == spliced
    assert hf_model.ce_spliced(model, "transformer.h.0.mlp", ids, lambda x: x) == clean
