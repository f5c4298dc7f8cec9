"""Text corpora for the tiny LM: the builtin Python-docs prose, local files, or a hub dataset.

Every source goes through the ``datasets`` library and ends up as a :class:`Corpus`: a tuple of
training documents, a tuple of validation documents, and a content hash that a result bundle
records. The train/validation split is a function of each document's text alone (a hash), so
it needs no RNG, never changes when other documents are added, and puts exact duplicates on the
same side.

Sources (exactly one per :class:`~engine.schema.CorpusSpec`):

``builtin: python-docs``
    English prose shipped with every CPython: the ``pydoc_data/topics.py`` help topics (read
    and parsed with ``ast``, never imported) followed by the module, class and function
    docstrings of the standard library (``ast``-parsed, test packages and site-packages
    skipped, files in sorted path order, each docstring cleaned with ``inspect.cleandoc``,
    docstrings shorter than ``MIN_DOC_CHARS`` dropped, exact duplicates dropped). One topic or
    one docstring is one document. The extraction (~15 s) runs once per Python version and is
    cached as JSONL under ``cache_dir``.
``files: [...]``
    Local files in the order given. ``.txt``/``.md``: one document per blank-line-separated
    paragraph block (so even a single file splits into train and validation);
    ``.jsonl``/``.json``: one document per record's ``text_field``; ``.parquet``: one document
    per row's ``text_field`` column.
``hf: <id>``
    A Hugging Face hub dataset (``config``, ``split``, ``text_field``). Without a network this
    fails at once with a :class:`CorpusError` that points to ``files:``.

``max_chars`` caps the corpus: documents are taken in order while the running total of
characters stays within the cap (if even the first document is longer, it is truncated).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import inspect
import json
import os
import pathlib
import platform
import shutil
import socket
import sys
import sysconfig
import threading
import urllib.parse
import warnings
from collections.abc import Iterable, Iterator

import attrs

from engine.errors import shown, shown_path
from engine.schema import CorpusSpec

HASH_PREFIX = b"sae-repro/corpus/v1\0"
EXTRACTOR_VERSION = 1  # bump when the python-docs extraction changes: it keys the cache
MIN_DOC_CHARS = 64  # builtin: drop docstrings shorter than this ("Return self==value.")
HUB_CONNECT_TIMEOUT_S = 2.0

# directories of the stdlib whose docstrings are not prose about Python (tests, third party)
_SKIP_DIRS = {"test", "tests", "idle_test", "testmock", "site-packages", "dist-packages", "__pycache__"}
_TEXT_SUFFIXES = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class CorpusError(Exception):
    """A corpus cannot be loaded. The message is one line, for the user, and names the file or
    dataset at fault."""


@attrs.frozen
class Corpus:
    train: tuple[str, ...]  # documents
    val: tuple[str, ...]
    content_hash: str  # sha256 hex over the version prefix, the train and the val documents
    info: dict  # JSON-serialisable description: source, sizes, python version or file hashes


def load_corpus(spec: CorpusSpec, cache_dir: pathlib.Path) -> Corpus:
    """Load the documents ``spec`` names, cap them at ``spec.max_chars`` and split them by hash."""
    cache_dir = pathlib.Path(cache_dir)
    given = [k for k in ("builtin", "hf", "files") if getattr(spec, k) is not None]
    if len(given) != 1:
        raise CorpusError(f"corpus: give exactly one of 'builtin', 'hf' or 'files' (got {given or 'none'})")
    if spec.builtin is not None:
        if spec.builtin != "python-docs":
            raise CorpusError(f"corpus: unknown builtin corpus {shown(spec.builtin)} (known: 'python-docs')")
        docs, info = _load_python_docs(cache_dir)
    elif spec.files is not None:
        docs, info = _load_files(spec.files, spec.text_field, cache_dir)
    else:
        docs, info = _load_hub(spec)

    label = ", ".join(spec.files) if spec.files is not None else info["source"]
    docs, truncated = cap_documents(docs, spec.max_chars)
    if not docs:
        raise CorpusError(f"{shown_path(label)}: contains no text")
    if len(docs) < 2:
        raise CorpusError(f"{shown_path(label)}: only one document, the train/validation split needs at least two (.txt files split at blank lines)")
    train, val = split_documents(docs, spec.val_fraction)
    info.update(
        documents=len(docs),
        chars=sum(map(len, docs)),
        train_documents=len(train),
        train_chars=sum(map(len, train)),
        val_documents=len(val),
        val_chars=sum(map(len, val)),
        val_fraction=spec.val_fraction,
        max_chars=spec.max_chars,
        truncated=truncated,
        split="sha256(document) < val_fraction",
    )
    return Corpus(train=train, val=val, content_hash=content_hash(train, val), info=info)


# ----------------------------------------------------------------------------- split, cap, hash


def cap_documents(docs: Iterable[str], max_chars: int | None) -> tuple[list[str], bool]:
    """Documents in order while the running character count stays <= max_chars.

    Returns (documents, truncated): truncated is True when documents were left out or cut."""
    docs = list(docs)
    if max_chars is None:
        return docs, False
    out, total = [], 0
    for d in docs:
        if total + len(d) > max_chars:
            if not out:  # the first document alone is over the cap: keep its head
                out.append(d[:max_chars])
            return out, True
        out.append(d)
        total += len(d)
    return out, False


def _unit_hash(doc: str) -> float:
    """A document's position in [0, 1), from the first 8 bytes of sha256 of its UTF-8 text."""
    h = hashlib.sha256(doc.encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def split_documents(docs: list[str], val_fraction: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Deterministic split by content: a document goes to validation iff its hash falls below
    ``val_fraction``. Order within each split is the corpus order. If that leaves either side
    empty (tiny corpora), the document with the smallest (resp. largest) hash is moved over."""
    u = [_unit_hash(d) for d in docs]
    is_val = [x < val_fraction for x in u]
    if len(docs) >= 2 and not any(is_val):
        is_val[min(range(len(docs)), key=lambda i: u[i])] = True
    if len(docs) >= 2 and all(is_val):
        is_val[max(range(len(docs)), key=lambda i: u[i])] = False
    train = tuple(d for d, v in zip(docs, is_val) if not v)
    val = tuple(d for d, v in zip(docs, is_val) if v)
    return train, val


def content_hash(train: Iterable[str], val: Iterable[str]) -> str:
    """sha256 over a version prefix and the length-prefixed UTF-8 documents of both splits."""
    h = hashlib.sha256(HASH_PREFIX)
    for name, docs in (("train", train), ("val", val)):
        h.update(name.encode() + b"\0")
        for d in docs:
            b = d.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()


def _file_sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- datasets plumbing


@contextlib.contextmanager
def _quiet_datasets():
    """Silence the datasets progress bars and its error log lines (a failure becomes one
    CorpusError line instead) for the duration, restoring the caller's settings."""
    from datasets import utils as dutils
    from datasets.utils import logging as dlogging

    was_disabled = dutils.are_progress_bars_disabled()
    verbosity = dlogging.get_verbosity()
    dutils.disable_progress_bars()
    dlogging.set_verbosity(dlogging.CRITICAL)
    try:
        yield
    finally:
        dlogging.set_verbosity(verbosity)
        if not was_disabled:
            dutils.enable_progress_bars()


def _load_local(builder: str, path: pathlib.Path, cache_dir: pathlib.Path, **kwargs):
    """``datasets.load_dataset`` on one local file. The arrow cache lives in a directory named
    by the file's sha256, so an edited file can never be answered from a stale cache."""
    import datasets

    digest = _file_sha256(path)
    target = cache_dir / "datasets" / digest[:32]
    with _quiet_datasets():
        try:
            ds = datasets.load_dataset(
                builder,
                data_files=[str(path)],
                split="train",
                keep_in_memory=True,
                cache_dir=str(target),
                **kwargs,
            )
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)  # no half-built cache (or its locks) left behind
            raise
    return ds, digest


def _one_line(exc: BaseException) -> str:
    """The innermost cause, in one line: datasets wraps the parser's own message (``JSON
    parse error ... in row 1``) in a generic ``DatasetGenerationError``."""
    seen = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    msg = str(exc).strip().splitlines()
    return shown(f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": "), 200, quote=False)


