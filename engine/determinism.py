"""The determinism context of a process: torch's threads and deterministic algorithms."""

from __future__ import annotations

import torch


def configure_torch(threads: int) -> None:
    """Fix torch's intra-op threads (part of every cell key: it can change the bits), one
    inter-op thread, and deterministic algorithms."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # can only be set once per process, before any parallel work
        pass
    torch.use_deterministic_algorithms(True)
