"""End to end on a tiny toy spec: bundles, caching, resume, determinism, the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from tiny import TINY

from engine.cli import sae_diff, sae_run
from engine.plan import make_plan
from engine.runner import run
from engine.spec import load_spec, load_spec_text
from sae.metrics import mmcs_truth


@pytest.fixture(scope="module")
def tiny_spec_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("spec") / "tiny.yaml"
    p.write_text(TINY)
    return p


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_spec_file):
    results = tmp_path_factory.mktemp("results")
    outcome = run(make_plan(load_spec(tiny_spec_file)), results)
    return results, outcome


def test_bundle_layout(first_run):
    results, outcome = first_run
    assert outcome.status == "created" and outcome.trained == 4
    b = outcome.path
    assert b.name.startswith("tiny-") and len(b.name) == len("tiny-") + 12
    meta = json.loads((b / "bundle.json").read_text())
    for key in ("schema", "spec_hash", "content_digest", "files", "code", "environment"):
        assert key in meta
    env, code = meta["environment"], meta["code"]
    assert env["threads"] == 2
    for key in ("python", "cpu", "cpu_flags", "torch_cpu_capability", "platform"):
        assert env[key], key
    for package in ("torch", "numpy", "attrs", "cattrs", "safetensors"):
        assert env["packages"][package], package
    assert len(code["fingerprint"]) == 64 and code["version"]
    if code["git"] is not None:
        assert len(code["git"]["commit"]) == 40 and isinstance(code["git"]["dirty"], bool)
    files = set(meta["files"])
    assert {"spec.yaml", "metrics.json", "sources/toy/ground_truth.safetensors"} <= files
    assert sum(f.endswith("sae.safetensors") for f in files) == 4
    assert (b / "run.json").exists() and "run.json" not in files


def test_reported_mmcs_recomputes_from_saved_files(first_run):
    _, outcome = first_run
    b = outcome.path
    metrics = json.loads((b / "metrics.json").read_text())
    truth = load_file(b / "sources/toy/ground_truth.safetensors")["features"]
    for cell_id, cell in metrics["cells"].items():
        atoms = load_file(b / f"cells/{cell_id}/sae.safetensors")["decoder"]
        # by hand: cosine of every feature with every atom, max over atoms, mean over features
        f = truth / truth.norm(dim=1, keepdim=True)
        a = atoms / atoms.norm(dim=1, keepdim=True)
        by_hand = (f @ a.T).max(dim=1).values.mean().item()
        assert cell["metrics"]["mmcs_truth"] == pytest.approx(by_hand, abs=1e-6)
        assert cell["metrics"]["mmcs_truth"] == pytest.approx(mmcs_truth(truth, atoms)["mmcs_truth"], abs=1e-7)


def test_rerun_is_a_cache_hit(first_run, tiny_spec_file):
    results, outcome = first_run
    again = run(make_plan(load_spec(tiny_spec_file)), results)
    assert again.status == "cached" and again.path == outcome.path


def test_same_spec_twice_gives_identical_content(first_run, tiny_spec_file, tmp_path):
    _, outcome = first_run
    other = run(make_plan(load_spec(tiny_spec_file)), tmp_path)
    a = json.loads((outcome.path / "bundle.json").read_text())
    b = json.loads((other.path / "bundle.json").read_text())
    assert a["content_digest"] == b["content_digest"]
    assert a["files"] == b["files"]


def test_resume_reuses_finished_cells(first_run, tiny_spec_file, tmp_path):
    results, outcome = first_run
    shutil.copytree(results / ".cells", tmp_path / ".cells")
    # as if the run died after its cells but before the bundle
    resumed = run(make_plan(load_spec(tiny_spec_file)), tmp_path)
    assert resumed.trained == 0 and resumed.reused == 4
    assert json.loads((resumed.path / "bundle.json").read_text())["content_digest"] == outcome.meta["content_digest"]


def test_adding_a_cell_leaves_other_cells_byte_identical(first_run, tmp_path):
    _, outcome = first_run
    grown = run(make_plan(load_spec_text(TINY.replace("[0.03, 0.1]", "[0.01, 0.03, 0.1]"), "g.yaml")), tmp_path)
    old = json.loads((outcome.path / "bundle.json").read_text())["files"]
    new = json.loads((grown.path / "bundle.json").read_text())["files"]
    cell_files = [f for f in old if f.startswith("cells/")]
    assert cell_files and all(new[f] == old[f] for f in cell_files)
    # trained afresh in a new results dir, in groups of three instead of two: same bytes
    assert grown.trained == 6


def test_cell_alone_equals_cell_in_a_batch(first_run, tmp_path):
    _, outcome = first_run
    alone = run(make_plan(load_spec_text(TINY.replace("[0.03, 0.1]", "0.1").replace("[1, 2]", "2"), "a.yaml")), tmp_path)
    (cell_id,) = json.loads((alone.path / "metrics.json").read_text())["cells"]
    old = json.loads((outcome.path / "bundle.json").read_text())["files"]
    new = json.loads((alone.path / "bundle.json").read_text())["files"]
    assert new[f"cells/{cell_id}/sae.safetensors"] == old[f"cells/{cell_id}/sae.safetensors"]


def test_cli_run_cache_and_verify(tiny_spec_file, tmp_path):
    cli = CliRunner()
    r = cli.invoke(sae_run, [str(tiny_spec_file), "--results", str(tmp_path), "--set", "sae.train.steps=60"])
    assert r.exit_code == 0, r.output
    assert "created:" in r.output and "mmcs_truth" in r.output
    r = cli.invoke(sae_run, [str(tiny_spec_file), "--results", str(tmp_path), "--set", "sae.train.steps=60"])
    assert r.exit_code == 0 and "cached:" in r.output
    (bundle,) = [p for p in tmp_path.iterdir() if p.name.startswith("tiny-")]
    assert cli.invoke(sae_run, ["--verify", str(bundle)]).exit_code == 0
    assert cli.invoke(sae_diff, ["--verify", str(bundle)]).exit_code == 0
    f = next(bundle.glob("cells/*/sae.safetensors"))
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    r = cli.invoke(sae_run, ["--verify", str(bundle)])
    assert r.exit_code == 1 and f"changed file {f.relative_to(bundle).as_posix()}" in r.output
    r = cli.invoke(sae_run, [str(tiny_spec_file), "--results", str(tmp_path), "--set", "sae.train.steps=60"])
    assert r.exit_code == 2 and "fails verification" in r.output and "Traceback" not in r.output


def test_cli_bad_spec_exits_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("steps: 150", "steps: 1e2").replace("dim: 8", "dimm: 8"))
    r = CliRunner().invoke(sae_run, [str(bad), "--results", str(tmp_path / "out")])
    assert r.exit_code == 2
    assert r.output.splitlines() == [
        f"{bad}:4:36: sources.toy.dimm: unknown key 'dimm' (did you mean 'dim'?)",
        f"{bad}:8:18: sae.train.steps: expected an integer, got 100.0 (write 100)",
    ]
    assert not (tmp_path / "out").exists()


def test_cli_dry_run_and_usage_errors(tiny_spec_file, tmp_path):
    cli = CliRunner()
    r = cli.invoke(sae_run, [str(tiny_spec_file), "--dry-run", "--results", str(tmp_path / "out")])
    assert r.exit_code == 0 and "4 cells" in r.output
    assert not (tmp_path / "out").exists()
    assert cli.invoke(sae_run, []).exit_code == 2
    assert cli.invoke(sae_run, [str(tiny_spec_file), "--bogus"]).exit_code == 2
    assert cli.invoke(sae_run, [str(tiny_spec_file), "--verify", "x"]).exit_code == 2
    assert cli.invoke(sae_run, [str(tiny_spec_file), "--threads", "0"]).exit_code == 2


def test_threads_flag_is_part_of_identity(tiny_spec_file):
    one = make_plan(load_spec(tiny_spec_file, ["run.threads=1"]))
    two = make_plan(load_spec(tiny_spec_file))
    assert one.spec_hash != two.spec_hash
    assert torch.get_num_threads() >= 1


def test_a_failing_cell_does_not_take_its_batch_mates(tmp_path, monkeypatch):
    from sae.relu_l1 import ReluL1

    step = ReluL1.loss_and_grad_

    def poisoned(self, x, *args, **kwargs):  # the member with l1 == 0.5 diverges at once
        out = step(self, x, *args, **kwargs)
        out["loss"] = torch.where(self.l1 == 0.5, torch.full_like(out["loss"], float("nan")), out["loss"])
        return out

    monkeypatch.setattr(ReluL1, "loss_and_grad_", poisoned)
    spec = tmp_path / "nan.yaml"
    spec.write_text(TINY.replace("[0.03, 0.1]", "[0.1, 0.5]").replace("[1, 2]", "1"))
    plan = make_plan(load_spec(spec))
    bad = next(c for c in plan.cells if c.sae.sparsity == 0.5)
    good = next(c for c in plan.cells if c.sae.sparsity == 0.1)
    cli = CliRunner()
    r = cli.invoke(sae_run, [str(spec), "--results", str(tmp_path / "r")])
    assert r.exit_code == 1, r.output
    assert f"error: cell {bad.id}: non-finite training loss at step 0" in r.output
    assert "Traceback" not in r.output
    assert (tmp_path / "r/.cells" / good.key / "done.json").exists()
    assert not (tmp_path / "r/.cells" / bad.key).exists()
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.startswith("tiny")]
    r = cli.invoke(sae_run, [str(spec), "--results", str(tmp_path / "r")])
    assert r.exit_code == 1 and "1 of 2 cells already finished" in r.output


def test_device_cuda_and_auto(tiny_spec_file):
    auto = make_plan(load_spec(tiny_spec_file, ["run.device=auto"]))
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert auto.spec.run.device == expected
    assert [c.key for c in auto.cells] == [c.key for c in make_plan(load_spec(tiny_spec_file, [f"run.device={expected}"])).cells]
    if not torch.cuda.is_available():
        r = CliRunner().invoke(sae_run, [str(tiny_spec_file), "--set", "run.device=cuda", "--dry-run"])
        assert r.exit_code == 2 and "run.device: cuda requested, but no CUDA GPU is available" in r.output


def test_a_damaged_finished_cell_is_recomputed(first_run, tiny_spec_file, tmp_path):
    results, outcome = first_run
    shutil.copytree(results / ".cells", tmp_path / ".cells")
    damaged = next((tmp_path / ".cells").iterdir()) / "sae.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-7])  # truncated
    resumed = run(make_plan(load_spec(tiny_spec_file)), tmp_path)
    assert resumed.trained == 1 and resumed.reused == 3
    assert json.loads((resumed.path / "bundle.json").read_text())["content_digest"] == outcome.meta["content_digest"]
