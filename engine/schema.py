"""The experiment spec: frozen attrs classes, one per YAML mapping.

A field annotated ``Sweepable[T]`` may hold a plain ``T`` or a sweep (a list, or a
``logspace``/``linspace``/``range`` generator, see ``engine.sweep``). ``engine.plan`` expands
sweeps into concrete cells; code that runs a cell only ever sees plain values.

Constraints on values (``Annotated[int, Ge(1)]``) are checked while structuring, so an error
carries the exact path of the offending value. Cross-field rules live in ``engine.validate``.
"""

from __future__ import annotations

import re
from typing import Annotated, Generic, Literal, TypeVar, Union

import attrs

from engine.errors import shown

T = TypeVar("T")

SCHEMA_VERSION = 1


class Sweepable(Generic[T]):
    """Annotation marker: the field takes a ``T`` or a sweep of ``T`` values."""


@attrs.frozen
class Ge:
    bound: float

    def check(self, v) -> str | None:
        return None if v >= self.bound else f"must be >= {self.bound:g}, got {shown(v)}"


@attrs.frozen
class Gt:
    bound: float

    def check(self, v) -> str | None:
        return None if v > self.bound else f"must be > {self.bound:g}, got {shown(v)}"


@attrs.frozen
class Le:
    bound: float

    def check(self, v) -> str | None:
        return None if v <= self.bound else f"must be <= {self.bound:g}, got {shown(v)}"


@attrs.frozen
class Matches:
    pattern: str
    what: str

    def check(self, v) -> str | None:
        return None if re.fullmatch(self.pattern, v) else f"{self.what}, got {shown(v)}"


