"""The synth source: SynthSAEBench-style data (``toydata.synth``) with known ground truth.

Zipfian firing probabilities, a feature hierarchy with mutually exclusive children, a low-rank
Gaussian copula and folded-normal magnitudes. Like the toy kind, a prepared source hands every
group of cells its own fresh batch stream seeded only by the source and the batch size, and
holds a fixed evaluation set together with its true codes (``eval_codes``).

Streams: ``synth_features`` (the planted directions; by shape only, so sources that differ in
anything else plant the same directions before ``orthogonalize_steps``), ``synth_structure``
(the copula factor), ``synth_eval`` (the evaluation set), ``synth_data`` (training batches).
"""

from __future__ import annotations

import itertools

import torch

from engine import schema
from engine.seeding import torch_generator
from engine.sources.base import Cost
from engine.sources.planted import PlantedKind, PlantedSourceData
from engine.sweep import values_of
from toydata.synth import SynthConfig, SynthData, hierarchy_size, zipf_probabilities

# The evaluation set is drawn in batches of this many rows (rows are independent, but the
# random stream's layout depends on the batch size, so this is part of the bytes).
EVAL_CHUNK = 1024
# toydata.synth's step size of orthogonalize, pinned here so that a spec's bytes do not
# move with that module's default (not a spec field)
ORTHOGONALIZE_LR = 0.5


def synth_config(cfg: schema.SynthSource) -> SynthConfig:
    """The generator's config of a concrete spec."""
    return SynthConfig(
        n_features=cfg.n_features,
        dim=cfg.dim,
        zipf_exponent=cfg.zipf_exponent,
        p_min=cfg.p_min,
        p_max=cfg.p_max,
        n_roots=cfg.n_roots,
        branching=cfg.branching,
        depth=cfg.depth,
        correlation_rank=cfg.correlation_rank,
        correlation_scale=cfg.correlation_scale,
        magnitude_mean=cfg.magnitude_mean,
        magnitude_std=cfg.magnitude_std,
        orthogonalize_steps=cfg.orthogonalize_steps,
        orthogonalize_lr=ORTHOGONALIZE_LR,
        noise_std=cfg.noise_std,
    )


class SynthSourceData(PlantedSourceData):
    """A synth source: planted features and hierarchy, the generator, a fixed evaluation set."""

    kind = "synth"
    truth_format = "synth-ground-truth/v1"

    def __init__(self, plan, seed: int, eval_samples: int):
        self.plan = plan
        self.seed = seed
        cfg = plan.config
        self.data = SynthData.build(
            synth_config(cfg),
            torch_generator(seed, "synth_features", f"{cfg.n_features}x{cfg.dim}"),
            torch_generator(seed, "synth_structure", plan.key),
        )
        self.truth = self.data.features
        g = torch_generator(seed, "synth_eval", plan.key, eval_samples)
        xs, codes, left = [], [], eval_samples
        while left > 0:
            x, c = self.data.sample(min(left, EVAL_CHUNK), g)
            xs.append(x)
            codes.append(c)
            left -= x.shape[0]
        self.eval_x = torch.cat(xs)
        self.eval_codes = torch.cat(codes)  # [N, n_features] the evaluation set's true codes


class SynthKind(PlantedKind):
    kind = "synth"
    spec = schema.SynthSource
    @staticmethod
    def check(config, path: tuple) -> list[tuple[tuple, str]]:
        """p_min <= p_max and a hierarchy that fits in n_features, over every combination of
        swept values (zip groups are not considered: a zipped pair is checked as if crossed)."""
        out = []
        low, high = max(values_of(config.p_min)), min(values_of(config.p_max))
        if low > high:
            out.append((path + ("p_min",), f"p_min {low:g} exceeds p_max {high:g}"))
        n = min(values_of(config.n_features))
        for roots, branching, depth in itertools.product(*(values_of(getattr(config, k)) for k in ("n_roots", "branching", "depth"))):
            size = hierarchy_size(roots, branching, depth)
            if size > n:
                out.append((path + ("n_roots",), f"n_roots {roots}, branching {branching}, depth {depth} need {size} features, more than n_features {n}"))
                break
        return out

    @staticmethod
    def cost(config, spec) -> Cost:
        n, d = float(config.n_features), float(config.dim)
        l0 = float(zipf_probabilities(config.n_features, config.zipf_exponent, config.p_min, config.p_max).sum())
        rank = config.correlation_rank if config.correlation_scale > 0 else 0
        hierarchy = config.n_roots > 0 and config.depth > 0

        def per_step(batch: int) -> float:
            flops = 2.0 * batch * l0 * d  # codes times features
            if rank:
                flops += 2.0 * batch * n * (rank + 2)  # z = K g + r e, thresholds
            if hierarchy:
                flops += batch * n  # the dense candidate matrix
            return flops

        setup = per_step(spec.eval.samples) + 4.0 * config.orthogonalize_steps * n * d * d
        return Cost(setup_flops=setup, step_flops=per_step)

    @staticmethod
    def prepare(plan, spec, results, log) -> SynthSourceData:
        return SynthSourceData(plan, spec.seed, spec.eval.samples)
