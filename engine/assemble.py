"""Bundle assembly: the finished cells of a plan, its sources, analyses and report, written
atomically as one bundle (``engine.bundle.BundleWriter``)."""

from __future__ import annotations

import os
import platform
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from engine import analyses, claims, layout, metric_defs, provenance, report
from engine import tensors as tensors_io
from engine.bundle import BundleWriter
from engine.cellstore import KeyedStore
from engine.spec import dump_spec


def write_bundle(plan, final, prepared, store: KeyedStore, code, timings, t0) -> tuple[dict, bool]:
    spec = plan.spec
    w = BundleWriter(final)
    try:
        w.write_text(layout.SPEC_FILE, dump_spec(spec))
        cells_meta, full_metrics, atoms, live, curves = {}, {}, {}, {}, {}
        for cell in plan.cells:
            d = store.dir(cell.key)
            for name in (layout.CELL_TENSORS, layout.CELL_JSON):
                w.add_file(layout.cell_file(cell.id, name), d / name)
            cj = store.read_json(cell.key)
            cells_meta[cell.id] = {
                "source": cell.source.name,
                "key": cell.key,
                "params": cell.params,
                "sae": cj["sae"],
                "metrics": analyses.select(cj["metrics"], spec.analyses),
            }
            if "stop" in cj:  # trained with a stop rule: where and why it stopped
                cells_meta[cell.id]["stop"] = cj["stop"]
            full_metrics[cell.id] = cj["metrics"]
            curves[cell.id] = cj.get("curves", {})
            saved = tensors_io.from_bytes((d / layout.CELL_TENSORS).read_bytes())
            if any(a in spec.analyses for a in analyses.TRUTH_ANALYSES):
                src = prepared[cell.source.key]
                extra = analyses.truth_metrics(saved, cj["sae"], src.truth, src.eval_x, getattr(src, "eval_codes", None), spec.analyses)
                cells_meta[cell.id]["metrics"].update(analyses.select(extra, spec.analyses))
            atoms[cell.id] = saved["decoder"]
            live[cell.id] = saved["firing_frequency"] > 0
        sources = {}
        for sp in plan.sources:
            src = prepared[sp.key]
            for name, data in src.files().items():
                if isinstance(data, Path):
                    w.add_file(layout.source_file(sp.name, name), data)
                else:
                    w.write_bytes(layout.source_file(sp.name, name), data)
            sources[sp.name] = src.info()
        cross = analyses.cross_cell(plan, cells_meta, full_metrics, atoms, live, spec.analyses)
        metrics = {
            "schema": 1,
            "spec_hash": plan.spec_hash,
            "conventions": metric_defs.conventions(spec.analyses),
            "sources": sources,
            "cells": cells_meta,
            "analyses": cross,
            "claims": claims.evaluate(plan, cells_meta, cross, curves),
        }
        w.write_json(layout.METRICS_FILE, metrics)
        t_report = time.perf_counter()
        corpora = {sp.name: prepared[sp.key].corpus for sp in plan.sources if prepared[sp.key].corpus is not None}
        # the report reads metrics.json as written (key order and all), as sae-report will
        written = layout.read_metrics(w.tmp)
        for name, data in report.build(w.tmp, plan, written, corpora).items():
            w.write_bytes(layout.report_file(name), data)
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
