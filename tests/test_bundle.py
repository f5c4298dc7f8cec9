"""Atomic bundle writing and verification."""

from __future__ import annotations

import json
import re

import pytest

from engine.bundle import BundleWriter, read_meta, verify
from engine.errors import BundleError


def make_bundle(path, payload=b"weights"):
    w = BundleWriter(path)
    w.write_text("spec.yaml", "name: t\n")
    w.write_json("metrics.json", {"x": 1.5})
    w.write_bytes("cells/a/sae.safetensors", payload)
    w.write_bytes("report/fig.png", b"png")
    return w.finish({"spec_hash": "abc"}, {"seconds": 1.0})


def test_written_bundle_verifies(tmp_path):
    meta, published = make_bundle(tmp_path / "b")
    assert published
    assert sorted(meta["files"]) == ["cells/a/sae.safetensors", "metrics.json", "report/fig.png", "spec.yaml"]
    v = verify(tmp_path / "b")
    assert v.ok and v.meta == meta
    assert not list(tmp_path.glob(".tmp-*"))


def test_digest_ignores_report_and_run_json(tmp_path):
    a, _ = make_bundle(tmp_path / "a")
    b, _ = make_bundle(tmp_path / "b")
    assert a["content_digest"] == b["content_digest"]
    w = BundleWriter(tmp_path / "c")
    w.write_text("spec.yaml", "name: t\n")
    w.write_json("metrics.json", {"x": 1.5})
    w.write_bytes("cells/a/sae.safetensors", b"weights")
    w.write_bytes("report/fig.png", b"another rendering")
    c, _ = w.finish({"spec_hash": "abc"}, {"seconds": 99.0})
    assert c["content_digest"] == a["content_digest"]
    d, _ = make_bundle(tmp_path / "d", payload=b"weightz")
    assert d["content_digest"] != a["content_digest"]


def test_changed_missing_and_extra_files_are_named(tmp_path):
    make_bundle(tmp_path / "b")
    (tmp_path / "b/cells/a/sae.safetensors").write_bytes(b"weightS")
    (tmp_path / "b/metrics.json").unlink()
    (tmp_path / "b/cells/a/notes.txt").write_text("hi")
    v = verify(tmp_path / "b")
    assert not v.ok
    assert v.changed == ("cells/a/sae.safetensors",)
    assert v.missing == ("metrics.json",)
    assert v.extra == ("cells/a/notes.txt",)
    assert len(v.lines()) == 3


def test_first_writer_wins(tmp_path):
    make_bundle(tmp_path / "b")
    _, published = make_bundle(tmp_path / "b", payload=b"other")
    assert not published
    assert verify(tmp_path / "b").ok
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda p: p.unlink(), "not a bundle (no bundle.json)"),
        (lambda p: p.write_text("{not json"), "corrupt (JSONDecodeError"),
        (lambda p: p.write_text("[]"), "corrupt (expected a JSON object)"),
        (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "schema": 99})), "bundle schema 99 is newer"),
        (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "files": {}})), "content_digest does not match"),
        (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "files": 3})), "'files' must map paths"),
    ],
)
def test_unusable_bundles_raise(tmp_path, mutate, message):
    make_bundle(tmp_path / "b")
    mutate(tmp_path / "b/bundle.json")
    with pytest.raises(BundleError, match=re.escape(message)):
        read_meta(tmp_path / "b")


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no such bundle"):
        verify(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(BundleError, match="not a directory"):
        verify(tmp_path / "f")
