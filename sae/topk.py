"""TopK sparse autoencoder (Gao et al. 2024), and what its BatchTopK relatives share.

Model (member e, batch x [B, d]; ``xc = x - b_dec[e]`` with a decoder bias, else ``x``):

    pre   = xc @ W_enc[e] + b_enc[e]                         pre   [B, m]
    z     = pre where kept, else 0                           z     [B, m]
            kept = the k[e] largest entries of each row of pre, and pre > 0
            (so z keeps the k largest entries of relu(pre))
    x_hat = z @ W_dec[e]  (+ b_dec[e])                       x_hat [B, d]
    loss  = mse(x_hat, x) + aux_coef[e] * auxk

``mse`` is the mean over batch and dims of (x - x_hat)^2, as for ``relu_l1``.

AuxK (Gao et al. 2024, appendix A.2), which gives dead latents a gradient:

- A latent is *dead* when it has not been kept (with a positive value) in the training codes
  of the last ``dead_tokens`` training samples. Each member counts, per latent, the samples
  seen since it last fired (``tokens_since_fired`` [E, m], int64): +B per training step,
  0 when it fires. At a constant batch size B a latent is dead after ceil(dead_tokens / B)
  steps without firing. Default 10M tokens (the paper's); toy runs pass a smaller value.
- The residual ``res = x - x_hat`` (detached: AuxK does not move the main reconstruction)
  is reconstructed from the top ``min(k_aux, n_dead)`` positive pre-activations of each row
  among the dead latents only, through their decoder rows and without ``b_dec``:
  ``res_hat = z_aux @ W_dec[e][dead]``.
- ``auxk = mse(res_hat, res)`` (mean over batch and dims). The paper divides by the
  squared norm of the residual (a normalised MSE); this plain form is kept for simplicity,
  so ``aux_coef`` is relative to the same per-dim scale as ``mse``. Zero when no latent is dead.

The counters are training state: they are updated by ``loss_and_grad_`` (one call = one
training step, after the losses of that step are computed with the counters as they were),
never by ``losses``/``member_losses`` (pure, so evaluation does not change training), and are
not saved (``persistent=False``). ``reset_atoms_`` zeroes the counters of the reset atoms.

``loss_and_grad_`` is a closed form (no autograd graph) equal to the gradient of
``losses(x)['loss'].sum()`` up to rounding; every op that mixes one member's elements runs on
that member's own 2-D slice in a loop over members (as ``relu_l1``'s unbatched path), so a
member's trajectory is bit-identical alone and inside an ensemble.

The machinery is written for *nested prefixes* of the dictionary (Matryoshka SAEs): the loss
sums the mse of reconstructing x from the first ``s`` atoms only, over the prefix sizes ``s``;
TopK and BatchTopK have the single prefix ``(m,)``, i.e. the plain mse.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import SAE, mse, register
from .init import init_weights

__all__ = ["DEAD_TOKENS", "TopK", "TopKFamily"]

DEAD_TOKENS = 10_000_000  # Gao et al. 2024: dead after 10M tokens without firing


def top_mask(pre: Tensor, k: int) -> Tensor:
    """pre [B, n] -> bool [B, n]: the k largest entries of each row that are also > 0."""
    idx = pre.topk(k, dim=1, sorted=False).indices
    return torch.zeros_like(pre, dtype=torch.bool).scatter_(1, idx, True) & (pre > 0)


class TopKFamily(SAE):
    """Shared base of ``topk``, ``batchtopk`` and ``matryoshka_batchtopk`` (not a kind itself).

    Parameters: W_enc [E, d, m], b_enc [E, m], W_dec [E, m, d] (rows = atoms, unit norm),
    b_dec [E, d] with ``decoder_bias``.
    Hyperparameters (buffers [E] float32): ``k`` (an integer 1..m, stored as a float) and
    ``aux_coef`` (>= 0, the weight of AuxK; Gao et al. use 1/32).
    Options (shared by the members, not swept): ``dead_tokens`` (int > 0, default 10M) and
    ``k_aux`` (int > 0, default ``max(1, d // 2)``).
    Training state (not saved): ``tokens_since_fired`` [E, m] int64.

    Subclasses define the training selection ``_select`` and the inference ``member_encode``,
    and may override ``prefix_sizes`` and ``_update_state_``.
    """

    params = ("k", "aux_coef")
    loss_terms = ("loss", "mse", "auxk")
    sparsity = "k"

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
    ) -> None:
        super().__init__(W_enc, b_enc, W_dec, decoder_bias=decoder_bias, b_dec=b_dec, k=k, aux_coef=aux_coef)
        if not bool(((self.k == self.k.round()) & (self.k >= 1) & (self.k <= self.m)).all()):
            raise ValueError(f"k must be integers in 1..m={self.m}, got {self.k.tolist()}")
        if bool((self.aux_coef < 0).any()):
            raise ValueError(f"aux_coef must be >= 0, got {self.aux_coef.tolist()}")
        if isinstance(dead_tokens, bool) or int(dead_tokens) != dead_tokens or dead_tokens <= 0:
            raise ValueError(f"dead_tokens must be a positive integer, got {dead_tokens!r}")
        if k_aux is None:
            k_aux = max(1, self.d // 2)
        if isinstance(k_aux, bool) or int(k_aux) != k_aux or k_aux <= 0:
            raise ValueError(f"k_aux must be a positive integer, got {k_aux!r}")
        self.dead_tokens = int(dead_tokens)
        self.k_aux = int(k_aux)
        E, m = self.n_members, self.m
        counters = torch.zeros(E, m, dtype=torch.int64, device=self.W_enc.device)
        self.register_buffer("tokens_since_fired", counters, persistent=False)

    @classmethod
    def from_init(
        cls,
        init: str,
        d: int,
        m: int,
        hyper: Sequence[dict[str, float]],
        generators: Sequence[torch.Generator],
        samples: Tensor | None = None,
        decoder_bias: bool = False,
        **options,
    ) -> TopKFamily:
        """E = len(generators) members, member e from ``init_weights(init, d, m, generators[e],
        samples)`` and ``hyper[e]`` ({"k": .., "aux_coef": ..}); ``options`` as the constructor's."""
        if len(hyper) != len(generators):
            raise ValueError(f"from_init: {len(hyper)} hyperparameter sets but {len(generators)} generators")
        parts = [init_weights(init, d, m, g, samples) for g in generators]
        return cls.build(parts, hyper, decoder_bias, **options)

    # ------------------------------------------------------------------ pieces
    @property
    def prefix_sizes(self) -> tuple[int, ...]:
        """Increasing prefix sizes whose mse the loss sums, the last one m: here ``(m,)``."""
        return (self.m,)

    def member_pre(self, x: Tensor, e: int) -> tuple[Tensor, Tensor]:
        """x [B, d] -> (pre [B, m], xc [B, d]) with xc = x - b_dec (decoder bias) or x."""
        xc = x - self.b_dec[e] if self.b_dec is not None else x
        return torch.addmm(self.b_enc[e], xc, self.W_enc[e]), xc

    def _select(self, pre: Tensor, e: int) -> Tensor:
        """Training selection of member e: pre [B, m] -> bool [B, m] (positivity added later)."""
        raise NotImplementedError

    def train_mask(self, pre: Tensor, e: int) -> Tensor:
        """The latents kept in member e's training codes: pre [B, m] -> bool [B, m]."""
        pre = pre.detach()
        return self._select(pre, e) & (pre > 0)

    def dead_latents(self, e: int) -> Tensor:
        """Indices [n_dead] (int64, increasing) of member e's latents that count as dead now."""
        return (self.tokens_since_fired[e] >= self.dead_tokens).nonzero().flatten()

    def aux_mask(self, pre_dead: Tensor) -> Tensor:
        """pre_dead [B, n_dead] -> bool [B, n_dead]: each row's top min(k_aux, n_dead) positive entries."""
        return top_mask(pre_dead.detach(), min(self.k_aux, pre_dead.shape[1]))

    def _terms(self, mses: list[Tensor], auxk: Tensor, e: int) -> dict[str, Tensor]:
        """The reported terms from the prefix mses (last = full dictionary) and AuxK."""
        return {"loss": sum(mses[1:], mses[0]) + self.aux_coef[e] * auxk, "mse": mses[-1], "auxk": auxk}

    # ------------------------------------------------------------------ inference
    def member_encode(self, x: Tensor, e: int) -> Tensor:
        pre, _ = self.member_pre(x, e)
        return torch.where(self.train_mask(pre, e), pre, 0.0)

    # ------------------------------------------------------------------ training
    def member_losses(self, x: Tensor, e: int, sparsity_scale: float = 1.0) -> dict[str, Tensor]:
        """Member e's training terms on x [B, d] (differentiable; reads, never updates, the
        dead-latent counters): ``'loss'`` = sum of the prefix mses + aux_coef * auxk,
        ``'mse'`` (full dictionary), ``'auxk'``. No sparsity penalty: ``sparsity_scale`` is unused."""
        pre, _ = self.member_pre(x, e)
        z = torch.where(self.train_mask(pre, e), pre, 0.0)
        W = self.W_dec[e]
        bounds = (0, *self.prefix_sizes)
        x_hat = self.b_dec[e] if self.b_dec is not None else None
        mses = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            part = z[:, a:b] @ W[a:b]
            x_hat = part if x_hat is None else x_hat + part
            mses.append(mse(x_hat, x))
        dead = self.dead_latents(e)
        if dead.numel() == 0:
            auxk = pre.new_zeros(())
        else:
            pre_d = pre[:, dead]
            z_aux = torch.where(self.aux_mask(pre_d), pre_d, 0.0)
            auxk = mse(z_aux @ W[dead], (x - x_hat).detach())
        return self._terms(mses, auxk, e)

    @torch.no_grad()
    def loss_and_grad_(self, x: Tensor, sparsity_scale: float = 1.0) -> dict[str, Tensor]:
        """One training step's terms ([E] each) and every parameter's ``.grad``, in closed form;
        then the training state is updated (dead counters; BatchTopK: the threshold).

        Member e, prefixes s_1 < .. < s_P = m splitting the atoms into groups
        G_i = [s_{i-1}, s_i) (s_0 = 0), residuals r_p = x_hat_p - x and g_p = 2 r_p / (B d):

            S_i      = sum_{p >= i} g_p             (group i's atoms appear in prefixes i..P)
            dW_dec   = z[:, G_i]^T S_i  on rows G_i,   dz[:, G_i] = S_i W_dec[G_i]^T
            dpre     = dz * kept  (+ the AuxK term on the dead columns)
            dW_enc   = xc^T dpre,  db_enc = 1^T dpre,  db_dec = 1^T S_1 - (1^T dpre) W_enc^T

        AuxK: r_a = z_aux W_dec[dead] - res, g_a = aux_coef 2 r_a / (B d),
        dW_dec[dead] += z_aux^T g_a, dpre[:, dead] += (g_a W_dec[dead]^T) * aux_kept."""
        self._check_input(x)
        grads: dict[str, list[Tensor]] = {"W_enc": [], "b_enc": [], "W_dec": [], "b_dec": []}
        terms = []
        for e in range(self.n_members):
            t, g = self._member_step(self.member_input(x, e), e)
            terms.append(t)
            for name, v in g.items():
                grads[name].append(v)
        self.W_enc.grad = torch.stack(grads["W_enc"])
        self.b_enc.grad = torch.stack(grads["b_enc"])
        self.W_dec.grad = torch.stack(grads["W_dec"])
        if self.b_dec is not None:
            self.b_dec.grad = torch.stack(grads["b_dec"])
        return {k: torch.stack([t[k] for t in terms]) for k in terms[0]}

    def _member_step(self, x: Tensor, e: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        B, d = x.shape
        pre, xc = self.member_pre(x, e)
        kept = self.train_mask(pre, e)
        z = torch.where(kept, pre, 0.0)
        W = self.W_dec[e]
        bounds = (0, *self.prefix_sizes)
        groups = list(zip(bounds[:-1], bounds[1:]))
        residuals = []
        x_hat = self.b_dec[e] if self.b_dec is not None else None
        for a, b in groups:
            part = z[:, a:b] @ W[a:b]
            x_hat = part if x_hat is None else x_hat + part
            residuals.append(x_hat - x)
        mses = [r.pow(2).mean() for r in residuals]
        scale = 2.0 / (B * d)
        dW_dec = torch.empty_like(W)
        dz = torch.empty_like(z)
        S = None
        for i in reversed(range(len(groups))):
            g = residuals[i] * scale
            S = g if S is None else S + g
            a, b = groups[i]
            dW_dec[a:b] = z[:, a:b].T @ S
            dz[:, a:b] = S @ W[a:b].T
        dpre = dz.mul_(kept)
        dead = self.dead_latents(e)
        if dead.numel() == 0:
            auxk = pre.new_zeros(())
        else:
            pre_d = pre[:, dead]
            aux_kept = self.aux_mask(pre_d)
            z_aux = torch.where(aux_kept, pre_d, 0.0)
            W_d = W[dead]
            r_a = (z_aux @ W_d).add_(residuals[-1])  # res_hat - res, with res = -r_P
            auxk = r_a.pow(2).mean()
            g_a = r_a.mul_(self.aux_coef[e] * scale)
            dW_dec.index_add_(0, dead, z_aux.T @ g_a)
            dpre.index_add_(1, dead, (g_a @ W_d.T).mul_(aux_kept))
        grads = {"W_enc": xc.T @ dpre, "b_enc": dpre.sum(dim=0), "W_dec": dW_dec}
        if self.b_dec is not None:
            grads["b_dec"] = S.sum(dim=0) - dpre.sum(dim=0) @ self.W_enc[e].T
        self._update_state_(e, pre, kept)
        return self._terms(mses, auxk, e), grads

    @torch.no_grad()
    def _update_state_(self, e: int, pre: Tensor, kept: Tensor) -> None:
        """After member e's training step on a batch with pre [B, m] and kept [B, m]: count the
        batch's samples for every latent, restart the count of those that fired."""
        self.tokens_since_fired[e].add_(pre.shape[0]).masked_fill_(kept.any(dim=0), 0)

    @torch.no_grad()
    def reset_atoms_(self, e: int, idx: Tensor, directions: Tensor, encoder_norm: float) -> None:
        """As ``SAE.reset_atoms_``; a reset atom also starts a fresh dead-latent count."""
        super().reset_atoms_(e, idx, directions, encoder_norm)
        self.tokens_since_fired[e, idx] = 0

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dead_tokens={self.dead_tokens}, k_aux={self.k_aux}"


@register
class TopK(TopKFamily):
    """TopK SAE: each sample keeps its k largest positive pre-activations, in training and at
    inference alike (see the module docstring for the model, AuxK and the options).

    ``TopK(W_enc, b_enc, W_dec, *, k, aux_coef, decoder_bias=False, b_dec=None,
    dead_tokens=10_000_000, k_aux=None)``;
    ``TopK.build(weights, [{"k": .., "aux_coef": ..}, ...], decoder_bias, dead_tokens=.., k_aux=..)``.
    """

    kind = "topk"
    tensor_format = "topk/v1"

    def _select(self, pre: Tensor, e: int) -> Tensor:
        idx = pre.topk(int(self.k[e]), dim=1, sorted=False).indices
        return torch.zeros_like(pre, dtype=torch.bool).scatter_(1, idx, True)
