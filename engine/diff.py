"""``sae-diff A B``: what differs between two result bundles, and whether it matters.

Both bundles are verified first. The verdict is

- ``identical``: equal content digests (byte-identical results);
- ``equivalent``: every cell of one has a counterpart in the other, and every compared
  quantity is within tolerance: each metric within ``atol + rtol * |A|`` (counts of dead
  atoms and recovered features as fractions within ``count_tol``), each pair of
  dictionaries with MMCS >= ``min_mmcs`` in both directions;
- ``different``: anything else.

Cells are matched by what they are (source name and settings, SAE settings), not by key:
a cell key also hashes the determinism context (threads, device), and comparing across
contexts is the point. Spec, code and environment differences are reported but do not by
themselves make bundles different.

``--json`` prints a stable document (``schema: 1``) with the same content.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs

from engine import layout, metric_defs
from engine import tensors as tensors_io
from engine import yamlio
from engine.bundle import verify
from engine.errors import BundleError, one_line, shown, shown_path
from engine.hashing import canonical_json
from sae.metrics import max_cosine

DIFF_SCHEMA = 1
DEFAULT_RTOL = 1e-2
DEFAULT_ATOL = 1e-4
DEFAULT_MIN_MMCS = 0.99
DEFAULT_COUNT_TOL = 0.02
SAME_ATOM = 0.99
# counts of atoms or features move in whole steps when one atom crosses a threshold; they are
# compared as fractions (of the dictionary, of the planted features) within count_tol
# a count is compared through its fraction of the dictionary (or of the features)
COUNTS = {**metric_defs.COUNT_FRACTIONS, **{f: f for f in metric_defs.COUNT_FRACTIONS.values()}}


@attrs.frozen
class Tolerances:
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    min_mmcs: float = DEFAULT_MIN_MMCS
    count_tol: float = DEFAULT_COUNT_TOL


def _walk_diff(a, b, path: str = "") -> list[dict]:
    """Leaf-level differences between two JSON-like values, with spec-style paths."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            sub = f"{path}.{k}" if path else str(k)
            if k not in a:
                out.append({"path": sub, "a": None, "b": b[k], "change": "added"})
            elif k not in b:
                out.append({"path": sub, "a": a[k], "b": None, "change": "removed"})
            else:
                out += _walk_diff(a[k], b[k], sub)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += _walk_diff(x, y, f"{path}[{i}]")
        return out
    if type(a) is not type(b) or a != b:
        return [{"path": path, "a": a, "b": b, "change": "changed"}]
    return []


@attrs.frozen
class Loaded:
    path: Path
    meta: dict
    spec: dict
    metrics: layout.MetricsFile


def load(path: Path) -> Loaded:
    """Verify a bundle and read what the diff needs. Raises BundleError if unusable."""
    path = Path(path)
    v = verify(path)
    if not v.ok:
        raise BundleError("; ".join(v.lines()))
    try:
        spec, _ = yamlio.load((path / "spec.yaml").read_text(encoding="utf-8"), str(path / "spec.yaml"))
    except yamlio.yaml.YAMLError as e:
        raise BundleError(f"{yamlio.yaml_problem(e, shown_path(path / 'spec.yaml'))} (a corrupt bundle)") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"{shown_path(path / 'spec.yaml')}: corrupt ({e.__class__.__name__}: {_first_line(e)})") from None
    try:
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleError(f"{shown_path(path / 'metrics.json')}: corrupt ({e.__class__.__name__}: {_first_line(e)})") from None
    if not isinstance(spec, dict):
        raise BundleError(f"{shown_path(path / 'spec.yaml')}: corrupt (expected a mapping, got {type(spec).__name__})")
    problem = _metrics_problem(metrics)  # what the diff relies on, named plainly
    if problem:
        raise BundleError(f"{shown_path(path / 'metrics.json')}: corrupt ({problem})")
    return Loaded(path, v.meta, spec, layout.metrics_from(metrics, shown_path(path / layout.METRICS_FILE)))


def _first_line(e: Exception) -> str:
    return shown((str(e).splitlines() or [""])[0], 200, quote=False)


