"""Data sources of SAE training, one module per ``kind`` behind one protocol.

A source kind (``SourceKind``) answers everything the engine asks of a source: its spec class,
the input width of SAEs trained on it, the base a ``dict_ratio`` is relative to, cross-field
checks of its spec, a cost estimate, whether it has planted ground truth or a corpus, and how
to *prepare* it for a run (a ``PreparedSource``: a batch stream, an evaluation set, files for
the bundle). Nothing outside this package branches on a source's kind.

Adding a kind: a module here with a ``SourceKind`` subclass (``engine.sources.base``), its line
in ``KINDS`` below, and its spec class in ``engine.schema`` (``SOURCE_KINDS``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.sources.base import Cost, PreparedSource, SourceKind
from engine.sources.hf_model import HFModelKind
from engine.sources.lm import LMKind
from engine.sources.synth import SynthKind
from engine.sources.toy import ToyKind

KINDS: dict[str, type[SourceKind]] = {k.kind: k for k in (ToyKind, LMKind, SynthKind, HFModelKind)}


def get(kind: str) -> type[SourceKind]:
    return KINDS[kind]


def of(config) -> type[SourceKind]:
    """The kind of a source spec object."""
    return KINDS[config.kind]


def prepare(source_plan, spec, results: Path, log: Callable[[str], None]) -> PreparedSource:
    """A source of the plan, ready for training (its kind's ``prepare``)."""
    return KINDS[source_plan.kind].prepare(source_plan, spec, results, log)


__all__ = ["KINDS", "Cost", "PreparedSource", "SourceKind", "get", "of", "prepare"]
