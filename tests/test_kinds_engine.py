"""Every SAE kind through the engine: spec, plan, training, bundle, rerun identity, reload."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine import layout
from engine.errors import SpecError
from engine.plan import make_plan
from engine.runner import run
from engine.spec import load_spec_text
from sae import base as sae_kinds

SPECS = {
    "relu_l1": "l1: [0.03, 0.3]",
    "topk": "k: [2, 3]",
    "batchtopk": "k: [2, 3]",
    "matryoshka_batchtopk": "k: [2, 3]",
    "jumprelu": "sparsity_coef: [0.01, 0.03]\n  threshold_init: 0.05\n  bandwidth: 0.05",
    "gated": "l1: [0.1, 0.3]",
}


def spec_text(kind: str, knob: str) -> str:
    return f"""\
name: kind_{kind}
seed: 0
sources:
  toy: {{kind: toy, n_features: 12, dim: 8, active_per_sample: 2, correlation: none}}
sae:
  kind: {kind}
  dict_ratio: [1, 2]
  {knob}
  train: {{steps: 80, batch: 64, lr: 3.0e-3}}
eval: {{samples: 256, curve_every: 40}}
run: {{threads: 1}}
"""


def test_every_registered_kind_has_a_spec_here():
    assert set(SPECS) == set(sae_kinds.kinds())


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_kind_runs_reruns_identically_and_reloads(kind, tmp_path):
    plan = make_plan(load_spec_text(spec_text(kind, SPECS[kind]), "k.yaml"))
    assert {c.sae.kind for c in plan.cells} == {kind} and len(plan.cells) == 4
    first = run(plan, tmp_path / "a")
    again = run(plan, tmp_path / "b")
    meta_a = json.loads((first.path / "bundle.json").read_text())
    meta_b = json.loads((again.path / "bundle.json").read_text())
    assert meta_a["content_digest"] == meta_b["content_digest"]
    metrics = layout.read_metrics(first.path)
    knob = sae_kinds.get(kind).sparsity
    for cid, cell in metrics.cells.items():
        assert cell.sae["kind"] == kind and knob in cell.sae
        assert {"mmcs_truth", "dead", "l0", "fvu"} <= set(cell.metrics)
        record = layout.read_cell(first.path, cid)
        assert record.curves["step"][-1] == 80
        tensors = load_file(first.path / layout.cell_file(cid, layout.CELL_TENSORS))
        model = layout.load_member(tensors, cell.sae)
        x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
        x_hat, c = model.member_forward(x, 0)
        assert x_hat.shape == (5, 8) and c.shape == (5, cell.sae["m"]) and bool((c >= 0).all())


def test_a_parameter_of_another_kind_is_a_located_error():
    with pytest.raises(SpecError) as e:
        load_spec_text(spec_text("topk", "k: 2\n  l1: 0.1"), "k.yaml")
    assert e.value.lines() == ["k.yaml:9:3: sae.l1: unknown key 'l1'"]


def test_a_kind_without_its_knob_is_a_located_error():
    with pytest.raises(SpecError) as e:
        load_spec_text(spec_text("topk", "aux_coef: 0.1"), "k.yaml")
    assert e.value.lines() == ["k.yaml:6:3: sae: missing required key 'k'"]
