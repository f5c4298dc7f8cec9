"""Wrong command lines: click's usage errors, exit 2, no traceback, nothing written."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from engine.cli import sae_diff, sae_run
from tests.tiny import TINY


def invoke(cmd, args):
    r = CliRunner().invoke(cmd, args)
    assert isinstance(r.exception, SystemExit), f"{args}: raised {r.exception!r}"
    assert "Traceback" not in r.output and r.stdout == ""
    return r


def usage_error(r, name: str, error: str) -> None:
    """Click's format: the usage line, a hint, then ``Error: ...``."""
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"Usage: {name} [OPTIONS]")
    assert lines[-1].startswith(f"Error: {error}"), lines[-1]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(TINY)
    (tmp_path / "a_file").write_text("x")
    return tmp_path


RUN = [
    (["s.yaml", "--bogus"], "No such option '--bogus'."),
    (["s.yaml", "--dry-rn"], "No such option '--dry-rn'. (Did you mean one of: '--dry-run', '--rerun'?)"),
    ([], "missing SPEC (a YAML file such as specs/toy_quick.yaml)"),
    (["s.yaml", "other.yaml"], "Got unexpected extra argument (other.yaml)"),
    (["s.yaml", "--dry-run", "--rerun"], "--dry-run and --rerun exclude each other"),
    (["s.yaml", "--threads", "2", "--set", "run.threads=1"], "--threads and --set run.threads=... exclude each other"),
    (["s.yaml", "--threads", "0"], "Invalid value for '--threads': 0 is not in the range 1<=x<=256."),
    (["s.yaml", "--threads", "two"], "Invalid value for '--threads': 'two' is not a valid integer range."),
    (["s.yaml", "--results", "a_file"], "Invalid value for '--results': Directory 'a_file' is a file."),
    (["s.yaml", "--verify", "results/x"], "--verify takes a bundle and no SPEC, --set, --dry-run or --rerun"),
    (["--verify", "results/x", "--rerun"], "--verify takes a bundle and no SPEC, --set, --dry-run or --rerun"),
]


@pytest.mark.parametrize("args,error", RUN)
def test_sae_run_usage_errors(args, error, in_tmp):
    usage_error(invoke(sae_run, args), "sae-run", error)
    assert not (in_tmp / "results").exists()


def test_sae_run_option_missing_its_value(in_tmp):
    r = invoke(sae_run, ["s.yaml", "--set"])
    assert r.exit_code == 2 and r.stderr.splitlines()[-1] == "Error: Option '--set' requires an argument."


def test_sae_run_missing_spec_file(in_tmp):
    r = invoke(sae_run, ["nope.yaml"])
    assert r.exit_code == 2 and r.stderr.splitlines() == ["nope.yaml: no such file"]
    assert not (in_tmp / "results").exists()


def test_sae_run_results_that_cannot_be_created(in_tmp):
    """`--results` under a file: one line, exit 2, before any work (not a traceback from mkdir)."""
    r = invoke(sae_run, ["s.yaml", "--results", "a_file/results", "-q"])
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [f"a_file/results: cannot create the results directory ({in_tmp / 'a_file'} is not a directory)"]


DIFF = [
    ([], "expected two bundles, got 0: sae-diff A B"),
    (["a"], "expected two bundles, got 1: sae-diff A B"),
    (["a", "b", "c"], "expected two bundles, got 3: sae-diff A B"),
    (["a", "b", "--bogus"], "No such option '--bogus'."),
    (["a", "b", "--rtol", "-1"], "Invalid value for '--rtol': -1.0 is not in the range x>=0."),
    (["a", "b", "--rtol", "abc"], "Invalid value for '--rtol': 'abc' is not a valid float range."),
    (["a", "b", "--min-mmcs", "2"], "Invalid value for '--min-mmcs': 2.0 is not in the range 0<=x<=1."),
    (["a", "b", "--count-tol", "nan"], "Invalid value for '--count-tol': nan is not a finite number."),
    (["a", "b", "--rtol", "inf"], "Invalid value for '--rtol': inf is not a finite number."),
    (["--verify"], "--verify needs at least one BUNDLE"),
    (["--verify", "--json", "a"], "--verify only checks hashes; it takes no --json or --all"),
]


@pytest.mark.parametrize("args,error", DIFF)
def test_sae_diff_usage_errors(args, error, in_tmp):
    usage_error(invoke(sae_diff, args), "sae-diff", error)


def test_sae_diff_missing_bundles(in_tmp):
    r = invoke(sae_diff, ["a", "b"])
    assert r.exit_code == 2 and r.stderr.splitlines() == ["a: no such bundle"]


def test_help_is_not_an_error():
    for cmd in (sae_run, sae_diff):
        r = CliRunner().invoke(cmd, ["--help"])
        assert r.exit_code == 0 and "Usage:" in r.stdout
