"""PNG figures of a bundle's metrics (matplotlib, Agg; no timestamps, so bytes repeat)."""

from __future__ import annotations

import io
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PNG_META = {"Software": None}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata=PNG_META)
    plt.close(fig)
    return buf.getvalue()


def _by_source(metrics: dict) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for cid, cell in metrics["cells"].items():
        out[cell["source"]][cid] = cell
    return out


def _series_lines(ax, cells: dict, value, ylabel: str, title: str) -> bool:
    """One line per l1 over dictionary size; False when nothing to draw."""
    lines: dict[float, list] = defaultdict(list)
    for cid, cell in cells.items():
        y = value(cid, cell)
        if y is not None:
            lines[cell["sae"]["l1"]].append((cell["sae"]["m"], y))
    if not lines:
        return False
    cmap = plt.get_cmap("viridis")
    for i, (l1, pts) in enumerate(sorted(lines.items())):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, color=cmap(i / max(1, len(lines) - 1)), label=f"l1={l1:g}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("dictionary size m")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return True


def _heatmap(ax, cells: dict, key: str, title: str) -> bool:
    l1s = sorted({c["sae"]["l1"] for c in cells.values()})
    ms = sorted({c["sae"]["m"] for c in cells.values()})
    if not cells or key not in next(iter(cells.values()))["metrics"]:
        return False
    grid = np.full((len(l1s), len(ms)), np.nan)
    for c in cells.values():
        grid[l1s.index(c["sae"]["l1"]), ms.index(c["sae"]["m"])] = c["metrics"][key]
    im = ax.imshow(grid, origin="lower", aspect="auto", cmap="magma")
    ax.set_xticks(range(len(ms)), [str(m) for m in ms], fontsize=7, rotation=45)
    ax.set_yticks(range(len(l1s)), [f"{v:.3g}" for v in l1s], fontsize=7)
    ax.set_xlabel("dictionary size m")
    ax.set_ylabel("l1")
    ax.set_title(title, fontsize=10)
    plt.colorbar(im, ax=ax)
    return True


def render(plan, metrics: dict) -> dict[str, bytes]:
    """Figures by file name. Per source: similarity to larger and dead fraction over size;
    toy sources also MMCS with the truth as an l1 x size heat map. With toy and LM sources,
    one side-by-side figure of both (the seed's comparison)."""
    out: dict[str, bytes] = {}
    larger = metrics.get("analyses", {}).get("mmcs_larger", {})
    by_source = _by_source(metrics)
    kinds = {sp.name: sp.kind for sp in plan.sources}
    for source, cells in sorted(by_source.items()):
        fig, axes = plt.subplots(1, 3 if kinds[source] == "toy" else 2, figsize=(13 if kinds[source] == "toy" else 9, 3.8))
        drawn = _series_lines(axes[0], cells, lambda cid, c: larger.get(cid, {}).get("value"), "MMCS with next larger", f"{source}: similarity to larger dictionary")
        drawn |= _series_lines(axes[1], cells, lambda cid, c: c["metrics"].get("dead_frac"), "dead fraction", f"{source}: dead atoms")
        if kinds[source] == "toy":
            drawn |= _heatmap(axes[2], cells, "mmcs_truth", f"{source}: MMCS with ground truth")
        fig.tight_layout()
        if drawn:
            out[f"{source}.png"] = _png(fig)
        else:
            plt.close(fig)
    toys = [s for s in by_source if kinds[s] == "toy"]
    lms = [s for s in by_source if kinds[s] == "lm"]
    if toys and lms:
        fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), sharex=True)
        for col, source in enumerate((toys[0], lms[0])):
            cells = by_source[source]
            title = source if source == kinds[source] else f"{source} ({kinds[source]})"
            _series_lines(axes[0][col], cells, lambda cid, c: larger.get(cid, {}).get("value"), "MMCS with next larger", title)
            _series_lines(axes[1][col], cells, lambda cid, c: c["metrics"].get("dead_frac"), "dead fraction", title)
            axes[0][col].set_ylim(0, 1.02)
            axes[1][col].set_ylim(-0.02, 1.02)
        fig.suptitle("toy data vs language-model activations")
        fig.tight_layout()
        out["toy_vs_lm.png"] = _png(fig)
    return out
