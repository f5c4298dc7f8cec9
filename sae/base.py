"""What every SAE kind provides, and the registry that finds kinds by name.

An SAE kind is a class derived from ``SAE``: an *ensemble* of E independent members that share
shapes (input width d, dictionary size m) and may differ in their initial weights and their
per-member hyperparameters (``l1`` for ``relu_l1``, ``k`` for ``topk``, ...). The trainer
(``sae.train``), the metrics (``sae.metrics``) and the engine use only what is declared here,
so a new kind is one module in ``sae/`` (found by ``kinds()``) plus its spec class in the engine.

Common parameters (float32, leading member dimension E):

    W_enc [E, d, m]   encoder weight (x @ W_enc)
    b_enc [E, m]      encoder bias
    W_dec [E, m, d]   decoder; its rows are the dictionary atoms
    b_dec [E, d]      decoder bias (only with ``decoder_bias``)

A kind may add parameters and buffers of its own (a threshold, a gate). Per-member
hyperparameters named in ``params`` are float32 buffers ``[E]`` of those names.

Rules every kind keeps:

- **Members are independent**: a member's trajectory does not depend on which members share
  the ensemble (ops that mix one member's elements run on that member's own slice); tested
  per kind by building a member alone and inside an ensemble and comparing bytes.
- **No hidden randomness**: everything random comes from generators passed in.
- ``member_forward`` is the *inference* map (what is evaluated, saved and exported); training
  may differ (BatchTopK selects over the batch while training, applies its threshold at
  inference).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SAE", "get", "kinds", "register", "split_members"]

_NORM_EPS = 1e-12


def split_members(t: Tensor) -> tuple[Tensor, ...]:
    """Member slices of a stacked tensor. ``unbind`` (backward: one ``stack``), except for
    E = 1 where a ``squeeze`` view avoids copying the gradient; the values are the same."""
    return (t.squeeze(0),) if t.shape[0] == 1 else t.unbind(0)


class SAE(nn.Module):
    """Base of every SAE kind: E stacked members with the common parameters above.

    Subclasses set the class attributes, implement ``member_encode`` and ``member_losses``, and
    override the rest where the kind needs to (a closed-form gradient, extra tensors)."""

    kind: ClassVar[str]  # the spec's ``sae.kind``
    params: ClassVar[tuple[str, ...]] = ()  # per-member hyperparameters, buffers [E]
    sparsity: ClassVar[str]  # the hyperparameter that sets sparsity: the axis of sweeps and figures
    tensor_format: ClassVar[str]  # safetensors metadata "format" of a saved member, e.g. "relu_l1/v1"
    unit_decoder: bool = True  # atoms renormalised to unit norm after every step
    loss_terms: ClassVar[tuple[str, ...]] = ("loss", "mse")  # terms of ``losses`` recorded as train_<term> curves

    def __init__(
        self,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        *,
        decoder_bias: bool = False,
        b_dec: Tensor | None = None,
        **hyper: Tensor | Sequence[float],
    ) -> None:
        super().__init__()
        if W_enc.dim() != 3:
            raise ValueError(f"W_enc must be [E, d, m], got shape {tuple(W_enc.shape)}")
        E, d, m = W_enc.shape
        if tuple(b_enc.shape) != (E, m):
            raise ValueError(f"b_enc must be [{E}, {m}], got {tuple(b_enc.shape)}")
        if tuple(W_dec.shape) != (E, m, d):
            raise ValueError(f"W_dec must be [{E}, {m}, {d}], got {tuple(W_dec.shape)}")
        self.W_enc = self._param(W_enc)
        self.b_enc = self._param(b_enc)
        self.W_dec = self._param(W_dec)
        self.decoder_bias = bool(decoder_bias)
        if self.decoder_bias:
            if b_dec is None:
                b_dec = torch.zeros(E, d, dtype=torch.float32, device=W_enc.device)
            if tuple(b_dec.shape) != (E, d):
                raise ValueError(f"b_dec must be [{E}, {d}], got {tuple(b_dec.shape)}")
            self.b_dec = self._param(b_dec)
        else:
            if b_dec is not None:
                raise ValueError("b_dec given but decoder_bias=False")
            self.b_dec = None
        missing = set(self.params) - set(hyper)
        extra = set(hyper) - set(self.params)
        if missing or extra:
            raise ValueError(f"{type(self).__name__}: hyperparameters {sorted(self.params)} expected, got {sorted(hyper)}")
        for name in self.params:
            v = torch.as_tensor(hyper[name], dtype=torch.float32).detach().clone().reshape(-1)
            if v.shape[0] != E:
                raise ValueError(f"{name} must have one value per member ({E}), got {v.shape[0]}")
            if not torch.isfinite(v).all():
                raise ValueError(f"{name} values must be finite, got {v.tolist()}")
            self.register_buffer(name, v.to(W_enc.device))

    @staticmethod
    def _param(t: Tensor) -> nn.Parameter:
        return nn.Parameter(t.detach().to(torch.float32).clone().contiguous())

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        weights: Sequence[tuple[Tensor, Tensor, Tensor]],
        hyper: Sequence[dict[str, float]],
        decoder_bias: bool = False,
        **options,
    ) -> SAE:
        """E members from one ``(W_enc [d, m], b_enc [m], W_dec [m, d])`` and one dict of
        hyperparameters each (``sae.init.init_weights`` gives the weights).

        ``options`` are the kind's own constructor keywords shared by all members and not
        swept (e.g. ``dead_tokens`` for ``topk``, ``prefixes`` for ``matryoshka_batchtopk``);
        they are passed to the constructor unchanged, and a kind without options rejects any."""
        if not weights or len(weights) != len(hyper):
            raise ValueError(f"build: {len(weights)} weight sets and {len(hyper)} hyperparameter sets; need one each, at least one")
        stacked = [torch.stack([w[i] for w in weights]) for i in range(3)]
        values = {name: [float(h[name]) for h in hyper] for name in cls.params}
        return cls(*stacked, decoder_bias=decoder_bias, **values, **options)

    def member_hyper(self, e: int) -> dict[str, float]:
        return {name: float(getattr(self, name)[e]) for name in self.params}

    # ------------------------------------------------------------------ sizes
    @property
    def n_members(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d(self) -> int:
        return self.W_enc.shape[1]

    @property
    def m(self) -> int:
        return self.W_enc.shape[2]

    def _check_input(self, x: Tensor) -> None:
        if x.dim() == 2 and x.shape[1] == self.d:
            return
        if x.dim() == 3 and x.shape[0] == self.n_members and x.shape[2] == self.d:
            return
        raise ValueError(f"x must be [B, {self.d}] or [{self.n_members}, B, {self.d}], got {tuple(x.shape)}")

    @staticmethod
    def member_input(x: Tensor, e: int) -> Tensor:
        """x [B, d] (shared) or [E, B, d] -> member e's input [B, d]."""
        return x if x.dim() == 2 else x[e]

    # ------------------------------------------------------------------ inference
    def member_encode(self, x: Tensor, e: int) -> Tensor:
        """Member e's codes at inference: x [B, d] -> c [B, m] (>= 0 for every shipped kind)."""
        raise NotImplementedError

    def member_decode(self, c: Tensor, e: int) -> Tensor:
        """c [B, m] -> x_hat [B, d]."""
        if self.b_dec is not None:
            return torch.addmm(self.b_dec[e], c, self.W_dec[e])
        return c @ self.W_dec[e]

    def member_forward(self, x: Tensor, e: int) -> tuple[Tensor, Tensor]:
        """Member e alone: x [B, d] -> (x_hat [B, d], c [B, m])."""
        if x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"x must be [B, {self.d}], got {tuple(x.shape)}")
        c = self.member_encode(x, e)
        return self.member_decode(c, e), c

    def encode(self, x: Tensor) -> Tensor:
        """x [B, d] or [E, B, d] -> c [E, B, m] (inference codes)."""
        self._check_input(x)
        return torch.stack([self.member_encode(self.member_input(x, e), e) for e in range(self.n_members)])

    def decode(self, c: Tensor) -> Tensor:
        """c [E, B, m] -> x_hat [E, B, d]."""
        if c.dim() != 3 or c.shape[0] != self.n_members or c.shape[2] != self.m:
            raise ValueError(f"c must be [{self.n_members}, B, {self.m}], got {tuple(c.shape)}")
        return torch.stack([self.member_decode(c[e], e) for e in range(self.n_members)])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, d] or [E, B, d] -> (x_hat [E, B, d], c [E, B, m])."""
        c = self.encode(x)
        return self.decode(c), c

    def atoms(self, e: int) -> Tensor:
        """Member e's dictionary, W_dec[e] detached: [m, d]."""
        return self.W_dec[e].detach()

    # ------------------------------------------------------------------ training
    def member_losses(self, x: Tensor, e: int, sparsity_scale: float = 1.0) -> dict[str, Tensor]:
        """Member e's differentiable training loss terms on its input x [B, d]: scalars
        ``'loss'`` (the objective), ``'mse'`` (mean over batch and dims) and the kind's own terms.
        ``sparsity_scale`` multiplies the sparsity penalty (a warm-up); kinds without one ignore it."""
        raise NotImplementedError

    def losses(self, x: Tensor, sparsity_scale: float = 1.0) -> dict[str, Tensor]:
        """Every member's loss terms on x [B, d] (or [E, B, d]); each value is [E]."""
        self._check_input(x)
        per = [self.member_losses(self.member_input(x, e), e, sparsity_scale) for e in range(self.n_members)]
        return {k: torch.stack([p[k] for p in per]) for k in per[0]}

    def loss_and_grad_(self, x: Tensor, sparsity_scale: float = 1.0) -> dict[str, Tensor]:
        """One step's loss terms ([E] each, detached) with every parameter's ``.grad`` set to
        the gradient of ``losses(x)['loss'].sum()``. Kinds may override with a closed form."""
        for p in self.parameters():
            p.grad = None
        with torch.enable_grad():
            out = self.losses(x, sparsity_scale)
            out["loss"].sum().backward()
        return {k: v.detach() for k, v in out.items()}

    @torch.no_grad()
    def after_step_(self) -> None:
        """Run after every optimiser step: atoms back to unit norm (kinds with a free
        decoder norm set ``unit_decoder = False``)."""
        if self.unit_decoder:
            self.renormalise_decoder_()

    @torch.no_grad()
    def renormalise_decoder_(self) -> None:
        """Scale every atom (row of W_dec[e]) to unit L2 norm in place (an all-zero row stays 0)."""
        for w in self.W_dec.unbind(0):
            w.div_(torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min_(_NORM_EPS))

    @torch.no_grad()
    def reset_atoms_(self, e: int, idx: Tensor, directions: Tensor, encoder_norm: float) -> None:
        """Re-initialise member e's atoms ``idx`` [n]: decoder rows = unit ``directions`` [n, d],
        encoder columns = directions^T * encoder_norm, encoder bias 0 (dead-atom resampling).
        Kinds with per-atom parameters of their own override this and reset those too."""
        self.W_dec[e, idx] = directions
        self.W_enc[e][:, idx] = directions.T * encoder_norm
        self.b_enc[e, idx] = 0.0

    # ------------------------------------------------------------------ persistence
    def member_tensors(self, e: int) -> dict[str, Tensor]:
        """Member e's weights as contiguous copies, for safetensors: 'decoder' [m, d] (rows =
        atoms), 'encoder.weight' [d, m], 'encoder.bias' [m], 'decoder.bias' [d] (with a decoder
        bias), plus the kind's own tensors (``extra_tensors``)."""
        if not 0 <= e < self.n_members:
            raise IndexError(f"member {e} out of range for an ensemble of {self.n_members}")
        out = {
            "decoder": self.W_dec[e].detach().clone().contiguous(),
            "encoder.weight": self.W_enc[e].detach().clone().contiguous(),
            "encoder.bias": self.b_enc[e].detach().clone().contiguous(),
        }
        if self.b_dec is not None:
            out["decoder.bias"] = self.b_dec[e].detach().clone().contiguous()
        out.update({k: v.detach().clone().contiguous() for k, v in self.extra_tensors(e).items()})
        return out

    def extra_tensors(self, e: int) -> dict[str, Tensor]:
        """The kind's own saved tensors of member e (e.g. 'threshold' [m]); none by default."""
        return {}

    def load_extra_(self, e: int, tensors: dict[str, Tensor]) -> None:
        """Inverse of ``extra_tensors`` for member e."""

    @classmethod
    def from_member_tensors(cls, tensors: list[dict[str, Tensor]], hyper: list[dict[str, float]], **options) -> SAE:
        """Inverse of ``member_tensors``: one dict of tensors and one of hyperparameters per
        member; ``options`` as for ``build`` (a kind whose options are saved in its tensors
        may read them from there)."""
        if not tensors or len(tensors) != len(hyper):
            raise ValueError("from_member_tensors: need one tensor dict and one hyperparameter dict per member")
        has_bias = ["decoder.bias" in t for t in tensors]
        if len(set(has_bias)) != 1:
            raise ValueError("from_member_tensors: members disagree about 'decoder.bias'")
        W_enc = torch.stack([t["encoder.weight"] for t in tensors])
        b_enc = torch.stack([t["encoder.bias"] for t in tensors])
        W_dec = torch.stack([t["decoder"] for t in tensors])
        b_dec = torch.stack([t["decoder.bias"] for t in tensors]) if has_bias[0] else None
        values = {name: [float(h[name]) for h in hyper] for name in cls.params}
        model = cls(W_enc, b_enc, W_dec, decoder_bias=has_bias[0], b_dec=b_dec, **values, **options)
        for e, t in enumerate(tensors):
            model.load_extra_(e, t)
        return model

    def extra_repr(self) -> str:
        hyper = ", ".join(f"{n}={getattr(self, n).tolist()}" for n in self.params)
        return f"E={self.n_members}, d={self.d}, m={self.m}, decoder_bias={self.decoder_bias}, {hyper}"


