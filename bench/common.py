"""Timing helpers for the benchmarks: interleaved rounds and medians (these machines are noisy)."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; medians are reported")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    return p


def setup(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.use_deterministic_algorithms(True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; torch {torch.__version__}; {torch.get_num_threads()} threads; {torch.backends.cpu.get_cpu_capability()}"


def interleaved(cases: dict[str, Callable[[], None]], reps: int, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each case; cases alternate within every round."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            samples[name].append((time.perf_counter() - t) / reps)
    return {k: statistics.median(v) for k, v in samples.items()}


def report(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"# {title}")
    print(f"# {machine()}")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
