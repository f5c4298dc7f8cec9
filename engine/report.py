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
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from engine import features, figures
from engine.bundle import META_FILE, fsync_dir, read_meta, verify
from engine.errors import BundleError, shown, shown_path
from engine.hashing import canonical_json, sha256_file, stable_json

REPORT_DIR = "report"
HEADLINE = ("mmcs_truth", "recovered_0.9", "dead_frac", "l0", "fvu", "ce_recovered")
CAPTIONS = {
    "toy_vs_lm.png": "Toy data vs language-model activations: similarity to the next larger dictionary and dead fraction against dictionary size, one line per l1.",
    "curves.png": "Training curves per cell, coloured by initialisation.",
}


def build(root: Path, plan, metrics: dict, corpora: dict, log: Callable[[str], None] = lambda s: None) -> dict[str, bytes]:
    """Every file of ``report/`` by name, from the bundle files under ``root``.

    ``corpora``: LM source name -> its loaded ``Corpus`` (checked against the recorded hash by
    the caller); an LM source missing from it gets no feature analysis."""
    root = Path(root)
    curves = {cid: json.loads((root / "cells" / cid / "cell.json").read_text(encoding="utf-8")).get("curves", {}) for cid in metrics["cells"]}
    files = dict(figures.render(plan, metrics, curves))
    analysed, notes = {}, []
    for sp in plan.sources:
        if sp.kind == "lm" and sp.name in corpora:
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
    spec_text = (root / "spec.yaml").read_text(encoding="utf-8")
    files["index.html"] = page(plan, metrics, spec_text, files, analysed, notes).encode("utf-8")
    return dict(sorted(files.items()))


# ----------------------------------------------------------------------------- the page


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _json_script(ident: str, data) -> str:
    """Data for the page's script, safe inside <script>: '<', '>' and '&' escaped as JSON."""
    text = canonical_json(data).decode("utf-8").replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{_e(ident)}">{text}</script>'


def metrics_table(metrics: dict) -> str:
    larger = metrics.get("analyses", {}).get("mmcs_larger", {})
    cells = metrics["cells"]
    cols = [c for c in HEADLINE if any(c in cell["metrics"] for cell in cells.values())]
    head = ["cell", "source", "m", "l1", "init"] + cols + (["mmcs_larger"] if larger else [])
    rows = []
    for cid, cell in sorted(cells.items(), key=lambda kv: (kv[1]["source"], kv[1]["sae"]["m"], kv[1]["sae"]["l1"], kv[1]["sae"]["init"], kv[0])):
        vals = [cid, cell["source"], cell["sae"]["m"], cell["sae"]["l1"], cell["sae"]["init"]]
        vals += [cell["metrics"].get(c) for c in cols]
        if larger:
            vals.append(larger.get(cid, {}).get("value"))
        rows.append("<tr>" + "".join(f"<td>{_e(_fmt(v))}</td>" for v in vals) + "</tr>")
    return '<table class="metrics"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"


def verdict_lines(metrics: dict, analysed: dict) -> list[str]:
    out = []
    for source, fc in sorted(metrics.get("analyses", {}).get("feature_count", {}).items()):
        planted = f"; planted: {fc['planted']}" if "planted" in fc else ""
        rising = "" if fc.get("saturated", True) else ", still rising at the largest size (a lower bound)"
        out.append(f"feature_count[{source}]: {fc['estimate']} (range {fc['range'][0]}–{fc['range'][1]}{rising}{planted})")
    for source, a in sorted(analysed.items()):
        s = a["summary"]
        t = a["thresholds"]
        kinds = ", ".join(f"{k} {n}" for k, n in s["labelled_by_kind"].items())
        out.append(
            f"labelled features[{source}]: {s['labelled']} of {s['live']} live ({s['features']} atoms, cell {a['cell']}, l1={a['l1']:g}); "
            f"held-out precision ≥ {t['precision']}, recall ≥ {t['recall']} ({kinds})"
        )
    for source, info in sorted(metrics.get("sources", {}).items()):
        if info.get("kind") == "lm":
            out.append(f"LM[{source}]: validation loss {info['val_loss']:.4g} nats/token (unigram {info['baselines']['unigram']:.4g}, bigram {info['baselines']['bigram']:.4g})")
    return out


