"""Several SAE blocks in one spec (``sae:`` as a list), and the ranking of kinds at matched L0.

Spec: a list parses, round-trips, is addressed as ``sae[i].k`` (``--set``, ``zip``, errors);
a cell's key does not depend on the block it came from. Analysis: ``rank_curves`` /
``kind_ranking`` against hand-computed values. End to end: a tiny two-kind spec gives a bundle
with ``analyses.kind_ranking``, per-kind figures, ``kinds_vs_l0.png`` and the ranking table,
byte-identical on a rerun.
"""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from engine import analyses, diff, export, layout
from engine import report as report_mod
from engine.cli import ranking_lines, sae_run, summary_table
from engine.errors import SpecError
from engine.plan import make_plan
from engine.runner import run
from engine.spec import dump_spec, load_spec_text, spec_hash

HEAD = """\
name: blocks
seed: 0
sources:
  toy: {kind: toy, n_features: 12, dim: 8, active_per_sample: 2, correlation: none}
"""
TAIL = """\
eval: {samples: 256, curve_every: 40}
run: {threads: 1}
"""
RELU = "{kind: relu_l1, dict_size: 12, l1: [0.03, 0.3], train: {steps: 80, batch: 64, lr: 3.0e-3}}"
TOPK = "{kind: topk, dict_size: 12, k: [1, 3], train: {steps: 80, batch: 64, lr: 3.0e-3}}"
TWO = HEAD + f"sae:\n  - {RELU}\n  - {TOPK}\n" + TAIL


def errors(text: str, overrides=()) -> list[str]:
    with pytest.raises(SpecError) as e:
        load_spec_text(text, "b.yaml", list(overrides))
    return e.value.lines()


# ------------------------------------------------------------------ the spec


def test_a_list_of_blocks_parses_and_round_trips():
    spec = load_spec_text(TWO, "b.yaml")
    assert isinstance(spec.sae, tuple) and [b.kind for b in spec.sae] == ["relu_l1", "topk"]
    assert [at for at, _ in spec.sae_blocks()] == [("sae", 0), ("sae", 1)]
    text = dump_spec(spec)
    again = load_spec_text(text, "r.yaml")
    assert again == spec and spec_hash(again) == spec_hash(spec) and dump_spec(again) == text
    one = load_spec_text(HEAD + f"sae: {TOPK}\n" + TAIL, "o.yaml")
    assert one.sae_blocks() == [(("sae",), one.sae)]


def test_cell_keys_do_not_depend_on_the_block():
    both = make_plan(load_spec_text(TWO, "b.yaml"))
    relu = make_plan(load_spec_text(HEAD + f"sae: {RELU}\n" + TAIL, "r.yaml"))
    topk = make_plan(load_spec_text(HEAD + f"sae:\n  - {TOPK}\n" + TAIL, "t.yaml"))
    assert [c.key for c in both.cells] == [c.key for c in relu.cells] + [c.key for c in topk.cells]
    assert [c.id for c in both.cells] == [c.id for c in relu.cells] + [c.id for c in topk.cells]
    assert [c.params for c in both.cells][2] == {"sae[1].k": 1, "m": 12}
    # reversed blocks: the same cells, in block order
    swapped = make_plan(load_spec_text(HEAD + f"sae:\n  - {TOPK}\n  - {RELU}\n" + TAIL, "s.yaml"))
    assert sorted(c.key for c in swapped.cells) == sorted(c.key for c in both.cells)
    assert spec_hash(swapped.spec) != spec_hash(both.spec)


def test_a_cell_in_two_blocks_is_planned_once():
    dup = HEAD + f"sae:\n  - {TOPK}\n  - {TOPK.replace('k: [1, 3]', 'k: [3, 5]')}\n" + TAIL
    plan = make_plan(load_spec_text(dup, "d.yaml"))
    assert [c.sae.hyper["k"] for c in plan.cells] == [1, 3, 5]
    assert len({c.key for c in plan.cells}) == 3


