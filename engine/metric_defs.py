"""The one table of metric definitions: name, meaning, int or float, headline or not.

It feeds ``metrics.json``'s ``conventions``, the ``sae-run`` closing table, the report's
metrics table, the integer/float typing of a cell's metrics and ``sae-diff``'s count rule.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class MetricDef:
    name: str
    meaning: str | None  # written into metrics.json "conventions" (None: not listed there)
    integer: bool = False  # a count (recorded as an int)
    headline: tuple[str, ...] = ()  # the views showing it as a column: "table" (sae-run's closing table), "report"
    fraction_of: str | None = None  # for counts: the metric holding count / size (sae-diff compares that)
    opt_in: str | None = None  # computed only when the spec lists this analysis; listed in "conventions" only then


METRICS: tuple[MetricDef, ...] = (
    MetricDef("mmcs_truth", "mean over ground-truth features of the max cosine similarity with any dictionary atom (recall direction); atoms are decoder rows", headline=("table", "report")),
    MetricDef("mmcs_truth_precision", "mean over dictionary atoms of the max cosine similarity with any ground-truth feature"),
    MetricDef("recovered_0.9", "number of ground-truth features whose max cosine with an atom exceeds 0.9", integer=True, headline=("table", "report"), fraction_of="recovered_0.9_frac"),
    MetricDef("recovered_0.9_frac", None),
    MetricDef("dead", "number of atoms whose activation is <= 0 on every sample of the evaluation set", integer=True, headline=("table",), fraction_of="dead_frac"),
    MetricDef("dead_frac", None, headline=("report",)),
    MetricDef("l0", "mean number of active (> 0) codes per evaluation sample", headline=("table", "report")),
    MetricDef("mse", "mean over evaluation samples and dimensions of (x - x_hat)^2"),
    MetricDef("fvu", "sum (x - x_hat)^2 / sum (x - mean(x))^2 over the evaluation set", headline=("table", "report")),
    MetricDef("mmcs_larger", "mean over this dictionary's atoms of the max cosine with an atom of the next larger dictionary of the same series"),
    MetricDef("ce_recovered", "(ce_zero - ce_sae) / (ce_zero - ce_clean): 1 = the SAE reconstruction loses nothing, 0 = as bad as zeroing the activation", headline=("table", "report")),
    MetricDef("ce_clean", None),
    MetricDef("ce_sae", None),
    MetricDef("ce_zero", None),
    MetricDef("mcc", "mean over one-to-one matched (ground-truth feature, atom) pairs of |cosine|, the matching maximising their sum (Hungarian; min(n_features, m) pairs); computed at bundle assembly", headline=("table", "report"), opt_in="mcc"),
    MetricDef("mcc_matched_0.9", "number of those matched pairs with |cosine| > 0.9", integer=True, fraction_of="mcc_matched_0.9_frac", opt_in="mcc"),
    MetricDef("mcc_matched_0.9_frac", None, opt_in="mcc"),
    MetricDef("f1", "mean over live latents (firing on the evaluation set) of the F1 of 'latent > 0' against 'its feature > 0' in the evaluation set's true codes; a latent's feature is the planted one of max |cosine| with its atom; computed at bundle assembly", headline=("table", "report"), opt_in="latent_f1"),
    MetricDef("precision", "mean over live latents of P(its feature is active | latent > 0) on the evaluation set (see f1)", opt_in="latent_f1"),
    MetricDef("recall", "mean over live latents of P(latent > 0 | its feature is active) on the evaluation set (see f1)", opt_in="latent_f1"),
)
BY_NAME = {m.name: m for m in METRICS}

# conventions that are not one metric
GENERAL = {"cosine": "signed cosine; max over the other set, then mean"}

def headline(view: str) -> tuple[str, ...]:
    """The headline columns of one view ("table" or "report"), in table order."""
    return tuple(m.name for m in METRICS if view in m.headline)



INTEGER: frozenset[str] = frozenset(m.name for m in METRICS if m.integer)
COUNT_FRACTIONS: dict[str, str] = {m.name: m.fraction_of for m in METRICS if m.fraction_of}


def conventions(analyses: tuple[str, ...] = ()) -> dict[str, str]:
    """metrics.json "conventions": every listed metric's meaning (opt-in ones only where their
    analysis is in ``analyses``), then the general ones."""
    listed = [m for m in METRICS if m.meaning is not None and (m.opt_in is None or m.opt_in in analyses)]
    return {**{m.name: m.meaning for m in listed}, **GENERAL}


def fmt(v, digits: int = 4, missing: str = "-") -> str:
    """A metric value for people: floats to ``digits`` significant digits, None as ``missing``."""
    if v is None:
        return missing
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)
