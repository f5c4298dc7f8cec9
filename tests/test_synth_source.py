"""The synth source kind end to end, and the mcc / latent_f1 analyses computed at assembly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine import analyses, metric_defs
from engine import sources as source_kinds
from engine.errors import SpecError
from engine.plan import make_plan
from engine.runner import run
from engine.spec import load_spec_text, spec_hash
from toydata.synth import hierarchy_parents

SYNTH = """\
name: synth_tiny
seed: 0
sources:
  syn: {kind: synth, n_features: 12, dim: 8, p_min: 0.05, p_max: 0.4, n_roots: 2, branching: 2, depth: 1, correlation_rank: 2}
sae:
  dict_ratio: [1, 2]
  l1: 0.05
  train: {steps: 60, batch: 32, lr: 3.0e-3}
eval: {samples: 300, curve_every: 30}
"""
WITH_TRUTH = SYNTH + "analyses: [mmcs_truth, dead, l0, fvu, mcc, latent_f1]\n"
TRUTH_NAMES = ("mcc", "mcc_matched_0.9", "mcc_matched_0.9_frac", "f1", "precision", "recall")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """One synth spec run twice into fresh result folders (trained twice), and the same cells
    assembled once more without the truth analyses (cells reused: keys ignore analyses)."""
    first, second = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    a = run(make_plan(load_spec_text(WITH_TRUTH, "synth.yaml")), first)
    b = run(make_plan(load_spec_text(WITH_TRUTH, "synth.yaml")), second)
    plain = run(make_plan(load_spec_text(SYNTH, "synth.yaml")), first)
    return a, b, plain


def _metrics(outcome) -> dict:
    return json.loads((outcome.path / "metrics.json").read_text())


def test_runs_and_saves_the_ground_truth(bundles):
    a, _, _ = bundles
    assert a.status == "created" and a.trained == 2
    truth = load_file(a.path / "sources/syn/ground_truth.safetensors")
    assert set(truth) >= {"features", "probs", "parent", "copula_factor", "copula_residual_std", "copula_threshold"}
    assert truth["features"].shape == (12, 8) and truth["copula_factor"].shape == (12, 2)
    assert torch.equal(truth["parent"], hierarchy_parents(12, 2, 2, 1))
    assert truth["parent"].tolist()[:6] == [-1, -1, 0, 0, 1, 1]
    info = _metrics(a)["sources"]["syn"]
    assert info["kind"] == "synth" and info["width"] == 8 and info["config"]["n_roots"] == 2
    # dict_ratio is relative to n_features
    assert sorted(c["sae"]["m"] for c in _metrics(a)["cells"].values()) == [12, 24]


def test_same_spec_twice_gives_the_same_bytes(bundles):
    a, b, _ = bundles
    meta_a = json.loads((a.path / "bundle.json").read_text())
    meta_b = json.loads((b.path / "bundle.json").read_text())
    assert meta_a["content_digest"] == meta_b["content_digest"]
    assert (a.path / "metrics.json").read_bytes() == (b.path / "metrics.json").read_bytes()


def test_truth_metrics_present_when_listed(bundles):
    a, _, _ = bundles
    m = _metrics(a)
    for cell in m["cells"].values():
        got = cell["metrics"]
        for name in TRUTH_NAMES:
            assert name in got, name
        assert isinstance(got["mcc_matched_0.9"], int)
        for name in ("mcc", "mcc_matched_0.9_frac", "f1", "precision", "recall"):
            assert 0.0 <= got[name] <= 1.0, (name, got[name])
    for name in ("mcc", "mcc_matched_0.9", "f1", "precision", "recall"):
        assert m["conventions"][name] == metric_defs.BY_NAME[name].meaning
    # cell.json is what training wrote: the truth metrics live in metrics.json only
    cid = next(iter(m["cells"]))
    cell_json = json.loads((a.path / f"cells/{cid}/cell.json").read_text())
    assert not set(TRUTH_NAMES) & set(cell_json["metrics"])


def test_truth_metrics_absent_by_default(bundles):
    a, _, plain = bundles
    assert plain.trained == 0  # the same cells, assembled again
    m = _metrics(plain)
    for cell in m["cells"].values():
        assert not set(TRUTH_NAMES) & set(cell["metrics"])
        assert "mmcs_truth" in cell["metrics"]
    assert not set(TRUTH_NAMES) & set(m["conventions"])
    assert m["conventions"] == analyses.CONVENTIONS
    for cid in m["cells"]:  # the very same cell files
        assert (plain.path / f"cells/{cid}/sae.safetensors").read_bytes() == (a.path / f"cells/{cid}/sae.safetensors").read_bytes()


def test_default_analyses_and_spec_hash_unchanged():
    spec = load_spec_text(SYNTH, "synth.yaml")
    assert spec.analyses == ("mmcs_truth", "dead", "l0", "mse", "fvu", "mmcs_larger", "feature_count", "ce_recovered")
    listed = load_spec_text(SYNTH + "analyses: [mmcs_truth, dead, l0, mse, fvu, mmcs_larger, feature_count, ce_recovered]\n", "s.yaml")
    assert spec_hash(listed) == spec_hash(spec)


def test_eval_codes_match_the_eval_set():
    for text in (SYNTH, SYNTH.replace("{kind: synth, n_features: 12, dim: 8, p_min: 0.05, p_max: 0.4, n_roots: 2, branching: 2, depth: 1, correlation_rank: 2}", "{kind: toy, n_features: 12, dim: 8, correlation: none}")):
        plan = make_plan(load_spec_text(text, "s.yaml"))
        sp = plan.sources[0]
        src = source_kinds.prepare(sp, plan.spec, None, lambda s: None)
        assert src.eval_codes.shape == (300, 12)
        assert torch.allclose(src.eval_codes @ src.truth, src.eval_x, atol=1e-5)
        assert bool((src.eval_codes > 0).any())


def _errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as e:
        load_spec_text(text, "bad.yaml")
    return e.value.lines()


def test_p_min_above_p_max_is_a_located_error():
    text = SYNTH.replace("p_min: 0.05, p_max: 0.4", "p_min: 0.5, p_max: 0.4")
    assert _errors(text) == ["bad.yaml:4:53: sources.syn.p_min: p_min 0.5 exceeds p_max 0.4"]
    # over a sweep: some value of the sweep is below p_min
    text = SYNTH.replace("p_max: 0.4", "p_max: [0.01, 0.4]")
    assert _errors(text) == ["bad.yaml:4:53: sources.syn.p_min: p_min 0.05 exceeds p_max 0.01"]


def test_too_large_a_hierarchy_is_a_located_error():
    text = SYNTH.replace("depth: 1", "depth: 3")
    assert _errors(text) == ["bad.yaml:4:80: sources.syn.n_roots: n_roots 2, branching 2, depth 3 need 30 features, more than n_features 12"]


# ---------------------------------------------------------------- the assembly helper by hand


def _relu_cell(atoms: torch.Tensor, encoder: torch.Tensor, bias: torch.Tensor) -> tuple[dict, dict]:
    tensors = {"decoder": atoms, "encoder.weight": encoder, "encoder.bias": bias}
    return tensors, {"kind": "relu_l1", "m": atoms.shape[0], "l1": 0.1}


def test_truth_atoms_give_mcc_and_f1_of_one():
    truth = torch.linalg.qr(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)))[0].T.contiguous()  # [4, 6] orthonormal rows
    codes = (torch.rand(50, 4, generator=torch.Generator().manual_seed(2)) < 0.4).float() * 2.0
    x = codes @ truth
    perm = torch.tensor([2, 0, 3, 1])
    atoms = truth[perm] * torch.tensor([[1.0], [-1.0], [1.0], [1.0]])  # permuted, one anti-parallel: |cos| counts
    tensors, sae = _relu_cell(atoms, truth[perm].T.contiguous(), torch.full((4,), -0.1))  # no float dust fires
    got = analyses.truth_metrics(tensors, sae, truth, x, codes, ("mcc", "latent_f1"))
    assert got == {"mcc": pytest.approx(1.0), "mcc_matched_0.9": 4, "mcc_matched_0.9_frac": 1.0, "f1": 1.0, "precision": 1.0, "recall": 1.0}
    assert set(analyses.truth_metrics(tensors, sae, truth, x, codes, ("mcc",))) == {"mcc", "mcc_matched_0.9", "mcc_matched_0.9_frac"}
    assert analyses.truth_metrics(tensors, sae, None, x, codes, ("mcc", "latent_f1")) == {}


def test_hand_counted_f1():
    truth = torch.eye(2)
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    # latent 0 (atom e1) fires on every row: 2 of its 4 firings have e1 active -> P 1/2, R 1, F1 2/3;
    # latent 1 (atom e2) fires exactly when e2 is active -> 1, 1, 1
    tensors, sae = _relu_cell(torch.eye(2), torch.eye(2), torch.tensor([1.0, 0.0]))
    got = analyses.truth_metrics(tensors, sae, truth, codes @ truth, codes, ("mcc", "latent_f1"))
    assert got["mcc"] == 1.0 and got["mcc_matched_0.9"] == 2
    assert got["precision"] == pytest.approx(0.75) and got["recall"] == 1.0 and got["f1"] == pytest.approx(5 / 6)
    # a dead latent is left out of the means; none live gives null
    tensors, sae = _relu_cell(torch.eye(2), torch.eye(2), torch.tensor([1.0, -10.0]))
    got = analyses.truth_metrics(tensors, sae, truth, codes @ truth, codes, ("latent_f1",))
    assert got == {"f1": pytest.approx(2 / 3), "precision": 0.5, "recall": 1.0}
    tensors, sae = _relu_cell(torch.eye(2), torch.eye(2), torch.tensor([-10.0, -10.0]))
    assert analyses.truth_metrics(tensors, sae, truth, codes @ truth, codes, ("latent_f1",)) == {"f1": None, "precision": None, "recall": None}
