"""Run a plan: prepare sources, train the cells not yet finished, analyse, write the bundle."""

from __future__ import annotations

import math
import os
import platform
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import attrs
import torch

from engine import analyses, executors, provenance, report
from engine import tensors as tensors_io
from engine.bundle import BundleWriter, verify
from engine.cellstore import KeyedStore, cell_store
from engine.errors import BundleError, CellFailure, shown, shown_path
from engine.executors import (
    STORAGE_ERRNOS,
    ExecutorOptions,
    StorageError,
    storage_message,
)
from engine.hashing import stable_json
from engine.plan import Cell, Plan, SourcePlan, step_flops
from engine.progress import PlainProgress, Progress
from engine.seeding import torch_generator
from engine.sources import PreparedSource, ToySourceData
from engine.spec import dump_spec
from sae.init import init_weights
from sae.metrics import evaluate
from sae.relu_l1 import ReluL1
from sae.train import NonFiniteLoss, train

MAX_GROUP_PARAMS = 1 << 24  # members of a batched group hold at most this many weights together


@attrs.frozen
class Outcome:
    path: Path
    status: str  # "created" | "cached"
    meta: dict
    notes: tuple[str, ...] = ()
    trained: int = 0
    reused: int = 0


class RunFailed(Exception):
    """Some cells failed; the finished ones are kept and a rerun retries only the failed."""

    def __init__(self, failures: list[CellFailure]):
        self.failures = failures
        super().__init__("; ".join(str(f) for f in failures))


Log = Callable[[str], None]


