"""The DSL: strict YAML, strict types, errors with file:line:col and paths, overrides, round-trip."""

from __future__ import annotations

import textwrap

import pytest

from engine import schema
from engine.errors import SpecError
from engine.spec import dump_spec, load_spec, load_spec_text, spec_hash
from engine.sweep import Linspace, Logspace, Range, Values

MINIMAL = """\
name: t
sources:
  toy: {kind: toy, n_features: 16, dim: 8}
sae:
  dict_ratio: 1
  l1: 0.1
"""


def errors(text: str, overrides=()) -> list[str]:
    with pytest.raises(SpecError) as e:
        load_spec_text(textwrap.dedent(text), "s.yaml", list(overrides))
    return e.value.lines()


def test_minimal_spec_fills_defaults():
    spec = load_spec_text(MINIMAL, "s.yaml")
    assert spec.sae.train.steps == 20_000 and spec.sae.train.lr == 1e-3
    assert spec.sources["toy"].correlation == "batch"
    assert spec.run.threads == 2


def test_yaml12_floats_and_no_yaml11_booleans():
    spec = load_spec_text(MINIMAL + "  train: {lr: 1e-4}\n", "s.yaml")
    assert spec.sae.train.lr == 1e-4 and isinstance(spec.sae.train.lr, float)
    (line,) = errors(MINIMAL + "  decoder_bias: no\n")
    assert line.startswith("s.yaml:7:17: sae.decoder_bias: expected true or false, got 'no'")


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("steps", '"3"', "expected an integer, got '3' (a string)"),
        ("steps", "3.9", "expected an integer, got 3.9"),
        ("steps", "1e3", "expected an integer, got 1000.0 (write 1000)"),
        ("steps", "true", "expected an integer, got true (a boolean)"),
        ("steps", "0", "must be >= 1, got 0"),
        ("lr", '"0.1"', "expected a number, got '0.1' (a string)"),
        ("lr", ".nan", "expected a finite number, got nan"),
        ("lr", ".inf", "expected a finite number, got inf"),
        ("lr", "-1", "must be > 0, got -1.0"),
    ],
)
def test_no_lax_coercion(field, value, message):
    (line,) = errors(MINIMAL + f"  train: {{{field}: {value}}}\n")
    assert line.endswith(f"sae.train.{field}: {message}"), line
    assert line.startswith("s.yaml:7:")


def test_duplicate_key_rejected_with_position():
    (line,) = errors(MINIMAL + "  l1: 0.2\n")
    assert line.startswith("s.yaml:7:3:") and "duplicate key 'l1' (first defined at line 6)" in line


def test_unknown_keys_did_you_mean_at_every_level():
    lines = errors(
        """\
        name: t
        sources:
          toy: {kind: toy, n_featurs: 16}
        sae:
          dict_ratio: 1
          l1: 0.1
          trian: {steps: 10}
        evl: {}
        """
    )
    assert lines == [
        "s.yaml:3:20: sources.toy.n_featurs: unknown key 'n_featurs' (did you mean 'n_features'?)",
        "s.yaml:7:3: sae.trian: unknown key 'trian' (did you mean 'train'?)",
        "s.yaml:8:1: evl: unknown key 'evl' (did you mean 'eval'?)",
    ]


def test_misspelt_required_key_reads_as_did_you_mean_only():
    lines = errors("name: t\nsources: {toy: {kind: toy}}\nsae: {dict_ratio: 1, l11: 0.1}\n")
    assert lines == ["s.yaml:3:22: sae.l11: unknown key 'l11' (did you mean 'l1'?)"]


def test_all_errors_reported_at_once_in_file_order():
    lines = errors(
        """\
        name: ../escape
        sources:
          toy: {kind: toy, n_features: -3, correlation: bach}
          web: {kind: web}
        sae:
          dict_ratio: [1, 2, 0]
          l1: x
        """
    )
    assert [l.split(": ")[1] for l in lines] == [
        "name",
        "sources.toy.n_features",
        "sources.toy.correlation",
        "sources.web.kind",
        "sae.dict_ratio[2]",
        "sae.l1",
    ]
    assert "did you mean 'batch'" in lines[2]
    assert "unknown source kind 'web'" in lines[3]
    assert all(l.startswith("s.yaml:") for l in lines)


def test_missing_required_key():
    assert errors("name: t\nsources: {toy: {kind: toy}}\nsae: {dict_ratio: 1}\n") == [
        "s.yaml:3:6: sae: missing required key 'l1'"
    ]


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "empty spec"),
        ("- a\n- b\n", "expected a mapping at the top level"),
        ("name: [unclosed\n", "invalid YAML"),
        ("name: t\n\tsources: {}\n", "invalid YAML"),
    ],
)
def test_not_a_spec(text, message):
    (line,) = errors(text)
    assert message in line and line.startswith("s.yaml")


def test_files_that_are_not_specs(tmp_path):
    for path, message in [
        (tmp_path / "missing.yaml", "no such file"),
        (tmp_path, "is a directory"),
    ]:
        with pytest.raises(SpecError) as e:
            load_spec(path)
        assert message in str(e.value)
    garbage = tmp_path / "g.yaml"
    garbage.write_bytes(b"\x00\xff\xfe binary")
    with pytest.raises(SpecError, match="binary file"):
        load_spec(garbage)
    latin = tmp_path / "l.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(latin)


def test_cross_field_rules():
    lines = errors("name: t\nsources: {toy: {kind: toy, n_features: 4}}\nsae: {dict_ratio: 1, dict_size: 3, l1: 1}\n")
    assert lines == ["s.yaml:3:6: sae: give exactly one of dict_ratio or dict_size (got both)"]
    lines = errors("name: t\nsources: {toy: {kind: toy, n_features: 4}}\nsae: {dict_ratio: 0.1, l1: 1}\n")
    assert lines == ["s.yaml:3:19: sae.dict_ratio: ratio 0.1 gives a dictionary of 0 atoms for source 'toy'"]


