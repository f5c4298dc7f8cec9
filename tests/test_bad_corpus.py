"""Corpus files (`corpus: {files: [...]}`) that cannot be used, through `sae-run`.

Each gives exit 2 and one line naming the file, no traceback, no datasets log noise, and no
half-built cache: a file rejected before parsing leaves nothing under --results, and a parse
failure removes its cache directory (locks included).
"""

from __future__ import annotations

import hashlib

import pytest
from click.testing import CliRunner

from engine.cli import sae_run

SPEC = """\
name: corpus
sources:
  lm:
    kind: lm
    corpus: {{files: {files}}}
    model: {{d_model: 16, n_layers: 1, n_heads: 4, d_mlp: 64, context: 16}}
    train: {{tokens: 2000}}
    activations: {{tokens: 2000, ce_tokens: 500}}
    site: blocks.0.mlp.post
sae: {{dict_size: 8, l1: 0.1, train: {{steps: 5}}}}
eval: {{samples: 64, curve_every: 5}}
"""

GOOD = "First paragraph of text.\n\nSecond paragraph of text.\n"

# file name -> (content: bytes, "dir", or None for missing; the message after the name;
#               "early": rejected before any parser runs, "parse": the parser fails,
#               "content": parsed, then refused)
CASES = {
    "empty.txt": (b"", "file is empty", "early"),
    "binary.txt": (b"abc\x00\x01\x02def", "looks binary (NUL byte at offset 3), expected UTF-8 text", "early"),
    "latin1.txt": ("café\n\nau lait\n".encode("latin-1"), "not valid UTF-8 (byte offset 3)", "early"),
    "cut.txt": (b"text then a cut " + "é".encode()[:1], "not valid UTF-8 (truncated character at the end)", "early"),
    "missing.txt": (None, "no such file", "early"),
    "folder.txt": ("dir", "not a regular file", "early"),
    "slides.pdf": (b"%PDF-1.4", "unsupported file type '.pdf' (use .txt, .md, .jsonl, .json or .parquet)", "early"),
    "garbage.parquet": (b"not parquet at all", "not a parquet file (missing PAR1 magic)", "early"),
    "broken.jsonl": (b'{"text": "a"}\n{"text": \n', "could not be read as json (ArrowInvalid: JSON parse error: Invalid value. in row 1)", "parse"),
    "fake.parquet": (b"PAR1 garbage PAR1", "could not be read as parquet (ArrowInvalid: ", "parse"),
    "blank.txt": (b"\n\n   \n\t\n", "contains no text", "content"),
    "fields.jsonl": (b'{"body": "a"}\n{"body": "b"}\n', "no text field 'text' (fields: body); set corpus.text_field", "content"),
    "numbers.jsonl": (b'{"text": 1}\n{"text": 2}\n', "record 0 field 'text' is int, expected a string", "content"),
}


def run(tmp_path, monkeypatch, files: str):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.txt").write_text(GOOD)
    (tmp_path / "s.yaml").write_text(SPEC.format(files=files))
    r = CliRunner().invoke(sae_run, ["s.yaml", "--results", "results", "-q"])
    assert isinstance(r.exception, SystemExit) and r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.stdout == ""
    (line,) = r.stderr.splitlines()
    return line


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_corpus_file(name, tmp_path, monkeypatch):
    content, message, when = CASES[name]
    p = tmp_path / name
    if content == "dir":
        p.mkdir()
    elif content is not None:
        p.write_bytes(content)
    line = run(tmp_path, monkeypatch, f"[{name}, good.txt]")
    assert line.startswith(f"sources.lm.corpus: {name}: {message}"), line
    if when == "early":
        assert not (tmp_path / "results").exists()
    if when == "parse":  # the failed build's cache directory (keyed by the file's sha256) is gone
        digest = hashlib.sha256(content).hexdigest()[:32]
        assert not (tmp_path / "results/.cache/corpus/datasets" / digest).exists()


def test_one_document_is_not_enough(tmp_path, monkeypatch):
    (tmp_path / "one.txt").write_text("a single paragraph\n")
    line = run(tmp_path, monkeypatch, "[one.txt]")
    assert line == "sources.lm.corpus: one.txt: only one document, the train/validation split needs at least two (.txt files split at blank lines)"


def test_a_bad_file_after_a_good_one_is_named(tmp_path, monkeypatch):
    """The first bad file is named, whatever its position."""
    (tmp_path / "empty.md").write_text("")
    assert run(tmp_path, monkeypatch, "[good.txt, empty.md]") == "sources.lm.corpus: empty.md: file is empty"
