"""ReLU + L1 sparse autoencoder of the interim report, as an ensemble of E independent members.

Model (member e, batch x [B, d]):

    c     = relu(x @ W_enc[e] + b_enc[e])          c     [B, m]
    x_hat = c @ W_dec[e]  (+ b_dec[e])             x_hat [B, d]
    loss  = mean_{b,i} (x - x_hat)^2  +  l1[e] * mean_b(sum_j |c_j|) / m

The rows of ``W_dec[e]`` are the dictionary atoms; they are kept at unit L2 norm by
``renormalise_decoder_`` after every optimiser step (a projection, no gradient through it),
unless the ensemble is built with ``decoder_norm="free"`` (see ``ReluL1``'s options).

Ensemble layout: all weights carry a leading member dimension E and every member has the
same shapes. Members may differ in their initial weights and their ``l1`` coefficient.

Bit-identity: a member's trajectory does not depend on which other members share the
ensemble. This is by construction: every op that mixes elements of one member (matrix
products, reductions, the renormalisation) runs in a Python loop over members on that member's
own 2-D slice, so member e executes exactly the ops, shapes and kernels that an E=1 model
executes. Only element-wise ops (Adam's update, the ``l1 * term`` product) touch the stacked
tensors, and those give the same value per element whatever the tensor size or chunking.
A flattened ``[B, d] @ [d, E*m]`` encoder and a ``bmm`` weight gradient were measured to
change low-order bits for some (small, odd) shapes, because the BLAS picks kernels and
blockings by shape, so neither is used; see
``tests/test_sae.py::test_ensemble_bit_identical``.
"""


from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SAE, register
from .init import init_weights

__all__ = ["ReluL1"]

_ALIGN = 16  # floats; see ReluL1.batched
_BATCHED_MAX = 32768  # d * m; see ReluL1.batched
DECODER_NORMS = ("unit", "free")
L1_WEIGHTINGS = ("plain", "decoder_norm")


