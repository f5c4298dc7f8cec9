"""The bad-spec battery: every file in tests/bad_specs/ through `sae-run`, message by message.

Each must exit 2 with exactly the lines recorded in tests/bad_specs/expected.yaml on stderr,
no traceback, nothing on stdout and nothing under --results. Plus the cases that need flags
(--set, a missing file, an oversized file) and the time budget (refusal, --force, --dry-run).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from engine import budget
from engine.cli import sae_run
from engine.plan import make_plan
from engine.spec import MAX_SPEC_BYTES, load_spec, load_spec_text

HERE = Path(__file__).parent
BAD = HERE / "bad_specs"
SPECS = HERE.parent / "specs"
EXPECTED: dict[str, list[str]] = yaml.safe_load((BAD / "expected.yaml").read_text())
FILES = sorted(p.name for p in BAD.iterdir() if p.name != "expected.yaml")


def run_cli(args: list[str], results: Path):
    r = CliRunner().invoke(sae_run, [*args, "--results", str(results)])
    assert r.exception is None or isinstance(r.exception, SystemExit), f"{args}: raised {r.exception!r}"
    assert "Traceback" not in r.output, r.output
    return r


def assert_clean_refusal(r, results: Path, expected: list[str]) -> None:
    assert r.exit_code == 2, r.output
    assert r.stderr.splitlines() == expected
    assert r.stdout == ""
    assert not results.exists(), f"something was written under {results}"


def test_battery_is_complete():
    assert len(FILES) >= 40
    assert sorted(EXPECTED) == FILES, "every bad spec needs its expected lines, and no stale entries"
    assert all(EXPECTED[f] and all(line.startswith(f + ":") for line in EXPECTED[f]) for f in FILES)


@pytest.mark.parametrize("name", FILES)
def test_bad_spec(name, tmp_path, monkeypatch):
    monkeypatch.chdir(BAD)
    results = tmp_path / "results"
    assert_clean_refusal(run_cli([name], results), results, EXPECTED[name])


def test_real_process_exits_2_without_traceback(tmp_path):
    """The installed entry point, in a fresh interpreter: exit status and stderr as promised."""
    for name in ("binary_garbage.yaml", "a_directory.yaml", "many_problems.yaml"):
        p = subprocess.run(
            [sys.executable, "-c", "from engine.cli import sae_run; sae_run()", name, "--results", str(tmp_path / "r")],
            check=False, cwd=BAD, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(HERE.parent), "PATH": ""},
        )
        assert p.returncode == 2, p.stderr
        assert p.stderr.splitlines() == EXPECTED[name] and p.stdout == ""
        assert not (tmp_path / "r").exists()


MINIMAL = (BAD / "zero_dim.yaml").read_text().replace("dim: 0", "dim: 16")


@pytest.mark.parametrize(
    "args,expected",
    [
        (["missing.yaml"], ["missing.yaml: no such file"]),
        (["ok.yaml", "--set", "sae.l1=-1"], ["--set sae.l1=-1: sae.l1: must be >= 0, got -1.0"]),
        (["ok.yaml", "--set", "sae.trian.steps=5"], ["--set sae.trian.steps=5: sae.trian: unknown key 'trian' (did you mean 'train'?)"]),
        (["ok.yaml", "--set", "sae.l1=[0.1"], ["--set sae.l1=[0.1: sae.l1: invalid YAML: while parsing a flow sequence expected ',' or ']', but got '<stream end>'"]),
        (["ok.yaml", "--set", "sae.l1[0]=1"], ["--set sae.l1[0]=1: 'sae.l1[0]' is not a dotted path like sae.train.steps"]),
        (["ok.yaml", "--set", "steps"], ["--set steps: expected PATH=VALUE, e.g. sae.train.steps=500"]),
        (["ok.yaml", "--set", "name.x=1"], ["--set name.x=1: name: is not a mapping, cannot set a key inside it"]),
        (["ok.yaml", "--set", "sae.train.steps=1e3"], ["--set sae.train.steps=1e3: sae.train.steps: expected an integer, got 1000.0 (write 1000)"]),
    ],
)
def test_bad_flags_and_overrides(args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.yaml").write_text(MINIMAL)
    results = tmp_path / "results"
    assert_clean_refusal(run_cli(args, results), results, expected)


def test_oversized_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = MINIMAL.encode() + b"#" * MAX_SPEC_BYTES
    (tmp_path / "big.yaml").write_bytes(data)
    results = tmp_path / "results"
    expected = [f"big.yaml: is {len(data)} bytes; a spec is at most {MAX_SPEC_BYTES}"]
    assert_clean_refusal(run_cli(["big.yaml"], results), results, expected)


def test_scientific_notation_is_a_float_as_users_expect():
    """YAML 1.2: `1e-4` and `1.0e-4` are floats (PyYAML's YAML 1.1 would read a string); an
    integer field still refuses them, with the integer to write instead."""
    spec = load_spec_text(MINIMAL.replace("lr: 1.0e-3", "lr: 1e-4").replace("l1: [0.1, 0.3]", "l1: [1E-2, 3e-1, 2e0]"), "s.yaml")
    assert spec.sae.train.lr == 1e-4 and type(spec.sae.train.lr) is float
    assert spec.sae.l1.values() == (0.01, 0.3, 2.0)
    assert EXPECTED["sci_notation_for_int.yaml"][0].endswith("expected an integer, got 1000.0 (write 1000)")


# ------------------------------------------------------------------ the time budget


def test_dry_run_prints_the_estimate_of_an_absurd_plan(tmp_path, monkeypatch):
    monkeypatch.chdir(BAD)
    r = run_cli(["absurd_budget_sweep.yaml", "--dry-run"], tmp_path / "results")
    assert r.exit_code == 0
    assert r.stdout.splitlines()[-1] == "estimated time: 19 days (4000 cells: 19 days SAE training; single process at 100 GFLOP/s)"
    assert not (tmp_path / "results").exists()


def test_force_overrides_the_refusal(tmp_path, monkeypatch):
    from engine import runner

    calls = []

    def fake_run(plan, results, **kw):
        calls.append(len(plan.cells))
        raise KeyboardInterrupt  # stop before any work; the CLI reports it and exits 130

    monkeypatch.setattr(runner, "run", fake_run)
    monkeypatch.chdir(BAD)
    r = run_cli(["absurd_budget_size.yaml", "--force"], tmp_path / "results")
    assert calls == [4] and r.exit_code == 130
    plan = make_plan(load_spec(BAD / "absurd_budget_size.yaml"))
    with pytest.raises(budget.BudgetExceeded, match="refusing a plan estimated at 290 days"):
        budget.check(plan)
    assert budget.check(plan, force=True).total_s > budget.LIMIT_S


@pytest.mark.parametrize(
    "spec,overrides,measured_s",
    [
        # wall times recorded on the 2-core development machine (README "Specs", run.json);
        # toy_vs_lm's was recorded with the 2022 recipe at 6,000 fixed steps (a stop rule's
        # estimate is an upper bound, counted at max_steps)
        ("toy_quick.yaml", [], 29.4),
        ("toy_vs_lm.yaml", ["sae.train.stop=null", "sae.train.recipe=null", "sae.train.lr=1.0e-3", "sae.train.steps=6000"], 358.6),
    ],
)
def test_estimate_is_calibrated_on_recorded_runs(spec, overrides, measured_s):
    est = budget.estimate(make_plan(load_spec(SPECS / spec, overrides)))
    assert measured_s / 2 < est.total_s < measured_s * 2, est.line()


def test_shipped_specs_are_within_budget():
    for path in sorted(SPECS.glob("*.yaml")):
        budget.check(make_plan(load_spec(path)))


@pytest.mark.parametrize(
    "seconds,text",
    [(42, "42 s"), (210, "3.5 min"), (7.2 * 3600, "7.2 h"), (12 * 86400, "12 days"), (3 * 365.25 * 86400, "3 years"), (3.4e7 * 365.25 * 86400, "3.4e+07 years")],
)
def test_human_durations(seconds, text):
    assert budget.human(seconds) == text