def configure_torch(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # can only be set once per process, before any parallel work
        pass
    torch.use_deterministic_algorithms(True)


def bundle_path(results: Path, plan: Plan) -> Path:
    return results / f"{plan.spec.name}-{plan.spec_hash[:12]}"


def prepare_source(sp: SourcePlan, plan: Plan, results: Path, log: Log) -> PreparedSource:
    if sp.kind == "toy":
        return ToySourceData(sp, plan.spec.seed, plan.spec.eval.samples)
    from engine.lm_source import LMSourceData

    return LMSourceData(sp, plan.spec, results, log)


def run(
    plan: Plan,
    results: Path,
    *,
    rerun: bool = False,
    log: Log | None = None,
    progress: Progress | None = None,
    executor: ExecutorOptions | None = None,
) -> Outcome:
    """Run ``plan`` into ``results``: the bundle, from the cells already finished and the rest.

    ``progress`` shows the work (default: plain lines through ``log``, or nothing);
    ``executor`` says where groups of cells train (in-process, a pool, Ray). Raises RunFailed
    if cells failed (the others are kept), StorageError if the results directory cannot be
    written, KeyboardInterrupt on Ctrl-C (finished cells kept)."""
    if progress is None:
        progress = PlainProgress(log) if log is not None else Progress()
    results = Path(results)
    try:
        return _run(plan, results, rerun, progress, executor or ExecutorOptions())
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise StorageError(storage_message(e, results)) from None
        raise


def _run(plan: Plan, results: Path, rerun: bool, progress: Progress, options: ExecutorOptions) -> Outcome:
    log = progress.log
    final = bundle_path(results, plan)
    code = provenance.code_info()
    if final.exists() and not rerun:
        cached = _cached(final, code)
        if cached is not None:
            return cached

    configure_torch(plan.spec.run.threads)
    store = cell_store(results)
    todo = [c for c in plan.cells if store.done(c.key) is None]
    if len(todo) < len(plan.cells):
        log(f"{len(plan.cells) - len(todo)} of {len(plan.cells)} cells already finished (reused from {store.root})")

    t0 = time.perf_counter()
    prepared: dict[str, PreparedSource] = {}
    timings: dict[str, float] = {}
    with progress.stage("sources", len(plan.sources)) as bar:
        for sp in plan.sources:
            t = time.perf_counter()
            prepared[sp.key] = prepare_source(sp, plan, results, log)
            timings[f"source:{sp.name}"] = round(time.perf_counter() - t, 3)
            bar.advance(1, f"source {sp.name} ready ({timings[f'source:{sp.name}']:.1f}s)")

    failures: list[CellFailure] = []
    trained: list[str] = []
    by_key = {c.key: c for c in plan.cells}
    ex = executors.open_executor(options, plan, results, code, prepared, progress)
    interrupted = True
    try:
        with progress.stage("cells", len(todo)) as bar:
            busy: list[Cell] = []
            rounds = [(make_groups(todo), False)]
            while rounds:
                groups, wait = rounds.pop()
                for group, r in ex.map(groups, wait):
                    if r.fatal:
                        raise StorageError(r.fatal)
                    first = group[0]
                    label = f"{first.source.name} m={first.sae.m} x{len(group)}"
                    for cell_id, reason in r.failures:
                        log(f"{label}: cell {cell_id} FAILED: {reason}")
                    failures += [CellFailure(cell_id, reason) for cell_id, reason in r.failures]
                    trained += r.trained
                    busy += [by_key[k] for k in r.busy]
                    timings[f"group:{len(timings)}"] = r.seconds
                    what = [f"{len(r.trained)} trained"] + [f"{len(r.reused)} finished by another run"] * bool(r.reused)
                    what += [f"{len(r.failures)} failed"] * bool(r.failures) + [f"{len(r.busy)} busy in another run"] * bool(r.busy)
                    bar.advance(len(group) - len(r.busy), f"{label}: {', '.join(what)} in {r.seconds:.1f}s")
                if busy and not wait:
                    log(f"{len(busy)} cells are being trained by another run on {results}; waiting for them")
                    rounds.append((make_groups(busy), True))
        interrupted = False
    finally:
        ex.close(interrupted)
    if failures:
        raise RunFailed(failures)

    meta, published = write_bundle(plan, final, prepared, store, code, timings, t0)
    counts = {"trained": len(trained), "reused": len(plan.cells) - len(trained)}
    if not published:
        log(f"another run published {final.name} first; using it ({counts['trained']} cells trained here, {counts['reused']} reused)")
        cached = _cached(final, code) or Outcome(final, "cached", meta)
        return attrs.evolve(cached, **counts)
    return Outcome(final, "created", meta, **counts)


def _cached(final: Path, code: dict) -> Outcome | None:
    v = verify(final)
    if not v.ok:
        raise BundleError(
            f"{shown_path(final)}: exists but fails verification ({len(v.changed)} changed, {len(v.missing)} missing, "
            f"{len(v.extra)} extra files); run `sae-run --verify {shown_path(final)}` for details, or --rerun to replace it"
        )
    notes = []
    made_by = v.meta.get("code", {}).get("fingerprint")
    if made_by != code["fingerprint"]:
        notes.append(
            f"note: this bundle was made by other code (fingerprint {shown(str(made_by)[:12], quote=False)}, now {code['fingerprint'][:12]}); "
            "pass --rerun to recompute it with this code"
        )
    return Outcome(final, "cached", v.meta, tuple(notes))


def make_groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells sharing source, size, batch, steps and lr, in chunks that fit MAX_GROUP_PARAMS."""
    by_group: dict[tuple, list[Cell]] = defaultdict(list)
    for c in cells:
        by_group[c.group].append(c)
    out = []
    for members in by_group.values():
        per_member = 2 * members[0].sae.m * members[0].source.width
        size = max(1, MAX_GROUP_PARAMS // per_member)
        out += [members[i : i + size] for i in range(0, len(members), size)]
    return out


@torch.no_grad()
def firing_frequency(model: ReluL1, e: int, x_eval: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
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
            out[k] = int(v) if k in ("dead", "recovered_0.9") else float(v)
    return out


def _initial_model(cells: list[Cell], src: PreparedSource, seed: int) -> ReluL1:
    weights = []
    for c in cells:
        samples = None
        if c.sae.init == "data_samples":
            samples = src.init_samples(c.sae.m, torch_generator(seed, "sae_init_data", c.stream_id))
        weights.append(init_weights(c.sae.init, src.plan.width, c.sae.m, torch_generator(seed, "sae_init", c.stream_id), samples))
    return ReluL1(
        torch.stack([w[0] for w in weights]),
        torch.stack([w[1] for w in weights]),
        torch.stack([w[2] for w in weights]),
        l1=torch.tensor([c.sae.l1 for c in cells], dtype=torch.float32),
        decoder_bias=cells[0].sae.decoder_bias,
    )


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
    while cells:
        model = _initial_model(cells, src, plan.spec.seed).to(device)
        batches = src.batches(first.batch)
        try:
            curves = train(
                model, lambda step: batches(step).to(device), first.steps, first.lr, lambda m: evaluate(m, eval_x, truth), plan.spec.eval.curve_every, on_step
            )
            break
        except NonFiniteLoss as e:
            bad = set(e.members)
            failures += [CellFailure(c.id, f"non-finite training loss at step {e.step} (l1={c.sae.l1:g}, lr={c.sae.lr:g})") for i, c in enumerate(cells) if i in bad]
            cells = [c for i, c in enumerate(cells) if i not in bad]
    if not cells:
        return [], [], failures

    final = evaluate(model, eval_x, truth)  # member by member: independent of batch-mates
    out = []
    for e, cell in enumerate(cells):
        metrics = _scalars({k: v[e] for k, v in final.items()})
        with torch.no_grad():
            metrics.update(_scalars(src.cell_metrics(lambda x, e=e: model.member_forward(x.to(device), e)[0].cpu())))
        member_curves = {k: list(vals) if k == "step" else [_finite(point[e]) for point in vals] for k, vals in curves.items()}
        cell_json = {
            "key": cell.key,
            "source_key": cell.source.key,
            "sae": attrs.asdict(cell.sae),
            "metrics": metrics,
            "curves": member_curves,
        }
        out.append(
            {
                "sae.safetensors": tensors_io.to_bytes(
                    {k: v.cpu() for k, v in {**model.member_tensors(e), "firing_frequency": firing_frequency(model, e, eval_x)}.items()},
                    {"format": "relu_l1/v1", "cell_key": cell.key},
                ),
                "cell.json": stable_json(cell_json).encode(),
            }
        )
    return cells, out, failures


def write_bundle(plan, final, prepared, store: KeyedStore, code, timings, t0) -> tuple[dict, bool]:
    spec = plan.spec
    w = BundleWriter(final)
    try:
        w.write_text("spec.yaml", dump_spec(spec))
        cells_meta, full_metrics, atoms, live = {}, {}, {}, {}
        for cell in plan.cells:
            d = store.dir(cell.key)
            for name in ("sae.safetensors", "cell.json"):
                w.add_file(f"cells/{cell.id}/{name}", d / name)
            cj = store.read_json(cell.key)
            cells_meta[cell.id] = {
                "source": cell.source.name,
                "key": cell.key,
                "params": cell.params,
                "sae": cj["sae"],
                "metrics": analyses.select(cj["metrics"], spec.analyses),
            }
            full_metrics[cell.id] = cj["metrics"]
            saved = tensors_io.from_bytes((d / "sae.safetensors").read_bytes())
            atoms[cell.id] = saved["decoder"]
            live[cell.id] = saved["firing_frequency"] > 0
        sources = {}
        for sp in plan.sources:
            src = prepared[sp.key]
            for name, data in src.files().items():
                if isinstance(data, Path):
                    w.add_file(f"sources/{sp.name}/{name}", data)
                else:
                    w.write_bytes(f"sources/{sp.name}/{name}", data)
            sources[sp.name] = src.info()
        cross = analyses.cross_cell(plan, cells_meta, full_metrics, atoms, live, spec.analyses)
        metrics = {
            "schema": 1,
            "spec_hash": plan.spec_hash,
            "conventions": analyses.CONVENTIONS,
            "sources": sources,
            "cells": cells_meta,
            "analyses": cross,
        }
        w.write_json("metrics.json", metrics)
        t_report = time.perf_counter()
        corpora = {sp.name: prepared[sp.key].corpus for sp in plan.sources if sp.kind == "lm"}
        for name, data in report.build(w.tmp, plan, metrics, corpora).items():
            w.write_bytes(f"report/{name}", data)
        timings["report"] = round(time.perf_counter() - t_report, 3)
        meta = {
            "name": spec.name,
            "spec_hash": plan.spec_hash,
            "cells": {c.id: c.key for c in plan.cells},
            "code": code,
            "environment": provenance.environment(spec.run.threads),
        }
        run_info = {
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - t0, 3),
            "timings": timings,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "python": platform.python_version(),
        }
        return w.finish(meta, run_info)
    except BaseException:
        w.abandon()
        raise


def dry_run_lines(plan: Plan) -> list[str]:
    spec = plan.spec
    lines = [f"spec {spec.name}  hash {plan.spec_hash[:12]}  seed {spec.seed}  threads {spec.run.threads}  device {spec.run.device}"]
    for sp in plan.sources:
        lines.append(f"source {sp.name}: {sp.kind}, width {sp.width}, key {sp.key[:12]}")
    total = 0.0
    for c in plan.cells:
        flops = step_flops(c) * c.sae.steps
        total += flops
        params = ", ".join(f"{k}={v}" for k, v in c.params.items() if k != "m")
        lines.append(f"  {c.id}  m={c.sae.m} steps={c.sae.steps} batch={c.sae.batch}  {params}  ({flops / 1e9:.1f} GFLOP)")
    lines.append(f"{len(plan.cells)} cells in {len(make_groups(list(plan.cells)))} groups, {total / 1e12:.2f} TFLOP of SAE training")
    return lines


__all__ = ["Outcome", "RunFailed", "bundle_path", "dry_run_lines", "run"]
