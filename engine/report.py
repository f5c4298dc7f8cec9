"""A bundle's ``report/``: the figures, the LM feature analyses and one self-contained page.

:func:`build` makes every file of ``report/`` from the files of a bundle (or of a bundle being
written) and nothing else, so ``sae-report`` (:func:`rebuild`) gives the same bytes as the run
did, given the same code, machine and threads:

- the PNG figures of :mod:`engine.figures` (training curves from each ``cell.json``);
- ``features_<source>.json`` per LM source: :func:`engine.features.analyse_source` of the
  source's largest dictionary at its smallest l1 (frequencies, top contexts, histograms,
  automatic labels with held-out precision and recall, the labelled count);
- ``index.html``: the spec, the headline metrics, the figures (inlined as ``data:`` URIs) and a
  feature browser per LM source; CSS, JS and data inline, so it reads offline from anywhere.

``report/`` is listed in ``bundle.json``'s ``files`` but outside the content digest: it is a
derived view, so improving the report never changes a result's identity.
"""

from __future__ import annotations

import base64
import html
import json
from importlib import resources
from collections.abc import Callable
from pathlib import Path

from engine import features, figures, layout, metric_defs
from engine import sources as source_kinds
from engine.plan import kind_order, kinds_of, sparsity_of
from sae import base as sae_kinds
from engine.bundle import replace_derived, verify
from engine.errors import BundleError, shown, shown_path
from engine.hashing import canonical_json

REPORT_DIR = layout.REPORT_DIR
HEADLINE = metric_defs.headline("report")
CAPTIONS = {
    "toy_vs_lm.png": "Toy data vs language-model activations: similarity to the next larger dictionary and dead fraction against dictionary size, one line per l1.",
    "curves.png": "Training curves per cell, coloured by initialisation.",
    "kinds_vs_l0.png": "SAE kinds against L0: MCC, latent F1 and explained variance per kind (one line each, the legend gives its score); the shaded L0 overlap is where the kinds are ranked (see the ranking table).",
}


def build(root: Path, plan, metrics: dict, corpora: dict, log: Callable[[str], None] = lambda s: None) -> dict[str, bytes]:
    """Every file of ``report/`` by name, from the bundle files under ``root``.

    ``corpora``: LM source name -> its loaded ``Corpus`` (checked against the recorded hash by
    the caller); an LM source missing from it gets no feature analysis."""
    root = Path(root)
    curves = {cid: layout.read_cell(root, cid).curves for cid in metrics.cells}
    files = dict(figures.render(plan, metrics, curves))
    analysed, notes = {}, []
    for sp in plan.sources:
        if sp.name in corpora:
            try:
                result = features.analyse_source(root, sp, metrics, corpora[sp.name])
            except ValueError as e:  # e.g. a validation split shorter than two contexts
                notes.append(f"no feature analysis for source {sp.name}: {e}")
                log(f"[{sp.name}] {notes[-1]}")
                continue
            if result is not None:
                s = result["summary"]
                log(f"[{sp.name}] features of cell {result['cell']}: {s['labelled']} of {s['live']} live features labelled (held-out precision >= {features.PRECISION_MIN}, recall >= {features.RECALL_MIN})")
                analysed[sp.name] = result
                files[f"features_{sp.name}.json"] = canonical_json(result)
    spec_text = (root / layout.SPEC_FILE).read_text(encoding="utf-8")
    files["index.html"] = page(plan, metrics, spec_text, files, analysed, notes).encode("utf-8")
    return dict(sorted(files.items()))


# ----------------------------------------------------------------------------- the page


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v) -> str:
    return metric_defs.fmt(v, missing="–")


def _json_script(ident: str, data) -> str:
    """Data for the page's script, safe inside <script>: '<', '>' and '&' escaped as JSON."""
    text = canonical_json(data).decode("utf-8").replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{_e(ident)}">{text}</script>'


def _knob(analysis: dict) -> str:
    """``l1=0.1`` (or the analysed cell's own sparsity knob) of a feature analysis."""
    name = next(k for k in analysis if k in {k_.sparsity for k_ in sae_kinds.kinds().values()})
    return f"{name}={analysis[name]:g}"