def test_errors_inside_a_list_name_the_block_and_line():
    text = HEAD + "sae:\n  - {kind: topk, dict_size: 12, k: 0}\n  - {kind: relu_l1, dict_size: 12, l1: 0.1, k: 3}\n  - {kind: topx, k: 1}\n" + TAIL
    assert errors(text) == [
        "b.yaml:6:36: sae[0].k: must be >= 1, got 0",
        "b.yaml:7:45: sae[1].k: unknown key 'k'",
        "b.yaml:8:12: sae[2].kind: unknown SAE kind 'topx', expected one of 'relu_l1', 'topk', 'batchtopk', 'matryoshka_batchtopk', 'jumprelu', 'gated' (did you mean 'topk'?)",
    ]
    assert errors(HEAD + "sae: []\n" + TAIL) == ["b.yaml:5:6: sae: an empty list of SAE blocks: give at least one mapping"]
    assert errors(HEAD + "sae:\n  - 3\n" + TAIL) == ["b.yaml:6:5: sae[0]: expected a mapping with a 'kind', got 3"]
    cross = HEAD + f"sae:\n  - {RELU}\n  - {{kind: topk, dict_ratio: 1, dict_size: 12, k: 2, train: {{steps: 10, stop: {{window: 10, max_steps: 10}}}}}}\n" + TAIL
    assert errors(cross) == [
        "b.yaml:7:5: sae[1]: give exactly one of dict_ratio or dict_size (got both)",
        "b.yaml:7:69: sae[1].train.steps: give steps or stop, not both (with stop, training runs to convergence or stop.max_steps)",
        "b.yaml:7:103: sae[1].train.stop.max_steps: must be at least two windows (20): convergence compares the last two windows",
    ]


def test_zip_groups_stay_within_one_block():
    ok = load_spec_text(TWO.replace("dict_size: 12, k: [1, 3]", "dict_size: [12, 24], k: [1, 3]") + 'zip: [["sae[1].dict_size", "sae[1].k"]]\n', "z.yaml")
    plan = make_plan(ok)
    assert [(c.sae.m, c.sae.hyper.get("k")) for c in plan.cells if c.sae.kind == "topk"] == [(12, 1), (24, 3)]
    again = load_spec_text(dump_spec(ok), "r.yaml")  # the bracketed paths survive the resolved spec
    assert again == ok and spec_hash(again) == spec_hash(ok)
    assert errors(TWO + 'zip: [["sae[0].l1", "sae[1].k"]]\n') == ["b.yaml:10:7: zip[0]: a zip group stays within one SAE block; this one has sae[0] and sae[1]"]
    lines = errors(TWO + 'zip: [["sae.l1", "sae[1].k"]]\n')
    assert "b.yaml:10:8: zip[0][0]: 'sae.l1' is not a swept field (swept: sae[0].l1, sae[1].k)" in lines
    mixed = TWO.replace("n_features: 12,", "n_features: [12, 16],") + 'zip: [["sources.toy.n_features", "sae[1].k"]]\n'
    assert errors(mixed) == ["b.yaml:10:7: zip[0]: with several SAE blocks a zip group cannot mix sources and sae paths (source sweeps apply to every block)"]


def test_set_addresses_a_block():
    spec = load_spec_text(TWO, "b.yaml", ["sae[1].k=[2, 4, 6]", "sae[0].train.steps=20"])
    assert spec.sae[1].k.values() == (2, 4, 6) and spec.sae[0].train.steps == 20
    assert errors(TWO, ["sae[2].k=1"]) == ["--set sae[2].k=1: sae[2]: no such item: the list has 2"]
    assert errors(TWO, ["sae[1].kk=1"]) == ["--set sae[1].kk=1: sae[1].kk: unknown key 'kk' (did you mean 'k'?)"]
    assert errors(TWO, ["sae.k=1"]) == ["--set sae.k=1: sae: is not a mapping, cannot set a key inside it"]
    assert errors(HEAD + f"sae: {TOPK}\n" + TAIL, ["sae[0].k=1"]) == ["--set sae[0].k=1: sae: is not a list, cannot index it"]
    assert errors(TWO, ["sae.l1[0]=1"]) == ["--set sae.l1[0]=1: 'sae.l1[0]' is not a dotted path like sae.train.steps"]


# ------------------------------------------------------------------ the ranking, by hand


def test_log_interpolation_by_hand():
    pts = [(1.0, 0.0), (4.0, 1.0), (16.0, 3.0)]
    assert analyses.log_interp(pts, 1.0) == 0.0
    assert analyses.log_interp(pts, 2.0) == pytest.approx(0.5)  # halfway in log between 1 and 4
    assert analyses.log_interp(pts, 8.0) == pytest.approx(2.0)
    assert analyses.log_interp(pts, 16.0) == 3.0
    assert analyses.log_interp([(5.0, 0.7)], 5.0) == 0.7
    with pytest.raises(ValueError):
        analyses.log_interp(pts, 17.0)