# ----------------------------------------------------------------------------- builtin python-docs


def _cache_key() -> str:
    """Python version, implementation and stdlib location: what the extracted text depends on."""
    stdlib = sysconfig.get_paths()["stdlib"]
    where = hashlib.sha256(stdlib.encode()).hexdigest()[:8]
    return f"{sys.implementation.cache_tag}-{platform.python_version()}-{where}-x{EXTRACTOR_VERSION}"


def _load_python_docs(cache_dir: pathlib.Path) -> tuple[list[str], dict]:
    path = cache_dir / "python-docs" / f"{_cache_key()}.jsonl"
    if not path.exists():
        records = extract_python_docs()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": text, "origin": origin}, ensure_ascii=False) + "\n" for origin, text in records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: a concurrent run sees the whole file or none
    try:
        ds, digest = _load_local("json", path, cache_dir)
        docs = list(ds["text"])
    except Exception as exc:  # a corrupt cache file: say which, the user can delete it
        raise CorpusError(f"{shown_path(path)}: cached python-docs corpus is unreadable ({_one_line(exc)}); delete it to re-extract") from None
    info = {
        "source": "builtin:python-docs",
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "extractor_version": EXTRACTOR_VERSION,
        "extracted_sha256": digest,
    }
    return docs, info


def extract_python_docs(stdlib: str | os.PathLike | None = None, max_files: int | None = None) -> list[tuple[str, str]]:
    """(origin, text) pairs: the pydoc topics, then the stdlib docstrings (see module docstring).

    ``max_files`` limits the number of stdlib files read (for tests). Nothing is imported."""
    root = pathlib.Path(stdlib if stdlib is not None else sysconfig.get_paths()["stdlib"])
    out: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(origin: str, text: str) -> None:
        text = text.strip()
        if len(text) >= MIN_DOC_CHARS and text not in seen:
            seen.add(text)
            out.append((origin, text))

    for name, text in pydoc_topics(root / "pydoc_data" / "topics.py"):
        add(f"topics:{name}", inspect.cleandoc(text))
    for rel, path in _stdlib_files(root, max_files):
        for qualname, doc in _docstrings(path):
            add(f"{rel}:{qualname}", inspect.cleandoc(doc))
    return out