def metrics_table(metrics: dict) -> str:
    larger = metrics.analyses.get("mmcs_larger", {})
    cells = metrics.cells
    cols = [c for c in HEADLINE if any(c in cell.metrics for cell in cells.values())]
    axis = "/".join(sorted({sparsity_of(c.sae)[0] for c in cells.values()})) or "l1"
    several = len(kinds_of(c.sae for c in cells.values())) > 1  # then a kind column
    head = ["cell", "source"] + (["kind"] if several else []) + ["m", axis, "init"] + cols + (["mmcs_larger"] if larger else [])
    rows = []
    order = (lambda kv: (kv[1].source, kind_order(kv[1].sae["kind"]), kv[1].sae["m"], sparsity_of(kv[1].sae)[1], kv[1].sae["init"], kv[0])) if several else (
        lambda kv: (kv[1].source, kv[1].sae["m"], sparsity_of(kv[1].sae)[1], kv[1].sae["init"], kv[0]))
    for cid, cell in sorted(cells.items(), key=order):
        vals = [cid, cell.source] + ([cell.sae["kind"]] if several else []) + [cell.sae["m"], sparsity_of(cell.sae)[1], cell.sae["init"]]
        vals += [cell.metrics.get(c) for c in cols]
        if larger:
            vals.append(larger.get(cid, {}).get("value"))
        rows.append("<tr>" + "".join(f"<td>{_e(_fmt(v))}</td>" for v in vals) + "</tr>")
    return '<table class="metrics"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"


def ranking_rows(ranking: dict) -> list[tuple[str, dict, list[list[str]]]]:
    """``analyses.kind_ranking`` as tables: per (source, size) a title, the comparison entry
    and rows ``[kind, L0 range, cells, not converged, score (rank) per ranked metric]`` in
    the order of the first ranked metric's ranking (kinds it has no score for after)."""
    from engine.analyses import RANKED_METRICS

    out = []
    for source, r in sorted(ranking.items()):
        for entry in r["comparisons"]:
            metrics = [n for n in RANKED_METRICS if n in entry["metrics"]]
            first = entry["metrics"][metrics[0]]["ranking"] if metrics else []
            kinds = first + sorted((k for k in entry["kinds"] if k not in first), key=kind_order)
            rows = [["kind", "L0 range", "cells", "not converged"] + metrics]
            for kind in kinds:
                k = entry["kinds"][kind]
                l0 = "–" if k["l0_range"] is None else f"{k['l0_range'][0]:.3g}–{k['l0_range'][1]:.3g}"
                row = [kind, l0, str(len(k["cells"])), str(len(k["max_steps"]) + k["fixed_steps"])]
                for n in metrics:
                    res = entry["metrics"][n]
                    row.append(f"{res['scores'][kind]:.4f} ({res['ranking'].index(kind) + 1})" if kind in res["scores"] else "–")
                rows.append(row)
            overlaps = {n: entry["metrics"][n]["overlap"] for n in metrics}
            spans = sorted({"no overlap" if o is None else f"{o[0]:.3g}–{o[1]:.3g}" for o in overlaps.values()})
            out.append((f"{source}, m={entry['m']}: kinds at matched L0 (overlap {', '.join(spans)})", entry, rows))
    return out


