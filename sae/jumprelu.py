"""JumpReLU sparse autoencoder with an L0 penalty (Rajamanoharan et al. 2024, "Jumping ahead").

Model (member e, batch x [B, d]; ``b_dec`` terms only with ``decoder_bias``):

    pre   = (x - b_dec) @ W_enc + b_enc                 pre   [B, m]
    theta = exp(log_threshold)                          theta [m]   (> 0 by construction)
    z     = pre * H(pre - theta)                        z     [B, m]  (H(u) = 1[u > 0], strict)
    x_hat = z @ W_dec + b_dec                           x_hat [B, d]
    loss  = mse + sparsity_coef * l0
    mse   = mean_{b,i} (x - x_hat)^2                    (mean over batch *and* dims, as relu_l1)
    l0    = mean_b sum_j H(pre_j - theta_j)             (the mean number of active latents)

Conventions, exactly: ``l0`` is *not* divided by m (unlike relu_l1's L1 term): it is the
average count of firing latents on the batch, the same number ``sae.metrics.evaluate``
reports as ``'l0'``. The paper's reconstruction term is a sum over dims, ours a mean, so our
``sparsity_coef`` equals the paper's lambda divided by d.

Gradients. H has zero derivative almost everywhere, so the threshold is trained with a
straight-through estimator: with the rectangle kernel of bandwidth eps (``bandwidth``),
``in_band = 1[|pre - theta| < eps/2]``, the pseudo-derivatives are

    d z / d pre            = H(pre - theta)                (straight through the gate)
    d z / d theta          = -(theta / eps) * in_band
    d H(pre - theta) / d pre   = 0                         (the L0 term does not move pre)
    d H(pre - theta) / d theta = -(1 / eps) * in_band

and the parameter is log_threshold, so autograd multiplies the theta gradient by theta
(d theta / d log_threshold = theta). ``eps`` should be small compared with the typical
pre-activation: the paper's 1e-3 assumes inputs scaled to unit mean squared norm.

Every op that mixes one member's elements, and every transcendental (exp, log) op, runs on
that member's own slice, so a member trains bit-identically alone or inside an ensemble.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from .base import SAE, mse, register

__all__ = ["JumpReLU", "jump_relu", "step"]


class _JumpReLUFn(torch.autograd.Function):
    """z = pre * H(pre - theta) with the straight-through threshold gradient (module docstring)."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: Tensor) -> Tensor:
        ctx.save_for_backward(pre, theta, eps)
        return torch.where(pre > theta, pre, torch.zeros_like(pre))

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta, eps = ctx.saved_tensors
        in_band = (pre - theta).abs() < eps * 0.5
        grad_pre = torch.where(pre > theta, grad, torch.zeros_like(grad))
        grad_theta = torch.where(in_band, grad, torch.zeros_like(grad)).sum(0) * (-theta / eps)
        return grad_pre, grad_theta, None


class _StepFn(torch.autograd.Function):
    """H(pre - theta) as 0/1 floats; gradient only to theta (module docstring)."""

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: Tensor) -> Tensor:
        ctx.save_for_backward(pre, theta, eps)
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta, eps = ctx.saved_tensors
        in_band = (pre - theta).abs() < eps * 0.5
        grad_theta = torch.where(in_band, grad, torch.zeros_like(grad)).sum(0) / -eps
        return None, grad_theta, None


def jump_relu(pre: Tensor, theta: Tensor, eps: Tensor) -> Tensor:
    """pre [B, m], theta [m], eps 0-d -> pre * H(pre - theta) [B, m] (STE gradient to theta)."""
    return _JumpReLUFn.apply(pre, theta, eps)


def step(pre: Tensor, theta: Tensor, eps: Tensor) -> Tensor:
    """pre [B, m], theta [m], eps 0-d -> H(pre - theta) [B, m] (STE gradient to theta only)."""
    return _StepFn.apply(pre, theta, eps)


