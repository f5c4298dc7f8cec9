"""Gated sparse autoencoder (Rajamanoharan et al. 2024, "Improving dictionary learning with
gated sparse autoencoders").

Model (member e, batch x [B, d]; ``b_dec`` terms only with ``decoder_bias``):

    x_c     = x - b_dec                                          [B, d]
    pi_gate = x_c @ W_enc + b_enc                                [B, m]   (W_gate = W_enc, b_gate = b_enc)
    pi_mag  = x_c @ (W_enc * exp(r_mag)) + b_mag                 [B, m]   (r_mag scales W_enc's columns)
    f       = H(pi_gate) * relu(pi_mag)                          [B, m]   (H(u) = 1[u > 0], strict)
    x_hat   = f @ W_dec + b_dec                                  [B, d]

    loss = mse + l1 * sparsity + aux
    mse      = mean_{b,i} (x - x_hat)^2                          (mean over batch and dims, as relu_l1)
    sparsity = mean_b(sum_j relu(pi_gate_j)) / m                 (relu_l1's normalisation; key 'l1')
    aux      = mean_{b,i} (x - relu(pi_gate) @ sg(W_dec) - sg(b_dec))^2

``sg`` is stop-gradient: the auxiliary reconstruction trains only the gate path (W_enc,
b_enc, and b_dec through x_c); it never moves the decoder. The gate H has zero gradient,
so ``mse`` reaches W_enc only through the magnitude path, and b_enc only through the
sparsity and aux terms. The paper's reconstruction terms are sums over dims; dividing its
whole loss by d gives ours with the aux weight unchanged (1) and the paper's lambda equal to
``l1 * d / m``.

Every op that mixes one member's elements, and the exp of r_mag, runs on that member's own
slice, so a member trains bit-identically alone or inside an ensemble.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import SAE, mse, register

__all__ = ["Gated"]


@register
class Gated(SAE):
    """E stacked gated SAEs sharing W_enc between the gate and the (rescaled) magnitude path.

    Parameters (float32): the common W_enc [E, d, m], b_enc [E, m] (the gate bias),
    W_dec [E, m, d] (rows = atoms, unit norm), b_dec [E, d] (with ``decoder_bias``), and
    r_mag [E, m] (log-scale of the magnitude weights, init 0), b_mag [E, m] (magnitude bias,
    init 0). Buffer: ``l1`` [E] (>= 0). Saved tensors: the common ones plus ``'r_mag'`` [m]
    and ``'b_mag'`` [m].
    """

    kind = "gated"
    params = ("l1",)
    loss_terms = ("loss", "mse", "l1", "aux")
    sparsity = "l1"
    tensor_format = "gated/v1"

    def __init__(
        self,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        *,
        l1: Tensor | Sequence[float],
        decoder_bias: bool = False,
        b_dec: Tensor | None = None,
        r_mag: Tensor | None = None,
        b_mag: Tensor | None = None,
    ) -> None:
        super().__init__(W_enc, b_enc, W_dec, decoder_bias=decoder_bias, b_dec=b_dec, l1=l1)
        if (self.l1 < 0).any():
            raise ValueError(f"l1 must be >= 0, got {self.l1.tolist()}")
        shape = (self.n_members, self.m)
        for name, value in (("r_mag", r_mag), ("b_mag", b_mag)):
            if value is None:
                value = torch.zeros(shape, dtype=torch.float32, device=W_enc.device)
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} must be [{shape[0]}, {shape[1]}], got {tuple(value.shape)}")
            setattr(self, name, self._param(value))

    # ------------------------------------------------------------------ model
    def member_paths(self, x: Tensor, e: int) -> tuple[Tensor, Tensor]:
        """x [B, d] -> (pi_gate [B, m], pi_mag [B, m])."""
        if self.b_dec is not None:
            x = x - self.b_dec[e]
        W = self.W_enc[e]
        pi_gate = torch.addmm(self.b_enc[e], x, W)
        pi_mag = torch.addmm(self.b_mag[e], x, W * self.r_mag[e].exp())
        return pi_gate, pi_mag

    @staticmethod
    def _gate(pi_gate: Tensor, pi_mag: Tensor) -> Tensor:
        """f = H(pi_gate) * relu(pi_mag) [B, m]; no gradient through H."""
        return torch.where(pi_gate > 0, torch.relu(pi_mag), torch.zeros_like(pi_mag))

    def member_encode(self, x: Tensor, e: int) -> Tensor:
        """x [B, d] -> f = H(pi_gate) * relu(pi_mag) [B, m]."""
        return self._gate(*self.member_paths(x, e))

    def member_losses(self, x: Tensor, e: int, sparsity_scale: float = 1.0) -> dict[str, Tensor]:
        """Scalars ``'loss'`` = mse + l1 * sparsity_scale * l1-term + aux, ``'mse'``, ``'l1'``
        (the unweighted sparsity term mean_b(sum_j relu(pi_gate_j)) / m) and ``'aux'``
        (reconstruction from relu(pi_gate) through the detached decoder); module docstring."""
        pi_gate, pi_mag = self.member_paths(x, e)
        err = mse(self.member_decode(self._gate(pi_gate, pi_mag), e), x)
        gate_act = torch.relu(pi_gate)
        l1 = gate_act.mean()  # = mean_b(sum_j relu(pi_gate_j)) / m
        frozen = gate_act @ self.W_dec[e].detach()
        if self.b_dec is not None:
            frozen = frozen + self.b_dec[e].detach()
        aux = mse(frozen, x)
        return {"loss": err + self.l1[e] * sparsity_scale * l1 + aux, "mse": err, "l1": l1, "aux": aux}

    @torch.no_grad()
    def reset_atoms_(self, e: int, idx: Tensor, directions: Tensor, encoder_norm: float) -> None:
        """As ``SAE.reset_atoms_`` (which zeroes the gate bias), and r_mag, b_mag of the reset
        atoms back to 0 (so their magnitude path starts equal to the gate's weights)."""
        super().reset_atoms_(e, idx, directions, encoder_norm)
        self.r_mag[e, idx] = 0.0
        self.b_mag[e, idx] = 0.0

    # ------------------------------------------------------------------ persistence
    def extra_tensors(self, e: int) -> dict[str, Tensor]:
        """``'r_mag'`` [m] and ``'b_mag'`` [m] of member e."""
        return {"r_mag": self.r_mag[e].detach(), "b_mag": self.b_mag[e].detach()}

    @torch.no_grad()
    def load_extra_(self, e: int, tensors: dict[str, Tensor]) -> None:
        for name in ("r_mag", "b_mag"):
            if name not in tensors:
                raise KeyError(f"gated member tensors need {name!r} [m]")
            t = tensors[name]
            if tuple(t.shape) != (self.m,):
                raise ValueError(f"{name!r} must be [{self.m}], got {tuple(t.shape)}")
            getattr(self, name)[e] = t
