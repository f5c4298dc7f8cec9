"""Analyses across cells: similarity to the next larger dictionary, and a feature-count estimate.

``feature_count`` rule (the no-ground-truth estimate of how many features a source holds):
take a *series* of cells that differ only in dictionary size (same source, l1, init, ...),
sorted by size. For each dictionary but the largest, ``mmcs_larger`` is the mean over its
atoms of the max cosine to any atom of the next larger dictionary. While a dictionary is
smaller than the number of features, its atoms are mixtures that the larger one splits, so
the similarity is lower; once it is about as large as the number of features both learn the
same features and the similarity peaks; beyond that the smaller one holds dead or duplicate
atoms and the similarity falls again. The series' estimate is the number of live atoms
(``m - dead``) of the dictionary at the peak. A source's estimate is that of the series whose
peak is highest (the l1 at which dictionaries agree best); ``range`` spans the estimates of
all series whose peak is within 0.05 of it. On toy sources the planted ``n_features`` is
printed beside it, so the rule can be checked where the truth is known.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from sae.metrics import mmcs_larger

CONVENTIONS = {
    "mmcs_truth": "mean over ground-truth features of the max cosine similarity with any dictionary atom (recall direction); atoms are decoder rows",
    "mmcs_truth_precision": "mean over dictionary atoms of the max cosine similarity with any ground-truth feature",
    "recovered_0.9": "number of ground-truth features whose max cosine with an atom exceeds 0.9",
    "dead": "number of atoms whose activation is <= 0 on every sample of the evaluation set",
    "l0": "mean number of active (> 0) codes per evaluation sample",
    "mse": "mean over evaluation samples and dimensions of (x - x_hat)^2",
    "fvu": "sum (x - x_hat)^2 / sum (x - mean(x))^2 over the evaluation set",
    "mmcs_larger": "mean over this dictionary's atoms of the max cosine with an atom of the next larger dictionary of the same series",
    "ce_recovered": "(ce_zero - ce_sae) / (ce_zero - ce_clean): 1 = the SAE reconstruction loses nothing, 0 = as bad as zeroing the activation",
    "cosine": "signed cosine; max over the other set, then mean",
}

SELECTED = {
    "mmcs_truth": ("mmcs_truth", "mmcs_truth_precision", "recovered_0.9", "recovered_0.9_frac"),
    "dead": ("dead", "dead_frac"),
    "l0": ("l0",),
    "mse": ("mse",),
    "fvu": ("fvu",),
    "ce_recovered": ("ce_clean", "ce_sae", "ce_zero", "ce_recovered"),
}


def select(metrics: dict, wanted: tuple[str, ...]) -> dict:
    keep = {k for a in wanted for k in SELECTED.get(a, ())}
    return {k: v for k, v in metrics.items() if k in keep}


def series(plan, cells_meta: dict) -> dict[tuple, list]:
    """Cells grouped by everything but the dictionary size, each sorted by size."""
    out: dict[tuple, list] = defaultdict(list)
    for cell in plan.cells:
        s = cell.sae
        out[(cell.source.name, s.kind, s.l1, s.init, s.decoder_bias, s.seed, s.steps, s.batch, s.lr)].append(cell)
    return {k: sorted(v, key=lambda c: c.sae.m) for k, v in out.items()}


def cross_cell(plan, cells_meta: dict, full_metrics: dict, atoms: dict[str, torch.Tensor], wanted) -> dict:
    out: dict = {}
    all_series = series(plan, cells_meta)
    larger: dict[str, dict] = {}
    if "mmcs_larger" in wanted or "feature_count" in wanted:
        for cells in all_series.values():
            for small, big in zip(cells, cells[1:]):
                if small.sae.m == big.sae.m:
                    continue
                larger[small.id] = {"larger": big.id, "m": small.sae.m, "larger_m": big.sae.m, "value": mmcs_larger(atoms[small.id], atoms[big.id])}
    if "mmcs_larger" in wanted:
        out["mmcs_larger"] = larger
    if "feature_count" in wanted:
        out["feature_count"] = feature_count(plan, all_series, larger, full_metrics)
    return out


def feature_count(plan, all_series, larger, full_metrics) -> dict:
    per_source: dict[str, dict] = {}
    for key, cells in all_series.items():
        source = key[0]
        points = [(c, larger[c.id]["value"]) for c in cells if c.id in larger]
        if len(points) < 2:
            continue
        peak_cell, peak = max(points, key=lambda p: (p[1], -p[0].sae.m))
        alive = peak_cell.sae.m - full_metrics[peak_cell.id]["dead"]
        entry = per_source.setdefault(source, {"series": []})
        entry["series"].append({"l1": peak_cell.sae.l1, "init": peak_cell.sae.init, "peak_m": peak_cell.sae.m, "peak_mmcs_larger": peak, "estimate": alive, "cell": peak_cell.id})
    for source, entry in per_source.items():
        best = max(entry["series"], key=lambda s: s["peak_mmcs_larger"])
        close = [s["estimate"] for s in entry["series"] if s["peak_mmcs_larger"] >= best["peak_mmcs_larger"] - 0.05]
        entry["estimate"] = best["estimate"]
        entry["range"] = [min(close), max(close)]
        entry["series"].sort(key=lambda s: (s["l1"], s["init"]))
        sp = next(s for s in plan.sources if s.name == source)
        if sp.kind == "toy":
            entry["planted"] = sp.config.n_features
    return per_source
