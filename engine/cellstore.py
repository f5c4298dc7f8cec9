"""Finished cells, kept by key under ``<results>/.cells/<key>/`` so runs resume and share them.

A cell directory holds ``sae.safetensors`` and ``cell.json`` (settings, final metrics,
curves; nothing volatile) and ``done.json`` (file digests and the code that made it). It is
written like a bundle: a temporary sibling, fsync, rename; a cell whose digests no longer
match is treated as absent and recomputed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from engine.bundle import publish, temp_sibling
from engine.hashing import sha256_bytes, sha256_file, stable_json

CELL_FILES = ("sae.safetensors", "cell.json")


class CellStore:
    def __init__(self, root: Path):
        self.root = root

    def dir(self, key: str) -> Path:
        return self.root / key

    def done(self, key: str) -> dict | None:
        """The cell's done.json if the cell is complete and intact, else None."""
        d = self.dir(key)
        try:
            done = json.loads((d / "done.json").read_text())
            files = done["files"]
            if done.get("key") != key or set(files) != set(CELL_FILES):
                return None
            if any(sha256_file(d / name) != digest for name, digest in files.items()):
                return None
            return done
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, files: dict[str, bytes], code: dict) -> None:
        final = self.dir(key)
        if self.done(key) is not None:
            return
        if final.exists():  # an old, broken copy
            shutil.rmtree(final, ignore_errors=True)
        tmp = temp_sibling(final)
        tmp.mkdir()
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        done = {"key": key, "files": {n: sha256_bytes(d) for n, d in files.items()}, "code": code}
        (tmp / "done.json").write_text(stable_json(done))
        publish(tmp, final)

    def read_json(self, key: str) -> dict:
        return json.loads((self.dir(key) / "cell.json").read_text())
