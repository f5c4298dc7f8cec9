"""Canonical JSON and the content hashes built on it.

``canonical_json``: sorted keys, no whitespace, UTF-8, no NaN/Inf, ``-0.0`` as ``0.0``, tuples
as lists. Floats keep Python's shortest round-tripping repr, so ``1`` and ``1.0`` differ in
JSON — which is why specs are hashed *after* structuring into typed objects, where a float
field always holds a float. Every hash is prefixed with a versioned domain tag: a change to
what is hashed is a deliberate, visible bump of that tag.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

PROJECT = "sae-repro"
SPEC_HASH_VERSION = f"{PROJECT}/spec/v1"
CELL_KEY_VERSION = f"{PROJECT}/cell/v1"
SOURCE_KEY_VERSION = f"{PROJECT}/source/v1"
STREAM_ID_VERSION = f"{PROJECT}/streams/v1"
DIGEST_VERSION = f"{PROJECT}/content/v1"


def _normalise(v):
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if not isinstance(k, str):
                raise TypeError(f"canonical JSON needs string keys, got {k!r}")
            out[k] = _normalise(x)
        return out
    if isinstance(v, (list, tuple)):
        return [_normalise(x) for x in v]
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"canonical JSON cannot hold {v}")
        return 0.0 if v == 0 else v
    if v is None or isinstance(v, (str, int, bool)):
        return v
    raise TypeError(f"canonical JSON cannot hold a {type(v).__name__}")


def canonical_json(data) -> bytes:
    return json.dumps(
        _normalise(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def tagged_hash(tag: str, data) -> str:
    """sha256 hex of ``tag NUL canonical_json(data)``."""
    h = hashlib.sha256(tag.encode() + b"\0")
    h.update(canonical_json(data))
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stable_json(data) -> str:
    """JSON for files in a bundle: sorted keys, indented, exact float repr, trailing newline."""
    return json.dumps(_normalise(data), sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