@register
class JumpReLU(SAE):
    """E stacked JumpReLU SAEs with a learned per-latent threshold and an L0 penalty.

    Parameters (float32): the common W_enc [E, d, m], b_enc [E, m], W_dec [E, m, d]
    (rows = atoms, unit norm), b_dec [E, d] (with ``decoder_bias``), and
    log_threshold [E, m] (theta = exp(log_threshold)).
    Buffers [E]: ``sparsity_coef`` (>= 0), ``threshold_init`` (> 0; log_threshold starts at
    log(threshold_init) unless given), ``bandwidth`` (> 0, the STE kernel width eps).
    Saved tensors: the common ones plus ``'threshold'`` [m] = exp(log_threshold[e]).
    """

    kind = "jumprelu"
    params = ("sparsity_coef", "threshold_init", "bandwidth")
    loss_terms = ("loss", "mse", "l0")
    sparsity = "sparsity_coef"
    tensor_format = "jumprelu/v1"
    defaults: ClassVar[dict[str, float]] = {"threshold_init": 1e-3, "bandwidth": 1e-3}

    def __init__(
        self,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        *,
        sparsity_coef: Tensor | Sequence[float],
        threshold_init: Tensor | Sequence[float] | float = 1e-3,
        bandwidth: Tensor | Sequence[float] | float = 1e-3,
        decoder_bias: bool = False,
        b_dec: Tensor | None = None,
        log_threshold: Tensor | None = None,
    ) -> None:
        E = W_enc.shape[0] if W_enc.dim() == 3 else 1  # SAE.__init__ checks the shapes
        hyper = {
            "sparsity_coef": _per_member(sparsity_coef, E),
            "threshold_init": _per_member(threshold_init, E),
            "bandwidth": _per_member(bandwidth, E),
        }
        super().__init__(W_enc, b_enc, W_dec, decoder_bias=decoder_bias, b_dec=b_dec, **hyper)
        if (self.sparsity_coef < 0).any():
            raise ValueError(f"sparsity_coef must be >= 0, got {self.sparsity_coef.tolist()}")
        for name in ("threshold_init", "bandwidth"):
            if (getattr(self, name) <= 0).any():
                raise ValueError(f"{name} must be > 0, got {getattr(self, name).tolist()}")
        m = self.m
        if log_threshold is None:
            # math.log per member, not torch.log on the [E] buffer: independent of E
            log_threshold = torch.stack(
                [torch.full((m,), math.log(float(v)), dtype=torch.float32) for v in self.threshold_init]
            ).to(W_enc.device)
        if tuple(log_threshold.shape) != (E, m):
            raise ValueError(f"log_threshold must be [{E}, {m}], got {tuple(log_threshold.shape)}")
        self.log_threshold = self._param(log_threshold)

    @classmethod
    def build(cls, weights, hyper, decoder_bias: bool = False) -> JumpReLU:
        """As ``SAE.build``; ``threshold_init`` and ``bandwidth`` default to 1e-3 when absent."""
        return super().build(weights, [{**cls.defaults, **h} for h in hyper], decoder_bias)

    @classmethod
    def from_member_tensors(cls, tensors, hyper) -> JumpReLU:
        return super().from_member_tensors(tensors, [{**cls.defaults, **h} for h in hyper])

    # ------------------------------------------------------------------ model
    def member_threshold(self, e: int) -> Tensor:
        """theta of member e: exp(log_threshold[e]) [m] (differentiable)."""
        return self.log_threshold[e].exp()

    def member_pre(self, x: Tensor, e: int) -> Tensor:
        """x [B, d] -> pre-activations (x - b_dec) @ W_enc + b_enc [B, m]."""
        if self.b_dec is not None:
            x = x - self.b_dec[e]
        return torch.addmm(self.b_enc[e], x, self.W_enc[e])

    def member_encode(self, x: Tensor, e: int) -> Tensor:
        """x [B, d] -> z = pre * H(pre - theta) [B, m]."""
        pre = self.member_pre(x, e)
        return torch.where(pre > self.member_threshold(e), pre, torch.zeros_like(pre))

    def member_losses(self, x: Tensor, e: int, sparsity_scale: float = 1.0) -> dict[str, Tensor]:
        """Scalars ``'loss'`` = mse + sparsity_coef * sparsity_scale * l0, ``'mse'``, ``'l0'``
        (mean_b sum_j H(pre_j - theta_j), unnormalised); see the module docstring."""
        pre = self.member_pre(x, e)
        theta = self.member_threshold(e)
        eps = self.bandwidth[e]
        z = jump_relu(pre, theta, eps)
        err = mse(self.member_decode(z, e), x)
        l0 = step(pre, theta, eps).sum(1).mean()
        return {"loss": err + self.sparsity_coef[e] * sparsity_scale * l0, "mse": err, "l0": l0}

    @torch.no_grad()
    def reset_atoms_(self, e: int, idx: Tensor, directions: Tensor, encoder_norm: float) -> None:
        """As ``SAE.reset_atoms_``, and the reset atoms' thresholds back to ``threshold_init``."""
        super().reset_atoms_(e, idx, directions, encoder_norm)
        self.log_threshold[e, idx] = math.log(float(self.threshold_init[e]))

    # ------------------------------------------------------------------ persistence
    def extra_tensors(self, e: int) -> dict[str, Tensor]:
        """``'threshold'`` [m]: theta = exp(log_threshold[e]), the inference state."""
        return {"threshold": self.member_threshold(e).detach()}

    @torch.no_grad()
    def load_extra_(self, e: int, tensors: dict[str, Tensor]) -> None:
        """log_threshold[e] = log(tensors['threshold']), nudged by one float32 step where that
        makes exp(log_threshold) reproduce the saved threshold exactly (float32 log then exp
        can be an ulp off), so a reloaded member encodes exactly as the saved one."""
        if "threshold" not in tensors:
            raise KeyError("jumprelu member tensors need 'threshold' [m]")
        t = tensors["threshold"].detach().to(torch.float32).reshape(-1)
        if t.shape[0] != self.m or not (torch.isfinite(t).all() and (t > 0).all()):
            raise ValueError(f"'threshold' must be [{self.m}] finite and > 0, got shape {tuple(t.shape)}")
        lt = t.log()
        for direction in (float("-inf"), float("inf")):
            other = torch.nextafter(lt, torch.full_like(lt, direction))
            lt = torch.where((lt.exp() != t) & (other.exp() == t), other, lt)
        self.log_threshold[e] = lt


def _per_member(v: Tensor | Sequence[float] | float, E: int) -> Tensor:
    """A hyperparameter given per member ([E]) or once for all members (a scalar) -> [E]."""
    t = torch.as_tensor(v, dtype=torch.float32).detach().clone().reshape(-1)
    return t.expand(E).clone() if t.numel() == 1 and E > 1 else t