def page(plan, metrics: dict, spec_text: str, files: dict[str, bytes], analysed: dict, notes: list[str] = ()) -> str:
    """index.html: self-contained (no network), deterministic text."""
    spec = plan.spec
    figs = []
    order = lambda n: (n != "toy_vs_lm.png", not n.endswith("_grid.png"), n != "curves.png", n)
    for name, data in sorted(files.items(), key=lambda kv: order(kv[0])):
        if name.endswith(".png"):
            caption = CAPTIONS.get(name) or (f"{name[:-9]}: heat maps over l1 x dictionary ratio." if name.endswith("_grid.png") else f"{name[:-4]}: similarity to the next larger dictionary and dead atoms over size.")
            uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            figs.append(f'<figure><img src="{uri}" alt="{_e(name)}"><figcaption>{_e(name)}: {_e(caption)}</figcaption></figure>')
    browsers = []
    for source, a in sorted(analysed.items()):
        ident = f"features-{source}"
        browsers.append(
            f'<section class="browser" data-src="{_e(ident)}"><h2>Features of {_e(source)}: cell {_e(a["cell"])} (m={a["m"]}, l1={a["l1"]:g})</h2>'
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
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\">"
        f"<title>{_e(spec.name)} report</title><style>{CSS}</style></head><body>"
        f"<h1>{_e(spec.name)}</h1><p class=\"note\">spec hash {_e(plan.spec_hash)} · seed {spec.seed} · {len(metrics['cells'])} cells"
        f"{' · ' + _e(spec.description) if spec.description else ''}</p>"
        f"<h2>Verdict</h2><ul>{verdict}</ul><h2>Metrics</h2>{metrics_table(metrics)}"
        f"<h2>Figures</h2>{''.join(figs)}{''.join(browsers)}"
        f"<h2>Spec</h2><details><summary>spec.yaml (resolved)</summary><pre>{_e(spec_text)}</pre></details>"
        f"<script>{JS}</script></body></html>\n"
    )


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}
h1{margin-bottom:.2em}.note{color:#666}table{border-collapse:collapse}
td,th{padding:2px 6px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left}.metrics{font-size:12px;display:block;overflow-x:auto}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:12px}
.controls{margin:.5em 0;display:flex;gap:.8em;align-items:center;flex-wrap:wrap}.q{width:18em}
.panes{display:flex;gap:1em;align-items:flex-start}.list{max-height:32em;overflow-y:auto;flex:0 0 30em}
.feats tbody tr{cursor:pointer}.feats tbody tr:hover{background:#eef}.feats tr.sel{background:#dde}
.feats td:nth-child(4){text-align:left;max-width:14em;overflow:hidden;text-overflow:ellipsis}
.detail{flex:1;min-width:0}.ctx{font-family:ui-monospace,monospace;font-size:12px;white-space:pre;margin:2px 0;overflow-x:auto}
.ctx .act{display:inline-block;width:5em;color:#666}.ctx mark{background:#fc6;font-weight:bold}
.yes{color:#070}.no{color:#a00}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}
"""

JS = r"""
(function () {
  "use strict";
  function tokText(vocab, id) {
    var t = vocab[id];
    return t === undefined ? "?" : t.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
  }
  function fmt(v) { return v === null || v === undefined ? "\u2013" : (Math.round(v * 1000) / 1000).toString(); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function histogram(counts, vmax) {
    var ns = "http://www.w3.org/2000/svg", w = 320, h = 80, top = Math.max.apply(null, counts) || 1;
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", h + 16); svg.setAttribute("class", "hist");
    var bw = w / counts.length;
    counts.forEach(function (c, i) {
      var r = document.createElementNS(ns, "rect"), bh = c ? Math.max(1, h * Math.sqrt(c / top)) : 0;
      r.setAttribute("x", i * bw + 1); r.setAttribute("width", bw - 2);
      r.setAttribute("y", h - bh); r.setAttribute("height", bh); r.setAttribute("fill", "#58a");
      var t = document.createElementNS(ns, "title"); t.textContent = c + " codes in bin " + (i + 1);
      r.appendChild(t); svg.appendChild(r);
    });
    [["0", 0, "start"], [fmt(vmax), w, "end"]].forEach(function (a) {
      var t = document.createElementNS(ns, "text");
      t.setAttribute("x", a[1]); t.setAttribute("y", h + 12); t.setAttribute("font-size", "10"); t.setAttribute("text-anchor", a[2]);
      t.textContent = a[0]; svg.appendChild(t);
    });
    return svg;
  }
  function setup(root) {
    var data = JSON.parse(document.getElementById(root.getAttribute("data-src")).textContent);
    var vocab = data.vocab, feats = data.features;
    feats.forEach(function (f) {
      var words = (f.contexts || []).map(function (c) { return tokText(vocab, c.tokens[c.at]); });
      f._search = ("#" + f.id + " " + (f.label ? f.label.text : "") + " " + words.join(" ")).toLowerCase();
    });
    var q = root.querySelector(".q"), sort = root.querySelector(".sort"), onlyLab = root.querySelector(".labelled"),
        onlyLive = root.querySelector(".live"), tbody = root.querySelector(".feats tbody"),
        count = root.querySelector(".count"), detail = root.querySelector(".detail");
    var LIMIT = 400;
    function key(f, k) {
      if (k === "precision" || k === "recall") { return f.label && f.label.held_out[k] !== null ? f.label.held_out[k] : -1; }
      return f[k] === undefined ? -1 : f[k];
    }
    function show(f, row) {
      Array.prototype.forEach.call(tbody.querySelectorAll("tr.sel"), function (r) { r.classList.remove("sel"); });
      if (row) { row.classList.add("sel"); }
      detail.textContent = "";
      detail.appendChild(el("h3", "", "feature " + f.id));
      detail.appendChild(el("p", "", "fires on " + fmt(100 * f.freq) + "% of tokens (" + f.fires + " times), largest activation " + fmt(f.max)));
      if (f.label) {
        var L = f.label, p = el("p", "label");
        p.appendChild(el("b", "", L.text + " "));
        p.appendChild(el("span", L.labelled ? "yes" : "no", L.labelled ? "labelled" : "not labelled"));
        p.appendChild(el("span", "", " \u2014 held-out precision " + fmt(L.held_out.precision) + ", recall " + fmt(L.held_out.recall) +
          " (fit: " + fmt(L.fit.precision) + ", " + fmt(L.fit.recall) + ")"));
        detail.appendChild(p);
      } else {
        detail.appendChild(el("p", "no", "no label candidate"));
      }
      if (f.hist) {
        detail.appendChild(el("p", "note", "activation histogram (non-zero codes; bar height \u221a count):"));
        detail.appendChild(histogram(f.hist, f.max));
      }
      detail.appendChild(el("h4", "", "top activating contexts"));
      var box = el("div", "contexts");
      (f.contexts || []).forEach(function (c) {
        var line = el("div", "ctx");
        line.appendChild(el("span", "act", fmt(c.act)));
        c.tokens.forEach(function (t, i) { line.appendChild(el(i === c.at ? "mark" : "span", "", tokText(vocab, t))); });
        box.appendChild(line);
      });
      if (!f.contexts || !f.contexts.length) { box.appendChild(el("p", "note", "never fires on the analysed tokens")); }
      detail.appendChild(box);
    }
    function render() {
      var needle = q.value.trim().toLowerCase(), k = sort.value;
      var rows = feats.filter(function (f) {
        return (!onlyLab.checked || (f.label && f.label.labelled)) && (!onlyLive.checked || f.fires > 0) &&
          (!needle || f._search.indexOf(needle) >= 0);
      });
      rows.sort(function (a, b) { return k === "id" ? a.id - b.id : (key(b, k) - key(a, k)) || (a.id - b.id); });
      tbody.textContent = "";
      rows.slice(0, LIMIT).forEach(function (f) {
        var tr = el("tr");
        [String(f.id), fmt(f.freq), fmt(f.max), f.label ? f.label.text : "",
         f.label ? fmt(f.label.held_out.precision) : "", f.label ? fmt(f.label.held_out.recall) : ""].forEach(function (v, i) {
          var td = el("td", i === 3 && f.label ? (f.label.labelled ? "yes" : "") : "", v);
          tr.appendChild(td);
        });
        tr.addEventListener("click", function () { show(f, tr); });
        tbody.appendChild(tr);
      });
      count.textContent = rows.length > LIMIT ? "showing " + LIMIT + " of " + rows.length : rows.length + " features";
    }
    // the search box re-renders on "input" only: its "change" fires on blur, which would
    // rebuild the rows under a click and swallow it
    q.addEventListener("input", render);
    [sort, onlyLab, onlyLive].forEach(function (c) { c.addEventListener("change", render); });
    render();
  }
  Array.prototype.forEach.call(document.querySelectorAll(".browser"), setup);
})();
"""


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
    from engine.lm.corpus import CorpusError, load_corpus

    out = {}
    for sp in plan.sources:
        if sp.kind != "lm":
            continue
        try:
            corpus = load_corpus(sp.config.corpus, bundle.parent / ".cache" / "corpus")
        except CorpusError as e:
            raise BundleError(f"{shown_path(bundle)}: cannot rebuild the feature analysis of source {sp.name!r}: {e}") from None
        recorded = metrics.get("sources", {}).get(sp.name, {}).get("corpus_hash")
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
    from engine.runner import configure_torch
    from engine.spec import load_spec

    bundle = Path(bundle)
    v = verify(bundle)
    outside = [p for p in v.changed + v.missing + v.extra if not p.startswith(REPORT_DIR + "/")]
    if outside:
        raise BundleError(f"{shown_path(bundle)}: fails verification ({len(outside)} files changed, missing or extra outside report/, e.g. {shown_path(outside[0])}); run `sae-run --verify {shown_path(bundle)}` for details")
    meta = v.meta
    plan = make_plan(load_spec(bundle / "spec.yaml"))
    if plan.spec_hash != meta["spec_hash"]:
        raise BundleError(f"{shown_path(bundle)}: spec.yaml hashes to {plan.spec_hash[:12]}, bundle.json says {shown(meta['spec_hash'][:12], quote=False)} (made by another version?)")
    metrics = json.loads((bundle / "metrics.json").read_text(encoding="utf-8"))
    configure_torch(plan.spec.run.threads)
    files = build(bundle, plan, metrics, load_corpora(bundle, plan, metrics), log)

    new = bundle.parent / f".tmp-report-{bundle.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    old = new.with_name(new.name.replace(".tmp-report-", ".old-report-"))
    meta_tmp = new.with_name(new.name.replace(".tmp-report-", ".tmp-meta-"))
    current = bundle / REPORT_DIR
    swapped = False  # report/ is the new one, bundle.json not yet
    try:
        new.mkdir()
        digests = {}
        for name, data in files.items():
            p = new / name
            p.write_bytes(data)
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            digests[f"{REPORT_DIR}/{name}"] = sha256_file(p)
        fsync_dir(new)
        kept = {k: h for k, h in meta["files"].items() if not k.startswith(REPORT_DIR + "/")}
        meta_new = {**meta, "files": dict(sorted({**kept, **digests}.items()))}
        meta_tmp.write_text(stable_json(meta_new), encoding="utf-8")
        with open(meta_tmp, "rb") as f:
            os.fsync(f.fileno())
        if current.exists():
            os.rename(current, old)
        os.rename(new, current)
        swapped = True
        os.replace(meta_tmp, bundle / META_FILE)
        swapped = False
        fsync_dir(bundle)
    except BaseException as e:
        if swapped:  # put the old report back under the old bundle.json
            os.rename(current, new)
        if old.exists() and not current.exists():
            os.rename(old, current)
        shutil.rmtree(new, ignore_errors=True)
        meta_tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise BundleError(f"{shown_path(bundle)}: cannot write the new report ({e.strerror or e}); the old one is kept") from None
        raise
    shutil.rmtree(old, ignore_errors=True)
    read_meta(bundle)
    return meta_new


__all__ = ["build", "feature_lines", "load_corpora", "page", "rebuild"]
