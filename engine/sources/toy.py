"""The toy source: planted features, the report's generator, a fixed evaluation set.

A prepared source hands every group of cells its own fresh batch stream seeded only by the
source and the batch size, so all cells on a source see the same batches whichever group
they train in.
"""

from __future__ import annotations


import torch

from engine import schema
from engine.seeding import torch_generator
from engine.sources.base import Cost
from engine.sources.planted import PlantedKind, PlantedSourceData
from toydata import ToyData, ToyDataConfig

EVAL_CHUNK = 256  # toy eval samples are drawn in batches of this size (batch correlation depends on it)


class ToySourceData(PlantedSourceData):
    """A toy source: planted features, the report's generator, a fixed evaluation set."""

    kind = "toy"
    truth_format = "toy-ground-truth/v1"

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


class ToyKind(PlantedKind):
    kind = "toy"
    spec = schema.ToySource
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
