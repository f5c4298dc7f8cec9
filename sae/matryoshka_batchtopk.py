"""Matryoshka BatchTopK sparse autoencoder (Bussmann et al. 2025; Nabeshima 2024).

Codes exactly as ``sae.batchtopk`` (batch-wide top k B in training, the global threshold at
inference, the same threshold estimate and AuxK). The dictionary's first atoms form nested
prefixes s_1 < s_2 < ... < s_P = m, and the loss asks every prefix to reconstruct x alone:

    x_hat_p = z[:, :s_p] @ W_dec[e][:s_p] (+ b_dec[e])                 x_hat_p [B, d]
    loss    = sum_p mse(x_hat_p, x) + aux_coef[e] * auxk

with AuxK on the residual of the full reconstruction x_hat_P. The reported ``'mse'`` is the
full dictionary's (x_hat_P, what inference reconstructs); ``'prefix_mse'`` is the sum.

Prefixes are an option shared by the members (not swept, like ``decoder_bias``):
``prefixes``, a tuple of strictly increasing fractions of m in (0, 1] ending in 1.0 (default
(0.25, 0.5, 1.0)), so one spec fits every dictionary size. The sizes are
``s_p = round(f_p * m)`` (Python's ``round`` of the float64 product), which must be strictly
increasing and >= 1. A saved member records the fractions as its tensor ``'prefixes'`` [P]
float64 (exactly the floats given), and ``from_member_tensors`` rebuilds the same sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import SAE, register
from .batchtopk import BatchTopK

__all__ = ["DEFAULT_PREFIXES", "MatryoshkaBatchTopK", "prefix_sizes"]

DEFAULT_PREFIXES = (0.25, 0.5, 1.0)


def prefix_sizes(fractions: Sequence[float], m: int) -> tuple[int, ...]:
    """Validated prefix sizes round(f * m) of increasing fractions ending in 1.0."""
    fractions = tuple(float(f) for f in fractions)
    if not fractions or fractions[-1] != 1.0 or any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"prefixes must be fractions in (0, 1] ending in 1.0, got {fractions}")
    if any(a >= b for a, b in zip(fractions[:-1], fractions[1:])):
        raise ValueError(f"prefixes must be strictly increasing, got {fractions}")
    sizes = tuple(round(f * m) for f in fractions)
    if sizes[0] < 1 or any(a >= b for a, b in zip(sizes[:-1], sizes[1:])):
        raise ValueError(f"prefixes {fractions} give sizes {sizes} for m={m}: need strictly increasing sizes >= 1")
    return sizes


@register
class MatryoshkaBatchTopK(BatchTopK):
    """BatchTopK codes, a loss summed over nested dictionary prefixes (module docstring).

    ``MatryoshkaBatchTopK(W_enc, b_enc, W_dec, *, k, aux_coef, prefixes=(0.25, 0.5, 1.0),
    decoder_bias=False, b_dec=None, dead_tokens=10_000_000, k_aux=None, threshold_decay=0.99,
    threshold=None)``; ``build(weights, hyper, decoder_bias, prefixes=.., ...)``.
    Attributes: ``prefixes`` (the fractions), ``prefix_sizes`` (the atom counts).
    """

    kind = "matryoshka_batchtopk"
    tensor_format = "matryoshka_batchtopk/v1"
    loss_terms = ("loss", "mse", "auxk", "prefix_mse")

    def __init__(self, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, *, prefixes: Sequence[float] = DEFAULT_PREFIXES, **rest) -> None:
        super().__init__(W_enc, b_enc, W_dec, **rest)
        self._prefix_sizes = prefix_sizes(prefixes, self.m)
        self.prefixes = tuple(float(f) for f in prefixes)

    @property
    def prefix_sizes(self) -> tuple[int, ...]:
        return self._prefix_sizes

    def _terms(self, mses: list[Tensor], auxk: Tensor, e: int) -> dict[str, Tensor]:
        out = super()._terms(mses, auxk, e)
        out["prefix_mse"] = sum(mses[1:], mses[0])
        return out

    # ------------------------------------------------------------------ persistence
    def extra_tensors(self, e: int) -> dict[str, Tensor]:
        """``'threshold'`` [1] float32 and ``'prefixes'`` [P] float64 (the fractions)."""
        return {**super().extra_tensors(e), "prefixes": torch.tensor(self.prefixes, dtype=torch.float64)}

    def load_extra_(self, e: int, tensors: dict[str, Tensor]) -> None:
        super().load_extra_(e, tensors)
        saved = tuple(tensors["prefixes"].tolist())
        if saved != self.prefixes:
            raise ValueError(f"member {e} was saved with prefixes {saved}, this model has {self.prefixes}")

    @classmethod
    def from_member_tensors(cls, tensors: list[dict[str, Tensor]], hyper: list[dict[str, float]], **options) -> SAE:
        """As ``SAE.from_member_tensors``; the prefixes come from the tensors (every member
        must have the same, and an explicit ``prefixes`` option must agree)."""
        saved = {tuple(t["prefixes"].tolist()) for t in tensors if "prefixes" in t}
        if len(saved) != 1 or any("prefixes" not in t for t in tensors):
            raise ValueError(f"from_member_tensors: every member needs the same 'prefixes', got {sorted(saved)}")
        (fractions,) = saved
        if "prefixes" in options and tuple(float(f) for f in options["prefixes"]) != fractions:
            raise ValueError(f"from_member_tensors: prefixes={options['prefixes']} but the members were saved with {fractions}")
        options["prefixes"] = fractions
        return super().from_member_tensors(tensors, hyper, **options)
