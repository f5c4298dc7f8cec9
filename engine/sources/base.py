"""The protocol every source kind implements (see ``engine.sources``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import attrs
import torch


class PreparedSource(Protocol):
    """A source ready for training: what every group of cells on it reads."""

    plan: Any  # engine.plan.SourcePlan
    eval_x: torch.Tensor  # [N, d] the fixed evaluation set
    truth: torch.Tensor | None  # [n_features, d] planted features, where known
    # eval_codes: torch.Tensor  [N, n_features] the evaluation set's true codes: kinds with
    # planted truth only (absent elsewhere; read it with getattr(src, "eval_codes", None))
    corpus: Any  # the loaded corpus, for sources that have one (else None)

    def batches(self, batch: int) -> Callable[[int], torch.Tensor]:
        """A fresh stream: step -> x [batch, d], seeded by the source and the batch size only."""
        ...

    def init_samples(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n, d] inputs for the ``data_samples`` initialisation."""
        ...

    def files(self) -> dict[str, bytes | Path]:
        """Files of ``sources/<name>/`` in the bundle."""
        ...

    def info(self) -> dict:
        """The source's entry in ``metrics.json`` ``sources``."""
        ...

    def cell_metrics(self, reconstruct: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        """Metrics that need the source itself (CE loss with the reconstruction spliced in)."""
        ...


@attrs.frozen
class Cost:
    """What a source adds to a plan's time estimate (see ``engine.budget``)."""

    setup_flops: float = 0.0  # once per run (evaluation set, correlation structure)
    step_flops: Callable[[int], float] = lambda batch: 0.0  # data generation per training step
    model_seconds: float = 0.0  # training a model the activations come from
    model_identity: str | None = None  # sources with equal identities share that model


class SourceKind:
    """One kind of source. Subclasses set ``kind`` and ``spec`` and implement the methods."""

    kind: ClassVar[str]
    spec: ClassVar[type]  # the attrs spec class in engine.schema
    has_truth: ClassVar[bool] = False  # planted ground-truth features are known
    has_corpus: ClassVar[bool] = False  # activations of a model run over a text corpus
    ratio_base_name: ClassVar[str] = "width"  # what a dict_ratio multiplies, for people

    @staticmethod
    def width(config) -> int:
        """Input width of SAEs on a concrete source config."""
        raise NotImplementedError

    @classmethod
    def ratio_base(cls, config) -> int:
        """What ``sae.dict_ratio`` is relative to (default: the width)."""
        return cls.width(config)

    @staticmethod
    def ratio_bases(config) -> tuple[int, ...]:
        """Every value ``ratio_base`` can take over the source's sweeps (spec checks)."""
        raise NotImplementedError

    @staticmethod
    def check(config, path: tuple) -> list[tuple[tuple, str]]:
        """Cross-field problems of a (possibly swept) source spec, as ``(path, message)``."""
        return []

    @staticmethod
    def cost(config, spec) -> Cost:
        return Cost()

    @staticmethod
    def content_id(config) -> str | None:
        """A hash of content outside the spec that determines the source's data (a model's
        files), folded into the source key and so into every cell key; None for sources
        that the spec alone determines."""
        return None

    @staticmethod
    def planted(config) -> int | None:
        """The number of planted features, where known."""
        return None

    @staticmethod
    def prepare(plan, spec, results: Path, log: Callable[[str], None]) -> PreparedSource:
        raise NotImplementedError

    @staticmethod
    def load_corpus(config, cache: Path):
        """The source's corpus (sources with ``has_corpus``); raises ``SourceError``."""
        return None
