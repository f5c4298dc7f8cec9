"""The claims verdict table (``engine.claims.evaluate``) on hand-built cells: each verdict
follows from the numbers given, and any cell that did not converge makes it inconclusive."""

from __future__ import annotations

import pytest

from engine import claims
from engine.plan import make_plan
from engine.spec import load_spec_text

SPEC = """\
name: claims
sources:
  toy: {kind: toy, n_features: 8, dim: 4, active_per_sample: 2}
  lm:
    kind: lm
    corpus: {builtin: python-docs}
    model: {d_model: 16, n_layers: 1, n_heads: 2, d_mlp: 8, context: 16}
    site: blocks.0.mlp.post
sae:
  dict_size: [8, 16]
  l1: [0.1, 1, 3]
  train: {batch: 32, steps: 10}
"""

CONVERGED = {"step": 100, "reason": "converged"}


@pytest.fixture(scope="module")
def plan():
    return make_plan(load_spec_text(SPEC, "claims.yaml"))


def meta(source, m, l1, stop=CONVERGED, init="orthogonal", **metrics):
    return {"source": source, "sae": {"kind": "relu_l1", "m": m, "l1": l1, "init": init}, "metrics": metrics, "stop": stop}


def by_id(entries):
    return {e["id"]: e for e in entries}


def test_toy_mmcs_uses_intermediate_l1_at_ratio_one(plan):
    cells = {
        "a": meta("toy", 8, 1.0, mmcs_truth=0.991),  # the only cell the claim rests on
        "b": meta("toy", 8, 0.1, mmcs_truth=0.5),  # smallest l1: not intermediate
        "c": meta("toy", 4, 1.0, mmcs_truth=0.2),  # ratio 0.5
        "d": meta("toy", 8, 3.0, mmcs_truth=0.3),  # largest l1
    }
    entry = by_id(claims.evaluate(plan, cells, {}, {}))["toy_mmcs[toy]"]
    assert (entry["verdict"], entry["value"], entry["cells"]) == ("reproduced", 0.991, ["a"])
    cells["a"]["metrics"]["mmcs_truth"] = 0.989
    assert by_id(claims.evaluate(plan, cells, {}, {}))["toy_mmcs[toy]"]["verdict"] == "refuted"
    cells["a"]["stop"] = {"step": 500, "reason": "max_steps"}
    entry = by_id(claims.evaluate(plan, cells, {}, {}))["toy_mmcs[toy]"]
    assert entry["verdict"] == "inconclusive" and "max_steps" in entry["note"]
    cells["a"]["stop"] = None
    entry = by_id(claims.evaluate(plan, cells, {}, {}))["toy_mmcs[toy]"]
    assert entry["verdict"] == "inconclusive" and "fixed number of steps" in entry["note"]


def test_dead_rise_needs_both_correlations_positive(plan):
    # dead_frac rises with m (8 -> 16) and with l1: Spearman +1 with l1, positive with m
    cells = {f"{m}-{l1}": meta("toy", m, l1, dead_frac=l1 / 10 + m / 100) for m in (8, 16) for l1 in (0.1, 1.0, 3.0)}
    entry = by_id(claims.evaluate(plan, cells, {}, {}))["dead_rise[toy]"]
    assert entry["verdict"] == "reproduced"
    assert entry["value"]["sparsity"] > 0 and entry["value"]["m"] > 0
    for c in cells.values():  # falls with m now
        c["metrics"]["dead_frac"] = c["sae"]["l1"] / 10 - c["sae"]["m"] / 100
    assert by_id(claims.evaluate(plan, cells, {}, {}))["dead_rise[toy]"]["verdict"] == "refuted"
    # one size only (init_compare): the rise with size cannot be tested, so no claim
    one_size = {k: c for k, c in cells.items() if c["sae"]["m"] == 8}
    assert "dead_rise[toy]" not in by_id(claims.evaluate(plan, one_size, {}, {}))
    one_l1 = {f"{m}": meta("toy", m, 1.0, dead_frac=m / 100) for m in (8, 16, 32)}
    assert "dead_rise[toy]" not in by_id(claims.evaluate(plan, one_l1, {}, {}))


