"""PNG figures of a bundle's metrics (matplotlib, Agg; no timestamps, so bytes repeat).

Files (see :func:`render`):

- ``<source>.png``: similarity to the next larger dictionary and dead fraction over size (one
  line per l1); toy sources also MMCS with the truth as an l1 x size heat map.
- ``<source>_grid.png``: heat maps over l1 x dictionary ratio (m / n_features on toy data,
  m / width on LM data) of MMCS with the truth (toy only; the interim report's figure 3), the
  dead fraction (its figure 4), ``mmcs_larger`` (its figure 10) and the reconstruction MSE.
  Cells sharing an (l1, m) point (other inits or seeds) are averaged; the title says so.
- ``curves.png``: training curves from each cell's ``cell.json``: MMCS with the truth (toy)
  or FVU (LM) and the dead fraction over steps, coloured by initialisation.
- ``toy_vs_lm.png``: toy and LM sources side by side (the seed's comparison).
- ``kinds_vs_l0.png`` (with ``analyses.kind_ranking``: several SAE kinds): MCC, F1 and
  explained variance against L0, one line per kind, per source (:func:`kinds_figure`).

When a source's cells have several SAE kinds, ``<source>.png`` and ``<source>_grid.png`` are
drawn per kind (``<source>_<kind>.png``, ``<source>_<kind>_grid.png``: each kind's own
sparsity knob is its axis), and lines and tables name the kind.
"""

from __future__ import annotations

import io
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

from engine import sources as source_kinds
from engine.plan import kind_order, kinds_of, sparsity_of

PNG_META = {"Software": None}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata=PNG_META)
    plt.close(fig)
    return buf.getvalue()


def _sp(cell: dict) -> float:
    """A cell's sparsity value (``l1`` for relu_l1; its kind's knob otherwise)."""
    return sparsity_of(cell.sae)[1]


def _axis(cells: dict) -> str:
    """The name of the sparsity knob of these cells (one kind per figure)."""
    names = sorted({sparsity_of(c.sae)[0] for c in cells.values()})
    return "/".join(names) or "l1"


def _by_source(metrics: dict) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for cid, cell in sorted(metrics.cells.items()):  # the order of metrics.json, also while writing it
        out[cell.source][cid] = cell
    return out


def _series_lines(ax, cells: dict, value, ylabel: str, title: str) -> bool:
    """One line per l1 (per kind and sparsity value when the cells have several kinds) over
    dictionary size; False when nothing to draw."""
    several = len(kinds_of(c.sae for c in cells.values())) > 1
    lines: dict = defaultdict(list)
    for cid, cell in cells.items():
        y = value(cid, cell)
        if y is not None:
            lines[(kind_order(cell.sae["kind"]), sparsity_of(cell.sae)[0], _sp(cell)) if several else _sp(cell)].append((cell.sae["m"], y))
    if not lines:
        return False
    cmap = plt.get_cmap("viridis")
    for i, (l1, pts) in enumerate(sorted(lines.items())):
        pts.sort()
        label = f"{l1[0][1]} {l1[1]}={l1[2]:g}" if several else f"{_axis(cells)}={l1:g}"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, color=cmap(i / max(1, len(lines) - 1)), label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("dictionary size m")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return True


def _heatmap(ax, cells: dict, key: str, title: str) -> bool:
    l1s = sorted({_sp(c) for c in cells.values()})
    ms = sorted({c.sae["m"] for c in cells.values()})
    if not cells or key not in next(iter(cells.values())).metrics:
        return False
    sums = np.zeros((len(l1s), len(ms)))
    counts = np.zeros((len(l1s), len(ms)))
    for c in cells.values():  # cells sharing a point (other inits or seeds) are averaged
        if c.metrics.get(key) is not None:
            i, j = l1s.index(_sp(c)), ms.index(c.sae["m"])
            sums[i, j] += c.metrics[key]
            counts[i, j] += 1
    grid = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    im = ax.imshow(grid, origin="lower", aspect="auto", cmap="magma")
    ax.set_xticks(range(len(ms)), [str(m) for m in ms], fontsize=7, rotation=45)
    ax.set_yticks(range(len(l1s)), [f"{v:.3g}" for v in l1s], fontsize=7)
    ax.set_xlabel("dictionary size m")
    ax.set_ylabel(_axis(cells))
    ax.set_title(title, fontsize=10)
    plt.colorbar(im, ax=ax)
    return True


