"""Bundles that are broken, edited, foreign or not bundles at all, through the CLI.

`sae-diff A B` exits 2 with one line naming the file at fault for anything unusable (also a
bundle whose files fail verification). `sae-diff --verify` and `sae-run --verify` exit 1 with
one line per changed, missing or extra file when verification finds differences, and 2 with one
line when the input is not a usable bundle. Never a traceback. Plus: nothing in the code loads
a pickle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine import tensors as tensors_io
from engine.bundle import content_digest
from engine.cli import sae_diff, sae_run
from engine.hashing import sha256_file, stable_json
from tests.tiny import TINY

ROOT = Path(__file__).parent.parent
SMALL = ["--set", "sae.train.steps=20", "--set", "eval.samples=128", "--set", "eval.curve_every=10", "--set", "sae.dict_ratio=1", "-q"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bundles")
    (root / "tiny.yaml").write_text(TINY)
    r = CliRunner().invoke(sae_run, [str(root / "tiny.yaml"), "--results", str(root / "results"), *SMALL])
    assert r.exit_code == 0, r.output
    (bundle,) = (root / "results").glob("tiny-*")
    return bundle


def invoke(cmd, args):
    r = CliRunner().invoke(cmd, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), f"{args}: raised {r.exception!r}"
    assert "Traceback" not in r.output
    return r


def rehash(b: Path) -> None:
    """Make bundle.json agree with the files again: a consistent bundle with bad content."""
    meta = json.loads((b / "bundle.json").read_text())
    meta["files"] = {k: sha256_file(b / k) for k in meta["files"] if (b / k).is_file()}
    meta["content_digest"] = content_digest(meta["files"])
    (b / "bundle.json").write_text(stable_json(meta))


def edit_meta(**changes):
    def edit(b: Path):
        meta = json.loads((b / "bundle.json").read_text())
        meta.update(changes)
        (b / "bundle.json").write_text(json.dumps(meta))

    return edit


def first_sae(b: Path) -> Path:
    return min(b.glob("cells/*/sae.safetensors"))


def truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:100])


def flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))


def drop_decoder(p: Path) -> None:
    tensors = tensors_io.from_bytes(p.read_bytes())
    del tensors["decoder"]
    p.write_bytes(tensors_io.to_bytes(tensors, {}))


def flat_decoder(p: Path) -> None:
    tensors = tensors_io.from_bytes(p.read_bytes())
    tensors["decoder"] = tensors["decoder"].flatten()
    p.write_bytes(tensors_io.to_bytes(tensors, {}))


def listed(name: str):
    """bundle.json lists one more file, ``name`` (its digest updated: a consistent list)."""

    def edit(b: Path) -> None:
        meta = json.loads((b / "bundle.json").read_text())
        meta["files"][name] = "0" * 64
        meta["content_digest"] = content_digest(meta["files"])
        (b / "bundle.json").write_text(json.dumps(meta))

    return edit


listed_outside = listed("../../etc/passwd")

# what a bundle holds is echoed escaped and on one line (engine.errors.shown)
NEWLINE_NAME = "notes\n\tx\x1b[31m.txt"
NEWLINE_SHOWN = r"notes\\n\\tx\\x1b\[31m\.txt"


# (mutation, consistent: re-hash bundle.json afterwards, expected message pattern)
UNUSABLE = {
    "no_bundle_json": (lambda b: (b / "bundle.json").unlink(), False, r"^{b}: not a bundle \(no bundle\.json\)$"),
    "bundle_json_not_json": (lambda b: (b / "bundle.json").write_text("{not json"), False, r"^{b}/bundle\.json: corrupt \(JSONDecodeError: .*\)$"),
    "bundle_json_binary": (lambda b: (b / "bundle.json").write_bytes(b"\xff\xfe\x00garbage"), False, r"^{b}/bundle\.json: corrupt \(UnicodeDecodeError: .*\)$"),
    "bundle_json_a_list": (lambda b: (b / "bundle.json").write_text("[1, 2]"), False, r"^{b}/bundle\.json: corrupt \(expected a JSON object\)$"),
    "schema_from_newer_version": (edit_meta(schema=2), False, r"^{b}/bundle\.json: bundle schema 2 is newer than this version understands \(1\); upgrade sae-repro$"),
    "schema_unknown": (edit_meta(schema=0), False, r"^{b}/bundle\.json: unknown bundle schema 0$"),
    "schema_a_string": (edit_meta(schema="1"), False, r"^{b}/bundle\.json: corrupt \(no integer 'schema'\)$"),
    "digest_edited": (edit_meta(content_digest="0" * 64), False, r"^{b}/bundle\.json: corrupt \(content_digest does not match its file list\)$"),
    "files_not_a_mapping": (edit_meta(files=["a"]), False, r"^{b}/bundle\.json: corrupt \('files' must map paths to sha256 digests\)$"),
    "no_spec_hash": (edit_meta(spec_hash=None), False, r"^{b}/bundle\.json: corrupt \(no 'spec_hash'\)$"),
    "listed_file_outside_with_a_newline": (listed("../\n../x"), False, r"^{b}/bundle\.json: corrupt \(file path '\.\./\\n\.\./x' leaves the bundle\)$"),
    "metrics_cell_id_with_a_newline_rehashed": (
        lambda b: (b / "metrics.json").write_text(json.dumps({"cells": {"a\nb": 1}})),
        True,
        r"^{b}/metrics\.json: corrupt \(cells\.a\\nb needs 'source', 'sae' and 'metrics'\)$",
    ),
    "metrics_cell_id_long_rehashed": (
        lambda b: (b / "metrics.json").write_text(json.dumps({"cells": {"../" + "x" * 5000: {"source": "toy", "sae": {}, "metrics": {}}}})),
        True,
        r"^{b}/metrics\.json: corrupt \(cell id '\.\./x{40,80}\u2026x{20,40}' \(5003 chars\) is not a plain name\)$",
    ),
    "listed_file_outside": (listed_outside, False, r"^{b}/bundle\.json: corrupt \(file path '\.\./\.\./etc/passwd' leaves the bundle\)$"),
    "safetensors_truncated_rehashed": (lambda b: truncate(first_sae(b)), True, r"^{b}/cells/[^/]+/sae\.safetensors: not a readable safetensors file \(.+\)$"),
    "safetensors_no_decoder_rehashed": (lambda b: drop_decoder(first_sae(b)), True, r"^{b}/cells/[^/]+/sae\.safetensors: no tensor 'decoder' \(has: encoder\.bias, encoder\.weight, firing_frequency\)$"),
    "safetensors_flat_decoder_rehashed": (lambda b: flat_decoder(first_sae(b)), True, r"^{b}/cells/[^/]+/sae\.safetensors: tensor 'decoder' has shape \[\d+\] and dtype torch\.float32, expected 2 dimensions of floats$"),
    "metrics_bad_shape_rehashed": (lambda b: (b / "metrics.json").write_text('{"cells": {"a": 1}}'), True, r"^{b}/metrics\.json: corrupt \(cells\.a needs 'source', 'sae' and 'metrics'\)$"),
    "metrics_not_json_rehashed": (lambda b: (b / "metrics.json").write_text("{"), True, r"^{b}/metrics\.json: corrupt \(JSONDecodeError: .*\)$"),
    "metrics_cell_escapes_rehashed": (
        lambda b: (b / "metrics.json").write_text(json.dumps({"cells": {"../../x": {"source": "toy", "sae": {}, "metrics": {}}}})),
        True,
        r"^{b}/metrics\.json: corrupt \(cell id '\.\./\.\./x' is not a plain name\)$",
    ),
    "spec_yaml_invalid_rehashed": (lambda b: (b / "spec.yaml").write_text("name: [\n"), True, r"^{b}/spec\.yaml:2:1: invalid YAML: .* \(a corrupt bundle\)$"),
    "spec_yaml_a_list_rehashed": (lambda b: (b / "spec.yaml").write_text("- 1\n"), True, r"^{b}/spec\.yaml: corrupt \(expected a mapping, got list\)$"),
}

# verification finds differences: `--verify` exits 1 naming each file, `sae-diff A B` exits 2
CHANGED = {
    "safetensors_truncated": (lambda b: truncate(first_sae(b)), r"changed file cells/[^/]+/sae\.safetensors \(sha256 differs from bundle\.json\)"),
    "safetensors_one_bit": (lambda b: flip_byte(first_sae(b)), r"changed file cells/[^/]+/sae\.safetensors \(sha256 differs from bundle\.json\)"),
    "metrics_edited": (lambda b: (b / "metrics.json").write_text("{}"), r"changed file metrics\.json \(sha256 differs from bundle\.json\)"),
    "file_missing": (lambda b: first_sae(b).unlink(), r"missing file cells/[^/]+/sae\.safetensors"),
    "file_extra": (lambda b: (b / "notes.txt").write_text("hi"), r"extra file notes\.txt \(not listed in bundle\.json\)"),
    "file_extra_named_with_a_newline": (lambda b: (b / NEWLINE_NAME).write_text("hi"), rf"extra file {NEWLINE_SHOWN} \(not listed in bundle\.json\)"),
    "file_extra_named_not_utf8": (lambda b: (b / os.fsdecode(b"\xff\xfe.txt")).write_text("hi"), r"extra file \\udcff\\udcfe\.txt \(not listed in bundle\.json\)"),
    "file_listed_with_a_newline_missing": (listed(NEWLINE_NAME), rf"missing file {NEWLINE_SHOWN}"),
}


def broken_copy(base: Path, tmp_path: Path, mutate, consistent: bool = False) -> Path:
    b = tmp_path / "b"
    shutil.copytree(base, b)
    mutate(b)
    if consistent:
        rehash(b)
    return b


@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_unusable_bundle(case, base, tmp_path):
    mutate, consistent, pattern = UNUSABLE[case]
    b = broken_copy(base, tmp_path, mutate, consistent)
    expect = re.compile(pattern.replace("{b}", re.escape(str(b))))
    r = invoke(sae_diff, [base, b])
    assert r.exit_code == 2 and r.stdout == "", r.output
    (line,) = r.stderr.splitlines()
    assert expect.match(line), line
    if not consistent:  # a consistent bundle verifies: its content is what's wrong
        for cmd, args in ((sae_diff, ["--verify", b]), (sae_run, ["--verify", b])):
            r = invoke(cmd, args)
            assert r.exit_code == 2 and r.stderr.splitlines() == [line], r.output


@pytest.mark.parametrize("case", sorted(CHANGED))
def test_changed_bundle(case, base, tmp_path):
    mutate, pattern = CHANGED[case]
    b = broken_copy(base, tmp_path, mutate)
    expect = re.compile(f"^{re.escape(str(b))}: {pattern}$")
    for cmd, args in ((sae_diff, ["--verify", b]), (sae_run, ["--verify", b])):
        r = invoke(cmd, args)
        assert r.exit_code == 1 and r.stdout == "", r.output
        (line,) = r.stderr.splitlines()
        assert expect.match(line), line
    r = invoke(sae_diff, [base, b])
    assert r.exit_code == 2
    (line,) = r.stderr.splitlines()
    assert expect.match(line), line


@pytest.mark.parametrize("what", ["missing", "a_file", "empty_dir", "a_results_dir"])
def test_not_a_bundle(what, base, tmp_path):
    p = {"missing": tmp_path / "nope", "a_file": tmp_path / "f.txt", "empty_dir": tmp_path / "d", "a_results_dir": base.parent}[what]
    (tmp_path / "f.txt").write_text("x")
    (tmp_path / "d").mkdir()
    expected = {
        "missing": f"{p}: no such bundle",
        "a_file": f"{p}: not a bundle (not a directory)",
        "empty_dir": f"{p}: not a bundle (no bundle.json)",
        "a_results_dir": f"{p}: not a bundle (no bundle.json)",
    }[what]
    for cmd, args in ((sae_diff, [base, p]), (sae_diff, [p, base]), (sae_diff, ["--verify", p]), (sae_run, ["--verify", p])):
        r = invoke(cmd, args)
        assert r.exit_code == 2 and r.stderr.splitlines() == [expected], (args, r.output)


def test_intact_bundle_passes(base):
    r = invoke(sae_diff, [base, base])
    assert r.exit_code == 0 and "verdict: identical" in r.stdout
    assert invoke(sae_run, ["--verify", base]).exit_code == 0


def test_rerun_over_a_damaged_bundle_refuses(base, tmp_path):
    """`sae-run` finds its bundle damaged: exit 2, says how to inspect and replace it."""
    results = tmp_path / "results"
    b = results / base.name
    shutil.copytree(base, b)
    flip_byte(first_sae(b))
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    r = invoke(sae_run, [spec, "--results", results, *SMALL])
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"{b}: exists but fails verification (1 changed, 0 missing, 0 extra files); run `sae-run --verify {b}` for details, or --rerun to replace it"
    ]


def test_bundle_fields_are_echoed_on_one_line(base, tmp_path):
    """`sae-report` quotes bundle.json's spec_hash when it disagrees: escaped, one line."""
    from engine.cli import sae_report

    b = broken_copy(base, tmp_path, edit_meta(spec_hash="ab\ncd\x1bef0123456789"))
    r = invoke(sae_report, [b])
    assert r.exit_code == 2, r.output
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"{b}: spec.yaml hashes to ") and "bundle.json says ab\\ncd\\x1bef0123 (made by another version?)" in line, line


# ------------------------------------------------------------------ never a pickle

PICKLE_LOADERS = re.compile(
    r"torch\.load\b|\b(import|from) (c|_)?pickle\b|\bpickle\.loads?\(|\bdill\b|joblib\.load|allow_pickle\s*=\s*True|\bnp\.load\(|numpy\.load\(|pd\.read_pickle|\.read_pickle\("
)


def test_no_code_path_can_load_a_pickle():
    """`torch.load` of a foreign file can run code; only safetensors and JSON/YAML are read."""
    offenders = []
    for pkg in ("engine", "sae", "toydata"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if PICKLE_LOADERS.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert offenders == []


def test_tensors_are_read_through_one_safetensors_module():
    """Every tensor file is read by engine/tensors.py, which uses safetensors (no pickle)."""
    importers = []
    for pkg in ("engine", "sae", "toydata"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if re.search(r"^\s*(from|import) safetensors", path.read_text(), re.MULTILINE):
                importers.append(path.relative_to(ROOT).as_posix())
    assert importers == ["engine/tensors.py"]
    assert "tensors_io.read_file" in (ROOT / "engine/diff.py").read_text()  # foreign bundles: checked reads
