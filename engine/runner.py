"""Run a plan: prepare sources, train the cells not yet finished, analyse, write the bundle."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from engine import executors, provenance, sources
from engine.assemble import write_bundle
from engine.bundle import read_meta, temp_sibling, verify
from engine.cellstore import cell_store
from engine.determinism import configure_torch
from engine.errors import BundleError, CellFailure, shown, shown_path
from engine.executors import (
    STORAGE_ERRNOS,
    ExecutorOptions,
    StorageError,
    storage_message,
)
from engine.plan import Cell, Plan, step_flops
from engine.progress import PlainProgress, Progress
from engine.train_cells import make_groups



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


def bundle_path(results: Path, plan: Plan) -> Path:
    return results / f"{plan.spec.name}-{plan.spec_hash[:12]}"


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
        cached = _cached(final, code, plan)
        if cached is not None:
            return cached

    configure_torch(plan.spec.run.threads)
    store = cell_store(results)
    todo = [c for c in plan.cells if store.done(c.key) is None]
    if len(todo) < len(plan.cells):
        log(f"{len(plan.cells) - len(todo)} of {len(plan.cells)} cells already finished (reused from {store.root})")

    t0 = time.perf_counter()
    prepared: dict[str, sources.PreparedSource] = {}
    timings: dict[str, float] = {}
    with progress.stage("sources", len(plan.sources)) as bar:
        for sp in plan.sources:
            t = time.perf_counter()
            prepared[sp.key] = sources.prepare(sp, plan.spec, results, log)
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

    stale = _move_stale_aside(final, plan) if rerun else None
    try:
        meta, published = write_bundle(plan, final, prepared, store, code, timings, t0)
    except BaseException:
        if stale is not None and not final.exists():
            os.rename(stale, final)  # nothing new was published: the old bundle stays
        raise
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)
    counts = {"trained": len(trained), "reused": len(plan.cells) - len(trained)}
    if not published:
        log(f"another run published {final.name} first; using it ({counts['trained']} cells trained here, {counts['reused']} reused)")
        cached = _cached(final, code, plan) or Outcome(final, "cached", meta)
        return attrs.evolve(cached, **counts)
    return Outcome(final, "created", meta, **counts)


def _move_stale_aside(final: Path, plan: Plan) -> Path | None:
    """With --rerun, a bundle of this spec that holds other cells (a source's content changed,
    e.g. a user's model) is renamed out of the way, so the new one can be published; returns
    where it went (deleted once the new bundle is in place)."""
    if not final.exists():
        return None
    try:
        recorded = read_meta(final).get("cells")
    except BundleError:
        recorded = None
    if recorded == {c.id: c.key for c in plan.cells}:
        return None  # same cells: first writer wins, the bundle's bytes are the same
    trash = temp_sibling(final)
    os.rename(final, trash)
    return trash


def _cached(final: Path, code: dict, plan: Plan) -> Outcome | None:
    v = verify(final)
    if not v.ok:
        raise BundleError(
            f"{shown_path(final)}: exists but fails verification ({len(v.changed)} changed, {len(v.missing)} missing, "
            f"{len(v.extra)} extra files); run `sae-run --verify {shown_path(final)}` for details, or --rerun to replace it"
        )
    if v.meta.get("cells") != {c.id: c.key for c in plan.cells}:
        # same spec, other content outside it (a user's model re-saved at the same path)
        raise BundleError(
            f"{shown_path(final)}: exists but holds other cells than this spec now plans (a source's content changed "
            "since, e.g. a model re-saved at the same path); pass --rerun to replace it"
        )
    notes = []
    made_by = v.meta.get("code", {}).get("fingerprint")
    if made_by != code["fingerprint"]:
        notes.append(
            f"note: this bundle was made by other code (fingerprint {shown(str(made_by)[:12], quote=False)}, now {code['fingerprint'][:12]}); "
            "pass --rerun to recompute it with this code"
        )
    return Outcome(final, "cached", v.meta, tuple(notes))


def dry_run_lines(plan: Plan) -> list[str]:
    spec = plan.spec
    lines = [f"spec {spec.name}  hash {plan.spec_hash[:12]}  seed {spec.seed}  threads {spec.run.threads}  device {spec.run.device}"]
    for sp in plan.sources:
        lines.append(f"source {sp.name}: {sp.kind}, width {sp.width}, key {sp.key[:12]}")
    total = 0.0
    for c in plan.cells:
        flops = step_flops(c) * c.sae.max_steps
        total += flops
        params = ", ".join(f"{k}={v}" for k, v in c.params.items() if k != "m")
        steps = c.sae.steps if c.sae.stop is None else f"<={c.sae.max_steps}"
        lines.append(f"  {c.id}  m={c.sae.m} steps={steps} batch={c.sae.batch}  {params}  ({flops / 1e9:.1f} GFLOP)")
    lines.append(f"{len(plan.cells)} cells in {len(make_groups(list(plan.cells)))} groups, {total / 1e12:.2f} TFLOP of SAE training")
    return lines


__all__ = ["Outcome", "RunFailed", "bundle_path", "dry_run_lines", "run"]
