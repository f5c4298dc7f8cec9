"""Metrics for SAE dictionaries and reconstructions (DESIGN.md section 8), each defined exactly.

Conventions used throughout:

- Cosine similarity is **signed**: cos(u, v) = <u, v> / (|u| |v|). A max cosine therefore
  rewards an atom pointing the same way as a feature; an anti-parallel atom (cos = -1) does
  not count as a recovery. (ReLU SAE atoms are used with non-negative codes, so a flipped
  atom cannot represent the feature.)
- A row with zero norm has cosine 0 with everything (its norm is clamped to 1e-12).
- Cosines are computed in float64 regardless of the input dtype; functions returning a
  single number return a Python float.
- ``mmcs(a, b)`` averages over the rows of ``a`` the maximum over the rows of ``b``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .relu_l1 import ReluL1

__all__ = [
    "cosine_matrix",
    "evaluate",
    "max_cosine",
    "mmcs",
    "mmcs_larger",
    "mmcs_truth",
]

_NORM_EPS = 1e-12
# Rows of `a` per block in max_cosine, so a [n, m] float64 matrix is never built whole for
# large dictionaries (block * m * 8 bytes stays around 64 MiB for m = 8192).
_BLOCK_ELEMS = 1 << 23


def _unit(a: Tensor) -> Tensor:
    a = a.detach().to(torch.float64)
    return a / torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp_min(_NORM_EPS)


def _check_pair(a: Tensor, b: Tensor, name: str) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name}: expected [n, d] and [m, d] with the same d, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError(f"{name}: empty input {tuple(a.shape)}, {tuple(b.shape)}")


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Signed cosine similarities: a [n, d], b [m, d] -> [n, m] float64, entry (i, j) = cos(a_i, b_j)."""
    _check_pair(a, b, "cosine_matrix")
    return _unit(a) @ _unit(b.to(a.device)).T


def max_cosine(a: Tensor, b: Tensor) -> Tensor:
    """For each row of a [n, d]: its maximum signed cosine with any row of b [m, d] -> [n] float64."""
    _check_pair(a, b, "max_cosine")
    ua, ub_t = _unit(a), _unit(b.to(a.device)).T
    block = max(1, _BLOCK_ELEMS // b.shape[0])
    return torch.cat([(ua[i : i + block] @ ub_t).amax(dim=1) for i in range(0, a.shape[0], block)])


def mmcs(a: Tensor, b: Tensor) -> float:
    """Mean max cosine similarity: (1/n) sum_i max_j cos(a_i, b_j) for a [n, d], b [m, d].

    Signed cosine (see module docstring); not symmetric: ``mmcs(a, b)`` asks how well the
    rows of ``a`` are each matched by some row of ``b``.
    """
    return float(max_cosine(a, b).mean())


def mmcs_truth(features: Tensor, atoms: Tensor, threshold: float = 0.9) -> dict[str, float | int]:
    """Recovery of ground-truth features [n, d] by a dictionary's atoms [m, d].

    - ``'mmcs_truth'``: recall direction, mean over features of the max cosine with any atom,
      ``mmcs(features, atoms)`` (the interim report's MMCS).
    - ``'mmcs_truth_precision'``: mean over atoms of the max cosine with any feature,
      ``mmcs(atoms, features)``.
    - ``'recovered_0.9'``: number of features whose max cosine is strictly greater than
      ``threshold`` (key uses ``f"{threshold:g}"``), an int;
      ``'recovered_0.9_frac'``: that count divided by n.
    """
    recall = max_cosine(features, atoms)
    precision = max_cosine(atoms, features)
    count = int((recall > threshold).sum())
    tag = f"{threshold:g}"
    return {
        "mmcs_truth": float(recall.mean()),
        "mmcs_truth_precision": float(precision.mean()),
        f"recovered_{tag}": count,
        f"recovered_{tag}_frac": count / features.shape[0],
    }


def mmcs_larger(atoms: Tensor, larger_atoms: Tensor) -> float:
    """Each atom's [m1, d] max signed cosine to the larger dictionary [m2, d], averaged over
    the m1 atoms: ``mmcs(atoms, larger_atoms)``. The no-ground-truth proxy of the report."""
    return mmcs(atoms, larger_atoms)


@torch.no_grad()
def evaluate(
    model: ReluL1,
    x_eval: Tensor,
    features: Tensor | None = None,
    chunk: int = 4096,
) -> dict[str, Tensor]:
    """Per-member metrics on a fixed evaluation set x_eval [N, d]; every value is [E] float64.

    With x_hat, c from the member's forward pass and the sums taken over the N samples:

    - ``'mse'``: sum_{n,i} (x - x_hat)^2 / (N d).
    - ``'fvu'``: sum_{n,i} (x - x_hat)^2 / sum_{n,i} (x - mean_x)^2, mean_x [d] the mean of
      x_eval over samples (0 for a perfect reconstruction, 1 for predicting mean_x; NaN if
      x_eval is constant).
    - ``'l0'``: mean over samples of the number of atoms with c > 0.
    - ``'dead'``: number of atoms with c <= 0 on every eval sample; ``'dead_frac'``: / m.
    - with ``features`` [n, d]: the ``mmcs_truth(features, W_dec[e])`` entries.

    Each member is evaluated on its own (``model.member_forward``) with float64
    accumulation, so a member's numbers do not depend on the rest of the ensemble.
    Chunks of ``chunk`` rows bound memory.
    """
    if x_eval.dim() != 2 or x_eval.shape[1] != model.d:
        raise ValueError(f"x_eval must be [N, {model.d}], got {tuple(x_eval.shape)}")
    N = x_eval.shape[0]
    if N == 0:
        raise ValueError("evaluate: empty evaluation set")
    E, m, d = model.n_members, model.m, model.d
    x64 = x_eval.to(torch.float64)
    sst = float(((x64 - x64.mean(dim=0)) ** 2).sum())
    out: dict[str, list[float]] = {k: [] for k in ("mse", "fvu", "l0", "dead", "dead_frac")}
    truth: dict[str, list[float]] = {}
    for e in range(E):
        sse = 0.0
        active = 0
        fired = torch.zeros(m, dtype=torch.bool, device=x_eval.device)
        for i in range(0, N, chunk):
            x = x_eval[i : i + chunk]
            x_hat, c = model.member_forward(x, e)
            sse += float(((x.to(torch.float64) - x_hat.to(torch.float64)) ** 2).sum())
            pos = c > 0
            active += int(pos.sum())
            fired |= pos.any(dim=0)
        dead = m - int(fired.sum())
        out["mse"].append(sse / (N * d))
        out["fvu"].append(sse / sst if sst > 0 else float("nan"))
        out["l0"].append(active / N)
        out["dead"].append(float(dead))
        out["dead_frac"].append(dead / m)
        if features is not None:
            for k, v in mmcs_truth(features, model.atoms(e)).items():
                truth.setdefault(k, []).append(float(v))
    out.update(truth)
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}