GRID_PANELS = (
    ("mmcs_truth", "MMCS with ground truth"),
    ("dead_frac", "dead fraction"),
    ("mmcs_larger", "MMCS with next larger"),
    ("mse", "reconstruction MSE"),
)
INIT_COLOURS = {"orthogonal": "tab:blue", "data_samples": "tab:orange", "tied": "tab:green"}


def kind_colour(kind: str) -> str:
    """One colour per SAE kind (tab10, in ``kind_order``)."""
    return f"C{kind_order(kind)[0] % 10}"


def _grid(ax, cells: dict, value, base: int, title: str) -> bool:
    """Heat map of ``value(cid, cell)`` over l1 (rows) x dictionary ratio m/base (columns),
    averaged over cells sharing a point; False when no cell has a value."""
    points: dict[tuple, list] = defaultdict(list)
    for cid, c in cells.items():
        v = value(cid, c)
        if v is not None:
            points[(_sp(c), c.sae["m"])].append(v)
    if not points:
        return False
    l1s = sorted({p[0] for p in points})
    ms = sorted({p[1] for p in points})
    grid = np.full((len(l1s), len(ms)), np.nan)
    for (l1, m), vals in points.items():
        grid[l1s.index(l1), ms.index(m)] = float(np.mean(vals))
    im = ax.imshow(grid, origin="lower", aspect="auto", cmap="magma")
    ax.set_xticks(range(len(ms)), [f"{m / base:.3g}" for m in ms], fontsize=7, rotation=45)
    ax.set_yticks(range(len(l1s)), [f"{v:.3g}" for v in l1s], fontsize=7)
    if len(l1s) * len(ms) <= 80:
        lo, hi = np.nanmin(grid), np.nanmax(grid)
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                dark = hi > lo and (v - lo) / (hi - lo) < 0.6
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=6, color="white" if dark else "black")
    ax.set_ylabel(_axis(cells))
    shared = max(len(v) for v in points.values())
    ax.set_title(title + (f" (mean of {shared})" if shared > 1 else ""), fontsize=9)
    plt.colorbar(im, ax=ax)
    return True


