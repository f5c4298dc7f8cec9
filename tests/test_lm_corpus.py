"""engine.lm.corpus: builtin python-docs extraction, local files, hub offline, split and hash."""

import json
import sys
import sysconfig
from pathlib import Path

import pytest

from engine.lm.corpus import (
    MIN_DOC_CHARS,
    Corpus,
    CorpusError,
    _stdlib_files,
    cap_documents,
    content_hash,
    extract_python_docs,
    load_corpus,
    pydoc_topics,
    split_documents,
)
from engine.schema import CorpusSpec

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("lm-cache")


@pytest.fixture(scope="module")
def builtin(cache_dir):
    """The full builtin corpus, extracted once into a fresh cache (~4 s)."""
    return load_corpus(CorpusSpec(builtin="python-docs"), cache_dir)


def _must_not(what: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"expected not to {what}")

    return fail


# ----------------------------------------------------------------------------- builtin


def test_extraction_is_deterministic_and_parses_without_importing():
    sys.modules.pop("pydoc_data.topics", None)
    a = extract_python_docs(max_files=60)
    b = extract_python_docs(max_files=60)
    assert a == b
    assert "pydoc_data.topics" not in sys.modules  # read with ast, never imported
    origins = [o for o, _ in a]
    assert origins[0].startswith("topics:")
    assert any(o.startswith("topics:") for o in origins) and any(not o.startswith("topics:") for o in origins)
    texts = [t for _, t in a]
    assert all(len(t) >= MIN_DOC_CHARS for t in texts)
    assert len(set(texts)) == len(texts)  # exact duplicates dropped
    assert all(t == t.strip() for t in texts)


def test_extraction_skips_tests_and_third_party():
    files = [rel for rel, _ in _stdlib_files(STDLIB, None)]  # the walk only, no parsing
    assert len(files) > 500
    assert "json/decoder.py" in files and "inspect.py" in files
    for f in files:
        parts = f.split("/")
        assert not {"test", "tests", "idle_test", "site-packages", "pydoc_data"} & set(parts), f
        assert not parts[-1].startswith("test_"), f


def test_pydoc_topics_parsed_with_ast():
    topics = pydoc_topics(STDLIB / "pydoc_data" / "topics.py")
    assert len(topics) > 50
    names = [n for n, _ in topics]
    assert names == sorted(names) and "assert" in names


def test_builtin_corpus_cached_and_stable(builtin, cache_dir, monkeypatch):
    assert isinstance(builtin, Corpus)
    assert builtin.info["source"] == "builtin:python-docs"
    assert builtin.info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert builtin.info["chars"] > 1_000_000
    json.dumps(builtin.info)  # JSON-serialisable
    cached = list((cache_dir / "python-docs").glob("*.jsonl"))
    assert len(cached) == 1
    monkeypatch.setattr("engine.lm.corpus.extract_python_docs", _must_not("re-extract the cached corpus"))
    again = load_corpus(CorpusSpec(builtin="python-docs"), cache_dir)  # from the cache, no re-extraction
    assert again == builtin
    assert len(builtin.content_hash) == 64
    assert builtin.content_hash == content_hash(builtin.train, builtin.val)


def test_builtin_split_deterministic_disjoint(builtin, cache_dir):
    assert set(builtin.train).isdisjoint(builtin.val)
    frac = len(builtin.val) / (len(builtin.train) + len(builtin.val))
    assert 0.02 < frac < 0.09  # val_fraction 0.05, by hash
    other = load_corpus(CorpusSpec(builtin="python-docs", val_fraction=0.2), cache_dir)
    assert set(builtin.val) <= set(other.val)  # a larger fraction only adds validation documents
    assert other.content_hash != builtin.content_hash


def test_max_chars_caps_in_order(builtin, cache_dir):
    c = load_corpus(CorpusSpec(builtin="python-docs", max_chars=50_000), cache_dir)
    assert c.info["chars"] <= 50_000 and c.info["truncated"] is True
    assert len(c.train) >= 1 and len(c.val) >= 1
    assert c.content_hash != builtin.content_hash


def test_cap_and_split_helpers():
    docs = ["a" * 10, "b" * 10, "c" * 10]
    assert cap_documents(docs, None) == (docs, False)
    assert cap_documents(docs, 25) == (docs[:2], True)
    assert cap_documents(docs, 30) == (docs, False)
    assert cap_documents(["x" * 100], 40) == (["x" * 40], True)
    many = [f"document number {i}" for i in range(2000)]
    tr, va = split_documents(many, 0.1)
    assert (tr, va) == split_documents(many, 0.1)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == 2000
    assert 120 < len(va) < 280
    # adding documents never moves an existing one across the split
    tr2, va2 = split_documents(many + ["another one"], 0.1)
    assert set(va) <= set(va2) and set(tr) <= set(tr2)
    # tiny corpora still get a document on each side
    assert all(split_documents(["one doc", "two doc"], 0.05))


# ----------------------------------------------------------------------------- files


def test_files_txt_jsonl_json_parquet(tmp_path, cache_dir):
    txt = tmp_path / "a.txt"
    txt.write_text("First paragraph,\nstill first.\n\nSecond paragraph.\n\n\n\nThird one.\n", encoding="utf-8")
    jl = tmp_path / "b.jsonl"
    jl.write_text("".join(json.dumps({"body": f"record {i} text", "n": i}) + "\n" for i in range(5)), encoding="utf-8")
    js = tmp_path / "c.json"
    js.write_text(json.dumps([{"body": "json array one"}, {"body": "json array two"}]), encoding="utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pqf = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": ["parquet row one", "parquet row two", None], "x": [1, 2, 3]}), pqf)

    c = load_corpus(CorpusSpec(files=(str(txt),)), cache_dir)
    assert sorted(c.train + c.val) == sorted(["First paragraph,\nstill first.", "Second paragraph.", "Third one."])
    c = load_corpus(CorpusSpec(files=(str(jl), str(js), str(pqf)), text_field="body"), cache_dir)
    docs = set(c.train + c.val)
    assert docs == {f"record {i} text" for i in range(5)} | {"json array one", "json array two", "parquet row one", "parquet row two"}
    assert [f["documents"] for f in c.info["files"]] == [5, 2, 2]
    assert c == load_corpus(CorpusSpec(files=(str(jl), str(js), str(pqf)), text_field="body"), cache_dir)


