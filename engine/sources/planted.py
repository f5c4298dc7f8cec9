"""What sources with planted features share (the toy and synth kinds): a generator object
with ``sample(batch, g) -> (x, codes)`` and ``ground_truth()``, streams named after the kind,
``dict_ratio`` relative to ``n_features``."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from engine import convert
from engine import tensors as tensors_io
from engine.seeding import torch_generator
from engine.sources.base import SourceKind
from engine.sweep import values_of


class PlantedSourceData:
    """A prepared source over a generator ``self.data`` with known features ``self.truth``.

    Subclasses build ``data``, ``truth``, ``eval_x`` and ``eval_codes`` (the evaluation set's
    true codes [N, n_features]) and name their kind; streams are ``<kind>_data`` (batches)."""

    kind: ClassVar[str]
    truth_format: ClassVar[str]  # safetensors "format" of ground_truth.safetensors
    corpus = None

    def batches(self, batch: int) -> Callable[[int], torch.Tensor]:
        g = torch_generator(self.seed, f"{self.kind}_data", self.plan.key, batch)
        return lambda step: self.data.sample(batch, g)[0]

    def init_samples(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.data.sample(n, generator)[0]

    def files(self) -> dict[str, bytes]:
        return {"ground_truth.safetensors": tensors_io.to_bytes(self.data.ground_truth(), {"format": self.truth_format})}

    def info(self) -> dict:
        return {"kind": self.kind, "key": self.plan.key, "config": convert.unstructure(self.plan.config), "width": self.plan.width}

    def cell_metrics(self, reconstruct) -> dict:
        return {}


class PlantedKind(SourceKind):
    """Width ``dim``; ``dict_ratio`` of ``n_features`` (as in the interim report)."""

    has_truth = True
    ratio_base_name = "n_features"

    @staticmethod
    def width(config) -> int:
        return config.dim

    @staticmethod
    def ratio_base(config) -> int:
        return config.n_features

    @staticmethod
    def ratio_bases(config) -> tuple[int, ...]:
        return values_of(config.n_features)

    @staticmethod
    def planted(config) -> int:
        return config.n_features
