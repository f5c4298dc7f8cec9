"""A SynthSAEBench-style data source: Zipfian firing, a feature hierarchy, a low-rank copula.

Plain torch, no engine imports; all randomness comes from the ``torch.Generator`` objects passed
in. The API mirrors :class:`toydata.ToyData`: ``SynthData.build(config, feature_gen,
structure_gen)``, ``sample(batch, generator) -> (x, codes)``, ``ground_truth()``.
"""

from __future__ import annotations

import math
import operator

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import _is_int, _is_number, _non_negative_finite, _positive_int
from .features import planted_features
from .sampling import bernoulli_positions
from .structure import copula_factor, single_thread

__all__ = [
    "SynthConfig",
    "SynthData",
    "hierarchy_parents",
    "hierarchy_size",
    "orthogonalize",
    "zipf_probabilities",
]


def _non_negative_int(inst, attribute, value):
    if not _is_int(value) or value < 0:
        raise ValueError(f"{attribute.name} must be an integer >= 0, got {value!r}")


def _probability(inst, attribute, value):
    if not _is_number(value) or not (0 <= value <= 1):
        raise ValueError(f"{attribute.name} must be a number in [0, 1], got {value!r}")


def _positive_finite(inst, attribute, value):
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def hierarchy_size(n_roots: int, branching: int, depth: int) -> int:
    """Number of features in the forest: ``n_roots * sum_{l=0..depth} branching**l``."""
    return n_roots * sum(branching**level for level in range(depth + 1))


@attrs.frozen
class SynthConfig:
    """What a :class:`SynthData` source looks like (see it for the exact semantics).

    - ``n_features``, ``dim``: number of planted features and their dimension.
    - ``zipf_exponent``, ``p_min``, ``p_max``: firing probabilities, :func:`zipf_probabilities`
      (SynthSAEBench: 0.5, 5e-4, 0.4 at 16,384 features).
    - ``n_roots``, ``branching``, ``depth``: the hierarchy, :func:`hierarchy_parents`
      (``n_roots = 0``: none). ``depth`` counts the generations below the roots.
    - ``correlation_rank``, ``correlation_scale``: the low-rank Gaussian copula,
      :func:`toydata.structure.copula_factor` with ``strength = correlation_scale``
      (``correlation_rank = 0`` or ``correlation_scale = 0``: independent).
    - ``magnitude_mean``, ``magnitude_std``: an active feature's own magnitude is
      ``|N(mean, std^2)|`` (folded normal; SynthSAEBench uses a mean of ~4-5 at its scale, the
      defaults 1.0 / 0.5 suit this project's unit-scale data).
    - ``orthogonalize_steps``, ``orthogonalize_lr``: :func:`orthogonalize` (SynthSAEBench: 100 steps).
    - ``noise_std``: standard deviation of isotropic Gaussian noise added to ``x`` (0 = none).
    """

    n_features: int = attrs.field(validator=_positive_int)
    dim: int = attrs.field(validator=_positive_int)
    zipf_exponent: float = attrs.field(default=0.5, validator=_non_negative_finite)
    p_min: float = attrs.field(default=5e-4, validator=_probability)
    p_max: float = attrs.field(default=0.4, validator=_probability)
    n_roots: int = attrs.field(default=0, validator=_non_negative_int)
    branching: int = attrs.field(default=2, validator=_positive_int)
    depth: int = attrs.field(default=1, validator=_non_negative_int)
    correlation_rank: int = attrs.field(default=8, validator=_non_negative_int)
    correlation_scale: float = attrs.field(default=1.0, validator=_non_negative_finite)
    magnitude_mean: float = attrs.field(default=1.0, validator=_non_negative_finite)
    magnitude_std: float = attrs.field(default=0.5, validator=_non_negative_finite)
    orthogonalize_steps: int = attrs.field(default=0, validator=_non_negative_int)
    orthogonalize_lr: float = attrs.field(default=0.5, validator=_positive_finite)
    noise_std: float = attrs.field(default=0.0, validator=_non_negative_finite)

    def __attrs_post_init__(self):
        if self.p_min > self.p_max:
            raise ValueError(f"p_min ({self.p_min!r}) cannot exceed p_max ({self.p_max!r})")
        size = hierarchy_size(self.n_roots, self.branching, self.depth)
        if size > self.n_features:
            raise ValueError(
                f"n_roots={self.n_roots}, branching={self.branching}, depth={self.depth} need "
                f"{size} features, more than n_features={self.n_features}"
            )


