"""safetensors with reproducible bytes.

safetensors writes its ``__metadata__`` mapping in hash-map order, so two saves of the same
tensors with two or more metadata keys can differ in bytes. Metadata here is therefore one
key, ``sae-repro``, holding canonical JSON.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load, save

from engine.hashing import canonical_json

META_KEY = "sae-repro"


def to_bytes(tensors: dict[str, torch.Tensor], meta: dict) -> bytes:
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata={META_KEY: canonical_json(meta).decode()})


def from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    return load(data)


def meta_of(data: bytes) -> dict:
    """The metadata written by ``to_bytes`` (reads only the header)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return json.loads(header.get("__metadata__", {}).get(META_KEY, "{}"))