def test_rank_curves_by_hand():
    # a: y = log2(L0) / 2 on [1, 16]; b: constant 0.9 on [2, 8]; overlap [2, 8], grid 2..8 in 5 log steps
    curves = {"a": [(1.0, 0.0), (16.0, 2.0)], "b": [(2.0, 0.9), (8.0, 0.9)]}
    r = analyses.rank_curves(curves)
    assert r["overlap"] == [2.0, 8.0]
    assert r["grid"] == pytest.approx([2.0, 2 * 2**0.5, 4.0, 4 * 2**0.5, 8.0])
    # a at 2^(1, 1.5, 2, 2.5, 3): y = 0.5, 0.75, 1.0, 1.25, 1.5 -> mean 1.0
    assert r["scores"]["a"] == pytest.approx(1.0) and r["scores"]["b"] == pytest.approx(0.9)
    assert r["ranking"] == ["a", "b"]
    apart = analyses.rank_curves({"a": [(1.0, 0.0), (2.0, 1.0)], "b": [(4.0, 0.5), (8.0, 0.6)]})
    assert apart["overlap"] is None and apart["scores"] == {} and apart["ranking"] == []
    touch = analyses.rank_curves({"a": [(1.0, 0.2), (4.0, 0.8)], "b": [(4.0, 0.5), (8.0, 0.6)]})
    assert touch["grid"] == [4.0] and touch["scores"] == {"a": 0.8, "b": 0.5}


def test_kind_ranking_from_cells_by_hand():
    class P:  # kind_ranking reads only cells_meta and full_metrics
        pass

    def cell(kind, l0, fvu, mcc, stop=None):
        entry = {"source": "toy", "sae": {"kind": kind, "m": 8}, "metrics": {"mcc": mcc}}
        if stop:
            entry["stop"] = {"step": 100, "reason": stop}
        return entry, {"l0": l0, "fvu": fvu}

    rows = {
        "a1": cell("topk", 2.0, 0.5, 0.6, "converged"), "a2": cell("topk", 8.0, 0.1, 0.8, "max_steps"),
        "b1": cell("relu_l1", 1.0, 0.6, 0.5, "converged"), "b2": cell("relu_l1", 4.0, 0.2, 0.9, "converged"),
        "b3": cell("relu_l1", 0.0, 1.0, 0.0, "converged"),  # L0 = 0: left out
    }
    cells_meta = {k: v[0] for k, v in rows.items()}
    full = {k: v[1] for k, v in rows.items()}
    r = analyses.kind_ranking(P(), cells_meta, full)
    (entry,) = r["toy"]["comparisons"]
    assert entry["m"] == 8 and list(entry["kinds"]) == ["relu_l1", "topk"]
    assert entry["kinds"]["topk"] == {"cells": ["a1", "a2"], "l0_range": [2.0, 8.0], "max_steps": ["a2"], "fixed_steps": 0}
    assert entry["kinds"]["relu_l1"]["l0_range"] == [1.0, 4.0]
    assert entry["convergence"] == "1 of 5 cells not shown converged (stopped at max_steps or ran a fixed number of steps)"
    mcc = entry["metrics"]["mcc"]
    assert mcc["overlap"] == [2.0, 4.0]
    grid = [2.0 * 2 ** (j / 4) for j in range(5)]
    topk = [0.6 + 0.2 * math.log(x / 2) / math.log(4) for x in grid]
    relu = [0.5 + 0.4 * math.log(x) / math.log(4) for x in grid]
    assert mcc["scores"]["topk"] == pytest.approx(sum(topk) / 5) and mcc["scores"]["relu_l1"] == pytest.approx(sum(relu) / 5)
    assert mcc["ranking"] == ["relu_l1", "topk"]  # 0.8 vs 0.7 at the middle; relu_l1 is above on the whole overlap
    ev = entry["metrics"]["explained_variance"]
    assert ev["curves"]["relu_l1"] == [[1.0, 0.4], [4.0, 0.8]]
    assert set(entry["metrics"]) == {"mcc", "explained_variance"}  # no f1 recorded
    lines = ranking_lines(r)
    assert lines[0].startswith("kind_ranking[toy, m=8] mcc at L0 2-4: relu_l1 0.")
    assert lines[-1] == "kind_ranking[toy, m=8]: 1 of 5 cells not shown converged (stopped at max_steps or ran a fixed number of steps)"


# ------------------------------------------------------------------ end to end


E2E = HEAD + f"sae:\n  - {RELU}\n  - {TOPK}\nanalyses: [mmcs_truth, dead, l0, fvu, mmcs_larger, mcc, latent_f1]\n" + TAIL


