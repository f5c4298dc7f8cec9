"""Per-feature firing probabilities.

All computations here are float64; callers cast to float32 where they store results.
"""

from __future__ import annotations

import torch


def decay_weights(n_features: int, decay: float) -> torch.Tensor:
    """``decay**i`` for ``i = 0 .. n_features-1``: ``[n]`` float64."""
    return torch.pow(torch.tensor(decay, dtype=torch.float64), torch.arange(n_features, dtype=torch.float64))


def base_probabilities(weights: torch.Tensor, active_per_sample: float) -> torch.Tensor:
    """Probabilities ``p_i = min(1, c * w_i)`` with ``c`` chosen so that ``sum(p) == active_per_sample``.

    ``weights``: ``[n]`` non-negative and non-increasing (as ``decay**i`` is). Returns ``[n]`` float64.

    When no ``p_i`` reaches 1 this is the plain rescale ``p = w * active / sum(w)``. Otherwise the
    clipped features are removed from the budget and the rest rescaled again ("water filling"), so
    the expected active count stays exactly ``active_per_sample`` -- a plain rescale-then-clip
    would silently lose the clipped mass.
    """
    w = weights.to(torch.float64)
    n = w.numel()
    if not 0 < active_per_sample <= n:
        raise ValueError(f"active_per_sample must be in (0, {n}], got {active_per_sample!r}")
    if n > 1 and bool((w[1:] > w[:-1]).any()):
        raise ValueError("weights must be non-increasing")
    # With the k largest weights clipped to 1, the rest get c_k = (A - k) / tail_k where
    # tail_k = sum_{i >= k} w_i. The right k is the smallest one whose largest unclipped
    # probability c_k * w_k does not exceed 1.
    tail = torch.flip(torch.cumsum(torch.flip(w, [0]), 0), [0])
    k = torch.arange(n, dtype=torch.float64)
    budget = active_per_sample - k
    fits = budget * w <= tail  # always true at k = n-1, so `first` exists
    first = int(torch.nonzero(fits)[0])
    if budget[first] > 0 and tail[first] <= 0:
        raise ValueError(
            f"cannot reach active_per_sample={active_per_sample!r}: "
            "the remaining feature weights underflow to zero (decay too small for n_features)"
        )
    scale = budget[first] / tail[first] if budget[first] > 0 else torch.tensor(0.0, dtype=torch.float64)
    p = (scale * w).clamp_(max=1.0)
    p[:first] = 1.0
    return p


def batch_probabilities(z: torch.Tensor, weights: torch.Tensor, active_per_sample: float) -> torch.Tensor:
    """One batch's probabilities in ``batch`` mode, as the replication code computes them.

    ``z``: ``[n]`` float64 Gaussian draw; ``weights``: ``[n]`` decay weights. Returns ``[n]`` float64
    ``p = Phi(z) * w``, rescaled so that ``mean(p) == active_per_sample / n``, then clipped to <= 1
    (clipping can lower the expected count below ``active_per_sample``; this is faithful).
    """
    raw = torch.special.ndtr(z) * weights
    p = raw * (active_per_sample / raw.numel() / raw.mean())
    return p.clamp_(max=1.0)
