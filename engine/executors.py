"""Where groups of cells train: in this process, in a local process pool, or as Ray tasks.

The unit of work is ``run_group``: lock the group's cells (``engine.locks``), skip the ones
finished meanwhile by another run, train the rest as one ensemble (``train_cells.train_group``),
and put them into the cell store (``<results>/.cells``). Every executor runs that same
function, so the bytes of a cell do not depend on where it trained; the parent process then
assembles the bundle from the store as always.

- ``InProcess`` (default): the parent's prepared sources, one group after the other.
- ``Pool`` (``--jobs N``): ``concurrent.futures.ProcessPoolExecutor`` with the spawn context.
  Each worker fixes torch's threads (``run.threads``) and deterministic algorithms, ignores
  SIGINT (the parent stops it), exits when the parent dies, and prepares a source itself the
  first time a group needs it (toy data is rebuilt from seeds; the LM comes from the cache the
  parent filled under ``<results>/.lm``).
- ``RayExecutor`` (``--executor ray [--address ADDR]``): each group is a Ray task; the results
  directory must be the same path on every node (shared storage). Ray is imported lazily.

A group's result (``GroupResult``) is plain data, so it crosses process boundaries unchanged.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

from engine import locks, sources
from engine.cellstore import cell_store
from engine.determinism import configure_torch
from engine.errors import CellFailure, UserError, shown, shown_path
from engine.plan import Cell, Plan
from engine.train_cells import train_group


class ExecutorError(UserError):
    """An executor that cannot start (Ray missing, no cluster at the address, ...)."""


class StorageError(UserError):
    """The results directory cannot be written (full, read-only, no permission)."""


# errors that mean "this storage cannot take the results", not a bug: reported in one line
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


@attrs.frozen
class ExecutorOptions:
    kind: str = "inprocess"  # "inprocess" | "pool" | "ray"
    jobs: int = 1  # pool workers
    address: str | None = None  # a Ray cluster; None: a local instance


@attrs.define
class GroupResult:
    """What became of a group's cells (cell keys), and how long it took."""

    trained: list[str] = attrs.Factory(list)
    reused: list[str] = attrs.Factory(list)  # finished by another run meanwhile
    busy: list[str] = attrs.Factory(list)  # another run holds their locks (not waiting)
    failures: list[tuple[str, str]] = attrs.Factory(list)  # (cell id, reason)
    seconds: float = 0.0
    fatal: str | None = None  # the results directory cannot be written: stop the run


_SOURCES: dict[tuple, object] = {}  # prepared sources of this (worker) process

# ---- test hook (for tests/test_faults.py; unset in normal use, costs nothing then) ----------
# SAE_TEST_HOLD_AFTER_CELLS=<n>:<marker>: once this process has stored its n-th cell, create
# the file <marker> and block (the group's locks still held) until the test deletes it or
# signals the run. "A cell is finished and the run is still going" is then a state the test
# waits for, instead of a race against a sleep.
HOLD_ENV = "SAE_TEST_HOLD_AFTER_CELLS"
_stored_here = 0


def _test_hold_after_store() -> None:
    global _stored_here
    spec = os.environ.get(HOLD_ENV)
    if not spec:
        return
    _stored_here += 1
    n, _, marker = spec.partition(":")
    if _stored_here != int(n):
        return
    Path(marker).touch()
    end = time.monotonic() + 600  # never hang forever if the test is gone
    while os.path.exists(marker) and time.monotonic() < end:
        time.sleep(0.02)  # SIGINT lands here as KeyboardInterrupt (in-process), SIGKILL anywhere


def _source_for(plan: Plan, results: Path, cell: Cell):
    key = (plan.spec_hash, cell.source.key, str(results))
    if key not in _SOURCES:
        if len(_SOURCES) >= 4:
            _SOURCES.pop(next(iter(_SOURCES)))
        _SOURCES[key] = sources.prepare(cell.source, plan.spec, results, lambda s: None)
    return _SOURCES[key]


def run_group(plan: Plan, results: Path, keys: list[str], code: dict, wait: bool, source=None, on_step=None) -> GroupResult:
    """Train the cells ``keys`` (one group of ``train_cells.make_groups``) unless already finished.

    Cells whose lock another run holds are returned as ``busy``; with ``wait`` this waits for
    that run instead and then reuses its cells (or trains them, if it failed). ``source``:
    the prepared source (else prepared here, once per process). Never raises for a cell's
    failure or an unwritable results directory: those are in the result."""

    results = Path(results)
    by_key = {c.key: c for c in plan.cells}
    store = cell_store(results)
    out = GroupResult()
    t0 = time.perf_counter()
    pending = [by_key[k] for k in keys]
    try:
        while pending:
            held: dict[str, locks.CellLock] = {}
            busy: list[Cell] = []
            try:
                for c in pending:
                    lock = locks.try_lock(results, c.key)
                    if lock is None:
                        busy.append(c)
                    elif store.done(c.key) is not None:
                        lock.release()
                        out.reused.append(c.key)
                    else:
                        held[c.key] = lock
                mine = [c for c in pending if c.key in held]
                if mine:
                    try:
                        src = source if source is not None else _source_for(plan, results, mine[0])
                        done, files, failed = train_group(mine, src, plan, on_step=on_step)
                    except OSError:
                        raise
                    except Exception as e:  # noqa: BLE001 - a cell's crash is reported, not a traceback
                        done, files, failed = [], [], [CellFailure(c.id, f"{type(e).__name__}: {shown(str(e), 200, quote=False)}") for c in mine]
                    for cell, cell_files in zip(done, files):
                        store.put(cell.key, cell_files, code)
                        out.trained.append(cell.key)
                        _test_hold_after_store()
                    out.failures += [(f.cell_id, f.reason) for f in failed]
            finally:
                for lock in held.values():
                    lock.release()
            if not wait:
                out.busy = [c.key for c in busy]
                break
            for c in busy:
                locks.wait_unlocked(results, c.key)
            pending = busy
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        out.fatal = storage_message(e, results)
    out.seconds = round(time.perf_counter() - t0, 3)
    return out


