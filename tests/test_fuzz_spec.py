"""Fuzzing the spec loader: arbitrary YAML, and mutations of a valid spec.

``load_spec_text`` must either return a Spec that passes the cross-field checks or raise
``SpecError`` whose every line names the file (and a line and column when the document parsed);
no other exception, ever. The same holds for ``--set`` overrides and for spec file names.
Every line is one line: a value, key, ``--set`` text or file name holding a newline, a tab, a
control character, a surrogate (a non-UTF-8 byte of a file name) or thousands of characters is
shown escaped and shortened (``engine.errors.shown``). Through ``sae-run``: exit status 2, one
line per problem, no traceback.

A failing example hypothesis finds is kept as an explicit ``@example`` (see tests/conftest.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine import schema
from engine.cli import sae_run
from engine.errors import SpecError
from engine.spec import check, load_spec, load_spec_text
from engine.yamlio import StrictDumper

FILE = "f.yaml"
LOCATED = re.compile(r"^f\.yaml(:\d+:\d+)?: .+$")
MAX_LINE = 1000  # a message quotes values shortened to about 80 characters each
ROOT = Path(__file__).resolve().parent.parent

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
            assert_one_line(line)
            assert LOCATED.match(line) or line.startswith("--set "), line
        return "error"
    assert isinstance(spec, schema.Spec) and check(spec) == []
    return "ok"


def assert_one_line(line: str) -> None:
    """One short printable line: no newline, tab, control character or surrogate survives."""
    assert line.isprintable(), repr(line)
    assert len(line) <= MAX_LINE, f"{len(line)} characters: {line[:200]!r}..."


# strings that break a naive message: line breaks, tabs, terminal escapes, NUL, a surrogate
# (how Python holds a non-UTF-8 byte of a file name), invisible format characters, length
NASTY = ["\n", "a\nb", "\r\n", "\t", "\x1b[31mred", "\x00", "\x7f", "\u2028", "\u0085", "\udcff", "\u200b", "x" * 5000, "\n" * 300, "é" * 200]
nasty = st.sampled_from(NASTY) | st.text(st.characters(categories=("Cc", "Cs", "Cf", "Zl", "Zp", "Ll")), min_size=1, max_size=12) | st.text(min_size=100, max_size=400)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["toy", "lm", "relu_l1", "batch", "orthogonal", "blocks.1.mlp.post", "1e-4", "no", "~", ".inf", "logspace"]),
    nasty,
)
keys = st.text(max_size=8) | st.integers(-3, 3) | nasty
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


@SETTINGS
@given(st.text(max_size=200))
def test_arbitrary_text(text):
    outcome(text)


@SETTINGS
@given(st.dictionaries(st.sampled_from(list(VALID) + ["extra", "nmae"]) | nasty, values, max_size=8))
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


def _override(path: str, value) -> str:
    return f"{path}={yaml.dump(value, Dumper=StrictDumper, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"


set_paths = st.sampled_from([".".join(map(str, p)) for p in PATHS] + ["sae.l1[0]", "", "a..b"]) | nasty | nasty.map(lambda k: f"sae.{k}")


@SETTINGS
@given(st.lists(st.tuples(set_paths, values), max_size=3))
@example([("name", "\n")])  # found by hypothesis: --set name='\n' gave a message of several lines
@example([("sae.l1.logspace.0", "\n")])  # found by hypothesis: the same for a --set path refused
def test_overrides(sets):
    outcome(yaml.dump(VALID, Dumper=StrictDumper), [_override(p, v) for p, v in sets])


@SETTINGS
@given(st.lists(st.tuples(set_paths, nasty), min_size=1, max_size=2), st.booleans())
def test_raw_override_texts(sets, raw):
    """``--set`` texts as a shell passes them: the value unquoted (raw) or as YAML."""
    overrides = [f"{p}={v}" if raw else _override(p, v) for p, v in sets]
    outcome(yaml.dump(VALID, Dumper=StrictDumper), overrides)


@given(st.text() | nasty | st.integers() | st.binary(max_size=40), st.integers(10, 200), st.booleans())
@example("\n", 80, True)
@example("\x1f" + "0" * 98 + "\U00018d09", 10, False)  # both ends escape to 4 and 10 characters
def test_shown_is_one_short_line(value, limit, quote):
    from engine.errors import shown

    out = shown(value, limit, quote)
    assert out.isprintable()
    assert len(out) <= limit + len(" (99999 chars)") + 2, out
    if isinstance(value, str) and value.isprintable() and len(repr(value)) <= limit:
        assert out == (repr(value) if quote else value)  # what was shown before, unchanged


# ------------------------------------------------------------------ through sae-run


def _run_cli(args: list[str], results: Path):
    r = CliRunner().invoke(sae_run, [*args, "--results", str(results)])
    assert r.exception is None or isinstance(r.exception, SystemExit), f"{args!r}: raised {r.exception!r}"
    assert "Traceback" not in r.output
    return r


@pytest.mark.parametrize("value", NASTY, ids=lambda v: ascii(v)[:24])
@pytest.mark.parametrize("where", ["value", "key", "set_value", "set_path"])
def test_cli_one_line_per_problem(where, value, tmp_path):
    """A nasty string as a spec value, a spec key, a --set value or a --set path: exit 2, each
    stderr line one printable line naming where the problem is."""
    doc = yaml.safe_load(yaml.dump(VALID, Dumper=StrictDumper))
    args = []
    if where == "value":
        doc["sae"]["init"] = value
    elif where == "key":
        doc["sae"][value] = 1
    elif where == "set_value":
        args = ["--set", f"name={value}"]
    else:
        args = ["--set", f"{value}=1"]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.dump(doc, Dumper=StrictDumper, allow_unicode=False), encoding="utf-8")
    r = _run_cli([str(spec), *args], tmp_path / "results")
    assert r.exit_code == 2, r.output
    lines = r.stderr.splitlines()
    assert lines and r.stdout == ""
    for line in lines:
        assert_one_line(line)
        assert line.startswith((str(spec) + ":", "--set ")), line


FILE_NAMES = {
    "newline": "a\nb.yaml",
    "tab": "a\tb.yaml",
    "escape": "\x1b[31mred.yaml",
    "not_utf8": os.fsdecode(b"\xff\xfe.yaml"),
    "long": "x" * 250 + ".yaml",
}


@pytest.mark.parametrize("content", ["missing", "invalid", "wrong"])
@pytest.mark.parametrize("name", sorted(FILE_NAMES))
def test_file_names_are_shown_escaped(name, content, tmp_path):
    """A spec file whose name holds a newline, a tab, an escape, a non-UTF-8 byte, or 250
    characters: its name is echoed escaped (and shortened), one line per problem."""
    path = tmp_path / FILE_NAMES[name]
    if content != "missing":
        path.write_text("name: [\n" if content == "invalid" else "name: x\nsources: 1\nsae: {}\n")
    with pytest.raises(SpecError) as e:
        load_spec(path)
    for line in e.value.lines():
        assert_one_line(line)
        assert line.startswith(f"{tmp_path}/"), line
    r = _run_cli([str(path)], tmp_path / "results")
    assert r.exit_code == 2, r.output
    assert r.stderr.splitlines() == e.value.lines()


def test_file_name_escaped_by_the_real_process(tmp_path):
    """The installed entry point, a fresh interpreter, a non-UTF-8 file name with a newline:
    exit 2, one ASCII line on stderr, no traceback."""
    path = tmp_path / os.fsdecode(b"bad\xff\nname.yaml")
    path.write_text("name: [\n")
    p = subprocess.run(
        [sys.executable, "-c", "from engine.cli import sae_run; sae_run()", os.fsencode(path), "--results", str(tmp_path / "r")],
        cwd=ROOT, capture_output=True, timeout=120,
    )
    assert p.returncode == 2, p.stderr
    assert b"Traceback" not in p.stderr
    (line,) = p.stderr.decode("ascii").splitlines()
    assert line.startswith(f"{tmp_path}/bad\\udcff\\nname.yaml:2:1: invalid YAML: "), line
