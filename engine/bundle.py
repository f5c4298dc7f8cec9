"""Result bundles: content-hashed directories, written atomically, verifiable by anyone.

Layout (``results/<name>-<spec_hash[:12]>/``)::

    spec.yaml        the resolved spec
    bundle.json      schema, spec_hash, content_digest, files (path -> sha256), code, environment
    metrics.json     per cell and per analysis
    cells/<cell>/    sae.safetensors, cell.json (settings, final metrics, training curves)
    sources/<src>/   toy ground truth, or the LM, its tokenizer and corpus facts
    report/          figures (in ``files``, but outside the content digest: derived views)
    run.json         timings and host: volatile, outside ``files`` and the digest

``content_digest`` hashes the sorted (path, sha256) pairs of every file in ``files`` except
``report/``: two bundles with equal digests hold byte-identical results.

Writing: everything goes into a sibling temporary directory on the same filesystem; every file
and directory is fsynced; one ``rename`` publishes it; the parent is fsynced. A rename onto an
existing bundle fails, so the first writer wins and the loser keeps the winner's bundle.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from pathlib import Path

import attrs

from engine.errors import BundleError, shown, shown_path
from engine.hashing import DIGEST_VERSION, sha256_file, stable_json, tagged_hash

BUNDLE_SCHEMA = 1
META_FILE = "bundle.json"
RUN_FILE = "run.json"
UNLISTED = {META_FILE, RUN_FILE}
DERIVED_PREFIXES = ("report/",)


def content_digest(files: dict[str, str]) -> str:
    return tagged_hash(DIGEST_VERSION, {p: h for p, h in files.items() if not p.startswith(DERIVED_PREFIXES)})


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def temp_sibling(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def publish(tmp: Path, final: Path) -> bool:
    """fsync ``tmp`` and rename it to ``final``. False (and ``tmp`` removed) if ``final`` exists."""
    _fsync_tree(tmp)
    try:
        os.rename(tmp, final)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST) or final.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        raise
    fsync_dir(final.parent)
    return True


class BundleWriter:
    """Builds a bundle in a temporary directory; ``finish`` publishes it."""

    def __init__(self, final: Path):
        self.final = final
        self.tmp = temp_sibling(final)
        self.tmp.mkdir()

    def path(self, rel: str) -> Path:
        p = self.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.path(rel).write_bytes(data)

    def write_text(self, rel: str, text: str) -> None:
        self.path(rel).write_text(text, encoding="utf-8")

    def write_json(self, rel: str, data) -> None:
        self.write_text(rel, stable_json(data))

    def add_file(self, rel: str, src: Path) -> None:
        """Hard-link (or copy) a finished file into the bundle."""
        dst = self.path(rel)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)

    def files(self) -> dict[str, str]:
        out = {}
        for p in sorted(self.tmp.rglob("*")):
            rel = p.relative_to(self.tmp).as_posix()
            if p.is_file() and rel not in UNLISTED:
                out[rel] = sha256_file(p)
        return out

    def finish(self, meta: dict, run: dict) -> tuple[dict, bool]:
        """Write bundle.json and run.json, publish. Returns (bundle.json data, published)."""
        files = self.files()
        data = {"schema": BUNDLE_SCHEMA, **meta, "content_digest": content_digest(files), "files": files}
        self.write_json(META_FILE, data)
        self.write_json(RUN_FILE, run)
        return data, publish(self.tmp, self.final)

    def abandon(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


@attrs.frozen
class Verification:
    path: Path
    meta: dict
    changed: tuple[str, ...]
    missing: tuple[str, ...]
    extra: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.extra)

    def lines(self) -> list[str]:
        where = shown_path(self.path)
        out = [f"{where}: changed file {shown_path(p)} (sha256 differs from bundle.json)" for p in self.changed]
        out += [f"{where}: missing file {shown_path(p)}" for p in self.missing]
        out += [f"{where}: extra file {shown_path(p)} (not listed in bundle.json)" for p in self.extra]
        return out


def read_meta(path: Path) -> dict:
    """bundle.json of a bundle, checked for shape and schema. Raises BundleError."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{shown_path(path)}: no such bundle")
    if not path.is_dir():
        raise BundleError(f"{shown_path(path)}: not a bundle (not a directory)")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise BundleError(f"{shown_path(path)}: not a bundle (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{shown_path(meta_path)}: corrupt ({e.__class__.__name__}: {shown(str(e), 200, quote=False)})") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{shown_path(meta_path)}: corrupt (expected a JSON object)")
    schema = meta.get("schema")
    if type(schema) is not int:
        raise BundleError(f"{shown_path(meta_path)}: corrupt (no integer 'schema')")
    if schema > BUNDLE_SCHEMA:
        raise BundleError(f"{shown_path(meta_path)}: bundle schema {schema} is newer than this version understands ({BUNDLE_SCHEMA}); upgrade sae-repro")
    if schema < 1:
        raise BundleError(f"{shown_path(meta_path)}: unknown bundle schema {schema}")
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise BundleError(f"{shown_path(meta_path)}: corrupt ('files' must map paths to sha256 digests)")
    for key in ("spec_hash", "content_digest"):
        if not isinstance(meta.get(key), str):
            raise BundleError(f"{shown_path(meta_path)}: corrupt (no '{key}')")
    if meta["content_digest"] != content_digest(files):
        raise BundleError(f"{shown_path(meta_path)}: corrupt (content_digest does not match its file list)")
    return meta