def storage_message(e: OSError, results: Path) -> str:
    where = shown_path(e.filename or results)
    return f"{where}: cannot write results ({e.strerror or e}); free some space or choose a writable --results directory"


# ---------------------------------------------------------------- executors


class InProcess:
    """Groups one after the other in this process, on the parent's prepared sources."""

    def __init__(self, plan: Plan, results: Path, code: dict, prepared: dict, progress):
        self.plan, self.results, self.code, self.prepared, self.progress = plan, results, code, prepared, progress

    def map(self, groups: list[list[Cell]], wait: bool) -> Iterator[tuple[list[Cell], GroupResult]]:
        for group in groups:
            first = group[0]
            with self.progress.stage(f"training {first.source.name} m={first.sae.m} x{len(group)} (steps)", first.sae.max_steps, transient=True) as bar:
                r = run_group(self.plan, self.results, [c.key for c in group], self.code, wait, self.prepared[first.source.key], bar.update)
            yield group, r

    def close(self, interrupted: bool) -> None:
        pass


def _watch_parent() -> None:
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()  # returns when the parent is gone (even after SIGKILL)
        os._exit(1)


def _init_worker(threads: int) -> None:
    """A pool worker: deterministic torch, SIGINT left to the parent, gone with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, daemon=True).start()
    configure_torch(threads)


def _failed(group: list[Cell], why: str) -> GroupResult:
    return GroupResult(failures=[(c.id, why) for c in group])


class Pool:
    """``--jobs N``: a local pool of N spawned worker processes."""

    def __init__(self, plan: Plan, results: Path, code: dict, jobs: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.plan, self.results, self.code = plan, results, code
        self.pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(plan.spec.run.threads,))

    def map(self, groups: list[list[Cell]], wait: bool) -> Iterator[tuple[list[Cell], GroupResult]]:
        from concurrent.futures import as_completed

        futures = {self.pool.submit(run_group, self.plan, self.results, [c.key for c in g], self.code, wait): g for g in groups}
        for f in as_completed(futures):
            group = futures[f]
            try:
                yield group, f.result()
            except Exception as e:  # noqa: BLE001 - e.g. a worker killed by the OS
                yield group, _failed(group, f"worker process failed ({type(e).__name__}: {shown(str(e), 200, quote=False)})")

    def close(self, interrupted: bool) -> None:
        if interrupted:  # stop now: finished cells are in the store, the rest is redone on rerun
            kill = getattr(self.pool, "terminate_workers", None)  # Python 3.14+
            if kill is not None:
                kill()
            else:
                for p in list((getattr(self.pool, "_processes", None) or {}).values()):
                    p.terminate()
            self.pool.shutdown(wait=False, cancel_futures=True)
        else:
            self.pool.shutdown(wait=True)


def _ray_task(plan: Plan, results: str, keys: list[str], code: dict, wait: bool) -> GroupResult:
    configure_torch(plan.spec.run.threads)
    return run_group(plan, Path(results), keys, code, wait)


class RayExecutor:
    """``--executor ray``: each group a Ray task on a cluster (``address``) or a local instance."""

    def __init__(self, plan: Plan, results: Path, code: dict, address: str | None):
        try:
            import ray
        except ImportError:
            raise ExecutorError("--executor ray: Ray is not installed; install it with: pip install 'sae-repro[ray]'") from None
        self.ray = ray
        self.owned = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            try:
                if address:
                    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
                else:
                    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ... from ray.init
                where = f"the Ray cluster at {shown(address, quote=False)}" if address else "a local Ray instance"
                raise ExecutorError(f"--executor ray: cannot connect to {where}: {type(e).__name__}: {shown(str(e).splitlines()[0], 200, quote=False) if str(e) else ''}") from None
            self.owned = True
        self.results = str(Path(results).resolve())
        self.code = code
        self.plan_ref = ray.put(plan)
        self.task = ray.remote(_ray_task).options(num_cpus=plan.spec.run.threads, max_retries=0)
        self.pending: list = []

    def map(self, groups: list[list[Cell]], wait: bool) -> Iterator[tuple[list[Cell], GroupResult]]:
        ray = self.ray
        refs = {self.task.remote(self.plan_ref, self.results, [c.key for c in g], self.code, wait): g for g in groups}
        self.pending = list(refs)
        while self.pending:
            ready, self.pending = ray.wait(self.pending, num_returns=1)
            for ref in ready:
                group = refs[ref]
                try:
                    yield group, ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a task or its worker died
                    first = str(e).strip().splitlines()[-1] if str(e).strip() else ""
                    yield group, _failed(group, f"Ray task failed ({type(e).__name__}: {shown(first, 200, quote=False)})")

    def close(self, interrupted: bool) -> None:
        if interrupted:
            for ref in self.pending:
                self.ray.cancel(ref, force=True)
        if self.owned:
            self.ray.shutdown()


def open_executor(options: ExecutorOptions, plan: Plan, results: Path, code: dict, prepared: dict, progress):
    if options.kind == "pool":
        return Pool(plan, results, code, options.jobs)
    if options.kind == "ray":
        return RayExecutor(plan, results, code, options.address)
    return InProcess(plan, results, code, prepared, progress)
