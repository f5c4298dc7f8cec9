"""Where things are in a bundle, and reading them back as typed objects.

Paths (relative to the bundle root)::

    spec.yaml  bundle.json  metrics.json  run.json
    cells/<cell id>/sae.safetensors   cells/<cell id>/cell.json
    sources/<source name>/...         report/...

``CellRecord`` is ``cell.json`` and ``MetricsFile`` is ``metrics.json``, structured through the
spec converter (``engine.convert``); ``load_member`` rebuilds a cell's SAE (any kind) from its
saved tensors. Writing goes through ``engine.bundle`` (atomic, fsynced).
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
from torch import Tensor

from engine.errors import BundleError
from sae import base as sae_kinds

SPEC_FILE = "spec.yaml"
METRICS_FILE = "metrics.json"
REPORT_DIR = "report"
CELL_TENSORS = "sae.safetensors"
CELL_JSON = "cell.json"


def cell_file(cell_id: str, name: str) -> str:
    return f"cells/{cell_id}/{name}"


def source_file(source: str, name: str) -> str:
    return f"sources/{source}/{name}"


def report_file(name: str) -> str:
    return f"{REPORT_DIR}/{name}"


@attrs.frozen
class CellRecord:
    """``cells/<id>/cell.json``: a finished cell's settings, final metrics and curves."""

    key: str
    source_key: str
    sae: dict  # the flat settings of engine.plan.SAEConfig.as_dict
    metrics: dict
    curves: dict
    stop: dict | None = None  # {"step": s, "reason": "converged" | "max_steps"} with a stop rule

    @property
    def kind(self) -> str:
        return self.sae["kind"]


@attrs.frozen
class CellEntry:
    """One cell in ``metrics.json``."""

    source: str
    key: str
    params: dict
    sae: dict
    metrics: dict
    stop: dict | None = None


@attrs.frozen
class MetricsFile:
    """``metrics.json``."""

    schema: int
    spec_hash: str
    conventions: dict
    sources: dict
    cells: dict[str, CellEntry]
    analyses: dict
    claims: list = attrs.Factory(list)  # engine.claims: {id, statement, metric, value, verdict, cells[, note]}


def _structure(data, cl, where: Path):
    from engine import convert

    obj, errors = convert.structure(data, cl)
    if errors:
        path, message, _ = errors[0]
        at = ".".join(str(p) for p in path) or "top level"
        raise BundleError(f"{where}: corrupt ({at}: {message})")
    return obj


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: corrupt ({type(e).__name__})") from None


def metrics_from(data: dict, where: Path | str = METRICS_FILE) -> MetricsFile:
    """Typed ``metrics.json`` from its plain data (as read, or as being written)."""
    return _structure(data, MetricsFile, Path(where))


def read_cell(root: Path, cell_id: str) -> CellRecord:
    path = Path(root) / cell_file(cell_id, CELL_JSON)
    return _structure(_read_json(path), CellRecord, path)


def read_metrics(root: Path) -> MetricsFile:
    path = Path(root) / METRICS_FILE
    return _structure(_read_json(path), MetricsFile, path)


def load_member(tensors: dict[str, Tensor], sae: dict) -> sae_kinds.SAE:
    """A one-member SAE of the cell's kind from its saved tensors and recorded settings
    (``cell.json`` "sae"); ``firing_frequency`` and other non-model tensors are ignored."""
    kind = sae_kinds.get(sae["kind"])
    return kind.from_member_tensors([tensors], [{p: sae[p] for p in kind.params}])
