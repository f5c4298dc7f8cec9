"""Progress: bars with ETA on a terminal, plain lines elsewhere, nothing with --quiet."""

from __future__ import annotations

import io
import re

import pytest
from click.testing import CliRunner
from rich.console import Console
from tiny import TINY

from engine import progress
from engine.cli import sae_run
from engine.plan import make_plan
from engine.runner import run
from engine.spec import load_spec_text

SPEC = TINY.replace("steps: 150", "steps: 60") + "run: {threads: 1}\n"


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("spec") / "tiny.yaml"
    p.write_text(SPEC)
    return p


def test_plain_stage_lines_count_up_with_an_eta():
    lines: list[str] = []
    p = progress.PlainProgress(lines.append)
    with p.stage("cells", 3) as bar:
        bar.advance(1, "first")
        bar.advance(2, "rest")
    with p.stage("steps", 100, transient=True) as bar:
        bar.update(50)
    p.log("hello [not markup]")
    assert re.fullmatch(r"\[cells 1/3, ETA \d+s\] first", lines[0])
    assert lines[1:] == ["[cells 3/3] rest", "hello [not markup]"]  # no ETA once done; transient: silent


def test_eta_and_durations():
    assert progress._eta(1, 4, 10.0) == ", ETA 30s"
    assert progress._eta(0, 4, 10.0) == "" and progress._eta(4, 4, 10.0) == ""
    assert progress._duration(59.4) == "59s" and progress._duration(125) == "2m05s" and progress._duration(7320) == "2h02m"


def test_for_stream_picks_by_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert type(progress.for_stream(True, Tty())) is progress.Progress
    assert isinstance(progress.for_stream(False, io.StringIO()), progress.PlainProgress)
    assert isinstance(progress.for_stream(False, Tty()), progress.RichProgress)


def test_terminal_shows_bars_with_eta(tmp_path):
    buf = io.StringIO()
    bars = progress.RichProgress(Console(file=buf, force_terminal=True, width=120, color_system=None))
    try:
        outcome = run(make_plan(load_spec_text(SPEC, "tiny.yaml")), tmp_path, progress=bars)
    finally:
        bars.close()
    assert outcome.trained == 4
    out = buf.getvalue()
    assert "\x1b[" in out  # a live display (cursor control), not plain lines
    final = out.rsplit("\r", 1)[-1]
    for bar in ("sources", "cells"):
        assert re.search(rf"{bar}\s.*\s(1/1|4/4)\s+elapsed\s+0:00:\d\d\s+ETA\s+0:00:00", final), final
    assert "toy m=12 x2: 2 trained in" in out  # per-group lines scroll above the bars
    assert "training toy" not in final  # the per-group step bars are transient


def test_cli_plain_lines_when_not_a_terminal(spec_file, tmp_path):
    r = CliRunner().invoke(sae_run, [str(spec_file), "--results", str(tmp_path)])
    assert r.exit_code == 0, r.output
    err = r.stderr.splitlines()
    assert err[0].startswith("[sources 1/1] source toy ready")
    # groups run largest first (train_cells.make_groups)
    assert re.fullmatch(r"\[cells 2/4, ETA \d+s\] toy m=24 x2: 2 trained in \d+\.\ds", err[1])
    assert re.fullmatch(r"\[cells 4/4\] toy m=12 x2: 2 trained in \d+\.\ds", err[2])
    assert "\x1b[" not in r.output
    assert r.stdout.startswith("created:") and "mmcs_truth" in r.stdout


def test_cli_quiet_prints_only_the_result(spec_file, tmp_path):
    r = CliRunner().invoke(sae_run, [str(spec_file), "--results", str(tmp_path), "--quiet"])
    assert r.exit_code == 0, r.output
    assert r.stderr == ""
    (line,) = r.stdout.splitlines()
    assert re.fullmatch(r"created: .*/tiny-[0-9a-f]{12} \(4 cells trained, 0 reused\)", line)
