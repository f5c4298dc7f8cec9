"""Weight initialisations for one SAE member.

Every function here draws all of its randomness from the ``torch.Generator`` it is given,
never from the global RNG, so a member's initial weights depend only on its own generator
(and, for ``data_samples``, on the sample tensor).

Shapes (one member): ``W_enc [d, m]``, ``b_enc [m]``, ``W_dec [m, d]`` whose rows are the
dictionary atoms.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DEFAULT_DECODER_INIT_NORM", "INIT_KINDS", "init_weights", "unit_rows"]

INIT_KINDS = ("orthogonal", "data_samples", "tied", "tied_small")

# Atom norm of ``'tied_small'`` when none is given (SAELens' ``decoder_init_norm`` default;
# Anthropic's April 2024 update initialises the atoms at a fixed small norm of this order).
DEFAULT_DECODER_INIT_NORM = 0.1

# Rows with a norm below this are treated as zero (left at zero by ``unit_rows``,
# skipped as candidate atoms by ``data_samples``).
_NORM_EPS = 1e-12


def unit_rows(w: Tensor) -> Tensor:
    """Return ``w [r, d]`` with every row scaled to unit L2 norm (zero rows stay zero)."""
    norms = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
    return w / norms.clamp_min(_NORM_EPS)


def _orthogonal(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """A ``[rows, cols]`` float32 semi-orthogonal matrix from ``torch.nn.init.orthogonal_``."""
    w = torch.empty(rows, cols, dtype=torch.float32)
    torch.nn.init.orthogonal_(w, generator=generator)
    return w


def init_weights(
    kind: str,
    d: int,
    m: int,
    generator: torch.Generator,
    samples: Tensor | None = None,
    *,
    decoder_init_norm: float = DEFAULT_DECODER_INIT_NORM,
) -> tuple[Tensor, Tensor, Tensor]:
    """Initial ``(W_enc [d, m], b_enc [m], W_dec [m, d])`` for one member, all float32, contiguous.

    kinds:

    - ``'orthogonal'`` (the interim report): the weights are laid out as the report's
      ``nn.Linear`` layers and each is ``torch.nn.init.orthogonal_``-ed independently, encoder
      first, then decoder, from ``generator``: the encoder weight ``[m, d]`` (so
      ``W_enc = weight.T``), then the decoder weight ``[d, m]`` whose columns are the atoms
      (so ``W_dec = weight.T``); the atoms are then scaled to unit norm. ``b_enc = 0``.
    - ``'data_samples'``: the atoms are ``m`` rows of ``samples [N, d]``, each scaled to unit
      norm. Rows with (near-)zero norm are never chosen. The rows are drawn without
      replacement (``randperm``) when at least ``m`` candidates exist, otherwise with
      replacement (``randint``). ``W_enc = W_dec.T``, ``b_enc = 0``.
    - ``'tied'``: the decoder as in ``'orthogonal'`` (one ``orthogonal_`` draw of a
      ``[d, m]`` matrix, transposed, unit-normed rows), ``W_enc = W_dec.T``, ``b_enc = 0``.
      Only the initialisation is tied; training updates encoder and decoder separately.
    - ``'tied_small'`` (Anthropic's April 2024 training update; SAELens' ``decoder_init_norm``
      with ``init_encoder_as_decoder_transpose``): every atom is an independent random
      direction, a ``torch.randn(m, d, generator=generator)`` draw with its rows scaled to unit
      norm (uniform on the sphere), then scaled to L2 norm ``decoder_init_norm`` (default
      0.1); ``W_enc = W_dec.T``, ``b_enc = 0``. Meant for a free decoder norm
      (``ReluL1(decoder_norm="free", l1_weighting="decoder_norm")``); with a unit decoder the
      first renormalisation brings the atoms back to norm 1. ``decoder_init_norm`` is used
      by this kind only.

    Raises ``ValueError`` for an unknown kind, non-positive sizes, or ``'data_samples'``
    without usable samples.
    """
    if d <= 0 or m <= 0:
        raise ValueError(f"init_weights: d and m must be positive, got d={d}, m={m}")
    b_enc = torch.zeros(m, dtype=torch.float32)
    if kind == "orthogonal":
        W_enc = _orthogonal(m, d, generator).T.contiguous()
        W_dec = unit_rows(_orthogonal(d, m, generator).T).contiguous()
    elif kind == "tied":
        W_dec = unit_rows(_orthogonal(d, m, generator).T).contiguous()
        W_enc = W_dec.T.contiguous()
    elif kind == "tied_small":
        if not (decoder_init_norm > 0 and decoder_init_norm < float("inf")):
            raise ValueError(f"init_weights: decoder_init_norm must be finite and > 0, got {decoder_init_norm}")
        directions = unit_rows(torch.randn(m, d, dtype=torch.float32, generator=generator))
        W_dec = (directions * decoder_init_norm).contiguous()
        W_enc = W_dec.T.contiguous()
    elif kind == "data_samples":
        if samples is None:
            raise ValueError("init_weights: kind 'data_samples' needs `samples` [N, d]")
        if samples.dim() != 2 or samples.shape[1] != d:
            raise ValueError(
                f"init_weights: `samples` must have shape [N, {d}], got {tuple(samples.shape)}"
            )
        samples = samples.detach().to(device="cpu", dtype=torch.float32)
        usable = torch.linalg.vector_norm(samples, dim=1) > _NORM_EPS
        candidates = samples[usable]
        n = candidates.shape[0]
        if n == 0:
            raise ValueError("init_weights: 'data_samples' got no sample with non-zero norm")
        if n >= m:
            idx = torch.randperm(n, generator=generator)[:m]
        else:
            idx = torch.randint(n, (m,), generator=generator)
        W_dec = unit_rows(candidates[idx]).contiguous()
        W_enc = W_dec.T.contiguous()
    else:
        raise ValueError(
            f"init_weights: unknown init kind {kind!r}; expected one of {', '.join(INIT_KINDS)}"
        )
    return W_enc, b_enc, W_dec