def fc(estimate, saturated, planted=None):
    out = {"estimate": estimate, "saturated": saturated, "range": [estimate, estimate], "series": []}
    if planted is not None:
        out["planted"] = planted
    return out


def test_lm_features_verdicts_and_the_rules_calibration_on_toy(plan):
    cells = {"l": meta("lm", 16, 1.0), "t": meta("toy", 16, 1.0)}
    cross = {"feature_count": {"lm": fc(600, True), "toy": fc(10, False, planted=8)}}
    entry = by_id(claims.evaluate(plan, cells, cross, {}))["lm_features[lm]"]
    assert (entry["verdict"], entry["value"]) == ("reproduced", 600)
    # the rule's error where the truth is known: 10 found for 8 planted = +2, +25%
    assert entry["calibration"] == [{"source": "toy", "planted": 8, "estimate": 10, "error": 2, "relative_error": 0.25, "saturated": False}]
    assert "+2, +25.0%, still rising" in entry["note"]
    cross["feature_count"]["lm"] = fc(300, True)
    assert by_id(claims.evaluate(plan, cells, cross, {}))["lm_features[lm]"]["verdict"] == "refuted"
    cross["feature_count"]["lm"] = fc(300, False)  # still rising below the range: a lower bound
    entry = by_id(claims.evaluate(plan, cells, cross, {}))["lm_features[lm]"]
    assert entry["verdict"] == "inconclusive" and "lower bound" in entry["note"]
    cross["feature_count"]["lm"] = fc(2000, False)  # above the range even as a lower bound
    assert by_id(claims.evaluate(plan, cells, cross, {}))["lm_features[lm]"]["verdict"] == "refuted"
    del cross["feature_count"]["toy"]
    assert "calibration" not in by_id(claims.evaluate(plan, cells, cross, {}))["lm_features[lm]"]


def test_toy_lm_alike_compares_mean_absolute_differences(plan):
    cells = {"t": meta("toy", 8, 1.0), "l": meta("lm", 8, 1.0)}
    rows = [{"l1": 1.0, "m": 8, "toy_mmcs_larger": 0.8, "lm_mmcs_larger": 0.75, "toy_dead_frac": 0.1, "lm_dead_frac": 0.15}]
    cross = {"toy_vs_lm": {"toy": "toy", "lm": "lm", "rows": rows}}
    entry = by_id(claims.evaluate(plan, cells, cross, {}))["toy_lm_alike"]
    assert entry["verdict"] == "reproduced" and entry["value"]["mmcs_larger"] == pytest.approx(0.05)
    rows[0]["lm_dead_frac"] = 0.35
    assert by_id(claims.evaluate(plan, cells, cross, {}))["toy_lm_alike"]["verdict"] == "refuted"


def test_data_init_needs_an_early_lead_and_the_same_end(plan):
    cells = {"d": meta("toy", 8, 1.0, init="data_samples", mmcs_truth=0.95), "o": meta("toy", 8, 1.0, mmcs_truth=0.945)}
    curves = {"d": {"mmcs_truth": [0.3, 0.7, 0.95]}, "o": {"mmcs_truth": [0.2, 0.5, 0.945]}}
    entry = by_id(claims.evaluate(plan, cells, {}, curves))["data_init[toy]"]
    assert entry["verdict"] == "reproduced"
    assert entry["value"]["early_advantage"] == [pytest.approx(0.2)] and entry["value"]["final_difference"] == [pytest.approx(0.005)]
    cells["o"]["metrics"]["mmcs_truth"] = 0.9  # ends 0.05 lower: not the same MMCS
    assert by_id(claims.evaluate(plan, cells, {}, curves))["data_init[toy]"]["verdict"] == "refuted"