PosInt = Annotated[int, Ge(1)]
NonNegInt = Annotated[int, Ge(0)]
PosFloat = Annotated[float, Gt(0)]
NonNegFloat = Annotated[float, Ge(0)]
Fraction = Annotated[float, Gt(0), Le(1)]
Name = Annotated[str, Matches(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", "expected a name of letters, digits, '_', '.', '-' (not starting with '.' or '-')")]
SourceName = Annotated[str, Matches(r"[a-z][a-z0-9_]{0,39}", "expected a lower-case identifier like 'toy' or 'lm_layer2'")]
HookSite = Annotated[str, Matches(r"blocks\.\d+\.(resid\.pre|resid\.mid|resid\.post|mlp\.pre|mlp\.post|attn\.out)", "expected a hook site like 'blocks.2.mlp.post'")]

Correlation = Literal["batch", "none", "per_sample"]
Magnitude = Literal["uniform", "constant", "product"]
SAEInit = Literal["orthogonal", "data_samples", "tied"]
Analysis = Literal["mmcs_truth", "dead", "l0", "mse", "fvu", "mmcs_larger", "feature_count", "ce_recovered", "mcc", "latent_f1", "kind_ranking"]
ALL_ANALYSES: tuple[str, ...] = Analysis.__args__  # type: ignore[attr-defined]
# what a spec that lists no analyses gets: every analysis but the opt-in ones (mcc, latent_f1 and kind_ranking,
# computed at bundle assembly); it is the default of Spec.analyses, so it is part of every
# spec hash and must not change
DEFAULT_ANALYSES: tuple[str, ...] = ("mmcs_truth", "dead", "l0", "mse", "fvu", "mmcs_larger", "feature_count", "ce_recovered")


# ---------------------------------------------------------------- toy source


@attrs.frozen
class ToySource:
    """Synthetic sparse combinations of ``n_features`` planted unit vectors in ``dim`` dims."""

    kind: Literal["toy"] = "toy"
    n_features: Sweepable[PosInt] = 512
    dim: Sweepable[PosInt] = 256
    active_per_sample: Sweepable[PosFloat] = 5.0
    decay: Sweepable[Fraction] = 0.99
    correlation: Sweepable[Correlation] = "batch"
    # per_sample only: rank and strength of the low-rank part of the copula correlation
    correlation_rank: Sweepable[PosInt] = 8
    correlation_strength: Sweepable[NonNegFloat] = 1.0
    magnitude: Sweepable[Magnitude] = "uniform"
    noise_std: Sweepable[NonNegFloat] = 0.0


# ---------------------------------------------------------------- LM source


@attrs.frozen
class CorpusSpec:
    """Exactly one of ``builtin``, ``hf`` or ``files``."""

    builtin: Literal["python-docs"] | None = None
    hf: str | None = None
    config: str | None = None
    split: str = "train"
    files: tuple[str, ...] | None = None
    text_field: str = "text"
    val_fraction: Annotated[float, Gt(0), Le(0.5)] = 0.05
    max_chars: Annotated[int, Ge(1000)] | None = None


@attrs.frozen
class TokenizerSpec:
    kind: Literal["bpe", "bytes"] = "bpe"
    vocab_size: Annotated[int, Ge(260)] = 1024


@attrs.frozen
class LMModelSpec:
    d_model: Sweepable[PosInt] = 16
    n_layers: Sweepable[PosInt] = 6
    n_heads: Sweepable[PosInt] = 4
    d_mlp: Sweepable[PosInt] = 64
    context: Sweepable[Annotated[int, Ge(2)]] = 128


@attrs.frozen
class LMTrainSpec:
    tokens: Sweepable[PosInt] = 4_000_000
    batch: Sweepable[PosInt] = 32
    lr: Sweepable[PosFloat] = 2e-2
    warmup: Sweepable[NonNegInt] = 100
    weight_decay: Sweepable[NonNegFloat] = 0.01
    eval_every: PosInt = 100
    eval_tokens: PosInt = 32_768


@attrs.frozen
class ActivationSpec:
    """``tokens`` activations (from the training split) feed SAE training; CE-recovered is
    measured on ``ce_tokens`` tokens of the validation split. The SAE evaluation set is
    ``eval.samples`` activations from the validation split."""

    tokens: PosInt = 1_000_000
    ce_tokens: PosInt = 16_384
    # multiply activations by one constant so that their mean squared norm is 1 (recorded;
    # undone when a reconstruction is spliced back into the LM), so that l1 values mean
    # about the same on LM activations as on toy data
    normalize: bool = True


@attrs.frozen
class LMSource:
    """SAEs on activations of a tiny transformer trained here on a text corpus."""

    kind: Literal["lm"] = "lm"
    corpus: CorpusSpec = CorpusSpec(builtin="python-docs")
    tokenizer: TokenizerSpec = TokenizerSpec()
    model: LMModelSpec = LMModelSpec()
    train: LMTrainSpec = LMTrainSpec()
    site: Sweepable[HookSite] = "blocks.2.mlp.post"
    activations: ActivationSpec = ActivationSpec()


# ---------------------------------------------------------------- synth source


@attrs.frozen
class SynthSource:
    """SynthSAEBench-style data (``toydata.synth``): Zipfian firing probabilities in
    [p_min, p_max], a forest of ``n_roots`` trees (``branching`` children per node, ``depth``
    generations below the roots; mutually exclusive siblings; ``n_roots: 0`` = none), a
    low-rank Gaussian copula (``correlation_rank: 0`` or ``correlation_scale: 0`` =
    independent), folded-normal magnitudes. ``dict_ratio`` is relative to ``n_features``."""

    kind: Literal["synth"] = "synth"
    n_features: Sweepable[PosInt] = 512
    dim: Sweepable[PosInt] = 256
    zipf_exponent: Sweepable[NonNegFloat] = 0.5
    p_min: Sweepable[Fraction] = 5e-4
    p_max: Sweepable[Fraction] = 0.4
    n_roots: Sweepable[NonNegInt] = 0
    branching: Sweepable[PosInt] = 2
    depth: Sweepable[NonNegInt] = 1
    correlation_rank: Sweepable[NonNegInt] = 8
    correlation_scale: Sweepable[NonNegFloat] = 1.0
    magnitude_mean: Sweepable[NonNegFloat] = 1.0
    magnitude_std: Sweepable[NonNegFloat] = 0.5
    orthogonalize_steps: Sweepable[NonNegInt] = 0
    noise_std: Sweepable[NonNegFloat] = 0.0



# ---------------------------------------------------------------- a user's own HF model


ModuleName = Annotated[str, Matches(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", "expected a dotted submodule name like 'transformer.h.1.mlp'")]


@attrs.frozen(kw_only=True)
class HFModelSource:
    """SAEs on activations of a user's own Hugging Face causal LM, saved locally with
    ``save_pretrained`` (model and tokenizer in one directory; ``engine.sources.hf_model``).

    ``path``: that directory (a string, relative to the working directory; hub names are
    refused, nothing is downloaded). ``module``: the submodule whose output is read
    (``model.get_submodule``), e.g. ``transformer.h.1.mlp``. ``tokens`` activations of the
    corpus's training split feed SAE training; ``ce_tokens`` tokens of its validation split
    measure CE loss recovered; the SAE evaluation set is ``eval.samples`` activations of the
    validation split. ``width``: the module's output width; by default read from the model's
    ``config.json`` (its hidden size), which is right for blocks and their attention/MLP
    outputs; give it for any other module."""

    kind: Literal["hf_model"] = "hf_model"
    path: str
    module: Sweepable[ModuleName]
    corpus: CorpusSpec = CorpusSpec(builtin="python-docs")
    context: Annotated[int, Ge(2)] = 128
    tokens: PosInt = 1_000_000
    ce_tokens: PosInt = 16_384
    normalize: bool = True  # as ActivationSpec.normalize: unit mean squared norm, undone when splicing
    width: PosInt | None = None



Source = Union[ToySource, LMSource, SynthSource, HFModelSource]
SOURCE_KINDS: dict[str, type] = {"toy": ToySource, "lm": LMSource, "synth": SynthSource, "hf_model": HFModelSource}


# ---------------------------------------------------------------- SAE sweep


# Fields added after schema 1 carry this: while at their default they are left out of the
# resolved spec, so every spec written before them keeps its hash, cell keys and bytes.
ADDED = {"omit_if_default": True}


@attrs.frozen
class StopSpec:
    """Train until converged (``sae.stopping.StopRule``): every ``window`` steps a member's
    mean training loss over the last window is compared with the previous window's, and it
    stops when they differ by at most ``rel_tol`` of the previous (``metric: loss``); with
    ``metric: mmcs_truth`` (sources with planted features) when the recall MMCS rose by less
    than ``rel_tol`` (absolute) over the last window; with ``metric: eval_loss`` when the
    objective on the fixed evaluation set improved by at most ``rel_tol`` of its previous
    value (no sampling noise: the set never changes). At most ``max_steps`` steps."""

    metric: Literal["loss", "mmcs_truth", "eval_loss"] = "loss"
    rel_tol: Annotated[float, Gt(0), Le(1)] = 1e-3
    window: PosInt = 500
    max_steps: Annotated[int, Ge(1), Le(10_000_000)] = 50_000


@attrs.frozen
class RecipeSpec:
    """Training recipes beyond the 2022 one (``sae.recipes.Recipe``); every default is off."""

    lr_warmup_steps: Sweepable[NonNegInt] = 0
    lr_decay: Sweepable[Literal["none", "linear"]] = "none"
    lr_decay_frac: Sweepable[Fraction] = 0.2
    l1_warmup_steps: Sweepable[NonNegInt] = 0
    grad_clip: Sweepable[PosFloat] | None = None
    resample_dead_every: Sweepable[NonNegInt] = 0
    resample_encoder_scale: Sweepable[PosFloat] = 0.2
    # decoder atoms initialised as random directions at this norm, encoder = decoder^T
    # (overrides ``init``; SAELens' decoder_init_norm with a tied encoder)
    decoder_init_norm: Sweepable[PosFloat] | None = None


@attrs.frozen
class SAETrainSpec:
    """``steps`` fixed steps, or ``stop`` (train to convergence, at most ``stop.max_steps``)."""

    steps: Sweepable[PosInt] = 20_000
    batch: Sweepable[PosInt] = 256
    lr: Sweepable[PosFloat] = 1e-3
    stop: StopSpec | None = attrs.field(default=None, metadata=ADDED)
    recipe: RecipeSpec | None = attrs.field(default=None, metadata=ADDED)


SAE_COMMON_HEAD = ("kind", "dict_ratio", "dict_size")
SAE_COMMON_TAIL = ("init", "decoder_bias", "seed", "train")


def _sae_field_order(cls, fields):
    """kind, dict_ratio, dict_size, the kind's own fields, init, decoder_bias, seed, train:
    the order of the resolved spec.yaml whatever the kind."""
    by_name = {f.name: f for f in fields}
    fixed = SAE_COMMON_HEAD + SAE_COMMON_TAIL
    own = [f for f in fields if f.name not in fixed]
    return [by_name[n] for n in SAE_COMMON_HEAD if n in by_name] + own + [by_name[n] for n in SAE_COMMON_TAIL]


@attrs.frozen(kw_only=True)
class SAECommon:
    """What every SAE sweep has. Give ``dict_ratio`` or ``dict_size``.

    ``dict_ratio`` is relative to ``n_features`` for toy sources (as in the interim report)
    and to the activation width for LM sources.
    """

    dict_ratio: Sweepable[PosFloat] | None = None
    dict_size: Sweepable[PosInt] | None = None
    init: Sweepable[SAEInit] = "orthogonal"
    decoder_bias: bool = False
    seed: Sweepable[NonNegInt] = 0
    train: SAETrainSpec = SAETrainSpec()


SAE_KINDS: dict[str, type] = {}


def sae_kind(cls):
    """Class decorator for the spec of one SAE kind (a subclass of ``SAECommon`` with a
    ``kind: Literal[...]`` field and the kind's own hyperparameters, named as the model's
    ``params`` in ``sae/``): makes it a frozen attrs class and registers it by kind."""
    cls = attrs.frozen(kw_only=True, field_transformer=_sae_field_order)(cls)
    kind = attrs.fields_dict(cls)["kind"].default
    SAE_KINDS[kind] = cls
    return cls


class SAESpec:
    """Annotation marker: the ``sae`` field, one block (one of ``SAE_KINDS`` chosen by its
    ``kind``, ``relu_l1`` when absent) or a tuple of blocks (YAML: a non-empty list of
    mappings, each its own kind and sweeps; paths inside it are ``sae[i].k``). Structured by
    ``engine.convert``; ``Spec.sae_blocks`` lists the blocks with their paths."""


# ---------------------------------------------------------------- SAE kinds


@sae_kind
class ReluL1SAE(SAECommon):
    """The interim report's SAE: ReLU codes, L1 penalty (``sae/relu_l1.py``)."""

    kind: Literal["relu_l1"] = "relu_l1"
    l1: Sweepable[Annotated[float, Ge(0), Le(1e30)]]
    # "free": atoms not renormalised after each step (with recipe.decoder_init_norm)
    decoder_norm: Literal["unit", "free"] = attrs.field(default="unit", metadata=ADDED)
    # "decoder_norm": the L1 term weights each |c_j| by ||W_dec_j|| (Anthropic, April 2024)
    l1_weighting: Literal["plain", "decoder_norm"] = attrs.field(default="plain", metadata=ADDED)


@sae_kind
class TopKSAE(SAECommon):
    """TopK (Gao et al. 2024): the k largest codes per sample; AuxK on dead latents
    (``sae/topk.py``). ``dead_tokens``: a latent is dead after this many training samples
    without firing (Gao et al.: 10M; the default here is 1,000 steps of 256)."""

    kind: Literal["topk"] = "topk"
    k: Sweepable[PosInt]
    aux_coef: Sweepable[NonNegFloat] = 1 / 32
    dead_tokens: PosInt = 256_000


@sae_kind
class BatchTopKSAE(SAECommon):
    """BatchTopK (Bussmann et al. 2024): the k * batch largest codes of a batch while training,
    a global threshold (a running estimate, saved) at inference (``sae/batchtopk.py``)."""

    kind: Literal["batchtopk"] = "batchtopk"
    k: Sweepable[PosInt]
    aux_coef: Sweepable[NonNegFloat] = 1 / 32
    dead_tokens: PosInt = 256_000


@sae_kind
class MatryoshkaBatchTopKSAE(SAECommon):
    """Matryoshka BatchTopK (Bussmann et al. 2025): BatchTopK whose nested prefixes (fractions
    of the dictionary, increasing, ending at 1) each reconstruct alone
    (``sae/matryoshka_batchtopk.py``)."""

    kind: Literal["matryoshka_batchtopk"] = "matryoshka_batchtopk"
    k: Sweepable[PosInt]
    aux_coef: Sweepable[NonNegFloat] = 1 / 32
    dead_tokens: PosInt = 256_000
    prefixes: tuple[Fraction, ...] = (0.25, 0.5, 1.0)


@sae_kind
class JumpReLUSAE(SAECommon):
    """JumpReLU (Rajamanoharan et al. 2024): codes pass a learnt per-atom threshold; an L0
    penalty trained through straight-through estimates with a rectangle kernel of width
    ``bandwidth`` (``sae/jumprelu.py``). ``sparsity_coef`` multiplies the mean L0 per sample
    (not divided by m); thresholds start at ``threshold_init``."""

    kind: Literal["jumprelu"] = "jumprelu"
    sparsity_coef: Sweepable[NonNegFloat]
    threshold_init: Sweepable[PosFloat] = 1e-3
    bandwidth: Sweepable[PosFloat] = 1e-3


@sae_kind
class GatedSAE(SAECommon):
    """Gated (Rajamanoharan et al. 2024): a gate path decides which atoms fire, a magnitude
    path sharing its weights (rescaled) sets how much; L1 on the gate, with an auxiliary
    reconstruction through a frozen decoder (``sae/gated.py``). ``l1`` as relu_l1's."""

    kind: Literal["gated"] = "gated"
    l1: Sweepable[Annotated[float, Ge(0), Le(1e30)]]


@attrs.frozen
class EvalSpec:
    samples: PosInt = 4096
    curve_every: PosInt = 500


@attrs.frozen
class RunSpec:
    """Determinism context: part of every cell key because it can change the bits."""

    threads: Annotated[int, Ge(1), Le(256)] = 2
    device: Literal["cpu", "cuda", "auto"] = "cpu"


@attrs.frozen(kw_only=True)
class Spec:
    name: Name
    description: str = ""
    seed: NonNegInt = 0
    sources: dict[SourceName, Source]
    sae: SAESpec
    eval: EvalSpec = EvalSpec()
    run: RunSpec = RunSpec()
    analyses: tuple[Analysis, ...] = DEFAULT_ANALYSES
    zip: tuple[tuple[str, ...], ...] = ()

    def sae_blocks(self) -> list[tuple[tuple, SAECommon]]:
        """Every SAE block with the path it sits at: ``[(("sae",), block)]`` for one mapping,
        ``[(("sae", 0), b0), (("sae", 1), b1), ...]`` for a list."""
        if isinstance(self.sae, tuple):
            return [(("sae", i), b) for i, b in enumerate(self.sae)]
        return [(("sae",), self.sae)]