def zipf_probabilities(n_features: int, exponent: float, p_min: float, p_max: float) -> Tensor:
    """Zipfian firing probabilities, linearly mapped onto ``[p_min, p_max]``: ``[n]`` float64.

    ``w_i = (i + 1) ** -exponent`` and ``p_i = p_min + (p_max - p_min) * (w_i - w_{n-1}) /
    (w_0 - w_{n-1})``, so ``p_0 = p_max``, ``p_{n-1} = p_min`` exactly, non-increasing in ``i``,
    and ``p_i - p_min`` is proportional to ``w_i - w_{n-1}`` (an affine image of the Zipf curve,
    not a pure power law near the tail). When all ``w_i`` are equal (``n = 1`` or
    ``exponent = 0``) every ``p_i = p_max``.
    """
    i = torch.arange(n_features, dtype=torch.float64)
    w = (i + 1).pow(-float(exponent))
    span = w[0] - w[-1]
    if float(span) <= 0:
        return torch.full((n_features,), float(p_max), dtype=torch.float64)
    p = p_min + (p_max - p_min) * ((w - w[-1]) / span)
    p[0], p[-1] = p_max, p_min  # exact endpoints despite rounding
    return p


def hierarchy_parents(n_features: int, n_roots: int, branching: int, depth: int) -> Tensor:
    """Parent index of every feature (-1 for roots and free features): ``[n]`` int64.

    The forest has ``n_roots`` trees; every node above the last level has ``branching``
    children, down to ``depth`` generations below the roots. Nodes are numbered breadth-first
    across the whole forest: level ``l`` (roots: ``l = 0``) holds ``n_roots * branching**l``
    features starting at ``s_l = n_roots * sum_{k<l} branching**k``, and feature
    ``s_l + q * branching + c`` (``c < branching``) is the ``c``-th child of feature
    ``s_{l-1} + q``. So siblings are contiguous, parents precede their children, and the
    features ``hierarchy_size(...) .. n-1`` are free (no parent, no children).
    """
    size = hierarchy_size(n_roots, branching, depth)
    if size > n_features:
        raise ValueError(f"the hierarchy needs {size} features, more than n_features={n_features}")
    parent = torch.full((n_features,), -1, dtype=torch.int64)
    start = 0
    for level in range(1, depth + 1):
        width = n_roots * branching ** (level - 1)
        child_start = start + width
        parent[child_start : child_start + width * branching] = torch.arange(start, start + width).repeat_interleave(
            branching
        )
        start = child_start
    return parent


def orthogonalize(features: Tensor, steps: int, lr: float) -> Tensor:
    """Spread unit rows apart by ``steps`` of projected gradient descent: ``[n, d]`` float32.

    Loss ``L = (1/4) |F F^T - I|_F^2 = (1/2) sum_{i != j} cos_ij^2`` for unit rows ``F``. Each
    step: ``G = (F F^T - I) F``, computed as ``F (F^T F) - F`` (``O(n d^2)``, no ``[n, n]``
    matrix); its radial part is removed, ``G_i -= <G_i, f_i> f_i`` (renormalising would undo it,
    and for ``n >> d`` it is large enough to flip rows); then
    ``F <- rownormalise(F - eta G)`` with ``eta = lr / max(1, n / d)`` (the loss's curvature grows
    like ``n / d``; measured stable for ``lr <= 1`` from 16 x 32 to 4096 x 256).

    What it achieves: the RMS off-diagonal cosine falls to the Welch bound
    ``sqrt((n - d) / (d (n - 1)))`` (0 for ``n <= d``) within ~10 steps at ``lr = 0.5``; the
    *maximum* |cos| drops much less for ``n >> d`` (1024 x 256: 0.295 -> 0.24), since a squared
    loss does not target it. Float64 on one intra-op thread
    (:func:`toydata.structure.single_thread`): no randomness, the same bytes for any caller
    thread count. ``steps = 0`` returns the input unchanged.
    """
    if steps == 0:
        return features
    n, d = features.shape
    eta = lr / max(1.0, n / d)
    f = features.to(torch.float64)
    f = f / torch.linalg.vector_norm(f, dim=1, keepdim=True)
    with single_thread():
        for _ in range(steps):
            grad = f @ (f.T @ f) - f
            grad -= (grad * f).sum(dim=1, keepdim=True) * f
            f = f - eta * grad
            f = f / torch.linalg.vector_norm(f, dim=1, keepdim=True)
    return f.to(torch.float32)