def pydoc_topics(path: pathlib.Path) -> list[tuple[str, str]]:
    """The ``topics`` dict of ``pydoc_data/topics.py``, by ``ast`` (not import), sorted by name."""
    if not path.exists():
        return []
    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "topics" for t in targets) and node.value is not None:
            topics = ast.literal_eval(node.value)
            return sorted((k, v) for k, v in topics.items() if isinstance(k, str) and isinstance(v, str))
    return []


def _stdlib_files(root: pathlib.Path, max_files: int | None) -> Iterator[tuple[str, pathlib.Path]]:
    """Stdlib .py files in sorted path order, skipping tests, third-party and pydoc_data."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = pathlib.Path(dirpath).relative_to(root)
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("test_") and not (rel_dir == pathlib.Path(".") and d == "pydoc_data")
        )
        for fn in sorted(filenames):
            if not fn.endswith(".py") or fn.startswith("test_"):
                continue
            if max_files is not None and n >= max_files:
                return
            n += 1
            yield (rel_dir / fn).as_posix(), pathlib.Path(dirpath) / fn


def _docstrings(path: pathlib.Path) -> Iterator[tuple[str, str]]:
    """(qualified name, raw docstring) of the module and every class/function, in source order.
    Files that cannot be read or parsed (Python 2 fixtures, bad encodings) yield nothing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning: invalid escape sequence, ...
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
        return

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}.{child.name}" if prefix else child.name
                doc = ast.get_docstring(child, clean=False)
                if doc:
                    yield name, doc
                yield from walk(child, name)
            else:
                yield from walk(child, prefix)

    doc = ast.get_docstring(tree, clean=False)
    if doc:
        yield "<module>", doc
    yield from walk(tree, "")


# ----------------------------------------------------------------------------- local files


def _check_text_file(path: pathlib.Path) -> None:
    """Reject binary and non-UTF-8 files before a loader half-reads them."""
    import codecs

    dec = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            nul = chunk.find(b"\0")
            if nul >= 0:
                raise CorpusError(f"{shown_path(path)}: looks binary (NUL byte at offset {offset + nul}), expected UTF-8 text")
            try:
                dec.decode(chunk)
            except UnicodeDecodeError as e:
                raise CorpusError(f"{shown_path(path)}: not valid UTF-8 (byte offset {offset + e.start})") from None
            offset += len(chunk)
        try:
            dec.decode(b"", final=True)
        except UnicodeDecodeError:
            raise CorpusError(f"{shown_path(path)}: not valid UTF-8 (truncated character at the end)") from None