def test_files_edited_content_is_not_served_from_stale_cache(tmp_path, cache_dir):
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps({"text": "old content here"}) + "\n" + json.dumps({"text": "second"}) + "\n", encoding="utf-8")
    a = load_corpus(CorpusSpec(files=(str(f),)), cache_dir)
    f.write_text(json.dumps({"text": "new content here"}) + "\n" + json.dumps({"text": "second"}) + "\n", encoding="utf-8")
    b = load_corpus(CorpusSpec(files=(str(f),)), cache_dir)
    assert sorted(a.train + a.val) == ["old content here", "second"]
    assert sorted(b.train + b.val) == ["new content here", "second"]


def _error(spec, cache_dir) -> str:
    with pytest.raises(CorpusError) as e:
        load_corpus(spec, cache_dir)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_files_errors_name_the_file(tmp_path, cache_dir):
    missing = tmp_path / "missing.txt"
    assert str(missing) in _error(CorpusSpec(files=(str(missing),)), cache_dir)

    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    msg = _error(CorpusSpec(files=(str(empty),)), cache_dir)
    assert str(empty) in msg and "empty" in msg

    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n\n", encoding="utf-8")
    msg = _error(CorpusSpec(files=(str(blank),)), cache_dir)
    assert str(blank) in msg and "no text" in msg

    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    msg = _error(CorpusSpec(files=(str(binary),)), cache_dir)
    assert str(binary) in msg and "binary" in msg

    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"text": "café au lait"}\n'.encode("latin-1"))
    msg = _error(CorpusSpec(files=(str(latin1),)), cache_dir)
    assert str(latin1) in msg and "UTF-8" in msg

    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text(json.dumps({"body": "some text"}) + "\n", encoding="utf-8")
    msg = _error(CorpusSpec(files=(str(nofield),)), cache_dir)
    assert str(nofield) in msg and "'text'" in msg and "body" in msg

    single = tmp_path / "single.txt"
    single.write_text("just one paragraph\nof two lines\n", encoding="utf-8")
    msg = _error(CorpusSpec(files=(str(single),)), cache_dir)
    assert str(single) in msg and "one document" in msg

    fake_pq = tmp_path / "fake.parquet"
    fake_pq.write_text("not parquet at all", encoding="utf-8")
    assert str(fake_pq) in _error(CorpusSpec(files=(str(fake_pq),)), cache_dir)

    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n{"text": broken\n', encoding="utf-8")
    assert str(bad_json) in _error(CorpusSpec(files=(str(bad_json),)), cache_dir)

    odd = tmp_path / "data.csv"
    odd.write_text("text\nhello\n", encoding="utf-8")
    assert str(odd) in _error(CorpusSpec(files=(str(odd),)), cache_dir)


def test_exactly_one_source(cache_dir):
    assert "exactly one" in _error(CorpusSpec(), cache_dir)
    assert "exactly one" in _error(CorpusSpec(builtin="python-docs", hf="a/b"), cache_dir)


# ----------------------------------------------------------------------------- hub


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_offline_fails_at_once(monkeypatch, cache_dir, var, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv(var, "1")
    msg = _error(CorpusSpec(hf="some/dataset"), cache_dir)
    assert no_network == []  # offline mode: not even one connection is tried
    assert "some/dataset" in msg and "files:" in msg and "can't be reached" in msg


def test_hub_unreachable_fails_at_once(monkeypatch, cache_dir):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # discard port: refused at once
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", _must_not("call datasets.load_dataset (it retries for ~23 s)"))
    msg = _error(CorpusSpec(hf="some/dataset"), cache_dir)  # one probe (bounded by its timeout), then the error
    assert "files:" in msg and "127.0.0.1:9" in msg


def test_hub_path_with_a_fake_hub(monkeypatch, cache_dir):
    """The online code path, with the hub replaced by an in-memory dataset."""
    import datasets

    import engine.lm.corpus as corpus_mod

    rows = {"text": [f"hub document {i} " * 20 for i in range(30)] + [None, "  "], "id": list(range(32))}
    calls = []

    def fake_load_dataset(name, config=None, split=None, streaming=False, **kw):
        calls.append((name, config, split, streaming))
        ds = datasets.Dataset.from_dict(rows)
        return iter(ds) if streaming else ds

    monkeypatch.setattr(corpus_mod, "hub_unreachable_reason", lambda timeout=2.0: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    c = load_corpus(CorpusSpec(hf="org/name", config="cfg", split="train"), cache_dir)
    assert calls[-1] == ("org/name", "cfg", "train", False)
    assert len(c.train) + len(c.val) == 30 and c.info["source"] == "hf:org/name"
    capped = load_corpus(CorpusSpec(hf="org/name", max_chars=2000), cache_dir)
    assert calls[-1][3] is True  # a capped corpus streams
    assert capped.info["chars"] <= 2000 and capped.info["documents"] == 2000 // len(rows["text"][0])
    msg = _error(CorpusSpec(hf="org/name", text_field="body"), cache_dir)
    assert "org/name" in msg and "'body'" in msg
