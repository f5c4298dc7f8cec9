"""Training recipes as named options: ``Recipe`` (alias ``TrainOptions``).

Every field defaults to "off", and ``Recipe()`` *is* the interim report's 2022 recipe (Adam at a
constant lr, unit-norm atoms renormalised after every step, plain L1, no warm-up, no clipping,
no resampling): ``train`` / ``train_members`` with ``Recipe()`` (or ``None``) train the same
bytes as before these options existed.

Step convention: update t (t = 0, 1, ...) is the (t+1)-th optimiser step; "the first N steps"
are the updates t = 0 .. N-1. ``T`` is the length of training: ``steps``, or the stop rule's
``max_steps``.

Trainer options (read by ``sae.train``):

- ``lr_warmup_steps`` (default 0 = off): linear learning-rate warm-up from 0; update t uses
  lr * min(1, (t + 1) / lr_warmup_steps), so update N - 1 is the first at the full lr
  (SAELens' ``lr_warm_up_steps`` convention; common practice, not in the 2022 report).
- ``lr_decay`` (default ``"none"``) and ``lr_decay_frac`` (default 0.2): with ``"linear"`` the
  lr decays linearly to 0 over the last D = max(1, round(lr_decay_frac * T)) updates
  (Python's ``round``): update t >= T - D
  uses lr * (T - t) / D (the last update uses lr / D; 0 is reached at T). Multiplies the
  warm-up factor. From Anthropic's April 2024 update ("decay the learning rate linearly to 0
  over the last 20% of training"). With a stop rule T = max_steps, so a member that
  converges early may never see the decay.
- ``l1_warmup_steps`` (default 0 = off): the sparsity penalty is scaled by
  min(1, (t + 1) / l1_warmup_steps) at update t (passed to ``loss_and_grad_`` as
  ``sparsity_scale``; 1.0 exactly once warm). Anthropic's April 2024 update warms lambda up
  linearly over the first 5% of training. The training-loss curves record the loss actually
  optimised (with the scaled penalty).
- ``grad_clip`` (default None = off): gradient-norm clipping **per member**: member e's norm
  is N_e = sqrt(sum over parameters p of ||grad p[e]||^2) (every parameter's slice of that
  member), and its gradients are multiplied by min(1, grad_clip / (N_e + 1e-6)) (the formula
  of ``torch.nn.utils.clip_grad_norm_``, applied to each member's own slices, so members stay
  independent). Anthropic's April 2024 update clips to norm 1.
- ``resample_dead_every`` (default 0 = off): dead-feature resampling of "Towards
  Monosemanticity" (Anthropic 2023). At every boundary s = k * resample_dead_every with
  s < T, for each member still training: the atoms with no positive code on any training
  sample of the updates s - resample_dead_every .. s - 1 are dead. Inputs are drawn, with
  replacement, from a pool (``train_members``' ``resample_pool(s)`` [P, d], else the
  batches of the last ``resample_pool_batches`` updates) with probability proportional to
  their squared reconstruction error ||x - x_hat||^2 under the member (uniform over the
  non-zero inputs when every error is 0; zero-norm inputs are never drawn); each dead atom
  becomes its drawn input's direction x / ||x||, its encoder column that direction times
  ``resample_encoder_scale`` (default 0.2, the paper's) times the mean encoder-column norm
  of the member's alive atoms (1 if none is alive), its encoder bias 0
  (``model.reset_atoms_``); Adam's ``exp_avg`` and ``exp_avg_sq`` of exactly those rows of
  W_dec, columns of W_enc and entries of b_enc are zeroed. The randomness comes from one
  generator per member (``resample_generators``). The paper resamples at 25k, 50k, 75k and
  100k steps.
- ``resample_pool_batches`` (default 1): how many recent training batches form the default pool.

Model options (read by ``build_relu_l1`` / ``model_kwargs``, used when building the ensemble):

- ``decoder_init_norm`` (default None = the spec's init kind): with a value, the init kind is
  ``'tied_small'`` (atoms random directions at this L2 norm, W_enc = W_dec^T, b_enc = 0;
  SAELens' ``decoder_init_norm`` with ``init_encoder_as_decoder_transpose``; Anthropic's
  April 2024 update).
- ``decoder_norm`` (default ``"unit"``): ``ReluL1``'s option; ``"free"`` stops the
  renormalisation after every step (Anthropic, April 2024).
- ``l1_weighting`` (default ``"plain"``): ``ReluL1``'s option; ``"decoder_norm"`` weights
  each |c_j| by ||W_dec_j|| (Anthropic, April 2024).

Named presets (``RECIPES``, ``recipe(name, steps)``): ``"interim_2022"`` (the default),
``"anthropic_2023"`` (Towards Monosemanticity: resampling, at a quarter of training each) and
``"anthropic_2024_04"`` (the April 2024 update: tied small init, free decoder norm weighted into
the L1, L1 warm-up over 5%, lr decay over the last 20%, clipping to 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import torch
from torch import Tensor

__all__ = ["RECIPES", "Recipe", "TrainOptions", "build_relu_l1", "lr_factor", "recipe", "sparsity_scale"]

LR_DECAYS = ("none", "linear")


def _nonneg_int(_i, a, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"Recipe.{a.name} must be an int >= 0, got {v!r}")


def _positive_int(_i, a, v):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"Recipe.{a.name} must be an int > 0, got {v!r}")


def _optional_positive(_i, a, v):
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < float("inf"))):
        raise ValueError(f"Recipe.{a.name} must be None or a finite number > 0, got {v!r}")


def _fraction(_i, a, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= 1):
        raise ValueError(f"Recipe.{a.name} must be in (0, 1], got {v!r}")


def _positive(_i, a, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < float("inf")):
        raise ValueError(f"Recipe.{a.name} must be a finite number > 0, got {v!r}")


@attrs.frozen(kw_only=True)
class Recipe:
    """Training options; every default is the 2022 recipe (off). See the module docstring for
    the exact definition and the source of each field."""

    lr_warmup_steps: int = attrs.field(default=0, validator=_nonneg_int)
    lr_decay: str = attrs.field(default="none", validator=attrs.validators.in_(LR_DECAYS))
    lr_decay_frac: float = attrs.field(default=0.2, validator=_fraction)
    l1_warmup_steps: int = attrs.field(default=0, validator=_nonneg_int)
    grad_clip: float | None = attrs.field(default=None, validator=_optional_positive)
    resample_dead_every: int = attrs.field(default=0, validator=_nonneg_int)
    resample_encoder_scale: float = attrs.field(default=0.2, validator=_positive)
    resample_pool_batches: int = attrs.field(default=1, validator=_positive_int)
    decoder_init_norm: float | None = attrs.field(default=None, validator=_optional_positive)
    decoder_norm: str = attrs.field(default="unit", validator=attrs.validators.in_(("unit", "free")))
    l1_weighting: str = attrs.field(default="plain", validator=attrs.validators.in_(("plain", "decoder_norm")))

    @property
    def schedules_lr(self) -> bool:
        return self.lr_warmup_steps > 0 or self.lr_decay != "none"

    @property
    def warmup(self) -> int:
        """Updates until both warm-ups are over (the stop rule waits for them)."""
        return max(self.lr_warmup_steps, self.l1_warmup_steps)

    def init_kind(self, kind: str) -> str:
        """The init kind to use instead of the spec's ``kind``: ``'tied_small'`` with a
        ``decoder_init_norm``, else ``kind``."""
        return kind if self.decoder_init_norm is None else "tied_small"

    def model_kwargs(self) -> dict[str, str]:
        """``ReluL1`` constructor options of this recipe."""
        return {"decoder_norm": self.decoder_norm, "l1_weighting": self.l1_weighting}


TrainOptions = Recipe


def lr_factor(options: Recipe, t: int, total: int) -> float:
    """The lr multiplier of update t (0-based) in a training of ``total`` updates."""
    f = 1.0
    if options.lr_warmup_steps > 0 and t < options.lr_warmup_steps:
        f = (t + 1) / options.lr_warmup_steps
    if options.lr_decay == "linear":
        D = max(1, round(options.lr_decay_frac * total))
        if t >= total - D:
            f *= (total - t) / D
    return f


def sparsity_scale(options: Recipe, t: int) -> float:
    """The L1 penalty's multiplier at update t: min(1, (t + 1) / l1_warmup_steps), 1.0 when off."""
    n = options.l1_warmup_steps
    if n > 0 and t + 1 < n:
        return (t + 1) / n
    return 1.0