@attrs.frozen(eq=False)
class SynthData:
    """Sparse codes with Zipfian firing, a tree hierarchy and a low-rank copula; known ground truth.

    Built once (:meth:`build`): ``features`` ``[n, d]`` float32 unit rows (planted by
    :func:`toydata.features.planted_features` from ``feature_gen``, then :func:`orthogonalize`);
    ``probs`` ``[n]`` float32 from :func:`zipf_probabilities`; ``parent`` ``[n]`` int64 from
    :func:`hierarchy_parents`; the copula factor from ``structure_gen``
    (:func:`toydata.structure.copula_factor`; nothing is drawn when ``correlation_rank`` or
    ``correlation_scale`` is 0).

    Each sample (row), exactly:

    1. **Candidates.** ``z ~ N(0, C)`` with ``C = K K^T + diag(r^2)`` the unit-diagonal
       low-rank correlation (``z = K g + r * e``); feature ``i`` is a candidate iff
       ``Phi(z_i) < p_i``, i.e. ``z_i < Phi^{-1}(p_i)``: marginally ``P(candidate_i) = p_i``.
       Rows are independent. Without a copula (``C = I``) the candidates are independent
       Bernoulli(``p_i``), drawn sparsely by :func:`toydata.sampling.bernoulli_positions`.
    2. **Roots and free features** are active iff they are candidates, so they fire with
       probability exactly ``p_i``.
    3. **Children**, level by level from the top: the children of an *inactive* parent are
       inactive; for an *active* parent, if any of its children are candidates, exactly one of
       those candidates becomes active, chosen with probability proportional to its ``p``; if
       none is, no child fires. (Draw ``u ~ U[0,1)``, lay the eligible candidates' ``p`` end to
       end in column order and take the one whose interval contains ``u * sum``.) So a child
       fires only with its parent, at most one child of each parent fires, and a child's
       marginal rate is below its ``p_i``.
    4. **Magnitudes.** Every active feature draws ``a_i = |N(magnitude_mean, magnitude_std^2)|``
       (folded normal); the code of a root or free feature is ``a_i``, and a child's code is
       ``a_i`` times its parent's code (so ``codes[child] = a_child * a_parent * ...`` down a
       chain).
    5. ``x = codes @ features`` (an embedding-bag sum over the active entries) plus
       ``N(0, noise_std^2 I)`` noise when ``noise_std > 0``.

    Random stream per :meth:`sample` call, in order: with a copula ``g`` ``[B, rank]`` then
    ``e`` ``[B, n]`` (float32 normals), without one the draws of ``bernoulli_positions``; per
    hierarchy level, one float64 ``u`` per (row, parent) pair that has an eligible candidate
    child, in row-major order; ``[k]`` float32 magnitude normals for the ``k`` active entries in
    row-major order; the noise. Everything lives on the CPU; the hierarchy is resolved on the
    coordinate list of candidates, so its cost is proportional to the number of candidates.
    """

    config: SynthConfig
    features: Tensor
    probs: Tensor
    parent: Tensor
    _structure: dict[str, Tensor]  # copula_factor / copula_residual_std / copula_threshold
    _levels: tuple[tuple[int, int], ...]  # [start, end) feature range of each child level, top-down

    @classmethod
    def build(cls, config: SynthConfig, feature_gen: torch.Generator, structure_gen: torch.Generator) -> SynthData:
        """Draw the features from ``feature_gen`` (independent of every other setting but
        ``orthogonalize_*``) and the copula factor from ``structure_gen``."""
        n = config.n_features
        features = planted_features(n, config.dim, feature_gen)
        features = orthogonalize(features, config.orthogonalize_steps, config.orthogonalize_lr)
        probs = zipf_probabilities(n, config.zipf_exponent, config.p_min, config.p_max).to(torch.float32)
        parent = hierarchy_parents(n, config.n_roots, config.branching, config.depth)
        rank = config.correlation_rank if config.correlation_scale > 0 else 0
        if rank > 0:
            factor, residual_std = copula_factor(n, rank, config.correlation_scale, structure_gen)
        else:
            factor, residual_std = torch.zeros(n, 0, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
        structure = {
            "copula_factor": factor.to(torch.float32),
            "copula_residual_std": residual_std.to(torch.float32),
            # Phi(z_i) < p_i  <=>  z_i < Phi^{-1}(p_i); -inf / +inf for p_i = 0 / 1.
            "copula_threshold": torch.special.ndtri(probs.to(torch.float64)).to(torch.float32),
        }
        levels = []
        start = 0
        for level in range(1, config.depth + 1 if config.n_roots else 1):
            start += config.n_roots * config.branching ** (level - 1)
            width = config.n_roots * config.branching**level
            levels.append((start, start + width))
        return cls(config, features, probs, parent, structure, tuple(levels))

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A fresh batch: ``x`` ``[batch, d]`` float32 and ``codes`` ``[batch, n]`` float32 (>= 0, sparse)."""
        if isinstance(batch, bool) or not hasattr(batch, "__index__") or operator.index(batch) < 0:
            raise ValueError(f"batch must be a non-negative integer, got {batch!r}")
        batch = operator.index(batch)
        cfg = self.config
        n = cfg.n_features
        rows, cols, active = self._candidates(batch, generator)
        if self._levels:
            rows, cols = self._resolve_hierarchy(rows, cols, active, generator)
        own = torch.randn(rows.numel(), generator=generator).mul_(cfg.magnitude_std).add_(cfg.magnitude_mean).abs_()
        codes = torch.zeros(batch, n).index_put_((rows, cols), own)
        for start, end in self._levels:  # top-down, so each parent's code is final when read
            sel = torch.nonzero((cols >= start) & (cols < end)).squeeze(1)
            r, c = rows[sel], cols[sel]
            codes.index_put_((r, c), codes[r, c] * codes[r, self.parent[c]])
        values = codes[rows, cols]
        offsets = torch.searchsorted(rows, torch.arange(batch, dtype=rows.dtype))
        x = F.embedding_bag(cols, self.features, offsets, mode="sum", per_sample_weights=values)
        if cfg.noise_std > 0:
            x = x + cfg.noise_std * torch.randn(batch, cfg.dim, generator=generator)
        return x, codes

    def _candidates(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor | None]:
        """Step 1: the candidates' coordinates ``(rows, cols)`` (int64, row-major) and, when there is
        a hierarchy, the dense ``[batch, n]`` bool candidate matrix (else None)."""
        s = self._structure
        factor = s["copula_factor"]
        if factor.shape[1] == 0:
            rows, cols = bernoulli_positions(self.probs, batch, generator)
            if not self._levels:
                return rows, cols, None
            dense = torch.zeros(batch, factor.shape[0], dtype=torch.bool).index_put_((rows, cols), torch.ones((), dtype=torch.bool))
            return rows, cols, dense
        # As ToyData's per_sample mode: z = K g + r e, one row per sample.
        g = torch.randn(batch, factor.shape[1], generator=generator)
        z = torch.randn(batch, factor.shape[0], generator=generator)
        z.mul_(s["copula_residual_std"]).addmm_(g, factor.T)
        dense = z < s["copula_threshold"]
        rows, cols = torch.nonzero(dense, as_tuple=True)
        return rows, cols, dense if self._levels else None

    def _resolve_hierarchy(
        self, rows: Tensor, cols: Tensor, active: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Step 3 on the candidate coordinates (row-major); ``active`` ``[B, n]`` bool holds the
        candidates on entry and is updated in place. Returns the active coordinates (row-major)."""
        keep = torch.ones(rows.numel(), dtype=torch.bool)
        p = self.probs.to(torch.float64)
        for start, end in self._levels:
            level = torch.nonzero((cols >= start) & (cols < end)).squeeze(1)
            r, c = rows[level], cols[level]
            q = self.parent[c]
            eligible = active[r, q]  # the parent is active (its own level is already resolved)
            # Row-major order keeps each (row, parent) group's eligible siblings contiguous.
            e = torch.nonzero(eligible).squeeze(1)
            chosen = torch.zeros(level.numel(), dtype=torch.bool)
            if e.numel():
                group = r[e] * self.config.n_features + q[e]
                first = torch.ones(e.numel(), dtype=torch.bool)
                first[1:] = group[1:] != group[:-1]
                last = torch.ones(e.numel(), dtype=torch.bool)
                last[:-1] = first[1:]
                gid = torch.cumsum(first, 0) - 1
                w = p[c[e]]
                cum = torch.cumsum(w, 0)
                base = (cum - w)[first]  # cumulative weight before each group
                local = cum - base[gid]  # right end of each entry's interval within its group
                total = local[last]
                target = torch.rand(total.numel(), generator=generator, dtype=torch.float64) * total
                # "interval right end exceeds the target", forced true at the group's last entry
                # (u * total may round up to total); monotone within a group, so exactly one
                # entry per group is where it turns true.
                hit = (local > target[gid]) | last
                before = torch.zeros_like(hit)
                before[1:] = hit[:-1]
                before[first] = False
                chosen[e[hit & ~before]] = True
            dropped = level[~chosen]
            keep[dropped] = False
            active[rows[dropped], cols[dropped]] = False
        return rows[keep], cols[keep]

    def ground_truth(self) -> dict[str, Tensor]:
        """Tensors to save (contiguous copies): ``features`` ``[n, d]`` float32, ``probs`` ``[n]``
        float32 (candidate probabilities ``p``), ``parent`` ``[n]`` int64 (-1: root or free),
        ``copula_factor`` ``[n, rank]`` float32 (``K``; rank 0 without a copula),
        ``copula_residual_std`` ``[n]`` (``r``) and ``copula_threshold`` ``[n]`` (``Phi^{-1}(p)``),
        with correlation ``C = K K^T + diag(r^2)`` (unit diagonal)."""
        out = {"features": self.features, "probs": self.probs, "parent": self.parent, **self._structure}
        return {k: v.detach().clone().contiguous() for k, v in out.items()}
