"""Training one group of cells: cells of equal shape trained as one ensemble of any SAE kind.

``make_groups`` splits cells into groups that can share an ensemble; ``train_group`` trains
one group on its prepared source and returns each finished cell's files for the cell store
(``sae.safetensors``, ``cell.json``). A member's bytes do not depend on its batch-mates.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import torch

from engine import metric_defs
from engine import tensors as tensors_io
from engine.errors import CellFailure
from engine.hashing import stable_json
from engine.plan import Cell, Plan, step_flops
from engine.seeding import torch_generator
from engine.sources import PreparedSource
from sae import base as sae_kinds
from sae.init import init_weights
from sae.metrics import evaluate
from sae.recipes import Recipe
from sae.stopping import StopRule, eval_loss_metric, mmcs_truth_metric
from sae.train import NonFiniteLoss, train, train_members

MAX_GROUP_PARAMS = 1 << 24  # members of a batched group hold at most this many weights together


def make_groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells sharing source, kind, size, batch, steps and lr, in chunks that fit MAX_GROUP_PARAMS,
    the most planned FLOPs first (a pool of workers finishes sooner when the longest groups
    start first; a member's bytes do not depend on when its group runs)."""
    by_group: dict[tuple, list[Cell]] = defaultdict(list)
    for c in cells:
        by_group[c.group].append(c)
    out = []
    for members in by_group.values():
        per_member = 2 * members[0].sae.m * members[0].source.width
        size = max(1, MAX_GROUP_PARAMS // per_member)
        out += [members[i : i + size] for i in range(0, len(members), size)]
    return sorted(out, key=plan_flops, reverse=True)  # stable: equal costs keep plan order


def plan_flops(cells: list[Cell]) -> float:
    """FLOPs of training ``cells`` for their planned (at most) steps."""
    return sum(step_flops(c) * c.sae.max_steps for c in cells)


@torch.no_grad()
def firing_frequency(model: sae_kinds.SAE, e: int, x_eval: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """[m] float32: the share of evaluation samples on which each atom's code is > 0."""
    counts = torch.zeros(model.m, dtype=torch.float64, device=x_eval.device)
    for i in range(0, x_eval.shape[0], chunk):
        counts += (model.member_forward(x_eval[i : i + chunk], e)[1] > 0).sum(dim=0, dtype=torch.float64)
    return (counts / x_eval.shape[0]).float()


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _scalars(metrics: dict) -> dict:
    """Plain numbers for JSON; an undefined value (NaN, e.g. FVU of a constant set) is null."""
    out = {}
    for k, v in metrics.items():
        v = v.item() if isinstance(v, torch.Tensor) else v
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        else:
            out[k] = int(v) if k in metric_defs.INTEGER else float(v)
    return out


def initial_model(cells: list[Cell], src: PreparedSource, seed: int) -> sae_kinds.SAE:
    """The group's ensemble before training: member e from cell e's own seed streams.
    ``recipe.decoder_init_norm`` replaces the init by ``tied_small`` at that norm."""
    weights = []
    for c in cells:
        samples = None
        norm = (c.sae.recipe or {}).get("decoder_init_norm")
        init, extra = ("tied_small", {"decoder_init_norm": norm}) if norm is not None else (c.sae.init, {})
        if init == "data_samples":
            samples = src.init_samples(c.sae.m, torch_generator(seed, "sae_init_data", c.stream_id))
        weights.append(init_weights(init, src.plan.width, c.sae.m, torch_generator(seed, "sae_init", c.stream_id), samples, **extra))
    kind = sae_kinds.get(cells[0].sae.kind)
    hyper = [{p: c.sae.hyper[p] for p in kind.params} for c in cells]
    return kind.build(weights, hyper, cells[0].sae.decoder_bias, **cells[0].sae.options)


def train_group(
    cells: list[Cell], src: PreparedSource, plan: Plan, on_step: Callable[[int], None] | None = None
) -> tuple[list[Cell], list[dict[str, bytes]], list[CellFailure]]:
    """Train cells as one ensemble: (finished cells, their cell-store files, failed cells).

    A member whose loss turns non-finite fails alone: the group restarts without it, which
    gives the others the very bytes they would have had anyway (members are independent).
    Data is drawn on the CPU (its streams are CPU generators) and moved to ``run.device``."""
    first = cells[0].sae
    device = torch.device(plan.spec.run.device)
    eval_x = src.eval_x.to(device)
    truth = src.truth.to(device) if src.truth is not None else None
    failures: list[CellFailure] = []
    stops: list[dict] | None = None
    while cells:
        model = initial_model(cells, src, plan.spec.seed).to(device)
        batches = src.batches(first.batch)
        try:
            if first.stop is None and first.recipe is None:  # the 2022 loop, as it always ran
                curves = train(
                    model, lambda step: batches(step).to(device), first.steps, first.lr, lambda m: evaluate(m, eval_x, truth), plan.spec.eval.curve_every, on_step
                )
                per_member = [{k: list(vals) if k == "step" else [_finite(point[e]) for point in vals] for k, vals in curves.items()} for e in range(len(cells))]
            else:
                result = _train_members(cells, model, batches, device, eval_x, truth, plan, on_step)
                model = result.model(device)
                per_member = [{k: list(v) if k == "step" else [_finite(x) for x in v] for k, v in m.curves.items()} for m in result.members]
                stops = result.stops if first.stop is not None else None
            break
        except NonFiniteLoss as e:
            bad = set(e.members)
            failures += [
                CellFailure(c.id, f"non-finite training loss at step {e.step} ({c.sae.sparsity_name}={c.sae.sparsity:g}, lr={c.sae.lr:g})")
                for i, c in enumerate(cells) if i in bad
            ]
            cells = [c for i, c in enumerate(cells) if i not in bad]
    if not cells:
        return [], [], failures

    final = evaluate(model, eval_x, truth)  # member by member: independent of batch-mates
    out = []
    for e, cell in enumerate(cells):
        metrics = _scalars({k: v[e] for k, v in final.items()})
        with torch.no_grad():
            metrics.update(_scalars(src.cell_metrics(lambda x, e=e: model.member_forward(x.to(device), e)[0].cpu())))
        cell_json = {
            "key": cell.key,
            "source_key": cell.source.key,
            "sae": cell.sae.as_dict(),
            "metrics": metrics,
            "curves": per_member[e],
        }
        if stops is not None:
            cell_json["stop"] = stops[e]
        tensors = {**model.member_tensors(e), "firing_frequency": firing_frequency(model, e, eval_x)}
        out.append(
            {
                "sae.safetensors": tensors_io.to_bytes({k: v.cpu() for k, v in tensors.items()}, {"format": model.tensor_format, "cell_key": cell.key}),
                "cell.json": stable_json(cell_json).encode(),
            }
        )
    return cells, out, failures


def _train_members(cells: list[Cell], model, batches, device, eval_x, truth, plan: Plan, on_step):
    """The group trained with its stop rule and/or recipe (``sae.train.train_members``)."""
    first = cells[0].sae
    stop = StopRule(**first.stop) if first.stop is not None else None
    recipe = Recipe(**(first.recipe or {}))
    resample = [torch_generator(plan.spec.seed, "sae_resample", c.stream_id) for c in cells] if recipe.resample_dead_every else None
    return train_members(
        model,
        lambda step: batches(step).to(device),
        first.lr,
        steps=None if stop is not None else first.steps,
        stop=stop,
        options=recipe,
        evaluate=lambda m: evaluate(m, eval_x, truth),
        curve_every=plan.spec.eval.curve_every,
        on_step=on_step,
        stop_metric=_stop_metric(stop, truth, eval_x),
        resample_generators=resample,
    )


def _stop_metric(stop: StopRule | None, truth, eval_x):
    """The stop rule's per-member callback: MMCS with the truth, or the objective on the
    evaluation set (used only to decide when to stop, never to choose among cells)."""
    if stop is None or stop.metric == "loss":
        return None
    return mmcs_truth_metric(truth) if stop.metric == "mmcs_truth" else eval_loss_metric(eval_x)
