"""Vectorised building blocks for drawing sparse codes.

Codes are handled as coordinate lists ``(rows, cols, values)`` in row-major order until the
end: with ~1% of entries active that is far cheaper than dense ``[batch, n]`` draws.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bernoulli_positions(
    probs: torch.Tensor, batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a ``[batch, n]`` matrix of independent Bernoulli(``probs[col]``) entries, sparsely.

    ``probs``: ``[n]`` float in [0, 1]. Returns ``(rows, cols)``: int64 ``[k]`` coordinates of the
    ones, unique and in row-major order.

    Columns with ``p <= 1/2`` use a Poisson process: lay the matrix out row-major on a line,
    give every entry of column ``i`` the length ``h_i = -log(1 - p_i)``, scatter unit-rate Poisson
    points over the line, and mark every entry hit at least once. An entry is hit with
    probability ``1 - exp(-h_i) = p_i``, independently of all others, and only about
    ``batch * sum(h)`` (~ ``batch * sum(p)``) exponentials are drawn instead of ``batch * n``
    uniforms. Columns with ``p > 1/2`` (rare; including ``p = 1``) draw one uniform per entry.
    """
    n = probs.numel()
    p = probs.to(torch.float64)
    dense = p > 0.5
    has_dense = bool(dense.any())
    key = _poisson_hits(torch.where(dense, 0.0, p) if has_dense else p, batch, generator)
    if has_dense:
        dense_cols = torch.nonzero(dense).squeeze(1)
        u = torch.rand(batch, dense_cols.numel(), generator=generator, dtype=torch.float64)
        rows, idx = torch.nonzero(u < p[dense_cols], as_tuple=True)
        key = torch.sort(torch.cat([key, rows * n + dense_cols[idx]])).values
    rows = key // n
    return rows, key - rows * n


def _poisson_hits(p: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Row-major keys ``row * n + col`` of the entries hit (see :func:`bernoulli_positions`).

    ``p``: ``[n]`` float64 in [0, 1). Returns sorted unique int64 keys.
    """
    hazard = -torch.log1p(-p)
    ends = torch.cumsum(hazard, 0)  # within a row, column i covers [ends[i-1], ends[i])
    row_length = float(ends[-1])
    if batch == 0 or row_length <= 0.0:
        return torch.empty(0, dtype=torch.int64)
    points = _poisson_points(batch * row_length, generator)
    rows = torch.floor(points / row_length).clamp_(0, batch - 1)
    cols = torch.searchsorted(ends, points - rows * row_length, right=True)
    # Only float rounding at a row's edges can leave the range of columns with positive length.
    positive = torch.nonzero(hazard > 0)
    cols.clamp_(int(positive[0]), int(positive[-1]))
    key = rows.to(torch.int64) * p.numel() + cols  # non-decreasing, because the points are sorted
    return torch.unique_consecutive(key)  # two points in one entry are one hit


def _poisson_points(total: float, generator: torch.Generator) -> torch.Tensor:
    """Sorted points of a unit-rate Poisson process on ``(0, total)``: ``[k]`` float64."""
    chunks = []
    last = 0.0
    while True:
        remaining = total - last
        # Enough points to pass `total` with overwhelming probability; loop again otherwise.
        count = int(remaining + 6.0 * math.sqrt(remaining) + 16)
        u = torch.rand(count, generator=generator, dtype=torch.float64)
        points = last + torch.cumsum(-torch.log1p(-u), 0)  # Exp(1) gaps; 1 - u lies in (0, 1]
        inside = int(torch.searchsorted(points, total))
        chunks.append(points[:inside])
        if inside < count:
            return torch.cat(chunks)
        last = float(points[-1])


def magnitudes(kind: str, count: int, generator: torch.Generator) -> torch.Tensor:
    """Values of ``count`` active entries: ``[count]`` float32.

    ``"uniform"``: U[0,1); ``"constant"``: 1.0; ``"product"``: product of two independent U[0,1).
    """
    if kind == "uniform":
        return torch.rand(count, generator=generator)
    if kind == "constant":
        return torch.ones(count)
    if kind == "product":
        return torch.rand(count, generator=generator) * torch.rand(count, generator=generator)
    raise ValueError(f"unknown magnitude {kind!r}")


def fill_empty_rows(
    rows: torch.Tensor,
    values: torch.Tensor,
    codes: torch.Tensor,
    x: torch.Tensor,
    features: torch.Tensor,
    generator: torch.Generator,
) -> None:
    """Give every sample without a non-zero code one uniformly random feature at exactly 1.0.

    ``rows``, ``values``: the ``[k]`` coordinates' rows and values that built ``codes`` ``[batch, n]``
    and ``x = codes @ features`` ``[batch, d]``; both are updated in place. A random column is drawn
    for every row (so the stream consumed does not depend on the data); only empty rows use theirs.
    An empty row may hold explicit zeros (a U[0,1) draw of exactly 0); its ``x`` row is replaced.
    """
    batch, n = codes.shape
    candidates = torch.randint(0, n, (batch,), generator=generator)
    filled = torch.zeros(batch, dtype=torch.bool).index_fill_(0, rows[values != 0], True)
    empty = torch.nonzero(~filled).squeeze(1)
    if empty.numel():
        cols = candidates.index_select(0, empty)
        codes.index_put_((empty, cols), torch.ones(()))
        x.index_copy_(0, empty, features.index_select(0, cols))


def assemble(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, features: torch.Tensor, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense codes ``[batch, n]`` and data ``x = codes @ features`` ``[batch, d]``, both float32.

    Coordinates must be unique and in row-major order. ``x`` sums each row's active features in
    column order (an embedding-bag sum); it equals the dense product up to float rounding.
    """
    n = features.shape[0]
    codes = torch.zeros(batch, n).index_put_((rows, cols), values)
    offsets = torch.searchsorted(rows, torch.arange(batch, dtype=rows.dtype))
    x = F.embedding_bag(cols, features, offsets, mode="sum", per_sample_weights=values)
    return codes, x