# ---------------------------------------------------------------------- registry

_KINDS: dict[str, type[SAE]] = {}
_DISCOVERED = False


def register(cls: type[SAE]) -> type[SAE]:
    """Class decorator: make ``cls`` the SAE kind named ``cls.kind``."""
    for attr in ("kind", "sparsity", "tensor_format"):
        if not isinstance(getattr(cls, attr, None), str):
            raise TypeError(f"{cls.__name__}: an SAE kind declares {attr!r}")
    if cls.sparsity not in cls.params:
        raise TypeError(f"{cls.__name__}: its sparsity knob {cls.sparsity!r} is not one of its params {cls.params}")
    other = _KINDS.get(cls.kind)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise TypeError(f"SAE kind {cls.kind!r} is registered twice ({other.__name__}, {cls.__name__})")
    _KINDS[cls.kind] = cls
    return cls


def _discover() -> None:
    """Import every module of the ``sae`` package once, so each kind registers itself."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import sae

    for info in pkgutil.iter_modules(sae.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"sae.{info.name}")
    _DISCOVERED = True


def kinds() -> dict[str, type[SAE]]:
    """Every registered SAE kind by name, in name order."""
    _discover()
    return dict(sorted(_KINDS.items()))


def get(kind: str) -> type[SAE]:
    k = kinds()
    if kind not in k:
        raise KeyError(f"unknown SAE kind {kind!r}; known: {', '.join(k)}")
    return k[kind]


def mse(x_hat: Tensor, x: Tensor) -> Tensor:
    """Mean over batch and dims of (x - x_hat)^2: the reconstruction term of every kind."""
    return F.mse_loss(x_hat, x)
