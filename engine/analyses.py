"""Analyses across cells: similarity to the next larger dictionary, and a feature-count estimate.

A *series* is a set of cells that differ only in dictionary size (same source, l1, init,
...), sorted by size. For each dictionary but the largest of a series:

- ``mmcs_larger``: the mean over its atoms of the max cosine with any atom of the next larger
  dictionary (the interim report's no-ground-truth proxy);
- ``stable``: the number of distinct directions among its live atoms (those that fire on the
  evaluation set) that have a match with cosine > 0.9 in the larger dictionary; atoms within
  cosine 0.9 of one already counted count once. These are the features that two
  independently trained dictionaries of different sizes agree on.

``feature_count`` rule: a series' estimate is its largest ``stable`` count (``saturated`` is false when that count is at the
series' largest pair: still rising, a lower bound that larger dictionaries may raise). As dictionaries
grow past the number of features the data holds, new atoms die, duplicate or split features
and stop being matched, so the count saturates near the number of features that can be learnt
at that l1. A source's estimate is the largest over its series; ``range`` spans the series'
estimates. On toy sources the planted ``n_features`` is printed beside it, so the rule is
checked where the truth is known (rare features may be unlearnt in a short run, so the
estimate is a lower bound there).

``kind_ranking`` (several SAE kinds in a plan, or listed in ``analyses``): per source and
dictionary size, the kinds compared at matched L0 on MCC, latent F1 and explained variance
(``RANKING_RULE``; :func:`kind_ranking`).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from engine import layout, metric_defs
from engine import sources as source_kinds
from engine.plan import kind_order, kinds_of, sparsity_of
from sae import base as sae_kinds
from sae import matching
from sae.metrics import cosine_matrix, mmcs_larger

STABLE_COS = 0.9

CONVENTIONS = metric_defs.conventions()

SELECTED = {
    "mmcs_truth": ("mmcs_truth", "mmcs_truth_precision", "recovered_0.9", "recovered_0.9_frac"),
    "dead": ("dead", "dead_frac"),
    "l0": ("l0",),
    "mse": ("mse",),
    "fvu": ("fvu",),
    "ce_recovered": ("ce_clean", "ce_sae", "ce_zero", "ce_recovered"),
    "mcc": ("mcc", "mcc_matched_0.9", "mcc_matched_0.9_frac"),
    "latent_f1": ("f1", "precision", "recall"),
}


def _sparsity_value(series_entry: dict) -> float:
    """The sparsity value of a feature_count series entry (its one key besides the rest)."""
    names = {k.sparsity for k in sae_kinds.kinds().values()}
    return next(v for k, v in series_entry.items() if k in names)


def select(metrics: dict, wanted: tuple[str, ...]) -> dict:
    keep = {k for a in wanted for k in SELECTED.get(a, ())}
    return {k: v for k, v in metrics.items() if k in keep}


def series(plan, cells_meta: dict) -> dict[tuple, list]:
    """Cells grouped by everything but the dictionary size, each sorted by size."""
    out: dict[tuple, list] = defaultdict(list)
    for cell in plan.cells:
        settings = {k: v for k, v in cell.sae.as_dict().items() if k != "m"}
        out[(cell.source.name, *sorted((k, repr(v)) for k, v in settings.items()))].append(cell)
    return {k: sorted(v, key=lambda c: c.sae.m) for k, v in out.items()}


def stable_count(atoms: torch.Tensor, live: torch.Tensor, larger: torch.Tensor) -> int:
    """Distinct directions among the live atoms of ``atoms`` [m1,d] (``live`` [m1] bool) that
    have a match (cos > 0.9) in ``larger`` [m2,d]. Near-duplicate atoms (cos > 0.9 with an
    atom already counted, in order of index) count once, so a feature learnt twice by both
    dictionaries is not counted twice."""
    if not bool(live.any()):
        return 0
    candidates = atoms[live]
    candidates = candidates[cosine_matrix(candidates, larger).max(dim=1).values > STABLE_COS]
    if candidates.shape[0] == 0:
        return 0
    similar = cosine_matrix(candidates, candidates) > STABLE_COS
    kept = torch.zeros(candidates.shape[0], dtype=torch.bool)
    for i in range(candidates.shape[0]):
        if not bool((similar[i] & kept).any()):
            kept[i] = True
    return int(kept.sum())


def cross_cell(plan, cells_meta: dict, full_metrics: dict, atoms: dict[str, torch.Tensor], live: dict[str, torch.Tensor], wanted) -> dict:
    out: dict = {}
    all_series = series(plan, cells_meta)
    larger: dict[str, dict] = {}
    if "mmcs_larger" in wanted or "feature_count" in wanted:
        for cells in all_series.values():
            for small, big in zip(cells, cells[1:]):
                if small.sae.m == big.sae.m:
                    continue
                larger[small.id] = {
                    "larger": big.id,
                    "m": small.sae.m,
                    "larger_m": big.sae.m,
                    "value": mmcs_larger(atoms[small.id], atoms[big.id]),
                    "stable": stable_count(atoms[small.id], live[small.id], atoms[big.id]),
                }
    if "mmcs_larger" in wanted:
        out["mmcs_larger"] = larger
    if "feature_count" in wanted:
        out["feature_count"] = feature_count(plan, all_series, larger)
    if "mmcs_larger" in wanted and "dead" in wanted:
        compared = comparison(plan, cells_meta, larger)
        if compared:
            out["toy_vs_lm"] = compared
    if "kind_ranking" in wanted or len(kinds_of(c.sae for c in plan.cells)) > 1:
        ranked = kind_ranking(plan, cells_meta, full_metrics)
        if ranked:
            out["kind_ranking"] = ranked
    return out


def feature_count(plan, all_series, larger) -> dict:
    per_source: dict[str, dict] = {}
    several = len(kinds_of(c.sae for c in plan.cells)) > 1  # then each series names its kind
    for key, cells in all_series.items():
        points = [(c, larger[c.id]["stable"]) for c in cells if c.id in larger]
        if not points:
            continue
        best_cell, best = max(points, key=lambda p: (p[1], -p[0].sae.m))
        # a count still rising at the largest pair says: try larger dictionaries
        saturated = best_cell is not points[-1][0]
        entry = per_source.setdefault(key[0], {"rule": "max over series and sizes of atoms stable (cos > 0.9) in the next larger dictionary", "series": []})
        entry["series"].append(
            ({"kind": best_cell.sae.kind} if several else {})
            | {
                best_cell.sae.sparsity_name: best_cell.sae.sparsity,
                "init": best_cell.sae.init,
                "estimate": best,
                "at_m": best_cell.sae.m,
                "saturated": saturated,
                "stable_by_m": {str(c.sae.m): n for c, n in points},
            }
        )
    for source, entry in per_source.items():
        estimates = [s["estimate"] for s in entry["series"]]
        entry["estimate"] = max(estimates)
        entry["saturated"] = any(s["saturated"] for s in entry["series"] if s["estimate"] == entry["estimate"])
        entry["range"] = [min(estimates), max(estimates)]
        entry["series"].sort(key=lambda s: (kind_order(s.get("kind", "")), _sparsity_value(s), s["init"]))
        sp = next(s for s in plan.sources if s.name == source)
        planted = source_kinds.of(sp.config).planted(sp.config)
        if planted is not None:
            entry["planted"] = planted
    return per_source


def comparison(plan, cells_meta: dict, larger: dict) -> dict | None:
    """A source with planted truth ("toy") and one without ("lm") side by side: per sparsity
    value and dictionary size, each one's similarity to the next larger dictionary and dead
    fraction (the seed's comparison). None unless the plan has both."""
    truth = {sp.name: source_kinds.of(sp.config).has_truth for sp in plan.sources}
    toys = [n for n, t in truth.items() if t]
    lms = [n for n, t in truth.items() if not t]
    if not toys or not lms:
        return None
    several = len(kinds_of(c["sae"] for c in cells_meta.values())) > 1  # then each row names its kind
    rows: dict[tuple, dict] = {}
    for cid, cell in cells_meta.items():
        if cell["source"] not in (toys[0], lms[0]):
            continue
        name, value = sparsity_of(cell["sae"])
        kind = cell["sae"]["kind"]
        row = rows.setdefault((kind_order(kind), value, cell["sae"]["m"]), ({"kind": kind} if several else {}) | {name: value, "m": cell["sae"]["m"]})
        side = "toy" if cell["source"] == toys[0] else "lm"
        row[f"{side}_mmcs_larger"] = larger.get(cid, {}).get("value")
        row[f"{side}_dead_frac"] = cell["metrics"].get("dead_frac")
    return {"toy": toys[0], "lm": lms[0], "rows": [rows[k] for k in sorted(rows)]}


# ---------------------------------------------------------------- kinds at matched L0

RANK_POINTS = 5  # log-spaced L0 values in the overlap at which the kinds are compared
RANKED_METRICS = ("mcc", "f1", "explained_variance")  # higher is better for each
RANKING_RULE = (
    "per source and dictionary size, each kind's cells are points (L0, metric); the metric is "
    "interpolated linearly in log L0 between them (points of equal L0 averaged); the kinds are "
    f"scored by the mean of that interpolation at {RANK_POINTS} log-spaced L0 values spanning the "
    "overlap of all kinds' L0 ranges [max of their lowest L0, min of their highest L0] (one value "
    "when it is a single point) and ranked by score, highest first (ties by kind name); no "
    "overlap: no scores. explained_variance = 1 - fvu; cells with L0 = 0 are left out"
)


def log_interp(points: list[tuple[float, float]], x: float) -> float:
    """``y`` at ``x`` of the piecewise-linear curve through ``points`` [(l0, y), ...] (sorted
    by l0, distinct l0 > 0) in log l0; ``x`` must lie within the points' range."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    if points and points[0][0] == x:
        return points[0][1]
    raise ValueError(f"L0 {x} outside the curve's range")


def _curve(pairs: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted by L0, values of equal L0 averaged."""
    by_l0: dict[float, list[float]] = defaultdict(list)
    for x, y in pairs:
        by_l0[x].append(y)
    return [(x, sum(ys) / len(ys)) for x, ys in sorted(by_l0.items())]


def rank_curves(curves: dict[str, list[tuple[float, float]]], points: int = RANK_POINTS) -> dict:
    """Scores and ranking of kinds from their curves (kind -> [(l0, value), ...], see
    ``_curve``): ``{"overlap": [lo, hi] | None, "grid": [l0, ...], "scores": {kind: mean},
    "ranking": [kind, ...], "curves": {kind: [[l0, value], ...]}}`` (see ``RANKING_RULE``)."""
    curves = {k: v for k, v in curves.items() if v}
    out: dict = {"overlap": None, "grid": [], "scores": {}, "ranking": [], "curves": {k: [list(p) for p in v] for k, v in curves.items()}}
    if not curves:
        return out
    lo = max(v[0][0] for v in curves.values())
    hi = min(v[-1][0] for v in curves.values())
    if lo > hi:
        return out
    grid = [lo] if lo == hi or points == 1 else [lo * (hi / lo) ** (j / (points - 1)) for j in range(points)]
    grid = [min(max(x, lo), hi) for x in grid[:-1]] + [hi if len(grid) > 1 else grid[-1]]  # within [lo, hi] despite rounding
    scores = {k: sum(log_interp(v, x) for x in grid) / len(grid) for k, v in curves.items()}
    out.update(overlap=[lo, hi], grid=grid, scores=scores, ranking=sorted(scores, key=lambda k: (-scores[k], k)))
    return out


def kind_ranking(plan, cells_meta: dict, full_metrics: dict) -> dict:
    """``analyses.kind_ranking``: per source, per dictionary size, the kinds ranked at matched
    L0 on MCC, F1 (sources with planted truth, where those analyses ran) and explained
    variance (``RANKING_RULE``). Each comparison lists per kind its cells, L0 range and the
    cells that stopped at ``max_steps`` or ran a fixed number of steps (not shown converged)."""
    groups: dict[tuple, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for cid in sorted(cells_meta):
        cell = cells_meta[cid]
        groups[(cell["source"], cell["sae"]["m"])][cell["sae"]["kind"]].append(cid)
    out: dict[str, dict] = {}
    for (source, m), by_kind in sorted(groups.items()):
        kinds: dict[str, dict] = {}
        pairs: dict[str, dict[str, list]] = {name: {} for name in RANKED_METRICS}
        for kind in sorted(by_kind, key=kind_order):
            ids = by_kind[kind]
            values = {cid: {**full_metrics.get(cid, {}), **cells_meta[cid]["metrics"]} for cid in ids}
            l0s = [v["l0"] for v in values.values() if isinstance(v.get("l0"), (int, float)) and v["l0"] > 0]
            stops = [cells_meta[c].get("stop") for c in ids]
            kinds[kind] = {
                "cells": ids,
                "l0_range": [min(l0s), max(l0s)] if l0s else None,
                "max_steps": [c for c, st in zip(ids, stops) if st is not None and st.get("reason") == "max_steps"],
                "fixed_steps": sum(st is None for st in stops),
            }
            for cid, v in values.items():
                l0 = v.get("l0")
                if not (isinstance(l0, (int, float)) and l0 > 0):
                    continue
                fvu = v.get("fvu")
                got = {"mcc": v.get("mcc"), "f1": v.get("f1"), "explained_variance": None if fvu is None else 1.0 - fvu}
                for name, y in got.items():
                    if isinstance(y, (int, float)):
                        pairs[name].setdefault(kind, []).append((float(l0), float(y)))
        metrics = {name: rank_curves({k: _curve(p) for k, p in pairs[name].items()}) for name in RANKED_METRICS if pairs[name]}
        entry = {"m": m, "kinds": kinds, "metrics": metrics}
        if any(r["overlap"] is None for r in metrics.values()):
            entry["note"] = "no overlap: the kinds' L0 ranges do not overlap, so they are not ranked at matched L0 (widen the sweeps)"
        unconverged = sum(len(k["max_steps"]) + k["fixed_steps"] for k in kinds.values())
        if unconverged:
            total = sum(len(k["cells"]) for k in kinds.values())
            entry["convergence"] = f"{unconverged} of {total} cells not shown converged (stopped at max_steps or ran a fixed number of steps)"
        out.setdefault(source, {"rule": RANKING_RULE, "comparisons": []})["comparisons"].append(entry)
    return out


# ---------------------------------------------------------------- against the truth, at assembly

TRUTH_ANALYSES = ("mcc", "latent_f1")  # computed per cell while the bundle is assembled
ENCODE_CHUNK = 4096  # evaluation rows encoded at once by truth_metrics


def truth_metrics(tensors: dict, sae: dict, truth, eval_x, eval_codes, wanted) -> dict:
    """A cell's ``mcc`` / ``latent_f1`` metrics (those of them in ``wanted``), from its saved
    tensors (``sae.safetensors``) and recorded settings (``cell.json`` "sae") against its
    source's planted ``truth`` [n, d] and evaluation set ``eval_x`` [N, d] with true codes
    ``eval_codes`` [N, n] (``sae.matching``):

    - ``mcc``, ``mcc_matched_0.9``, ``mcc_matched_0.9_frac``: ``mcc(truth, decoder)``;
    - ``f1``, ``precision``, ``recall``: means over live latents of ``latent_f1`` of the
      cell's SAE re-encoding ``eval_x`` (``member_encode``, CPU) against ``eval_codes``, each
      latent assigned its max-|cos| feature (the default rule); null where no latent is live.

    Empty for a source without truth. Deterministic: float64 cosines, a solver without
    randomness, integer counts."""
    out: dict = {}
    if truth is None:
        return out
    truth = truth.detach().cpu()
    atoms = tensors["decoder"].detach().cpu()
    if "mcc" in wanted:
        r = matching.mcc(truth, atoms)
        out.update({"mcc": r["mcc"], "mcc_matched_0.9": r["matched_0.9"], "mcc_matched_0.9_frac": r["matched_0.9_frac"]})
    if "latent_f1" in wanted and eval_codes is not None:
        model = layout.load_member({k: v.cpu() for k, v in tensors.items()}, sae)
        counter = matching.F1Counter(matching.assign_latents(truth, atoms), truth.shape[0])
        with torch.no_grad():
            for i in range(0, eval_x.shape[0], ENCODE_CHUNK):
                codes = model.member_encode(eval_x[i : i + ENCODE_CHUNK].cpu(), 0)
                counter.update(codes, eval_codes[i : i + ENCODE_CHUNK].cpu())
        r = counter.result()
        out.update({"f1": r["f1_mean"], "precision": r["precision_mean"], "recall": r["recall_mean"]})
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in out.items()}