def _load_files(files: tuple[str, ...], text_field: str, cache_dir: pathlib.Path) -> tuple[list[str], dict]:
    if not files:
        raise CorpusError("corpus files: the list is empty")
    docs: list[str] = []
    recorded = []
    for name in files:
        path = pathlib.Path(name).expanduser()
        kind = _TEXT_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise CorpusError(f"{shown_path(path)}: unsupported file type {shown(path.suffix)} (use .txt, .md, .jsonl, .json or .parquet)")
        if not path.exists():
            raise CorpusError(f"{shown_path(path)}: no such file")
        if not path.is_file():
            raise CorpusError(f"{shown_path(path)}: not a regular file")
        if path.stat().st_size == 0:
            raise CorpusError(f"{shown_path(path)}: file is empty")
        if kind == "parquet":
            with open(path, "rb") as f:
                head = f.read(4)
                f.seek(-4, os.SEEK_END)
                tail = f.read(4)
            if head != b"PAR1" or tail != b"PAR1":
                raise CorpusError(f"{shown_path(path)}: not a parquet file (missing PAR1 magic)")
        else:
            _check_text_file(path)
        try:
            if kind == "text":
                ds, digest = _load_local("text", path, cache_dir, sample_by="paragraph")
                field = "text"
            else:
                ds, digest = _load_local(kind, path, cache_dir)
                field = text_field
        except CorpusError:
            raise
        except Exception as exc:
            raise CorpusError(f"{shown_path(path)}: could not be read as {kind} ({_one_line(exc)})") from None
        if field not in ds.column_names:
            raise CorpusError(f"{shown_path(path)}: no text field {shown(field)} (fields: {shown(', '.join(ds.column_names), 200, quote=False) or 'none'}); set corpus.text_field")
        values = ds[field]
        n_before = len(docs)
        for i, v in enumerate(values):
            if v is None:
                continue
            if not isinstance(v, str):
                raise CorpusError(f"{shown_path(path)}: record {i} field {shown(field)} is {type(v).__name__}, expected a string")
            v = v.strip()
            if v:
                docs.append(v)
        if len(docs) == n_before:
            raise CorpusError(f"{shown_path(path)}: contains no text in field {shown(field)}" if kind != "text" else f"{shown_path(path)}: contains no text")
        recorded.append({"path": str(path), "sha256": digest, "documents": len(docs) - n_before})
    return docs, {"source": "files", "files": recorded, "text_field": text_field, "txt_documents": "paragraph"}


# ----------------------------------------------------------------------------- hub


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_unreachable_reason(timeout: float = HUB_CONNECT_TIMEOUT_S) -> str | None:
    """Why the hub cannot be used (offline mode set, or no TCP connection within ``timeout``), or
    None if a connection opened. Never waits longer than about ``timeout`` seconds."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if _truthy(var):
            return f"{var} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urllib.parse.urlsplit(proxy or endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    result: list[str | None] = [f"no answer from {host}:{port} within {timeout:g} s"]

    def probe() -> None:  # in a thread: getaddrinfo itself has no timeout
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result[0] = None
        except OSError as e:
            result[0] = f"cannot connect to {host}:{port} ({e.strerror or type(e).__name__})"

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return result[0]


def _load_hub(spec: CorpusSpec) -> tuple[list[str], dict]:
    name = spec.hf
    hint = "use corpus 'files: [...]' with local .txt/.jsonl/.parquet files, or 'builtin: python-docs'"
    reason = hub_unreachable_reason()
    offline_mode = reason is not None and reason.endswith("is set")
    if reason is not None and not offline_mode:
        raise CorpusError(f"hf:{shown(name, quote=False)}: the Hugging Face hub can't be reached ({reason}); {hint}")
    import datasets

    if offline_mode and not datasets.config.HF_HUB_OFFLINE:
        # the variable was set after `datasets` was imported: the library would still go online
        # (5 retries, ~23 s), so do not let it; a fresh process will look in the local cache
        raise CorpusError(f"hf:{shown(name, quote=False)}: the Hugging Face hub can't be reached ({reason}); {hint}")
    try:
        with _quiet_datasets():
            if spec.max_chars is not None and not offline_mode:
                # stream, so a capped corpus does not download a whole large dataset
                ds = datasets.load_dataset(name, spec.config, split=spec.split, streaming=True)
                docs, total = [], 0
                for row in ds:
                    v = row.get(spec.text_field)
                    if v is None and spec.text_field not in row:
                        raise CorpusError(f"hf:{shown(name, quote=False)}: no text field {shown(spec.text_field)} (fields: {shown(', '.join(map(str, row)), 200, quote=False)}); set corpus.text_field")
                    if isinstance(v, str) and v.strip():
                        docs.append(v.strip())
                        total += len(docs[-1])
                        if total > spec.max_chars:
                            break
            else:
                ds = datasets.load_dataset(name, spec.config, split=spec.split)
                if spec.text_field not in ds.column_names:
                    raise CorpusError(f"hf:{shown(name, quote=False)}: no text field {shown(spec.text_field)} (fields: {shown(', '.join(ds.column_names), 200, quote=False)}); set corpus.text_field")
                docs = [v.strip() for v in ds[spec.text_field] if isinstance(v, str) and v.strip()]
    except CorpusError:
        raise
    except Exception as exc:
        if offline_mode:  # offline and not in the local datasets cache
            raise CorpusError(f"hf:{shown(name, quote=False)}: the Hugging Face hub can't be reached ({reason}) and the dataset is not cached locally; {hint}") from None
        raise CorpusError(f"hf:{shown(name, quote=False)}: could not load ({_one_line(exc)})") from None
    info = {"source": f"hf:{name}", "hf": name, "config": spec.config, "split": spec.split, "text_field": spec.text_field}
    return docs, info
