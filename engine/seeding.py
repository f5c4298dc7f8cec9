"""Independent random streams, derived from the root seed and a stable, content-based id.

Each stream (ground-truth features, the batches a source yields, one SAE's initialisation,
the LM's init, ...) gets its own generator from ``SeedSequence([stream_id, *ids, root])``:
``stream_id`` is the first 8 bytes of sha256 of the stream's name, ``ids`` come from content
hashes (a cell key, a source key), never from a position in a list. Adding a cell or a stream
therefore leaves every other stream's numbers unchanged. Nothing uses global RNG state.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _word(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def seed_sequence(root: int, stream: str, *ids: str | int) -> np.random.SeedSequence:
    words = [_word(stream)] + [_word(str(i)) for i in ids] + [int(root)]
    return np.random.SeedSequence(words)


def torch_generator(root: int, stream: str, *ids: str | int) -> torch.Generator:
    seed = int(seed_sequence(root, stream, *ids).generate_state(1, np.uint64)[0])
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def numpy_rng(root: int, stream: str, *ids: str | int) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(root, stream, *ids))
