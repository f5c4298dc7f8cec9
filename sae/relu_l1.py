"""ReLU + L1 sparse autoencoder of the interim report, as an ensemble of E independent members.

Model (member e, batch x [B, d]):

    c     = relu(x @ W_enc[e] + b_enc[e])          c     [B, m]
    x_hat = c @ W_dec[e]  (+ b_dec[e])             x_hat [B, d]
    loss  = mean_{b,i} (x - x_hat)^2  +  l1[e] * mean_b(sum_j |c_j|) / m

The rows of ``W_dec[e]`` are the dictionary atoms; they are kept at unit L2 norm by
``renormalise_decoder_`` after every optimiser step (a projection, no gradient through it).

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

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .init import init_weights

__all__ = ["ReluL1"]

_NORM_EPS = 1e-12
_ALIGN = 16  # floats; see ReluL1.batched
_BATCHED_MAX = 32768  # d * m; see ReluL1.batched


def _split(t: Tensor) -> tuple[Tensor, ...]:
    """Member slices of a stacked tensor. ``unbind`` (backward: one ``stack``), except for
    E = 1 where a ``squeeze`` view avoids copying the gradient; the values are the same."""
    return (t.squeeze(0),) if t.shape[0] == 1 else t.unbind(0)


class ReluL1(nn.Module):
    """E stacked untied SAEs: c = relu(x @ W_enc + b_enc), x_hat = c @ W_dec (+ b_dec).

    Parameters (all float32):
        W_enc [E, d, m], b_enc [E, m], W_dec [E, m, d] (rows = dictionary atoms, unit norm),
        b_dec [E, d] when ``decoder_bias`` else ``None``.
    Buffer:
        l1 [E] float32: the L1 coefficient of each member.

    loss per member = mean_{batch,dims}((x - x_hat)^2) + l1 * mean_batch(sum_j |c_j|) / m.
    """

    def __init__(
        self,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        l1: Tensor | Sequence[float],
        decoder_bias: bool = False,
        b_dec: Tensor | None = None,
    ) -> None:
        super().__init__()
        if W_enc.dim() != 3:
            raise ValueError(f"W_enc must be [E, d, m], got shape {tuple(W_enc.shape)}")
        E, d, m = W_enc.shape
        if tuple(b_enc.shape) != (E, m):
            raise ValueError(f"b_enc must be [{E}, {m}], got {tuple(b_enc.shape)}")
        if tuple(W_dec.shape) != (E, m, d):
            raise ValueError(f"W_dec must be [{E}, {m}, {d}], got {tuple(W_dec.shape)}")
        l1 = torch.as_tensor(l1, dtype=torch.float32).detach().clone().reshape(-1)
        if l1.shape[0] != E:
            raise ValueError(f"l1 must have one value per member ({E}), got {l1.shape[0]}")
        if not torch.isfinite(l1).all() or (l1 < 0).any():
            raise ValueError(f"l1 coefficients must be finite and >= 0, got {l1.tolist()}")

        def param(t: Tensor) -> nn.Parameter:
            return nn.Parameter(t.detach().to(torch.float32).clone().contiguous())

        self.W_enc = param(W_enc)
        self.b_enc = param(b_enc)
        self.W_dec = param(W_dec)
        self.decoder_bias = bool(decoder_bias)
        if self.decoder_bias:
            if b_dec is None:
                b_dec = torch.zeros(E, d, dtype=torch.float32, device=W_enc.device)
            if tuple(b_dec.shape) != (E, d):
                raise ValueError(f"b_dec must be [{E}, {d}], got {tuple(b_dec.shape)}")
            self.b_dec = param(b_dec)
        else:
            if b_dec is not None:
                raise ValueError("b_dec given but decoder_bias=False")
            self.b_dec = None
        self.register_buffer("l1", l1.to(W_enc.device))

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
    ) -> ReluL1:
        """Build E = len(generators) members with ``sae.init.init_weights(kind, d, m, g, samples)``.

        Member e's weights depend only on ``generators[e]`` (and ``samples``), so adding or
        removing members does not change any other member. ``b_dec`` (if any) starts at 0.
        """
        l1 = list(l1)
        generators = list(generators)
        if len(l1) != len(generators):
            raise ValueError(
                f"from_init: {len(l1)} l1 values but {len(generators)} generators; need one each"
            )
        if not generators:
            raise ValueError("from_init: need at least one member")
        parts = [init_weights(kind, d, m, g, samples) for g in generators]
        W_enc = torch.stack([p[0] for p in parts])
        b_enc = torch.stack([p[1] for p in parts])
        W_dec = torch.stack([p[2] for p in parts])
        return cls(W_enc, b_enc, W_dec, torch.tensor(l1, dtype=torch.float32), decoder_bias)

    @classmethod
    def from_member_tensors(
        cls, tensors: list[dict[str, Tensor]], l1: Tensor | Sequence[float]
    ) -> ReluL1:
        """Inverse of ``member_tensors``: stack one dict per member into an ensemble."""
        if not tensors:
            raise ValueError("from_member_tensors: need at least one member")
        has_bias = ["decoder.bias" in t for t in tensors]
        if len(set(has_bias)) != 1:
            raise ValueError("from_member_tensors: members disagree about 'decoder.bias'")
        W_enc = torch.stack([t["encoder.weight"] for t in tensors])
        b_enc = torch.stack([t["encoder.bias"] for t in tensors])
        W_dec = torch.stack([t["decoder"] for t in tensors])
        b_dec = torch.stack([t["decoder.bias"] for t in tensors]) if has_bias[0] else None
        return cls(W_enc, b_enc, W_dec, l1, decoder_bias=has_bias[0], b_dec=b_dec)

    # ------------------------------------------------------------------ sizes
    @property
    def n_members(self) -> int:
        """E, the number of members."""
        return self.W_enc.shape[0]

    @property
    def d(self) -> int:
        """Input dimension."""
        return self.W_enc.shape[1]

    @property
    def m(self) -> int:
        """Dictionary size (number of atoms)."""
        return self.W_enc.shape[2]

    # ------------------------------------------------------------------ per-member core
    def _member_input(self, x: Tensor, e: int) -> Tensor:
        """x [B, d] (shared) or [E, B, d] -> member e's input [B, d]."""
        return x if x.dim() == 2 else x[e]

    def _check_input(self, x: Tensor) -> None:
        if x.dim() == 2 and x.shape[1] == self.d:
            return
        if x.dim() == 3 and x.shape[0] == self.n_members and x.shape[2] == self.d:
            return
        raise ValueError(
            f"x must be [B, {self.d}] or [{self.n_members}, B, {self.d}], got {tuple(x.shape)}"
        )

    def _members(self, x: Tensor) -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
        """Yield (e, x_e [B, d], x_hat_e [B, d], c_e [B, m]) for every member, one at a time."""
        self._check_input(x)
        W_enc, b_enc, W_dec = _split(self.W_enc), _split(self.b_enc), _split(self.W_dec)
        b_dec = _split(self.b_dec) if self.b_dec is not None else None
        for e in range(self.n_members):
            x_e = self._member_input(x, e)
            c = torch.relu(torch.addmm(b_enc[e], x_e, W_enc[e]))
            x_hat = torch.addmm(b_dec[e], c, W_dec[e]) if b_dec is not None else c @ W_dec[e]
            yield e, x_e, x_hat, c

    def member_forward(self, x: Tensor, e: int) -> tuple[Tensor, Tensor]:
        """Member e alone: x [B, d] -> (x_hat [B, d], c [B, m]). Same ops as in ``forward``."""
        if x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"x must be [B, {self.d}], got {tuple(x.shape)}")
        c = torch.relu(torch.addmm(self.b_enc[e], x, self.W_enc[e]))
        if self.b_dec is not None:
            return torch.addmm(self.b_dec[e], c, self.W_dec[e]), c
        return c @ self.W_dec[e], c

    # ------------------------------------------------------------------ public forward
    def encode(self, x: Tensor) -> Tensor:
        """x [B, d] (shared by all members) or [E, B, d] -> c [E, B, m]."""
        self._check_input(x)
        return torch.stack(
            [
                torch.relu(torch.addmm(b, self._member_input(x, e), W))
                for e, (W, b) in enumerate(zip(_split(self.W_enc), _split(self.b_enc)))
            ]
        )

    def decode(self, c: Tensor) -> Tensor:
        """c [E, B, m] -> x_hat [E, B, d]."""
        if c.dim() != 3 or c.shape[0] != self.n_members or c.shape[2] != self.m:
            raise ValueError(f"c must be [{self.n_members}, B, {self.m}], got {tuple(c.shape)}")
        W_dec = _split(self.W_dec)
        if self.b_dec is None:
            return torch.stack([c[e] @ W_dec[e] for e in range(self.n_members)])
        b_dec = _split(self.b_dec)
        return torch.stack([torch.addmm(b_dec[e], c[e], W_dec[e]) for e in range(self.n_members)])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, d] or [E, B, d] -> (x_hat [E, B, d], c [E, B, m])."""
        x_hats, cs = [], []
        for _, _, x_hat, c in self._members(x):
            x_hats.append(x_hat)
            cs.append(c)
        return torch.stack(x_hats), torch.stack(cs)

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """Per-member loss terms on x [B, d] (or [E, B, d]); each value is [E].

        - ``'mse'``:  mean over batch and dims of (x - x_hat)^2.
        - ``'l1'``:   the unweighted sparsity term mean_batch(sum_j |c_j|) / m
                      (c >= 0 after the ReLU, so this is ``c.mean()``).
        - ``'loss'``: mse + l1_coefficient * l1.

        The training objective is ``losses['loss'].sum()``: members share no parameters, so
        each member receives exactly the gradient of its own loss.
        """
        mse, l1 = [], []
        for _, x_e, x_hat, c in self._members(x):
            mse.append(F.mse_loss(x_hat, x_e))
            l1.append(c.mean())
        mse_t, l1_t = torch.stack(mse), torch.stack(l1)
        return {"loss": mse_t + self.l1 * l1_t, "mse": mse_t, "l1": l1_t}

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
    def loss_and_grad_(self, x: Tensor) -> dict[str, Tensor]:
        """One step's losses (as ``losses``) and every parameter's ``.grad``, in closed form.

        For x [B, d] (shared) and member e, with r = x_hat - x and g = 2 r / (B d):

            dW_dec = c^T g                              [m, d]
            dc     = (g W_dec^T + l1 / (B m)) * [pre > 0]   [B, m]
            dW_enc = x^T dc,  db_enc = 1^T dc,  db_dec = 1^T g

        These are the five matrix products of a step (two forward, three backward) and no
        autograd graph: the same gradients as ``losses(x)['loss'].sum().backward()`` up to
        rounding, at less time and memory. ``B`` must be a multiple of 16 for the batched
        path (else the loop is used)."""
        self._check_input(x)
        E, d, m = self.n_members, self.d, self.m
        B = x.shape[-2]
        coef = (self.l1 / (B * m)).view(E, 1, 1)
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
            l1 = torch.stack([c[e].mean() for e in range(E)])
            g = r.mul_(2.0 / (B * d))
            ones = torch.ones(E, 1, B, dtype=x.dtype, device=x.device)
            self.W_dec.grad = torch.bmm(c.transpose(1, 2), g)
            # (g W_dec^T + l1/(B m)) on the active codes; the constant rides in the product
            dc = torch.baddbmm(coef.expand(E, B, m), g, self.W_dec.transpose(1, 2))
            dc = torch.ops.aten.threshold_backward(dc, c, 0)
            self.W_enc.grad = torch.bmm(xs.transpose(1, 2), dc)
            self.b_enc.grad = torch.bmm(ones, dc).squeeze(1)
            if self.b_dec is not None:
                self.b_dec.grad = torch.bmm(ones, g).squeeze(1)
        else:
            grads = {"W_enc": [], "b_enc": [], "W_dec": [], "b_dec": []}
            mse_l, l1_l = [], []
            for e in range(E):
                x_e = self._member_input(x, e)
                pre = torch.addmm(self.b_enc[e], x_e, self.W_enc[e])
                c = torch.relu(pre)
                x_hat = torch.addmm(self.b_dec[e], c, self.W_dec[e]) if self.b_dec is not None else c @ self.W_dec[e]
                r = x_hat.sub_(x_e)
                mse_l.append(r.pow(2).mean())
                l1_l.append(c.mean())
                g = r.mul_(2.0 / (B * d))
                grads["W_dec"].append(c.T @ g)
                dc = (g @ self.W_dec[e].T).add_(coef[e, 0]).mul_(pre > 0)
                grads["W_enc"].append(x_e.T @ dc)
                grads["b_enc"].append(dc.sum(dim=0))
                grads["b_dec"].append(g.sum(dim=0))
            self.W_enc.grad = torch.stack(grads["W_enc"])
            self.b_enc.grad = torch.stack(grads["b_enc"])
            self.W_dec.grad = torch.stack(grads["W_dec"])
            if self.b_dec is not None:
                self.b_dec.grad = torch.stack(grads["b_dec"])
            mse, l1 = torch.stack(mse_l), torch.stack(l1_l)
        return {"loss": mse + self.l1 * l1, "mse": mse, "l1": l1}

    # ------------------------------------------------------------------ maintenance
    @torch.no_grad()
    def renormalise_decoder_(self) -> None:
        """Scale every atom (row of W_dec[e]) to unit L2 norm in place (an all-zero row stays 0)."""
        for w in self.W_dec.unbind(0):
            w.div_(torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min_(_NORM_EPS))

    def member_tensors(self, e: int) -> dict[str, Tensor]:
        """Member e's weights as contiguous CPU-independent copies, for safetensors.

        'decoder' [m, d] (rows = atoms), 'encoder.weight' [d, m], 'encoder.bias' [m],
        and 'decoder.bias' [d] when the model has a decoder bias.
        """
        if not 0 <= e < self.n_members:
            raise IndexError(f"member {e} out of range for an ensemble of {self.n_members}")
        out = {
            "decoder": self.W_dec[e].detach().clone().contiguous(),
            "encoder.weight": self.W_enc[e].detach().clone().contiguous(),
            "encoder.bias": self.b_enc[e].detach().clone().contiguous(),
        }
        if self.b_dec is not None:
            out["decoder.bias"] = self.b_dec[e].detach().clone().contiguous()
        return out

    def atoms(self, e: int) -> Tensor:
        """Member e's dictionary, W_dec[e] detached: [m, d]."""
        return self.W_dec[e].detach()

    def extra_repr(self) -> str:
        return (
            f"E={self.n_members}, d={self.d}, m={self.m}, decoder_bias={self.decoder_bias}, "
            f"l1={self.l1.tolist()}"
        )

