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
Analysis = Literal["mmcs_truth", "dead", "l0", "mse", "fvu", "mmcs_larger", "feature_count", "ce_recovered"]
ALL_ANALYSES: tuple[str, ...] = Analysis.__args__  # type: ignore[attr-defined]


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


Source = Union[ToySource, LMSource]
SOURCE_KINDS: dict[str, type] = {"toy": ToySource, "lm": LMSource}


# ---------------------------------------------------------------- SAE sweep


@attrs.frozen
class SAETrainSpec:
    steps: Sweepable[PosInt] = 20_000
    batch: Sweepable[PosInt] = 256
    lr: Sweepable[PosFloat] = 1e-3


@attrs.frozen(kw_only=True)
class SAESpec:
    """One SAE sweep, applied to every source. Give ``dict_ratio`` or ``dict_size``.

    ``dict_ratio`` is relative to ``n_features`` for toy sources (as in the interim report)
    and to the activation width for LM sources.
    """

    kind: Literal["relu_l1"] = "relu_l1"
    dict_ratio: Sweepable[PosFloat] | None = None
    dict_size: Sweepable[PosInt] | None = None
    l1: Sweepable[Annotated[float, Ge(0), Le(1e30)]]
    init: Sweepable[SAEInit] = "orthogonal"
    decoder_bias: bool = False
    seed: Sweepable[NonNegInt] = 0
    train: SAETrainSpec = SAETrainSpec()


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
    analyses: tuple[Analysis, ...] = ALL_ANALYSES
    zip: tuple[tuple[str, ...], ...] = ()