def grid_figure(source: str, base_name: str, base: int, cells: dict, larger: dict) -> bytes | None:
    """``<source>_grid.png``: the heat maps of ``GRID_PANELS`` that have values."""
    panels = []
    for key, title in GRID_PANELS:
        if key == "mmcs_larger":
            value = lambda cid, c: larger.get(cid, {}).get("value")
        else:
            value = lambda cid, c, key=key: c.metrics.get(key)
        if any(value(cid, c) is not None for cid, c in cells.items()):
            panels.append((value, title))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (value, title) in zip(axes[0], panels):
        _grid(ax, cells, value, base, title)
        ax.set_xlabel(f"dictionary ratio m / {base_name} ({base})")
    fig.suptitle(f"{source}: {_axis(cells)} x dictionary ratio", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def curves_figure(sources: dict[str, bool], cells: dict, curves: dict[str, dict]) -> bytes | None:
    """``curves.png``: per source one row: MMCS with the truth (sources with planted truth,
    ``sources[name]`` true) or FVU, and the dead fraction, over training steps; one line per
    cell, coloured by initialisation."""
    rows = [s for s in sorted(sources) if any(c.source == s and cid in curves for cid, c in cells.items())]
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 3.6 * len(rows)), squeeze=False)
    for r, source in enumerate(rows):
        mine = sorted(((cid, c) for cid, c in cells.items() if c.source == source and cid in curves), key=lambda kv: (kv[1].sae["init"], kv[1].sae["m"], _sp(kv[1]), kv[0]))
        first = "mmcs_truth" if sources[source] else "fvu"
        label_each = len(mine) <= 12
        several = len(kinds_of(c.sae for _, c in mine)) > 1  # then coloured by kind
        for col, key in enumerate((first, "dead_frac")):
            ax = axes[r][col]
            seen: set[str] = set()
            for cid, c in mine:
                cv = curves[cid]
                if key not in cv:
                    continue
                init = c.sae["init"]
                group = c.sae["kind"] if several else init
                name = f"{init} m={c.sae['m']} {sparsity_of(c.sae)[0]}={_sp(c):g}" if label_each else (group if group not in seen else None)
                if several and label_each:
                    name = f"{c.sae['kind']} {name}"
                seen.add(group)
                ys = [np.nan if v is None else v for v in cv[key]]
                style = ["-", "--", ":", "-."][sorted({_sp(x) for _, x in mine}).index(_sp(c)) % 4]
                colour = kind_colour(c.sae["kind"]) if several else INIT_COLOURS.get(init, "tab:gray")
                ax.plot(cv["step"], ys, style, lw=1.2, color=colour, alpha=0.85, label=name)
            ax.set_xlabel("training step")
            ax.set_ylabel(key)
            ax.set_title(f"{source}: {'MMCS with ground truth' if key == 'mmcs_truth' else key} over training", fontsize=9)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=6, ncol=2 if len(ax.lines) > 6 else 1)
    fig.tight_layout()
    return _png(fig)


def _per_kind(source: str, cells: dict) -> list[tuple[str, str, dict]]:
    """``(file stem, title, cells)`` per SAE kind of one source's cells: the source alone
    (``toy``) when they have one kind, else one entry per kind (``toy_topk``, "toy (topk)")."""
    kinds = kinds_of(c.sae for c in cells.values())
    if len(kinds) <= 1:
        return [(source, source, cells)]
    return [(f"{source}_{k}", f"{source} ({k})", {cid: c for cid, c in cells.items() if c.sae["kind"] == k}) for k in kinds]


def _two_and_five(v: float, _pos=None) -> str:
    """A minor tick label of a log axis: only at 2 and 5 times a power of ten."""
    if v <= 0:
        return ""
    lead = v / 10 ** np.floor(np.log10(v))
    return f"{v:g}" if abs(lead - 2) < 1e-6 or abs(lead - 5) < 1e-6 else ""


RANKED_TITLES = {"mcc": "MCC (one-to-one matching)", "f1": "latent F1", "explained_variance": "explained variance (1 - FVU)"}


