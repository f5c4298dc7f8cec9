"""Per-cell locks, so that runs sharing a results directory never train a cell twice at once.

A lock is ``fcntl.flock`` on ``<results>/.locks/<cell key>.lock``. The operating system drops
it when the holder closes the file or dies (SIGKILL included), so a crashed run never leaves a
cell locked. Lock files are empty and are never deleted (deleting a lock file that another
process is about to open would let two processes "hold" the same lock).

Rules that keep this deadlock-free: a process only ever *tries* locks while it holds others
(``try_lock``), and only *waits* for a lock (``wait_unlocked``) while it holds none.
On a cluster the results directory is shared storage; ``flock`` works across machines on
NFSv4 and most cluster file systems (on storage where it does not, two runs may at worst
train the same cell twice; the cell store still keeps exactly one verified copy).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Self

LOCK_DIR = ".locks"


class CellLock:
    """A held lock on one cell key; ``release`` (or process death) frees it."""

    def __init__(self, key: str, fd: int):
        self.key = key
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_path(results: Path, key: str) -> Path:
    return Path(results) / LOCK_DIR / f"{key}.lock"


def _open(results: Path, key: str) -> int:
    path = lock_path(results, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def try_lock(results: Path, key: str) -> CellLock | None:
    """The lock on ``key`` if nobody else holds it, else None (never blocks)."""
    fd = _open(results, key)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return CellLock(key, fd)


def wait_unlocked(results: Path, key: str) -> None:
    """Block until nobody holds the lock on ``key`` (take it, then let it go at once)."""
    fd = _open(results, key)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