def verify(path: Path) -> Verification:
    """Recompute every file hash of a bundle. Raises BundleError if it is not a usable bundle."""
    path = Path(path)
    meta = read_meta(path)
    files: dict[str, str] = meta["files"]
    changed, missing = [], []
    for rel, digest in sorted(files.items()):
        p = path / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise BundleError(f"{shown_path(path / META_FILE)}: corrupt (file path {shown(rel)} leaves the bundle)")
        if not p.is_file():
            missing.append(rel)
        elif sha256_file(p) != digest:
            changed.append(rel)
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() or p.is_symlink()}
    extra = sorted(present - set(files) - UNLISTED)
    return Verification(path, meta, tuple(changed), tuple(missing), tuple(extra))


def replace_derived(bundle: Path, meta: dict, prefix: str, files: dict[str, bytes]) -> dict:
    """Replace the derived folder ``prefix`` (``report``) of a verified bundle by ``files``
    and return the new bundle.json data: the folder is built in a sibling temporary directory
    and swapped in by renames, then bundle.json is replaced (write, fsync, ``os.replace``)
    with that folder's entries of ``files`` updated; the content digest is unchanged (derived
    files are outside it). On any failure the old folder and bundle.json stay. Raises OSError."""
    if prefix.rstrip("/") + "/" not in DERIVED_PREFIXES:
        raise ValueError(f"{prefix!r} is not a derived folder of a bundle")
    bundle = Path(bundle)
    new = bundle.parent / f".tmp-{prefix}-{bundle.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    old = new.with_name(new.name.replace(f".tmp-{prefix}-", f".old-{prefix}-"))
    meta_tmp = new.with_name(new.name.replace(f".tmp-{prefix}-", ".tmp-meta-"))
    current = bundle / prefix
    swapped = False  # report/ is the new one, bundle.json not yet
    try:
        new.mkdir()
        digests = {}
        for name, data in files.items():
            p = new / name
            p.write_bytes(data)
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            digests[f"{prefix}/{name}"] = sha256_file(p)
        fsync_dir(new)
        kept = {k: h for k, h in meta["files"].items() if not k.startswith(prefix + "/")}
        meta_new = {**meta, "files": dict(sorted({**kept, **digests}.items()))}
        meta_tmp.write_text(stable_json(meta_new), encoding="utf-8")
        with open(meta_tmp, "rb") as f:
            os.fsync(f.fileno())
        if current.exists():
            os.rename(current, old)
        os.rename(new, current)
        swapped = True
        os.replace(meta_tmp, bundle / META_FILE)
        swapped = False
        fsync_dir(bundle)
    except BaseException:
        if swapped:  # put the old report back under the old bundle.json
            os.rename(current, new)
        if old.exists() and not current.exists():
            os.rename(old, current)
        shutil.rmtree(new, ignore_errors=True)
        meta_tmp.unlink(missing_ok=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    read_meta(bundle)
    return meta_new