def _metrics_problem(metrics) -> str | None:
    """What in ``metrics.json`` is not shaped as the diff reads it, or None."""
    if not isinstance(metrics, dict):
        return "expected a JSON object"
    cells = metrics.get("cells")
    if not isinstance(cells, dict):
        return "no 'cells' object"
    for cid, cell in cells.items():
        if not (isinstance(cell, dict) and isinstance(cell.get("source"), str) and isinstance(cell.get("sae"), dict) and isinstance(cell.get("metrics"), dict)):
            return f"cells.{shown(cid, quote=False)} needs 'source', 'sae' and 'metrics'"
        if not _safe_path_part(cid):
            return f"cell id {shown(cid)} is not a plain name"
    for key in ("sources", "analyses"):
        if not isinstance(metrics.get(key, {}), dict) or not all(isinstance(v, dict) for v in metrics.get(key, {}).values()):
            return f"'{key}' must map names to objects"
    for analysis, field in (("mmcs_larger", "value"), ("feature_count", "estimate")):
        entries = metrics.get("analyses", {}).get(analysis, {})
        if not all(isinstance(v, dict) and field in v for v in entries.values()):
            return f"analyses.{analysis} entries need '{field}'"
    return None


def _safe_path_part(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def _identity(b: Loaded, cell: dict) -> str:
    source = b.metrics.sources.get(cell.source, {})
    return canonical_json({"source": cell.source, "source_config": source.get("config"), "sae": cell.sae}).decode()


def _close(a, b, tol: Tolerances) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return abs(a - b) <= tol.atol + tol.rtol * abs(a)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _compare_numbers(name: str, a: dict, b: dict, tol: Tolerances) -> list[dict]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if not (_number(x) and _number(y)):
            if x != y:
                out.append({"name": f"{name}{k}", "a": x, "b": y, "abs": None, "rel": None, "within": False})
            continue
        d = abs(y - x)
        rel = d / abs(x) if x else (0.0 if d == 0 else math.inf)
        frac = COUNTS.get(k)
        if frac and _number(a.get(frac)) and _number(b.get(frac)):
            within = abs(a[frac] - b[frac]) <= tol.count_tol
        else:
            within = _close(x, y, tol)
        out.append({"name": f"{name}{k}", "a": x, "b": y, "abs": d, "rel": rel, "within": within})
    return out


def _decoder(b: Loaded, cell: str):
    """The ``[m, d]`` dictionary of a cell; BundleError if the file is not what it should be."""
    return tensors_io.read_file(b.path / layout.cell_file(cell, layout.CELL_TENSORS), {"decoder": 2})["decoder"].float()


def _dictionary(a: Loaded, ca: str, b: Loaded, cb: str, tol: Tolerances) -> dict:
    da, db = _decoder(a, ca), _decoder(b, cb)
    if da.shape[1] != db.shape[1]:
        return {"m_a": da.shape[0], "m_b": db.shape[0], "mmcs_ab": None, "mmcs_ba": None, "same_atoms": 0, "within": False}
    ab, ba = max_cosine(da, db), max_cosine(db, da)
    mab, mba = float(ab.mean()), float(ba.mean())
    same = int((ab > SAME_ATOM).sum())
    return {
        "m_a": da.shape[0],
        "m_b": db.shape[0],
        "mmcs_ab": mab,
        "mmcs_ba": mba,
        "same_atoms": same,
        "identical_bytes": a.meta["files"].get(layout.cell_file(ca, layout.CELL_TENSORS)) == b.meta["files"].get(layout.cell_file(cb, layout.CELL_TENSORS)),
        "within": mab >= tol.min_mmcs and mba >= tol.min_mmcs,
    }


def _ranking_scores(metrics: layout.MetricsFile) -> dict:
    """``analyses.kind_ranking`` scores as ``{"<source> m=<m> <metric> <kind>": score}``
    (empty without the analysis; a shape it does not know gives what it can read)."""
    out = {}
    for source, r in sorted(metrics.analyses.get("kind_ranking", {}).items()):
        for entry in r.get("comparisons", []) if isinstance(r, dict) else []:
            for name, res in (entry.get("metrics") or {}).items() if isinstance(entry, dict) else []:
                for kind, score in (res.get("scores") or {}).items() if isinstance(res, dict) else []:
                    out[f"{source} m={entry.get('m')} {name} {kind}"] = score
    return out


def compare(a: Loaded, b: Loaded, tol: Tolerances = Tolerances()) -> dict:
    """The full comparison as a JSON-ready document (see module docstring)."""
    identical = a.meta["content_digest"] == b.meta["content_digest"]
    ids_a = {_identity(a, c): cid for cid, c in a.metrics.cells.items()}
    ids_b = {_identity(b, c): cid for cid, c in b.metrics.cells.items()}
    matched = []
    for ident in sorted(set(ids_a) & set(ids_b), key=lambda i: ids_a[i]):
        ca, cb = ids_a[ident], ids_b[ident]
        metrics = _compare_numbers("", a.metrics.cells[ca].metrics, b.metrics.cells[cb].metrics, tol)
        dictionary = _dictionary(a, ca, b, cb, tol)
        matched.append({"a": ca, "b": cb, "metrics": metrics, "dictionary": dictionary, "within": dictionary["within"] and all(m["within"] for m in metrics)})
    only_a = sorted(ids_a[i] for i in set(ids_a) - set(ids_b))
    only_b = sorted(ids_b[i] for i in set(ids_b) - set(ids_a))

    analyses = []
    if not only_a and not only_b:
        rename = {ids_b[i]: ids_a[i] for i in ids_b}
        la = a.metrics.analyses.get("mmcs_larger", {})
        lb = {rename.get(k, k): v for k, v in b.metrics.analyses.get("mmcs_larger", {}).items()}
        analyses += _compare_numbers("mmcs_larger:", {k: v["value"] for k, v in la.items()}, {k: v["value"] for k, v in lb.items()}, tol)
        fa = a.metrics.analyses.get("feature_count", {})
        fb = b.metrics.analyses.get("feature_count", {})
        analyses += _compare_numbers("feature_count:", {k: v["estimate"] for k, v in fa.items()}, {k: v["estimate"] for k, v in fb.items()}, tol)
        analyses += _compare_numbers("kind_ranking:", _ranking_scores(a.metrics), _ranking_scores(b.metrics), tol)
    sources = []
    for name in sorted(set(a.metrics.sources) | set(b.metrics.sources)):
        sa, sb = a.metrics.sources.get(name, {}), b.metrics.sources.get(name, {})
        nums = lambda s: {k: v for k, v in s.items() if _number(v)}
        sources += _compare_numbers(f"{name}.", nums(sa), nums(sb), tol)

    if identical:
        verdict = "identical"
    elif only_a or only_b or not matched:
        verdict = "different"
    elif all(c["within"] for c in matched) and all(x["within"] for x in analyses + sources):
        verdict = "equivalent"
    else:
        verdict = "different"
    return {
        "schema": DIFF_SCHEMA,
        "verdict": verdict,
        "tolerances": attrs.asdict(tol),
        "a": {"path": str(a.path), "spec_hash": a.meta["spec_hash"], "content_digest": a.meta["content_digest"]},
        "b": {"path": str(b.path), "spec_hash": b.meta["spec_hash"], "content_digest": b.meta["content_digest"]},
        "spec": _walk_diff(a.spec, b.spec),
        "code": _walk_diff(a.meta.get("code", {}), b.meta.get("code", {})),
        "environment": _walk_diff(a.meta.get("environment", {}), b.meta.get("environment", {})),
        "cells": {"matched": matched, "only_a": only_a, "only_b": only_b},
        "sources": sources,
        "analyses": analyses,
    }


# ------------------------------------------------------------------ text rendering


def _fmt(v) -> str:
    if isinstance(v, (dict, list)):
        return one_line(json.dumps(v, sort_keys=True))
    return one_line(metric_defs.fmt(v, digits=6))  # a bundle's strings may hold anything


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip() for r in rows]


