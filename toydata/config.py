"""Configuration of a synthetic sparse-feature data source."""

from __future__ import annotations

import math

import attrs

CORRELATIONS = ("batch", "none", "per_sample")
MAGNITUDES = ("uniform", "constant", "product")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive_int(inst, attribute, value):
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{attribute.name} must be a positive integer, got {value!r}")


def _non_negative_finite(inst, attribute, value):
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _one_of(choices):
    def check(inst, attribute, value):
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {', '.join(map(repr, choices))}, got {value!r}")

    return check


@attrs.frozen
class ToyDataConfig:
    """What a toy data source looks like; see :class:`toydata.ToyData` for the semantics.

    - ``n_features``, ``dim``: number of planted features and their dimension.
    - ``active_per_sample``: target expected number of active features per sample
      (``0 < active_per_sample <= n_features``).
    - ``decay``: feature ``i``'s base probability is proportional to ``decay**i`` (``0 < decay <= 1``).
    - ``correlation``: ``"batch"`` (faithful replication generator), ``"none"`` or ``"per_sample"``.
    - ``correlation_rank``, ``correlation_strength``: the low-rank copula factor (``per_sample`` only).
    - ``magnitude``: ``"uniform"`` U[0,1), ``"constant"`` 1.0, or ``"product"`` (product of two
      U[0,1), the replication generator before 2023-06-29).
    - ``noise_std``: standard deviation of isotropic Gaussian noise added to ``x`` (0 = none).
    """

    n_features: int = attrs.field(validator=_positive_int)
    dim: int = attrs.field(validator=_positive_int)
    active_per_sample: float = attrs.field(default=5.0)
    decay: float = attrs.field(default=0.99)
    correlation: str = attrs.field(default="batch", validator=_one_of(CORRELATIONS))
    correlation_rank: int = attrs.field(default=8, validator=_positive_int)
    correlation_strength: float = attrs.field(default=1.0, validator=_non_negative_finite)
    magnitude: str = attrs.field(default="uniform", validator=_one_of(MAGNITUDES))
    noise_std: float = attrs.field(default=0.0, validator=_non_negative_finite)

    @active_per_sample.validator
    def _check_active(self, attribute, value):
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"active_per_sample must be a finite number > 0, got {value!r}")
        if value > self.n_features:
            raise ValueError(
                f"active_per_sample ({value!r}) cannot exceed n_features ({self.n_features!r})"
            )

    @decay.validator
    def _check_decay(self, attribute, value):
        if not _is_number(value) or not (0 < value <= 1):
            raise ValueError(f"decay must be in (0, 1], got {value!r}")
