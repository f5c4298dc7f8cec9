"""The tiny language model: a GPT-2 style decoder-only transformer, all of it in this file.

    tokens [B,T] -> wte(tokens) + wpe(positions)                          x [B,T,D]
    for each block i:
        x = x + attn(ln_1(x))      attn: causal multi-head self-attention, H heads of D/H
        x = x + mlp(ln_2(x))       mlp:  Linear(D, M) -> GELU -> Linear(M, D)
    logits = lm_head(ln_f(x))                                             [B,T,V]

D = d_model, M = d_mlp, H = n_heads, T <= context, V = vocabulary size. Pre-LN, learned
absolute positions, biases everywhere, no dropout (the model underfits; dropout would add an
RNG stream to every forward). The unembedding ``lm_head`` is NOT tied to ``wte``: at D = 16 the
input and output embeddings compete for the same 16 directions, and separate weights keep the
state dict free of shared tensors, so it saves straight to safetensors.

Hook sites, per block i (what a hook sees, and may replace, in forward order):

    blocks.{i}.resid.pre    [B,T,D]  the residual stream entering block i
    blocks.{i}.attn.out     [B,T,D]  attention output (after the output projection), before the add
    blocks.{i}.resid.mid    [B,T,D]  residual after the attention add
    blocks.{i}.mlp.pre      [B,T,M]  MLP hidden pre-activation
    blocks.{i}.mlp.post     [B,T,M]  MLP hidden activation after GELU (the SAE site: blocks.2.mlp.post)
    blocks.{i}.resid.post   [B,T,D]  residual after the MLP add (= resid.pre of block i+1)

A hook ``fn(act) -> Tensor | None`` returning None leaves the activation as it was; returning a
tensor (same shape) replaces it downstream. Hooks read activations and splice in SAE
reconstructions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from engine.schema import LMModelSpec

SITE_KINDS = ("resid.pre", "attn.out", "resid.mid", "mlp.pre", "mlp.post", "resid.post")
Hooks = Mapping[str, Callable[[Tensor], "Tensor | None"]]


def hook_sites(n_layers: int) -> tuple[str, ...]:
    """All hook site names of an ``n_layers`` model, in forward order."""
    return tuple(f"blocks.{i}.{k}" for i in range(n_layers) for k in SITE_KINDS)


def _run_hook(hooks: Hooks | None, name: str, x: Tensor) -> Tensor:
    fn = hooks.get(name) if hooks else None
    if fn is None:
        return x
    y = fn(x)
    if y is None:
        return x
    if y.shape != x.shape:
        raise ValueError(f"hook at {name} returned shape {tuple(y.shape)}, expected {tuple(x.shape)}")
    return y


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.c_attn = nn.Linear(d_model, 3 * d_model)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """x [B,T,D] -> [B,T,D]"""
        B, T, D = x.shape
        H = self.n_heads
        q, k, v = self.c_attn(x).split(D, dim=2)
        q = q.view(B, T, H, D // H).transpose(1, 2)  # [B,H,T,D/H]
        k = k.view(B, T, H, D // H).transpose(1, 2)
        v = v.view(B, T, H, D // H).transpose(1, 2)
        # softmax(q k^T / sqrt(D/H) + causal mask) v, fused (on CPU about twice as fast as the
        # four explicit ops, and deterministic: same inputs and threads -> same bits)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B,H,T,D/H]
        y = y.transpose(1, 2).contiguous().view(B, T, D)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.c_fc = nn.Linear(d_model, d_mlp)
        self.c_proj = nn.Linear(d_mlp, d_model)

    def forward(self, x: Tensor, hooks: Hooks | None, prefix: str) -> Tensor:
        """x [B,T,D] -> [B,T,D]; hooks at {prefix}.mlp.pre and {prefix}.mlp.post ([B,T,M])"""
        h = _run_hook(hooks, f"{prefix}.mlp.pre", self.c_fc(x))
        h = _run_hook(hooks, f"{prefix}.mlp.post", F.gelu(h))
        return self.c_proj(h)


class Block(nn.Module):
    def __init__(self, cfg: LMModelSpec):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.n_heads)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp)

    def forward(self, x: Tensor, hooks: Hooks | None, prefix: str) -> Tensor:
        """x [B,T,D] -> [B,T,D]"""
        x = _run_hook(hooks, f"{prefix}.resid.pre", x)
        x = x + _run_hook(hooks, f"{prefix}.attn.out", self.attn(self.ln_1(x)))
        x = _run_hook(hooks, f"{prefix}.resid.mid", x)
        x = x + self.mlp(self.ln_2(x), hooks, prefix)
        return _run_hook(hooks, f"{prefix}.resid.post", x)


class TinyLM(nn.Module):
    """Decoder-only transformer: token + learned position embeddings, n_layers pre-LN blocks
    (causal multi-head attention, MLP d_model -> d_mlp -> d_model with GELU), final LN, untied
    unembedding. See the module docstring for the hook sites."""

    def __init__(self, cfg: LMModelSpec, vocab_size: int, generator: torch.Generator | None = None):
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model ({cfg.d_model}) must be divisible by n_heads ({cfg.n_heads})")
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.context = cfg.context
        self.sites = hook_sites(cfg.n_layers)
        self.wte = nn.Embedding(vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Init from ``generator`` (a fixed seed-0 generator if None; never the global RNG):
        every Linear weight N(0, 1/fan_in), the two residual-writing projections further
        scaled by 1/sqrt(2 n_layers), embeddings N(0, 1), biases 0, LayerNorm gain 1.
        Parameters are drawn in ``named_parameters`` order.

        Why not GPT-2's N(0, 0.02): that scale suits d_model ~ 768. At d_model 16 it starts
        every block as a near-zero function, and after a few million tokens the MLPs above
        the first still do nearly nothing (zeroing blocks.2.mlp.post changed the loss by
        < 0.001 nats), leaving no signal at the site the experiment studies. With fan-in
        scaling each MLP matters (zeroing blocks.2.mlp.post costs ~0.1 nats) at a similar
        validation loss."""
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        resid_scale = 1.0 / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif ".ln_" in name or name.startswith("ln_"):
                p.fill_(1.0)
            elif name in ("wte.weight", "wpe.weight"):
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))
            else:
                std = p.shape[1] ** -0.5 * (resid_scale if name.endswith("c_proj.weight") else 1.0)
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)

    def forward(self, tokens: Tensor, hooks: Hooks | None = None) -> Tensor:
        """tokens [B,T] int64 (T <= context) -> logits [B,T,V]. ``hooks`` maps site -> fn."""
        B, T = tokens.shape
        if T > self.context:
            raise ValueError(f"sequence length {T} exceeds the context {self.context}")
        if hooks:
            unknown = [s for s in hooks if s not in self.sites]
            if unknown:
                self.site_width(unknown[0])  # raises with the valid names
        pos = torch.arange(T, device=tokens.device)
        x = self.wte(tokens) + self.wpe(pos)  # [B,T,D]
        for i, block in enumerate(self.blocks):
            x = block(x, hooks, f"blocks.{i}")
        return self.lm_head(self.ln_f(x))  # [B,T,V]

    def site_width(self, site: str) -> int:
        """Width of the activation at ``site``: d_mlp for mlp.pre/mlp.post, else d_model."""
        if site not in self.sites:
            n = self.cfg.n_layers
            raise ValueError(
                f"unknown hook site {site!r}: valid sites are blocks.{{i}}.{{{','.join(SITE_KINDS)}}} "
                f"for i in 0..{n - 1} (e.g. 'blocks.{min(2, n - 1)}.mlp.post')"
            )
        return self.cfg.d_mlp if site.endswith((".mlp.pre", ".mlp.post")) else self.cfg.d_model

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
