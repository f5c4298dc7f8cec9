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
"""

from __future__ import annotations

from collections import defaultdict

import torch

from engine import layout, metric_defs
from engine import sources as source_kinds
from engine.plan import sparsity_of
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
    return out


def feature_count(plan, all_series, larger) -> dict:
    per_source: dict[str, dict] = {}
    for key, cells in all_series.items():
        points = [(c, larger[c.id]["stable"]) for c in cells if c.id in larger]
        if not points:
            continue
        best_cell, best = max(points, key=lambda p: (p[1], -p[0].sae.m))
        # a count still rising at the largest pair says: try larger dictionaries
        saturated = best_cell is not points[-1][0]
        entry = per_source.setdefault(key[0], {"rule": "max over series and sizes of atoms stable (cos > 0.9) in the next larger dictionary", "series": []})
        entry["series"].append(
            {
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
        entry["series"].sort(key=lambda s: (_sparsity_value(s), s["init"]))
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
    rows: dict[tuple, dict] = {}
    for cid, cell in cells_meta.items():
        if cell["source"] not in (toys[0], lms[0]):
            continue
        name, value = sparsity_of(cell["sae"])
        row = rows.setdefault((cell["sae"]["kind"], value, cell["sae"]["m"]), {name: value, "m": cell["sae"]["m"]})
        side = "toy" if cell["source"] == toys[0] else "lm"
        row[f"{side}_mmcs_larger"] = larger.get(cid, {}).get("value")
        row[f"{side}_dead_frac"] = cell["metrics"].get("dead_frac")
    return {"toy": toys[0], "lm": lms[0], "rows": [rows[k] for k in sorted(rows)]}


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
