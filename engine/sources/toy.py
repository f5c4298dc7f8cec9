"""The toy source: planted features, the report's generator, a fixed evaluation set.

A prepared source hands every group of cells its own fresh batch stream seeded only by the
source and the batch size, so all cells on a source see the same batches whichever group
they train in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine import convert, schema
from engine import tensors as tensors_io
from engine.seeding import torch_generator
from engine.sources.base import Cost, SourceKind
from engine.sweep import values_of
from toydata import ToyData, ToyDataConfig

EVAL_CHUNK = 256  # toy eval samples are drawn in batches of this size (batch correlation depends on it)


class ToySourceData:
    """A toy source: planted features, the report's generator, a fixed evaluation set."""

    corpus = None

    def __init__(self, plan, seed: int, eval_samples: int):
        self.plan = plan
        self.seed = seed
        cfg = plan.config
        self.data = ToyData.build(
            ToyDataConfig(
                n_features=cfg.n_features,
                dim=cfg.dim,
                active_per_sample=cfg.active_per_sample,
                decay=cfg.decay,
                correlation=cfg.correlation,
                correlation_rank=cfg.correlation_rank,
                correlation_strength=cfg.correlation_strength,
                magnitude=cfg.magnitude,
                noise_std=cfg.noise_std,
            ),
            # features depend on their shape only, so sources that differ in sparsity or
            # correlation plant the very same features
            torch_generator(seed, "toy_features", f"{cfg.n_features}x{cfg.dim}"),
            torch_generator(seed, "toy_structure", plan.key),
        )
        self.truth = self.data.features
        g = torch_generator(seed, "toy_eval", plan.key, eval_samples)
        chunks, codes, left = [], [], eval_samples
        while left > 0:
            x, c = self.data.sample(EVAL_CHUNK, g)
            chunks.append(x[: min(left, EVAL_CHUNK)])
            codes.append(c[: min(left, EVAL_CHUNK)])
            left -= EVAL_CHUNK
        self.eval_x = torch.cat(chunks)
        self.eval_codes = torch.cat(codes)  # [N, n_features] the evaluation set's true codes

    def batches(self, batch: int) -> Callable[[int], torch.Tensor]:
        g = torch_generator(self.seed, "toy_data", self.plan.key, batch)
        return lambda step: self.data.sample(batch, g)[0]

    def init_samples(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.data.sample(n, generator)[0]

    def files(self) -> dict[str, bytes]:
        return {"ground_truth.safetensors": tensors_io.to_bytes(self.data.ground_truth(), {"format": "toy-ground-truth/v1"})}

    def info(self) -> dict:
        return {"kind": "toy", "key": self.plan.key, "config": convert.unstructure(self.plan.config), "width": self.plan.width}

    def cell_metrics(self, reconstruct) -> dict:
        return {}


class ToyKind(SourceKind):
    kind = "toy"
    spec = schema.ToySource
    has_truth = True
    ratio_base_name = "n_features"

    @staticmethod
    def width(config) -> int:
        return config.dim

    @staticmethod
    def ratio_base(config) -> int:
        return config.n_features  # as in the interim report: m = ratio * n_features

    @staticmethod
    def ratio_bases(config) -> tuple[int, ...]:
        return values_of(config.n_features)

    @staticmethod
    def planted(config) -> int:
        return config.n_features

    @staticmethod
    def cost(config, spec) -> Cost:
        n = float(config.n_features)
        setup = 2.0 * spec.eval.samples * n * config.dim  # the evaluation set
        if config.correlation == "batch":
            setup += 2.5 * n**3

        def per_step(batch: int) -> float:
            flops = 2.0 * batch * n * config.dim
            return flops + (2.0 * n * n if config.correlation == "batch" else 0.0)

        return Cost(setup_flops=setup, step_flops=per_step)

    @staticmethod
    def prepare(plan, spec, results, log) -> ToySourceData:
        return ToySourceData(plan, spec.seed, spec.eval.samples)