@register
class ReluL1(SAE):
    """E stacked untied SAEs: c = relu(x @ W_enc + b_enc), x_hat = c @ W_dec (+ b_dec).

    Parameters (all float32):
        W_enc [E, d, m], b_enc [E, m], W_dec [E, m, d] (rows = dictionary atoms, unit norm),
        b_dec [E, d] when ``decoder_bias`` else ``None``.
    Buffer:
        l1 [E] float32: the L1 coefficient of each member.

    loss per member = mean_{batch,dims}((x - x_hat)^2) + l1 * mean_batch(sum_j |c_j|) / m.

    Options (constructor keywords; the defaults are the interim report's 2022 recipe and
    train byte-identical dictionaries):

    - ``decoder_norm``: ``"unit"`` (default) renormalises every atom to unit L2 norm after each
      optimiser step (``after_step_``; ``unit_decoder = True``). ``"free"`` leaves the atom
      norms to the optimiser (``unit_decoder = False``, nothing runs after a step): the
      recipe of Anthropic's April 2024 update, used with ``l1_weighting="decoder_norm"`` so
      the L1 penalty cannot be dodged by shrinking codes and growing atoms.
    - ``l1_weighting``: ``"plain"`` (default): the sparsity term is
      mean_batch(sum_j |c_j|) / m. ``"decoder_norm"`` (Anthropic, April 2024): each code is
      weighted by its atom's norm, mean_batch(sum_j |c_j| * ||W_dec_j||) / m, and the
      gradient flows into the atom norms too (see ``loss_and_grad_``). With unit atoms the
      two agree up to rounding.
    - ``report_firing`` (attribute, default False): when set (the trainer sets it for dead-atom
      resampling), ``loss_and_grad_`` also returns ``'fired'`` [E, m] bool, whether each
      atom had a positive code on any sample of the batch.
    """

    kind = "relu_l1"
    params = ("l1",)
    loss_terms = ("loss", "mse", "l1")
    sparsity = "l1"
    tensor_format = "relu_l1/v1"

    def __init__(
        self,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        l1: Tensor | Sequence[float],
        decoder_bias: bool = False,
        b_dec: Tensor | None = None,
        *,
        decoder_norm: str = "unit",
        l1_weighting: str = "plain",
    ) -> None:
        if decoder_norm not in DECODER_NORMS:
            raise ValueError(f"decoder_norm must be one of {DECODER_NORMS}, got {decoder_norm!r}")
        if l1_weighting not in L1_WEIGHTINGS:
            raise ValueError(f"l1_weighting must be one of {L1_WEIGHTINGS}, got {l1_weighting!r}")
        l1 = torch.as_tensor(l1, dtype=torch.float32).detach().clone().reshape(-1)
        if W_enc.dim() == 3 and l1.shape[0] != W_enc.shape[0]:
            raise ValueError(f"l1 must have one value per member ({W_enc.shape[0]}), got {l1.shape[0]}")
        if not torch.isfinite(l1).all() or (l1 < 0).any():
            raise ValueError(f"l1 coefficients must be finite and >= 0, got {l1.tolist()}")
        super().__init__(W_enc, b_enc, W_dec, decoder_bias=decoder_bias, b_dec=b_dec, l1=l1)
        self.decoder_norm = decoder_norm
        self.l1_weighting = l1_weighting
        self.unit_decoder = decoder_norm == "unit"
        self.report_firing = False

    def _member_atom_norms(self, e: int) -> Tensor:
        """Member e's atom norms [m] (differentiable; used by ``member_losses``)."""
        return torch.linalg.vector_norm(self.W_dec[e], dim=1).clamp_min(1e-12)

    def options(self) -> dict[str, str]:
        """The constructor options (``decoder_norm``, ``l1_weighting``) of this ensemble."""
        return {"decoder_norm": self.decoder_norm, "l1_weighting": self.l1_weighting}

    def _atom_norms(self) -> Tensor:
        """||W_dec[e]_j|| for every member and atom, [E, m], each member on its own slice
        (clamped away from 0, so the gradient's W_dec_j / ||W_dec_j|| stays finite)."""
        return torch.stack([torch.linalg.vector_norm(w, dim=1) for w in self.W_dec.unbind(0)]).clamp_min(1e-12)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_init(
        cls,
        kind: str,
        d: int,
        m: int,
        l1: Sequence[float],
        generators: Sequence[torch.Generator],
        samples: Tensor | None = None,
        decoder_bias: bool = False,
        *,
        decoder_init_norm: float | None = None,
        **options: str,
    ) -> ReluL1:
        """Build E = len(generators) members with ``sae.init.init_weights(kind, d, m, g, samples)``.

        Member e's weights depend only on ``generators[e]`` (and ``samples``), so adding or
        removing members does not change any other member. ``b_dec`` (if any) starts at 0.
        ``decoder_init_norm`` is passed to ``init_weights`` (kind ``'tied_small'``);
        ``options`` are the constructor options (``decoder_norm``, ``l1_weighting``).
        """
        l1 = list(l1)
        generators = list(generators)
        if len(l1) != len(generators):
            raise ValueError(f"from_init: {len(l1)} l1 values but {len(generators)} generators; need one each")
        if not generators:
            raise ValueError("from_init: need at least one member")
        extra = {} if decoder_init_norm is None else {"decoder_init_norm": decoder_init_norm}
        parts = [init_weights(kind, d, m, g, samples, **extra) for g in generators]
        return cls.build(parts, [{"l1": v} for v in l1], decoder_bias, **options)

    @classmethod
    def from_member_tensors(cls, tensors: list[dict[str, Tensor]], hyper) -> ReluL1:
        """Inverse of ``member_tensors``; ``hyper``: one ``{"l1": v}`` per member, or the l1 values."""
        if not isinstance(hyper, (list, tuple)) or not all(isinstance(h, dict) for h in hyper):
            hyper = [{"l1": float(v)} for v in torch.as_tensor(hyper, dtype=torch.float32).reshape(-1)]
        return super().from_member_tensors(tensors, hyper)

    # ------------------------------------------------------------------ inference and loss
    def member_encode(self, x: Tensor, e: int) -> Tensor:
        return torch.relu(torch.addmm(self.b_enc[e], x, self.W_enc[e]))

    def member_losses(self, x: Tensor, e: int, sparsity_scale: float = 1.0) -> dict[str, Tensor]:
        """mse + l1 * mean_batch(sum_j |c_j|) / m; ``'l1'`` is the unweighted term (c >= 0
        after the ReLU, so it is ``c.mean()``)."""
        x_hat, c = self.member_forward(x, e)
        mse = F.mse_loss(x_hat, x)
        l1 = c.mean() if self.l1_weighting == "plain" else (c * self._member_atom_norms(e)).mean()
        return {"loss": mse + self.l1[e] * sparsity_scale * l1, "mse": mse, "l1": l1}

    def losses(self, x: Tensor, sparsity_scale: float = 1.0) -> dict[str, Tensor]:
        """Per-member loss terms on x [B, d] (or [E, B, d]); each value is [E].

        - ``'mse'``:  mean over batch and dims of (x - x_hat)^2.
        - ``'l1'``:   the sparsity term mean_batch(sum_j |c_j|) / m, without the coefficient
          (with ``l1_weighting="decoder_norm"``: mean_batch(sum_j |c_j| ||W_dec_j||) / m).
        - ``'loss'``: mse + l1_coefficient * l1.

        The training objective is ``losses['loss'].sum()``: members share no parameters, so
        each member receives exactly the gradient of its own loss.
        """
        self._check_input(x)
        mse, l1 = [], []
        for e in range(self.n_members):
            x_e = self.member_input(x, e)
            x_hat, c = self.member_forward(x_e, e)
            mse.append(F.mse_loss(x_hat, x_e))
            l1.append(c.mean() if self.l1_weighting == "plain" else (c * self._member_atom_norms(e)).mean())
        mse_t, l1_t = torch.stack(mse), torch.stack(l1)
        coef = self.l1 if sparsity_scale == 1.0 else self.l1 * sparsity_scale
        return {"loss": mse_t + coef * l1_t, "mse": mse_t, "l1": l1_t}

    # ------------------------------------------------------------------ training step
    @property
    def batched(self) -> bool:
        """Whether ``loss_and_grad_`` runs all members as one batched product (``bmm``).

        Only for shapes whose every per-member block is a multiple of 16 floats: there a
        member's slice of a ``bmm`` was measured bit-identical to the same product for E = 1,
        whatever E (tests/test_sae.py); for odd shapes the BLAS picks other kernels by
        offset. And only for small members (d * m <= 32768, e.g. 64 x 512): there one batched
        product beats a loop of small ones, while for larger members the CPU ``bmm`` was
        measured slower than the loop (it splits work over the batch, not within a product).
        The choice depends on the member's own shape only, never on its batch-mates."""
        return self.d % _ALIGN == 0 and self.m % _ALIGN == 0 and self.d * self.m <= _BATCHED_MAX

    @torch.no_grad()
    def loss_and_grad_(self, x: Tensor, sparsity_scale: float = 1.0) -> dict[str, Tensor]:
        """One step's losses (as ``losses``) and every parameter's ``.grad``, in closed form.

        For x [B, d] (shared) and member e, with r = x_hat - x and g = 2 r / (B d):

            dW_dec = c^T g                              [m, d]
            dc     = (g W_dec^T + l1 / (B m)) * [pre > 0]   [B, m]
            dW_enc = x^T dc,  db_enc = 1^T dc,  db_dec = 1^T g

        These are the five matrix products of a step (two forward, three backward) and no
        autograd graph: the same gradients as ``losses(x)['loss'].sum().backward()`` up to
        rounding, at less time and memory. ``B`` must be a multiple of 16 for the batched
        path (else the loop is used).

        With ``l1_weighting="decoder_norm"`` (n_j = ||W_dec_j||, the sparsity term
        l1 / (B m) * sum_{b,j} c_bj n_j) two terms change:

            dc_bj     = ((g W_dec^T)_bj + l1 n_j / (B m)) * [pre_bj > 0]
            dW_dec_j += l1 / (B m) * (sum_b c_bj) * W_dec_j / n_j

        ``sparsity_scale`` multiplies l1 (the trainer's L1 warm-up); at exactly 1.0 the
        coefficient is used as it is. With ``report_firing`` the result also holds
        ``'fired'`` [E, m] bool: (c > 0).any over the batch."""
        self._check_input(x)
        E, d, m = self.n_members, self.d, self.m
        B = x.shape[-2]
        l1_coef = self.l1 if sparsity_scale == 1.0 else self.l1 * sparsity_scale
        coef = (l1_coef / (B * m)).view(E, 1, 1)
        weighted = self.l1_weighting == "decoder_norm"
        norms = self._atom_norms() if weighted else None  # [E, m]
        fired = None
        if self.batched and B % _ALIGN == 0:
            xs = x.unsqueeze(0) if x.dim() == 2 else x
            if xs.shape[0] != E:
                xs = xs.expand(E, B, d).contiguous()
            pre = torch.baddbmm(self.b_enc.unsqueeze(1), xs, self.W_enc)  # [E,B,m]
            c = torch.relu(pre)
            x_hat = torch.bmm(c, self.W_dec)  # [E,B,d]
            if self.b_dec is not None:
                x_hat += self.b_dec.unsqueeze(1)
            r = x_hat.sub_(xs)
            mse = torch.stack([r[e].pow(2).mean() for e in range(E)])
            if weighted:
                l1 = torch.stack([(c[e] * norms[e]).mean() for e in range(E)])
            else:
                l1 = torch.stack([c[e].mean() for e in range(E)])
            if self.report_firing:
                fired = (c > 0).any(dim=1)
            g = r.mul_(2.0 / (B * d))
            ones = torch.ones(E, 1, B, dtype=x.dtype, device=x.device)
            self.W_dec.grad = torch.bmm(c.transpose(1, 2), g)
            if weighted:  # + l1/(B m) * (1^T c)_j * W_dec_j / n_j
                col = torch.bmm(ones, c).squeeze(1).mul_(coef.view(E, 1)).div_(norms)  # [E, m]
                self.W_dec.grad.addcmul_(col.unsqueeze(2), self.W_dec)
                const = (coef * norms.unsqueeze(1)).expand(E, B, m)
            else:
                const = coef.expand(E, B, m)
            # (g W_dec^T + l1/(B m)) on the active codes; the constant rides in the product
            dc = torch.baddbmm(const, g, self.W_dec.transpose(1, 2))
            dc = torch.ops.aten.threshold_backward(dc, c, 0)
            self.W_enc.grad = torch.bmm(xs.transpose(1, 2), dc)
            self.b_enc.grad = torch.bmm(ones, dc).squeeze(1)
            if self.b_dec is not None:
                self.b_dec.grad = torch.bmm(ones, g).squeeze(1)
        else:
            # each member's gradients are written straight into its slice of the [E, ...]
            # gradient (the same products as into a fresh tensor: no stacking copy)
            gW_enc, gb_enc, gW_dec = (torch.empty_like(p) for p in (self.W_enc, self.b_enc, self.W_dec))
            gb_dec = torch.empty_like(self.b_dec) if self.b_dec is not None else None
            mse_l, l1_l, fired_l = [], [], []
            for e in range(E):
                x_e = self.member_input(x, e)
                pre = torch.addmm(self.b_enc[e], x_e, self.W_enc[e])
                c = torch.relu(pre)
                x_hat = torch.addmm(self.b_dec[e], c, self.W_dec[e]) if self.b_dec is not None else c @ self.W_dec[e]
                r = x_hat.sub_(x_e)
                mse_l.append(r.pow(2).mean())
                l1_l.append((c * norms[e]).mean() if weighted else c.mean())
                if self.report_firing:
                    fired_l.append((c > 0).any(dim=0))
                g = r.mul_(2.0 / (B * d))
                dW_dec = torch.mm(c.T, g, out=gW_dec[e])
                if weighted:
                    col = c.sum(dim=0).mul_(coef[e, 0]).div_(norms[e])
                    dW_dec.addcmul_(col.unsqueeze(1), self.W_dec[e])
                const = coef[e, 0] * norms[e] if weighted else coef[e, 0]
                # the mask [pre > 0] in one pass (c > 0 exactly where pre > 0)
                dc = torch.ops.aten.threshold_backward((g @ self.W_dec[e].T).add_(const), c, 0)
                torch.mm(x_e.T, dc, out=gW_enc[e])
                torch.sum(dc, dim=0, out=gb_enc[e])
                if gb_dec is not None:
                    torch.sum(g, dim=0, out=gb_dec[e])
            self.W_enc.grad, self.b_enc.grad, self.W_dec.grad = gW_enc, gb_enc, gW_dec
            if gb_dec is not None:
                self.b_dec.grad = gb_dec
            mse, l1 = torch.stack(mse_l), torch.stack(l1_l)
            if self.report_firing:
                fired = torch.stack(fired_l)
        out = {"loss": mse + l1_coef * l1, "mse": mse, "l1": l1}
        if fired is not None:
            out["fired"] = fired
        return out