def kinds_figure(ranking: dict) -> bytes:
    """``kinds_vs_l0.png``: one row per (source, dictionary size) of ``analyses.kind_ranking``,
    one panel per ranked metric (MCC, F1, explained variance; a source without planted truth
    has only the last), one line with markers per kind over L0 (log axis); the L0 overlap in
    which the kinds are ranked is shaded and its comparison points marked on the axis."""
    rows = [(source, entry) for source, r in sorted(ranking.items()) for entry in r["comparisons"]]
    names = ("mcc", "f1", "explained_variance")
    fig, axes = plt.subplots(len(rows), len(names), figsize=(4.3 * len(names), 3.4 * len(rows)), squeeze=False)
    for r, (source, entry) in enumerate(rows):
        for col, name in enumerate(names):
            ax = axes[r][col]
            result = entry["metrics"].get(name)
            if result is None:
                ax.axis("off")
                ax.text(0.5, 0.5, f"{source}: no {name}" + (" (no planted truth)" if name != "explained_variance" else ""), ha="center", va="center", fontsize=8, transform=ax.transAxes)
                continue
            for kind in sorted(result["curves"], key=kind_order):
                pts = result["curves"][kind]
                score = result["scores"].get(kind)
                label = kind + (f" ({score:.3f})" if score is not None else "")
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, lw=1.3, color=kind_colour(kind), label=label)
            if result["overlap"] is not None:
                lo, hi = result["overlap"]
                ax.axvspan(lo, hi, color="0.85", zorder=0)
                ax.plot(result["grid"], [0] * len(result["grid"]), "|", color="0.3", ms=8, transform=ax.get_xaxis_transform())
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(_two_and_five))
            ax.tick_params(axis="x", which="minor", labelsize=6)
            ax.set_xlabel("L0 (mean active codes per sample)")
            ax.set_ylabel(name)
            overlap = "no L0 overlap" if result["overlap"] is None else f"ranked over L0 {result['overlap'][0]:.3g}-{result['overlap'][1]:.3g}"
            ax.set_title(f"{source} m={entry['m']}: {RANKED_TITLES[name]}\n{overlap}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    return _png(fig)


def render(plan, metrics: dict, curves: dict[str, dict] | None = None) -> dict[str, bytes]:
    """Figures by file name (see the module docstring). ``curves``: cell id -> the ``curves``
    of its ``cell.json`` (training curves; no ``curves.png`` without them)."""
    out: dict[str, bytes] = {}
    larger = metrics.analyses.get("mmcs_larger", {})
    by_source = _by_source(metrics)
    kinds = {sp.name: sp.kind for sp in plan.sources}
    truth = {sp.name: source_kinds.of(sp.config).has_truth for sp in plan.sources}
    for source, all_cells in sorted(by_source.items()):
        for name, label, cells in _per_kind(source, all_cells):
            fig, axes = plt.subplots(1, 3 if truth[source] else 2, figsize=(13 if truth[source] else 9, 3.8))
            drawn = _series_lines(axes[0], cells, lambda cid, c: larger.get(cid, {}).get("value"), "MMCS with next larger", f"{label}: similarity to larger dictionary")
            drawn |= _series_lines(axes[1], cells, lambda cid, c: c.metrics.get("dead_frac"), "dead fraction", f"{label}: dead atoms")
            if truth[source]:
                drawn |= _heatmap(axes[2], cells, "mmcs_truth", f"{label}: MMCS with ground truth")
            fig.tight_layout()
            if drawn:
                out[f"{name}.png"] = _png(fig)
            else:
                plt.close(fig)
    toys = [s for s in by_source if truth[s]]
    lms = [s for s in by_source if not truth[s]]
    if toys and lms:
        fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), sharex=True)
        for col, source in enumerate((toys[0], lms[0])):
            cells = by_source[source]
            title = source if source == kinds[source] else f"{source} ({kinds[source]})"
            _series_lines(axes[0][col], cells, lambda cid, c: larger.get(cid, {}).get("value"), "MMCS with next larger", title)
            _series_lines(axes[1][col], cells, lambda cid, c: c.metrics.get("dead_frac"), "dead fraction", title)
            axes[0][col].set_ylim(0, 1.02)
            axes[1][col].set_ylim(-0.02, 1.02)
        fig.suptitle("toy data vs language-model activations")
        fig.tight_layout()
        out["toy_vs_lm.png"] = _png(fig)
    for sp in plan.sources:
        if sp.name in by_source:
            kind = source_kinds.of(sp.config)
            for name, label, cells in _per_kind(sp.name, by_source[sp.name]):
                png = grid_figure(label, kind.ratio_base_name, kind.ratio_base(sp.config), cells, larger)
                if png is not None:
                    out[f"{name}_grid.png"] = png
    ranking = metrics.analyses.get("kind_ranking")
    if ranking:
        out["kinds_vs_l0.png"] = kinds_figure(ranking)
    if curves:
        png = curves_figure(truth, metrics.cells, curves)
        if png is not None:
            out["curves.png"] = png
    return out