def _reasons(doc: dict) -> str:
    cells = doc["cells"]
    out = []
    if cells["only_a"] or cells["only_b"]:
        out.append(f"{len(cells['only_a'])} cells only in A, {len(cells['only_b'])} only in B")
    beyond = sum(not m["within"] for c in cells["matched"] for m in c["metrics"]) + sum(not m["within"] for m in doc["sources"] + doc["analyses"])
    if beyond:
        out.append(f"{beyond} metric values beyond tolerance")
    dicts = sum(not c["dictionary"]["within"] for c in cells["matched"])
    if dicts:
        out.append(f"{dicts} dictionaries below MMCS {doc['tolerances']['min_mmcs']:g}")
    if not cells["matched"]:
        out.append("no cell in common")
    return "; ".join(out)


def render(doc: dict, show_all: bool = False) -> list[str]:
    tol = doc["tolerances"]
    matched = doc["cells"]["matched"]
    out = [
        f"A: {doc['a']['path']}  (content {doc['a']['content_digest'][:16]})",
        f"B: {doc['b']['path']}  (content {doc['b']['content_digest'][:16]})",
    ]
    detail = {
        "identical": "same content digest: byte-identical results",
        "equivalent": f"{len(matched)} cells matched; every metric within rtol={tol['rtol']:g} atol={tol['atol']:g} (counts within {tol['count_tol']:g} of m); dictionaries MMCS >= {tol['min_mmcs']:g} both ways",
        "different": _reasons(doc),
    }[doc["verdict"]]
    out.append(f"verdict: {doc['verdict']} ({detail})")
    for section in ("spec", "code", "environment"):
        items = doc[section]
        if items:
            out.append(f"\n{section} ({len(items)} difference{'s' if len(items) != 1 else ''})")
            out += [f"  {one_line(d['path'])}: {_fmt(d['a'])} -> {_fmt(d['b'])}" for d in items]
    cells = doc["cells"]
    if cells["only_a"] or cells["only_b"] or show_all:
        out.append(f"\ncells: {len(matched)} matched, {len(cells['only_a'])} only in A, {len(cells['only_b'])} only in B")
        out += [f"  only in A: {one_line(c)}" for c in cells["only_a"]]
        out += [f"  only in B: {one_line(c)}" for c in cells["only_b"]]
    rows = [["cell", "metric", "A", "B", "abs", "rel", ""]]
    values = [(c["a"], m) for c in matched for m in c["metrics"]] + [("", m) for m in doc["sources"] + doc["analyses"]]
    moved = sum(1 for _, m in values if m["a"] != m["b"])
    for cell, m in values:
        if show_all or not m["within"]:
            rows.append([one_line(cell), one_line(m["name"]), _fmt(m["a"]), _fmt(m["b"]), _fmt(m["abs"]), _fmt(m["rel"]), "ok" if m["within"] else "DIFFERS"])
    beyond = sum(1 for _, m in values if not m["within"])
    if values:
        line = f"\nmetrics: {len(values)} compared, {moved} moved, {beyond} beyond tolerance"
        finite = [(cell, m) for cell, m in values if m["rel"] is not None and m["rel"] != math.inf and m["a"] != m["b"]]
        if finite:
            cell, m = max(finite, key=lambda cm: cm[1]["rel"])
            line += f"; largest relative change {m['rel']:.2g} ({one_line(cell) + ' ' if cell else ''}{one_line(m['name'])})"
        out.append(line)
    if len(rows) > 1:
        out += _table(rows)
    rows = [["cell", "m", "MMCS A->B", "MMCS B->A", f"atoms > {SAME_ATOM}", ""]]
    for c in matched:
        d = c["dictionary"]
        if show_all or not d.get("identical_bytes"):
            rows.append([one_line(c["a"]), f"{d['m_a']}", _fmt(d["mmcs_ab"]), _fmt(d["mmcs_ba"]), f"{d['same_atoms']}/{d['m_a']}", "ok" if d["within"] else "DIFFERS"])
    if len(rows) > 1:
        out.append("\ndictionaries (max cosine of each atom with the other bundle's atoms, averaged)")
        out += _table(rows)
    return out


def main(a: Path, b: Path, *, tol: Tolerances = Tolerances(), as_json: bool = False, show_all: bool = False, echo=print) -> int:
    doc = compare(load(a), load(b), tol)
    if as_json:
        echo(json.dumps(doc, indent=1, sort_keys=True))
    else:
        for line in render(doc, show_all):
            echo(line)
    return 0 if doc["verdict"] in ("identical", "equivalent") else 1