def ranking_table(metrics) -> str:
    """The kind ranking (``analyses.kind_ranking``) as HTML tables, or nothing."""
    ranking = metrics.analyses.get("kind_ranking")
    if not ranking:
        return ""
    parts = ["<h2>SAE kinds at matched L0</h2>", f'<p class="note">{_e(next(iter(ranking.values()))["rule"])}. Score (rank) per metric; higher is better.</p>']
    for title, entry, rows in ranking_rows(ranking):
        notes = [entry[k] for k in ("note", "convergence") if k in entry]
        parts.append(f"<h3>{_e(title)}</h3>" + "".join(f'<p class="note">{_e(n)}</p>' for n in notes))
        parts.append('<table class="metrics"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in rows[0]) + "</tr></thead><tbody>"
                     + "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows[1:]) + "</tbody></table>")
    return "".join(parts)


LABELLED_RANGE = (400, 800)  # the seed's "roughly 600" easily labellable features, +- a third


def labelled_claims(metrics, analysed: dict) -> list[dict]:
    """The seed's labelled-feature claim per analysed LM source (judged here: the feature
    analysis is part of the report). Inconclusive unless the analysed cell converged."""
    out = []
    lo, hi = LABELLED_RANGE
    for source, a in sorted(analysed.items()):
        n = a["summary"]["labelled"]
        stop = metrics.cells[a["cell"]].stop
        entry = {"id": f"labelled[{source}]", "statement": f"roughly 600 features are easily labellable ({lo}-{hi}; {source})",
                 "metric": "features labelled by the automatic token/bigram rule", "value": n, "cells": [a["cell"]]}
        if stop is None or stop["reason"] != "converged":
            entry.update(verdict="inconclusive", note="the analysed cell " + ("ran a fixed number of steps" if stop is None else "stopped at max_steps"))
        else:
            entry["verdict"] = "reproduced" if lo <= n <= hi else "refuted"
        out.append(entry)
    return out


def _value(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_value(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return _fmt(v)


def claims_table(entries: list[dict]) -> str:
    """The claims and their verdicts (``engine.claims``), or nothing when there are none."""
    if not entries:
        return ""
    rows = "".join(
        f'<tr><td>{_e(c["id"])}</td><td class="{_e(c["verdict"])}">{_e(c["verdict"])}</td><td>{_e(c["statement"])}</td>'
        f'<td>{_e(c["metric"])}: {_e(_value(c["value"]))}</td><td>{_e(c.get("note", ""))}</td></tr>'
        for c in entries
    )
    return '<h2>Claims</h2><table class="claims"><thead><tr><th>claim</th><th>verdict</th><th>statement</th><th>metric</th><th>note</th></tr></thead><tbody>' + rows + "</tbody></table>"


def verdict_lines(metrics: dict, analysed: dict) -> list[str]:
    out = []
    for source, fc in sorted(metrics.analyses.get("feature_count", {}).items()):
        planted = f"; planted: {fc['planted']}" if "planted" in fc else ""
        rising = "" if fc.get("saturated", True) else ", still rising at the largest size (a lower bound)"
        out.append(f"feature_count[{source}]: {fc['estimate']} (range {fc['range'][0]}–{fc['range'][1]}{rising}{planted})")
    for source, a in sorted(analysed.items()):
        s = a["summary"]
        t = a["thresholds"]
        kinds = ", ".join(f"{k} {n}" for k, n in s["labelled_by_kind"].items())
        out.append(
            f"labelled features[{source}]: {s['labelled']} of {s['live']} live ({s['features']} atoms, cell {a['cell']}, {_knob(a)}); "
            f"held-out precision ≥ {t['precision']}, recall ≥ {t['recall']} ({kinds})"
        )
    for source, info in sorted(metrics.sources.items()):
        if "val_loss" in info:
            out.append(f"LM[{source}]: validation loss {info['val_loss']:.4g} nats/token (unigram {info['baselines']['unigram']:.4g}, bigram {info['baselines']['bigram']:.4g})")
    return out


def page(plan, metrics: dict, spec_text: str, files: dict[str, bytes], analysed: dict, notes: list[str] = ()) -> str:
    """index.html: self-contained (no network), deterministic text."""
    spec = plan.spec
    figs = []
    order = lambda n: (n != "kinds_vs_l0.png", n != "toy_vs_lm.png", not n.endswith("_grid.png"), n != "curves.png", n)
    for name, data in sorted(files.items(), key=lambda kv: order(kv[0])):
        if name.endswith(".png"):
            caption = CAPTIONS.get(name) or (f"{name[:-9]}: heat maps over l1 x dictionary ratio." if name.endswith("_grid.png") else f"{name[:-4]}: similarity to the next larger dictionary and dead atoms over size.")
            uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            figs.append(f'<figure><img src="{uri}" alt="{_e(name)}"><figcaption>{_e(name)}: {_e(caption)}</figcaption></figure>')
    browsers = []
    for source, a in sorted(analysed.items()):
        ident = f"features-{source}"
        browsers.append(
            f'<section class="browser" data-src="{_e(ident)}"><h2>Features of {_e(source)}: cell {_e(a["cell"])} (m={a["m"]}, {_e(_knob(a))})</h2>'
            f'<p class="note">{a["tokens"]["analysed"]} validation tokens in {a["tokens"]["windows"]} windows of {a["tokens"]["context"]}; '
            f'labels fitted on the even windows, precision and recall measured on the odd ones. '
            f'{a["summary"]["labelled"]} of {a["summary"]["live"]} live features labelled.</p>'
            '<div class="controls"><input type="search" class="q" placeholder="search id, label or firing token">'
            '<select class="sort"><option value="freq">sort: firing frequency</option><option value="max">sort: largest activation</option>'
            '<option value="precision">sort: held-out precision</option><option value="recall">sort: held-out recall</option><option value="id">sort: id</option></select>'
            '<label><input type="checkbox" class="labelled"> labelled only</label> <label><input type="checkbox" class="live" checked> live only</label>'
            '<span class="count"></span></div>'
            '<div class="panes"><div class="list"><table class="feats"><thead><tr><th>id</th><th>freq</th><th>max</th><th>label</th><th>P</th><th>R</th></tr></thead><tbody></tbody></table></div>'
            '<div class="detail"><p class="note">Click a feature to see its contexts, histogram and label.</p></div></div>'
            f"{_json_script(ident, a)}</section>"
        )
    verdict = "".join(f"<li>{_e(line)}</li>" for line in [*verdict_lines(metrics, analysed), *notes])
    table = claims_table([*metrics.claims, *labelled_claims(metrics, analysed)])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\">"
        f"<title>{_e(spec.name)} report</title><style>{CSS}</style></head><body>"
        f"<h1>{_e(spec.name)}</h1><p class=\"note\">spec hash {_e(plan.spec_hash)} · seed {spec.seed} · {len(metrics.cells)} cells"
        f"{' · ' + _e(spec.description) if spec.description else ''}</p>"
        f"<h2>Verdict</h2><ul>{verdict}</ul>{table}{ranking_table(metrics)}<h2>Metrics</h2>{metrics_table(metrics)}"
        f"<h2>Figures</h2>{''.join(figs)}{''.join(browsers)}"
        f"<h2>Spec</h2><details><summary>spec.yaml (resolved)</summary><pre>{_e(spec_text)}</pre></details>"
        f"<script>{JS}</script></body></html>\n"
    )


def _asset(name: str) -> str:
    """A file of ``engine/assets`` (package data), inlined into the page."""
    return resources.files("engine").joinpath("assets", name).read_text(encoding="utf-8")


CSS = _asset("report.css")
JS = _asset("report.js")


def feature_lines(bundle: Path) -> list[str]:
    """One line per LM feature analysis in a bundle's report/, for the end of ``sae-run``."""
    out = []
    for p in sorted((Path(bundle) / REPORT_DIR).glob("features_*.json")):
        try:
            a = json.loads(p.read_text(encoding="utf-8"))
            s = a["summary"]
            out.append(
                f"labelled features[{a['source']}]: {s['labelled']} of {s['live']} live (cell {a['cell']}, m={a['m']}; "
                f"held-out precision >= {a['thresholds']['precision']}, recall >= {a['thresholds']['recall']}; see {REPORT_DIR}/index.html)"
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a report is a view: a damaged one does not stop the run's output
    return out


# ----------------------------------------------------------------------------- sae-report


def load_corpora(bundle: Path, plan, metrics: dict) -> dict:
    """The corpus of every LM source, rebuilt from the recorded settings (cache under the
    bundle's parent ``.cache/corpus``, as ``sae-run`` keeps it) and checked against the
    recorded content hash. Raises BundleError."""
    from engine.lm.corpus import CorpusError

    out = {}
    for sp in plan.sources:
        kind = source_kinds.of(sp.config)
        if not kind.has_corpus:
            continue
        try:
            corpus = kind.load_corpus(sp.config, bundle.parent / ".cache" / "corpus")
        except CorpusError as e:
            raise BundleError(f"{shown_path(bundle)}: cannot rebuild the feature analysis of source {sp.name!r}: {e}") from None
        recorded = metrics.sources.get(sp.name, {}).get("corpus_hash")
        if corpus.content_hash != recorded:
            raise BundleError(
                f"{shown_path(bundle)}: the corpus of source {sp.name!r} rebuilt here has hash {corpus.content_hash[:12]}, "
                f"the bundle recorded {shown(str(recorded)[:12], quote=False)}: the report cannot be rebuilt from other text"
            )
        out[sp.name] = corpus
    return out


def rebuild(bundle: Path, log: Callable[[str], None] = lambda s: None) -> dict:
    """Rebuild ``report/`` of an existing bundle and return its new bundle.json data.

    The bundle must verify outside ``report/`` (BundleError otherwise; a damaged or missing
    report is what this repairs). The new report is built in a sibling temporary directory
    and swapped in by renames, then bundle.json is replaced (write, fsync, ``os.replace``) with
    the ``report/`` entries of ``files`` updated; the content digest is unchanged."""
    from engine.plan import make_plan
    from engine.determinism import configure_torch
    from engine.spec import load_spec

    bundle = Path(bundle)
    v = verify(bundle)
    outside = [p for p in v.changed + v.missing + v.extra if not p.startswith(REPORT_DIR + "/")]
    if outside:
        raise BundleError(f"{shown_path(bundle)}: fails verification ({len(outside)} files changed, missing or extra outside report/, e.g. {shown_path(outside[0])}); run `sae-run --verify {shown_path(bundle)}` for details")
    meta = v.meta
    plan = make_plan(load_spec(bundle / layout.SPEC_FILE))
    if plan.spec_hash != meta["spec_hash"]:
        raise BundleError(f"{shown_path(bundle)}: spec.yaml hashes to {plan.spec_hash[:12]}, bundle.json says {shown(meta['spec_hash'][:12], quote=False)} (made by another version?)")
    metrics = layout.read_metrics(bundle)
    configure_torch(plan.spec.run.threads)
    files = build(bundle, plan, metrics, load_corpora(bundle, plan, metrics), log)

    try:
        return replace_derived(bundle, meta, REPORT_DIR, files)
    except OSError as e:
        raise BundleError(f"{shown_path(bundle)}: cannot write the new report ({e.strerror or e}); the old one is kept") from None


__all__ = ["build", "feature_lines", "load_corpora", "page", "rebuild"]
