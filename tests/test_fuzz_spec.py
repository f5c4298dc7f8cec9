"""Fuzzing the spec loader: arbitrary YAML, and mutations of a valid spec.

``load_spec_text`` must either return a Spec that passes the cross-field checks or raise
``SpecError`` whose every line names the file (and a line and column when the document parsed);
no other exception, ever. The same holds for ``--set`` overrides.
"""

from __future__ import annotations

import re

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import schema
from engine.errors import SpecError
from engine.spec import check, load_spec_text
from engine.yamlio import StrictDumper

FILE = "f.yaml"
LOCATED = re.compile(r"^f\.yaml(:\d+:\d+)?: .+$")

VALID = {
    "name": "fuzz",
    "seed": 0,
    "sources": {
        "toy": {"kind": "toy", "n_features": 16, "dim": 8, "active_per_sample": 2.0, "correlation": "none"},
        "lm": {
            "kind": "lm",
            "corpus": {"builtin": "python-docs"},
            "model": {"d_model": 16, "n_layers": 2, "n_heads": 4},
            "train": {"tokens": 1000},
            "site": "blocks.1.mlp.post",
        },
    },
    "sae": {"dict_ratio": [1, 2], "l1": {"logspace": [-2, 0, 3]}, "init": "orthogonal", "train": {"steps": 10, "batch": 8, "lr": 1e-3}},
    "eval": {"samples": 64, "curve_every": 5},
    "run": {"threads": 1},
    "analyses": ["mmcs_truth", "dead"],
    "zip": [],
}

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(text: str, overrides=()) -> str:
    """'ok' or 'error'; anything else fails the test."""
    try:
        spec = load_spec_text(text, FILE, list(overrides))
    except SpecError as e:
        lines = e.lines()
        assert lines, "a SpecError with no message"
        for line in lines:
            assert "\n" not in line
            assert LOCATED.match(line) or line.startswith("--set "), line
        return "error"
    assert isinstance(spec, schema.Spec) and check(spec) == []
    return "ok"


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["toy", "lm", "relu_l1", "batch", "orthogonal", "blocks.1.mlp.post", "1e-4", "no", "~", ".inf", "logspace"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(-3, 3), inner, max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(st.text(max_size=200))
def test_arbitrary_text(text):
    outcome(text)


@SETTINGS
@given(st.dictionaries(st.sampled_from(list(VALID) + ["extra", "nmae"]), values, max_size=8))
def test_arbitrary_documents(doc):
    outcome(yaml.dump(doc, Dumper=StrictDumper))


def _paths(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, path + (i,))


PATHS = [p for p in _paths(VALID) if p]


def _mutate(doc, path, op, value):
    import copy

    doc = copy.deepcopy(doc)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    key = path[-1]
    if op == "delete":
        del parent[key]
    elif op == "rename" and isinstance(parent, dict):
        parent[str(key)[:-1] + "x"] = parent.pop(key)
    elif op == "nest":
        parent[key] = [[[{str(key): parent[key]}]]]
    else:
        parent[key] = value
    return doc


mutation = st.tuples(
    st.sampled_from(PATHS),
    st.sampled_from(["delete", "rename", "replace", "nest"]),
    st.one_of(values, st.integers(-(10**30), 10**30), st.sampled_from([0, -1, 0.0, -1e-9, 1e308, 2**63, []])),
)


def test_the_unmutated_spec_is_valid():
    assert outcome(yaml.dump(VALID, Dumper=StrictDumper)) == "ok"


@SETTINGS
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_specs(mutations):
    doc = VALID
    for path, op, value in mutations:
        try:
            doc = _mutate(doc, path, op, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or retyped this path
    outcome(yaml.dump(doc, Dumper=StrictDumper))


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([".".join(map(str, p)) for p in PATHS] + ["sae.l1[0]", "", "a..b"]), values), max_size=3))
def test_overrides(sets):
    overrides = [f"{p}={yaml.dump(v, Dumper=StrictDumper, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}" for p, v in sets]
    outcome(yaml.dump(VALID, Dumper=StrictDumper), overrides)
