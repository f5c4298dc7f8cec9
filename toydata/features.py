"""Planted ground-truth feature directions."""

from __future__ import annotations

import torch


def planted_features(n_features: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Random unit directions: ``[n_features, dim]`` float32.

    Rows are drawn N(0, I) and L2-normalised; they are not orthogonalised (with
    ``n_features > dim`` they could not all be), matching the replication code.
    """
    rows = torch.randn(n_features, dim, generator=generator, dtype=torch.float32)
    return rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)
