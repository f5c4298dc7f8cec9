"""BatchTopK sparse autoencoder (Bussmann et al. 2024).

Model (member e, batch x [B, d]; pre, xc, mse and AuxK exactly as in ``sae.topk``):

    pre       = xc @ W_enc[e] + b_enc[e]                          pre [B, m]
    training  : z = pre on the k[e] * B largest entries of the whole batch pre [B, m] that
                are > 0, else 0 (so samples get variable counts, k[e] on average at most)
    inference : z = pre * (pre > threshold[e])                    (JumpReLU, one global theta)
    x_hat     = z @ W_dec[e] (+ b_dec[e]);  loss = mse(x_hat, x) + aux_coef[e] * auxk

The threshold (buffer ``threshold`` [E] float32, saved as the member's tensor ``'threshold'``
[1]) estimates, during training, the smallest activation the batch selection keeps:
per training step (``loss_and_grad_``), with ``v`` = the smallest kept positive
pre-activation of the batch (no update when nothing is kept),

    theta <- v                                   on the member's first update
    theta <- beta * theta + (1 - beta) * v        afterwards

an exponential moving average with ``beta = threshold_decay`` (an option shared by the members,
default 0.99: an average over the last ~100 steps, short enough to follow short toy runs; the
losses of a step are computed before its update). Before any training theta = 0, so inference
is then a plain ReLU. The threshold a saved member is evaluated with is the one in its tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import register
from .topk import DEAD_TOKENS, TopKFamily

__all__ = ["BatchTopK", "THRESHOLD_DECAY"]

THRESHOLD_DECAY = 0.99


@register
class BatchTopK(TopKFamily):
    """BatchTopK SAE: batch-wide top (k B) selection in training, a global JumpReLU threshold
    at inference (see the module docstring).

    ``BatchTopK(W_enc, b_enc, W_dec, *, k, aux_coef, decoder_bias=False, b_dec=None,
    dead_tokens=10_000_000, k_aux=None, threshold_decay=0.99, threshold=None)``
    (``threshold`` [E]: initial values, default 0);
    ``BatchTopK.build(weights, [{"k": .., "aux_coef": ..}, ...], decoder_bias, **options)``.
    Training state (not saved): ``tokens_since_fired`` [E, m], ``threshold_updates`` [E] int64.
    """

    kind = "batchtopk"
    tensor_format = "batchtopk/v1"

    def __init__(
        self,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        *,
        k: Tensor | Sequence[float],
        aux_coef: Tensor | Sequence[float],
        decoder_bias: bool = False,
        b_dec: Tensor | None = None,
        dead_tokens: int = DEAD_TOKENS,
        k_aux: int | None = None,
        threshold_decay: float = THRESHOLD_DECAY,
        threshold: Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__(
            W_enc, b_enc, W_dec, k=k, aux_coef=aux_coef, decoder_bias=decoder_bias, b_dec=b_dec,
            dead_tokens=dead_tokens, k_aux=k_aux,
        )
        if not 0.0 <= float(threshold_decay) < 1.0:
            raise ValueError(f"threshold_decay must be in [0, 1), got {threshold_decay!r}")
        self.threshold_decay = float(threshold_decay)
        E, dev = self.n_members, self.W_enc.device
        if threshold is None:
            theta = torch.zeros(E, dtype=torch.float32, device=dev)
        else:
            theta = torch.as_tensor(threshold, dtype=torch.float32).detach().clone().reshape(-1).to(dev)
            if theta.shape[0] != E or not bool(torch.isfinite(theta).all()):
                raise ValueError(f"threshold must be {E} finite values, got {theta.tolist()}")
        self.register_buffer("threshold", theta)
        self.register_buffer("threshold_updates", torch.zeros(E, dtype=torch.int64, device=dev), persistent=False)

    def _select(self, pre: Tensor, e: int) -> Tensor:
        B, m = pre.shape
        idx = pre.reshape(-1).topk(int(self.k[e]) * B, sorted=False).indices
        return torch.zeros(B * m, dtype=torch.bool, device=pre.device).index_fill_(0, idx, True).view(B, m)

    def member_encode(self, x: Tensor, e: int) -> Tensor:
        """Inference codes: x [B, d] -> pre * (pre > threshold[e]) [B, m]."""
        pre, _ = self.member_pre(x, e)
        return torch.where(pre > self.threshold[e], pre, 0.0)

    @torch.no_grad()
    def _update_state_(self, e: int, pre: Tensor, kept: Tensor) -> None:
        super()._update_state_(e, pre, kept)
        kept_values = pre[kept]
        if kept_values.numel() == 0:
            return
        v = kept_values.min()
        if int(self.threshold_updates[e]) == 0:
            self.threshold[e] = v
        else:
            beta = self.threshold_decay
            self.threshold[e] = self.threshold[e] * beta + v * (1.0 - beta)
        self.threshold_updates[e] += 1

    # ------------------------------------------------------------------ persistence
    def extra_tensors(self, e: int) -> dict[str, Tensor]:
        """``'threshold'`` [1] float32: the global inference threshold of member e."""
        return {"threshold": self.threshold[e : e + 1]}

    def load_extra_(self, e: int, tensors: dict[str, Tensor]) -> None:
        """Set member e's threshold from ``tensors['threshold']`` [1]; continued training
        then averages from it (it counts as one update)."""
        theta = tensors["threshold"].reshape(-1)
        if theta.numel() != 1 or not bool(torch.isfinite(theta).all()):
            raise ValueError(f"'threshold' must hold one finite value, got shape {tuple(tensors['threshold'].shape)}")
        with torch.no_grad():
            self.threshold[e] = theta[0].to(self.threshold)
            self.threshold_updates[e] = 1

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, threshold_decay={self.threshold_decay}, threshold={self.threshold.tolist()}"