def test_two_kinds_end_to_end_bundle_report_and_bytes(tmp_path):
    plan = make_plan(load_spec_text(E2E, "e.yaml"))
    assert [c.sae.kind for c in plan.cells] == ["relu_l1"] * 2 + ["topk"] * 2
    first = run(plan, tmp_path / "a")
    again = run(plan, tmp_path / "b")
    meta_a = json.loads((first.path / "bundle.json").read_text())
    meta_b = json.loads((again.path / "bundle.json").read_text())
    assert meta_a["content_digest"] == meta_b["content_digest"]
    assert meta_a["files"] == meta_b["files"]  # the report too: figures and page repeat byte for byte
    metrics = layout.read_metrics(first.path)
    ranking = metrics.analyses["kind_ranking"]["toy"]["comparisons"][0]
    assert set(ranking["kinds"]) == {"relu_l1", "topk"} and set(ranking["metrics"]) == {"mcc", "f1", "explained_variance"}
    for res in ranking["metrics"].values():
        assert (res["overlap"] is None) == (res["ranking"] == [])
    report = first.path / layout.REPORT_DIR
    names = {p.name for p in report.iterdir()}
    assert {"kinds_vs_l0.png", "toy_relu_l1.png", "toy_topk.png", "toy_relu_l1_grid.png", "toy_topk_grid.png", "index.html"} <= names
    assert "toy.png" not in names
    page = (report / "index.html").read_text()
    assert "SAE kinds at matched L0" in page and "toy, m=12: kinds at matched L0" in page
    table = summary_table(metrics)
    assert table[0].split()[:4] == ["cell", "kind", "m", "k/l1"]
    assert any(line.startswith("kind_ranking[toy, m=12] explained_variance") for line in table)
    assert {c["id"] for c in metrics.claims if c["id"].startswith("dead_rise")} <= {"dead_rise[toy, relu_l1]", "dead_rise[toy, topk]"}
    # sae-diff: identical, the ranking compared too; sae-export: every cell in its kind's format
    doc = diff.compare(diff.load(first.path), diff.load(again.path))
    assert doc["verdict"] == "identical"
    assert any(m["name"].startswith("kind_ranking:toy m=12 mcc ") for m in doc["analyses"])
    rebuilt = report_mod.rebuild(again.path)  # sae-report: the same report bytes
    assert {k: v for k, v in rebuilt["files"].items() if k.startswith("report/")} == {k: v for k, v in meta_a["files"].items() if k.startswith("report/")}
    written = export.export(first.path, tmp_path / "out")
    cfgs = [json.loads((p / "cfg.json").read_text()) for p in written]
    assert sorted(c["architecture"] for c in cfgs) == ["standard", "standard", "topk", "topk"]


def test_two_kinds_through_the_cli_dry_run(tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text(E2E)
    r = CliRunner().invoke(sae_run, [str(spec), "--dry-run", "--results", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "sae[1].k=3" in r.output and "sae[0].l1=0.03" in r.output


def test_a_single_kind_bundle_has_no_ranking_unless_asked(tmp_path):
    one = HEAD + f"sae: {TOPK}\n" + TAIL
    metrics = layout.read_metrics(run(make_plan(load_spec_text(one, "o.yaml")), tmp_path / "a").path)
    assert "kind_ranking" not in metrics.analyses
    asked = one + "analyses: [l0, fvu, kind_ranking]\n"
    metrics = layout.read_metrics(run(make_plan(load_spec_text(asked, "o.yaml")), tmp_path / "b").path)
    (entry,) = metrics.analyses["kind_ranking"]["toy"]["comparisons"]
    assert entry["metrics"]["explained_variance"]["ranking"] == ["topk"]


def test_the_architectures_spec_runs_every_kind_on_every_source():
    from pathlib import Path

    from engine import budget, schema
    from engine import sources as source_kinds

    plan = make_plan(load_spec_text((Path(__file__).parent.parent / "specs" / "architectures.yaml").read_text(), "specs/architectures.yaml"))
    assert {(c.source.name, c.sae.kind) for c in plan.cells} == {(s, k) for s in ("toy", "lm", "synth") for k in schema.SAE_KINDS}
    assert all(c.sae.stop is not None and c.sae.m == 256 for c in plan.cells)
    assert {"mcc", "latent_f1", "kind_ranking"} <= set(plan.spec.analyses)
    assert {sp.name for sp in plan.sources if source_kinds.of(sp.config).has_truth} == {"toy", "synth"}
    budget.check(plan, force=False, where="specs/architectures.yaml")  # well under the limit


def test_the_architectures_lm_source_is_toy_vs_lms():
    """README: the LM layer of toy_vs_lm, the same LM (its cache shared at equal threads)."""
    from pathlib import Path

    from engine.sources.lm import lm_identity
    from engine.spec import load_spec

    specs = Path(__file__).parent.parent / "specs"
    arch, tvl = load_spec(specs / "architectures.yaml"), load_spec(specs / "toy_vs_lm.yaml")
    assert arch.sources["lm"] == tvl.sources["lm"]
    assert lm_identity(arch, arch.sources["lm"]) == lm_identity(tvl, tvl.sources["lm"])
