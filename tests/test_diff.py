"""sae-diff and the reproducibility guarantees it reports on."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from tiny import TINY

from engine.cli import sae_diff
from engine.plan import make_plan
from engine.runner import run
from engine.spec import load_spec_text


def bundle(tmp_path_factory, name, overrides=(), text=TINY):
    results = tmp_path_factory.mktemp(name)
    return run(make_plan(load_spec_text(text, "tiny.yaml", list(overrides))), results).path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return bundle(tmp_path_factory, "base")


def diff(*args):
    r = CliRunner().invoke(sae_diff, [str(a) for a in args])
    return r.exit_code, r.output


def diff_json(a, b, *flags):
    code, out = diff(a, b, "--json", *flags)
    return code, json.loads(out)


def test_same_spec_twice_is_identical(base, tmp_path_factory):
    again = bundle(tmp_path_factory, "again")
    code, out = diff(base, again)
    assert code == 0
    assert "verdict: identical" in out


def test_threads_1_vs_2_is_equivalent(base, tmp_path_factory):
    one = bundle(tmp_path_factory, "one", ["run.threads=1"])
    code, doc = diff_json(base, one)
    assert code == 0, doc
    assert doc["verdict"] in ("equivalent", "identical")
    assert {"path": "run.threads", "a": 2, "b": 1, "change": "changed"} in doc["spec"]
    assert {"path": "threads", "a": 2, "b": 1, "change": "changed"} in doc["environment"]
    assert len(doc["cells"]["matched"]) == 4 and not doc["cells"]["only_a"]


def test_one_changed_value_is_named_exactly(base, tmp_path_factory):
    other = bundle(tmp_path_factory, "l1", text=TINY.replace("[0.03, 0.1]", "[0.03, 0.3]"))
    code, doc = diff_json(base, other)
    assert code == 1 and doc["verdict"] == "different"
    assert doc["spec"] == [{"path": "sae.l1[1]", "a": 0.1, "b": 0.3, "change": "changed"}]
    assert doc["a"]["spec_hash"] != doc["b"]["spec_hash"]
    assert len(doc["cells"]["only_a"]) == 2 and len(doc["cells"]["only_b"]) == 2
    assert len(doc["cells"]["matched"]) == 2
    code, out = diff(base, other)
    assert "sae.l1[1]: 0.1 -> 0.3" in out and "only in A:" in out and "verdict: different" in out


def test_genuinely_different_dictionaries_are_not_equivalent(base, tmp_path_factory):
    # another root seed: same settings, other planted features and inits
    other = bundle(tmp_path_factory, "seed", ["seed=1"])
    code, doc = diff_json(base, other)
    assert code == 1 and doc["verdict"] == "different"
    assert any(not c["dictionary"]["within"] for c in doc["cells"]["matched"])
    assert {"path": "seed", "a": 0, "b": 1, "change": "changed"} in doc["spec"]


def test_tolerances_decide_equivalence(base, tmp_path_factory):
    longer = bundle(tmp_path_factory, "steps", ["eval.samples=1024"])
    code, doc = diff_json(base, longer)
    assert code == 1  # a bigger evaluation set moves the metrics beyond 1e-2
    code, doc = diff_json(base, longer, "--rtol", "10", "--atol", "10")
    assert code == 0 and doc["verdict"] == "equivalent"


def test_json_schema_is_stable(base):
    code, doc = diff_json(base, base)
    assert code == 0 and doc["verdict"] == "identical"
    assert sorted(doc) == ["a", "analyses", "b", "cells", "code", "environment", "schema", "sources", "spec", "tolerances", "verdict"]
    assert doc["schema"] == 1
    assert sorted(doc["cells"]) == ["matched", "only_a", "only_b"]
    cell = doc["cells"]["matched"][0]
    assert sorted(cell) == ["a", "b", "dictionary", "metrics", "within"]
    assert sorted(cell["dictionary"]) == ["identical_bytes", "m_a", "m_b", "mmcs_ab", "mmcs_ba", "same_atoms", "within"]
    assert cell["dictionary"]["mmcs_ab"] == pytest.approx(1.0) and cell["dictionary"]["same_atoms"] == cell["dictionary"]["m_a"]
    assert sorted(cell["metrics"][0]) == ["a", "abs", "b", "name", "rel", "within"]


def test_unusable_input_exits_2(base, tmp_path):
    assert diff(base, tmp_path / "missing")[0] == 2
    assert diff(base, tmp_path)[0] == 2  # a directory that is not a bundle
    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    next(broken.glob("cells/*/cell.json")).write_text("{}")
    code, out = diff(base, broken)
    assert code == 2 and "changed file cells/" in out and "Traceback" not in out
    assert diff(base)[0] == 2
    assert diff(base, base, "--rtol", "-1")[0] == 2
