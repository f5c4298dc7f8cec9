"""Random correlation structures, built once per data source (float64)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the enclosed (small, build-time) LAPACK work on one intra-op thread.

    Two reasons: the result then does not depend on the caller's thread count, and a multi-threaded
    ``eigvalsh`` degrades catastrophically when the cores are oversubscribed (measured: 37 ms on
    one thread vs 10 s on two for n = 512 while another process kept a core busy). The thread count
    is process-global, so it is restored on exit.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def batch_covariance(n_features: int, generator: torch.Generator) -> torch.Tensor:
    """Covariance of the per-batch Gaussian in ``batch`` mode: ``[n, n]`` float64.

    As in the replication code: ``A ~ U(0,1)^{n x n}``, ``S = (A + A^T) / 2``; if the smallest
    eigenvalue ``l`` of ``S`` is negative, ``-1.001 * l * I`` is added. The result is a covariance,
    not a correlation matrix (diagonal ~ n/50, top eigenvalue ~ n/2).
    """
    a = torch.rand(n_features, n_features, generator=generator, dtype=torch.float64)
    s = (a + a.T) / 2
    with single_thread():
        lam_min = torch.linalg.eigvalsh(s)[0]
    if lam_min < 0:
        s = s - 1.001 * lam_min * torch.eye(n_features, dtype=torch.float64)
    return s


def batch_covariance_cholesky(n_features: int, generator: torch.Generator) -> torch.Tensor:
    """Lower Cholesky factor ``L`` (``[n, n]`` float64) of :func:`batch_covariance`, so ``z = L g``
    with ``g ~ N(0, I)`` is a draw from N(0, Sigma)."""
    cov = batch_covariance(n_features, generator)
    with single_thread():
        return torch.linalg.cholesky(cov)


def copula_factor(
    n_features: int, rank: int, strength: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-rank-plus-diagonal correlation matrix for the ``per_sample`` Gaussian copula.

    ``W ~ N(0,1)^{n x rank}``, ``G = strength * W / sqrt(rank)``, ``M = G G^T + I``, and the
    correlation is ``C = D^{-1/2} M D^{-1/2}`` with ``D = diag(M)``. Returns ``(factor, residual_std)``:
    ``factor = D^{-1/2} G`` (``[n, rank]``) and ``residual_std = sqrt(1 - |factor_i|^2)`` (``[n]``), so
    ``C = factor factor^T + diag(residual_std^2)`` has unit diagonal and
    ``z = factor g + residual_std * e`` with ``g ~ N(0, I_rank)``, ``e ~ N(0, I_n)`` is a draw from N(0, C).
    ``strength = 0`` gives ``C = I`` (independent features).
    """
    w = torch.randn(n_features, rank, generator=generator, dtype=torch.float64)
    g = w * (strength / rank**0.5)
    diag = 1.0 + (g * g).sum(dim=1)
    factor = g / diag.sqrt()[:, None]
    residual_std = (1.0 / diag).sqrt()
    return factor, residual_std
