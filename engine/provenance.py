"""Where a result came from: the code that made it and the machine it ran on."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

PACKAGES = ("engine", "sae", "toydata")
DEPENDENCIES = ("torch", "numpy", "attrs", "cattrs", "pyyaml", "safetensors", "tokenizers", "datasets", "matplotlib", "click")


def _package_dirs() -> list[Path]:
    import engine
    import sae
    import toydata

    return [Path(m.__file__).resolve().parent for m in (engine, sae, toydata)]


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 over the sorted (relative path, sha256) pairs of the project's .py files."""
    pairs = []
    for pkg in _package_dirs():
        for f in sorted(pkg.rglob("*.py")):
            rel = f"{pkg.name}/{f.relative_to(pkg).as_posix()}"
            pairs.append(f"{rel}\0{hashlib.sha256(f.read_bytes()).hexdigest()}")
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def git_state() -> dict | None:
    """Commit and dirty flag of the checkout holding the code, when it is a git checkout."""
    root = _package_dirs()[0].parent
    if not (root / ".git").exists():
        return None
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout

        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no", "--", *PACKAGES)
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def code_info() -> dict:
    return {
        "project": "sae-repro",
        "version": _version("sae-repro"),
        "fingerprint": code_fingerprint(),
        "git": git_state(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    wanted = {"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "amx_tile", "neon", "asimd", "sve"}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return sorted(set(line.split(":", 1)[1].split()) & wanted)
    except OSError:
        pass
    return []


def environment(threads: int) -> dict:
    """Facts that can change the bits of a result (recorded in every bundle)."""
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "packages": {name: _version(name) for name in DEPENDENCIES},
    }