def build_relu_l1(
    options: Recipe | None,
    init: str,
    d: int,
    m: int,
    l1: Sequence[float],
    generators: Sequence[torch.Generator],
    samples: Tensor | None = None,
    decoder_bias: bool = False,
):
    """A ``ReluL1`` ensemble with this recipe's init and model options (the spec's ``init``
    unless ``decoder_init_norm`` is set)."""
    from .relu_l1 import ReluL1

    options = options or Recipe()
    kind = options.init_kind(init)
    extra = {"decoder_init_norm": options.decoder_init_norm} if kind == "tied_small" and options.decoder_init_norm is not None else {}
    return ReluL1.from_init(kind, d, m, l1, generators, samples, decoder_bias, **extra, **options.model_kwargs())


def _interim_2022(steps: int) -> Recipe:
    return Recipe()


def _anthropic_2023(steps: int) -> Recipe:
    return Recipe(resample_dead_every=max(1, steps // 4), resample_encoder_scale=0.2)


def _anthropic_2024_04(steps: int) -> Recipe:
    return Recipe(
        decoder_init_norm=0.1,
        decoder_norm="free",
        l1_weighting="decoder_norm",
        l1_warmup_steps=max(1, round(0.05 * steps)),
        lr_decay="linear",
        lr_decay_frac=0.2,
        grad_clip=1.0,
    )


RECIPES: dict[str, Callable[[int], Recipe]] = {
    "interim_2022": _interim_2022,
    "anthropic_2023": _anthropic_2023,
    "anthropic_2024_04": _anthropic_2024_04,
}


def recipe(name: str, steps: int) -> Recipe:
    """The named preset for a training of ``steps`` updates (warm-up and resampling periods
    are fractions of it)."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name](int(steps))
