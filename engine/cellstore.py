"""Finished work kept by content key, so runs resume and specs share it.

``<results>/.cells/<cell key>/`` holds a finished cell: ``sae.safetensors`` and ``cell.json``
(settings, final metrics, curves; nothing volatile). ``<results>/.lm/<lm key>/`` holds a
trained language model. Each entry also has ``done.json`` (file digests and the code that
made it) and is written like a bundle: a temporary sibling, fsync, rename. An entry whose
digests no longer match is treated as absent and recomputed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from engine import layout
from engine.bundle import publish, temp_sibling
from engine.hashing import sha256_bytes, sha256_file, stable_json

CELL_FILES = (layout.CELL_TENSORS, layout.CELL_JSON)


class KeyedStore:
    def __init__(self, root: Path, files: tuple[str, ...]):
        self.root = root
        self.file_names = files

    def dir(self, key: str) -> Path:
        return self.root / key

    def done(self, key: str) -> dict | None:
        """The cell's done.json if the cell is complete and intact, else None."""
        d = self.dir(key)
        try:
            done = json.loads((d / "done.json").read_text())
            files = done["files"]
            if done.get("key") != key or set(files) != set(self.file_names):
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
        if final.exists() and self.done(key) is None:  # an old, broken copy
            trash = temp_sibling(final)
            try:
                os.rename(final, trash)  # atomically out of the way, then deleted
            except OSError:
                return
            shutil.rmtree(trash, ignore_errors=True)
        tmp = temp_sibling(final)
        tmp.mkdir()
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        done = {"key": key, "files": {n: sha256_bytes(d) for n, d in files.items()}, "code": code}
        (tmp / "done.json").write_text(stable_json(done))
        publish(tmp, final)

    def read_json(self, key: str, name: str = "cell.json") -> dict:
        return json.loads((self.dir(key) / name).read_text())


def cell_store(results: Path) -> KeyedStore:
    return KeyedStore(results / ".cells", CELL_FILES)
