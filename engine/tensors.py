"""safetensors with reproducible bytes.

safetensors writes its ``__metadata__`` mapping in hash-map order, so two saves of the same
tensors with two or more metadata keys can differ in bytes. Metadata here is therefore one
key, ``sae-repro``, holding canonical JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from engine.errors import BundleError, shown, shown_path
from engine.hashing import canonical_json

META_KEY = "sae-repro"


def to_bytes(tensors: dict[str, torch.Tensor], meta: dict) -> bytes:
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata={META_KEY: canonical_json(meta).decode()})


def from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    return load(data)


def read_file(path: Path, expect: dict[str, int] = {}) -> dict[str, torch.Tensor]:  # noqa: B006 - read only
    """Tensors of a safetensors file someone else may have written (never a pickle).

    ``expect`` maps tensor names that must be present to their number of dimensions (shapes
    ``[m, d]`` etc. are the caller's to check). Raises ``BundleError`` naming the file when it is
    missing, not safetensors, truncated, or lacks an expected tensor.
    """
    path = Path(path)
    try:
        tensors = load(path.read_bytes())
    except OSError as e:
        raise BundleError(f"{shown_path(path)}: cannot read ({e.strerror or e})") from None
    except (SafetensorError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BundleError(f"{shown_path(path)}: not a readable safetensors file ({shown(reason, 200, quote=False)})") from None
    for name, ndim in expect.items():
        t = tensors.get(name)
        if t is None:
            raise BundleError(f"{shown_path(path)}: no tensor {name!r} (has: {shown(', '.join(sorted(tensors)), 200, quote=False) or 'none'})")
        if t.dim() != ndim or not t.is_floating_point():
            raise BundleError(f"{shown_path(path)}: tensor {name!r} has shape {list(t.shape)} and dtype {t.dtype}, expected {ndim} dimensions of floats")
    return tensors


def meta_of(data: bytes) -> dict:
    """The metadata written by ``to_bytes`` (reads only the header)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return json.loads(header.get("__metadata__", {}).get(META_KEY, "{}"))