def test_lm_cross_field_rules():
    lines = errors(
        """\
        name: t
        sources:
          lm: {kind: lm, site: blocks.9.mlp.post, corpus: {builtin: python-docs, files: [a.txt]}, model: {d_model: 16, n_heads: 3}}
        sae: {dict_ratio: 1, l1: 1}
        """
    )
    assert [l.split(": ", 1)[1] for l in lines] == [
        "sources.lm.site: layer 9 does not exist: the model has 6 layers (0-5)",
        "sources.lm.corpus: give exactly one of builtin, hf or files (got builtin, files)",
        "sources.lm.model.n_heads: d_model 16 is not divisible by n_heads 3",
    ]


def test_sweep_forms():
    spec = load_spec_text(
        """\
        name: t
        seed: 3
        sources: {toy: {kind: toy, n_features: 16, dim: 8, correlation: [batch, none]}}
        sae:
          dict_ratio: {logspace: [-1, 2, 4], base: 2}
          l1: {logspace: [-2, 2, 5]}
          seed: {range: [0, 3]}
          train: {lr: {linspace: [1.0e-3, 2.0e-3, 3]}}
        """.replace("        ", ""),
        "s.yaml",
    )
    assert spec.sources["toy"].correlation == Values(("batch", "none"))
    assert spec.sae.dict_ratio.values() == (0.5, 1.0, 2.0, 4.0)
    assert spec.sae.l1.values() == (0.01, 0.1, 1.0, 10.0, 100.0)
    assert spec.sae.seed == Range(0, 3) and spec.sae.seed.values() == (0, 1, 2)
    assert spec.sae.train.lr == Linspace(1e-3, 2e-3, 3) and spec.sae.train.lr.values() == (1e-3, 1.5e-3, 2e-3)
    assert isinstance(spec.sae.l1, Logspace)


def test_bad_sweeps():
    lines = errors(MINIMAL.replace("l1: 0.1", "l1: []") + "  seed: {range: [0, 2.5]}\n  train: {steps: {logspace: [0, 1, 3]}}\n")
    assert lines[0].endswith("sae.l1: an empty sweep: give at least one value")
    assert lines[1].endswith("sae.seed: range expects [start, stop] or [start, stop, step] integers")
    assert lines[2].endswith("sae.train.steps: logspace gives 3.16227766017: expected an integer, got 3.16227766017")
    (line,) = errors(MINIMAL.replace("l1: 0.1", "l1: {geomspace: [1, 2, 3]}"))
    assert "expected a value, a list, or one of {logspace, linspace, range}" in line


def test_zip_groups_validated():
    base = MINIMAL.replace("dict_ratio: 1", "dict_ratio: [1, 2]").replace("l1: 0.1", "l1: [0.1, 0.2, 0.3]")
    lines = errors(base + "zip: [[sae.dict_ratio, sae.l1], [sae.train.lr, sae.l1]]\n")
    assert "zip[0]: zipped sweeps must have equal lengths: sae.dict_ratio has 2, sae.l1 has 3" in lines[0]
    assert "zip[1][0]: 'sae.train.lr' is not a swept field (swept: sae.dict_ratio, sae.l1)" in lines[1]
    assert "zip[1][1]: 'sae.l1' is already in zip group 0" in lines[2]


def test_overrides_validated_and_located():
    spec = load_spec_text(MINIMAL, "s.yaml", ["sae.train.steps=500", "sae.l1=[0.1, 0.3]", "seed=7"])
    assert spec.sae.train.steps == 500 and spec.sae.l1 == Values((0.1, 0.3)) and spec.seed == 7
    lines = errors(MINIMAL, ["sae.train.steps=abc", "sae.trian.steps=1", "nonsense", "sae.l1[0]=1"])
    assert lines == [
        "--set nonsense: expected PATH=VALUE, e.g. sae.train.steps=500",
        "--set sae.l1[0]=1: 'sae.l1[0]' is not a dotted path like sae.train.steps",
    ]
    lines = errors(MINIMAL, ["sae.train.steps=abc", "sae.trian.steps=1"])
    assert lines == [
        "--set sae.train.steps=abc: sae.train.steps: expected an integer, got 'abc' (a string)",
        "--set sae.trian.steps=1: sae.trian: unknown key 'trian' (did you mean 'train'?)",
    ]


def test_resolved_spec_round_trips_with_same_hash():
    spec = load_spec("specs/toy_report.yaml")
    text = dump_spec(spec)
    again = load_spec_text(text, "resolved.yaml")
    assert again == spec
    assert spec_hash(again) == spec_hash(spec)
    assert dump_spec(again) == text


def test_int_and_float_spellings_hash_equal():
    a = load_spec_text(MINIMAL + "  train: {lr: 1}\n", "a.yaml")
    b = load_spec_text(MINIMAL + "  train: {lr: 1.0}\n", "b.yaml")
    assert spec_hash(a) == spec_hash(b)
    c = load_spec_text(MINIMAL + "  train: {lr: 1.5}\n", "c.yaml")
    assert spec_hash(a) != spec_hash(c)


def test_strings_that_look_like_numbers_survive_dump():
    spec = load_spec_text(MINIMAL.replace("name: t", "name: '1e5'") + "description: 'no'\n", "s.yaml")
    again = load_spec_text(dump_spec(spec), "r.yaml")
    assert again.name == "1e5" and again.description == "no"


def test_every_shipped_spec_loads():
    import pathlib

    for path in sorted(pathlib.Path("specs").glob("*.yaml")):
        assert isinstance(load_spec(path), schema.Spec), path
