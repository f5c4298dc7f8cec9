"""Training to convergence and the recipes, through specs: stop records, determinism, keys."""

from __future__ import annotations

import json

import pytest

from engine import layout
from engine.errors import SpecError
from engine.plan import make_plan
from engine.runner import run
from engine.spec import load_spec_text

SPEC = """\
name: stop
seed: 0
sources:
  toy: {kind: toy, n_features: 12, dim: 8, active_per_sample: 2, correlation: none}
sae:
  dict_ratio: 1
  l1: L1
  train: {batch: 64, lr: 3.0e-3, stop: {metric: METRIC, rel_tol: 0.02, window: 40, max_steps: 400}TRAIN}
eval: {samples: 256, curve_every: 40}
run: {threads: 1}
"""


def spec(l1="[0.03, 0.3]", metric="loss", train=""):
    return load_spec_text(SPEC.replace("L1", l1).replace("METRIC", metric).replace("TRAIN", train), "s.yaml")


@pytest.mark.parametrize("metric", ["loss", "mmcs_truth", "eval_loss"])
def test_stop_is_recorded_and_a_cell_stops_alone_as_in_its_sweep(metric, tmp_path):
    swept = run(make_plan(spec(metric=metric)), tmp_path / "a")
    metrics = layout.read_metrics(swept.path)
    stops = {cell.sae["l1"]: cell.stop for cell in metrics.cells.values()}
    assert set(stops) == {0.03, 0.3}
    for stop in stops.values():
        assert stop["reason"] in ("converged", "max_steps") and 0 < stop["step"] <= 400
    for cid in metrics.cells:
        record = layout.read_cell(swept.path, cid)
        assert record.stop == metrics.cells[cid].stop
        assert record.curves["step"][-1] == record.stop["step"]  # curves go to the stop step
    alone = run(make_plan(spec(l1="0.3", metric=metric)), tmp_path / "b")
    (cid,) = layout.read_metrics(alone.path).cells
    twin = next(c for c, cell in metrics.cells.items() if cell.sae["l1"] == 0.3)
    assert cid == twin
    same = json.loads((alone.path / "bundle.json").read_text())["files"][layout.cell_file(cid, layout.CELL_TENSORS)]
    assert same == json.loads((swept.path / "bundle.json").read_text())["files"][layout.cell_file(cid, layout.CELL_TENSORS)]


def test_recipe_changes_keys_and_is_deterministic(tmp_path):
    plain = make_plan(spec(l1="0.3"))
    recipe = ", recipe: {lr_warmup_steps: 20, l1_warmup_steps: 20, grad_clip: 1.0, resample_dead_every: 100, decoder_init_norm: 0.1}"
    with_recipe = make_plan(spec(l1="0.3", train=recipe))
    assert plain.cells[0].key != with_recipe.cells[0].key
    a = run(with_recipe, tmp_path / "a")
    b = run(with_recipe, tmp_path / "b")
    digest = lambda o: json.loads((o.path / "bundle.json").read_text())["content_digest"]
    assert digest(a) == digest(b)
    assert "recipe: {" in (a.path / "spec.yaml").read_text() or "recipe:" in (a.path / "spec.yaml").read_text()


def test_relu_l1_free_decoder_options(tmp_path):
    s = SPEC.replace("L1", "0.3").replace("METRIC", "loss").replace("TRAIN", ", recipe: {decoder_init_norm: 0.1}")
    s = s.replace("  l1: 0.3\n", "  l1: 0.3\n  decoder_norm: free\n  l1_weighting: decoder_norm\n")
    plan = make_plan(load_spec_text(s, "s.yaml"))
    assert plan.cells[0].sae.options == {"decoder_norm": "free", "l1_weighting": "decoder_norm"}
    out = run(plan, tmp_path)
    assert len(layout.read_metrics(out.path).cells) == 1


@pytest.mark.parametrize(
    "text,line",
    [
        (SPEC.replace("{batch: 64", "{steps: 100, batch: 64"), "s.yaml:8:18: sae.train.steps: give steps or stop, not both"),
        (SPEC.replace("max_steps: 400", "max_steps: 60"), "s.yaml:8:93: sae.train.stop.max_steps: must be at least two windows (80)"),
    ],
)
def test_stop_spec_errors_are_located(text, line):
    with pytest.raises(SpecError) as e:
        load_spec_text(text.replace("L1", "0.3").replace("METRIC", "loss").replace("TRAIN", ""), "s.yaml")
    assert e.value.lines()[0].startswith(line)


def test_mmcs_truth_stop_needs_planted_features():
    text = SPEC.replace("L1", "0.3").replace("METRIC", "mmcs_truth").replace("TRAIN", "")
    text = text.replace("  toy: {kind: toy, n_features: 12, dim: 8, active_per_sample: 2, correlation: none}\n",
                        "  toy: {kind: toy, n_features: 12, dim: 8, active_per_sample: 2, correlation: none}\n  lm: {kind: lm}\n")
    with pytest.raises(SpecError) as e:
        load_spec_text(text, "s.yaml")
    assert any("mmcs_truth needs planted features, and source 'lm' (lm) has none" in line for line in e.value.lines())


def test_estimate_of_a_stop_rule_plan_is_an_upper_bound():
    from engine import budget

    stopped = budget.estimate(make_plan(spec()))
    fixed = budget.estimate(make_plan(load_spec_text(SPEC.replace("stop: {metric: METRIC, rel_tol: 0.02, window: 40, max_steps: 400}TRAIN", "steps: 400").replace("L1", "[0.03, 0.3]"), "s.yaml")))
    assert stopped.line().startswith("estimated time: at most ") and "counted at max_steps" in stopped.line()
    assert fixed.line().startswith("estimated time: ") and "at most" not in fixed.line()
    assert stopped.sae_s == pytest.approx(fixed.sae_s)  # max_steps 400 costs what 400 fixed steps cost
