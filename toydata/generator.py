"""The toy data source: planted features plus a sparse-code generator."""

from __future__ import annotations

import operator

import attrs
import torch
from torch import Tensor

from .config import ToyDataConfig
from .features import planted_features
from .probability import base_probabilities, batch_probabilities, decay_weights
from .sampling import assemble, bernoulli_positions, fill_empty_rows, magnitudes
from .structure import batch_covariance_cholesky, copula_factor


@attrs.frozen(eq=False)
class ToyData:
    """Sparse non-negative combinations of planted unit features, with known ground truth.

    ``features``: ``[n, d]`` float32 unit rows. ``probs``: ``[n]`` float32 base firing
    probabilities ``p_i = min(1, c * decay**i)`` with ``c`` chosen so that ``sum(p) ==
    active_per_sample`` (see :func:`toydata.probability.base_probabilities`).

    Correlation modes (``config.correlation``):

    - ``"batch"`` -- faithful to the replication code of the interim report. One
      ``z ~ N(0, Sigma)`` per call to :meth:`sample`, shared by the whole batch;
      ``p = Phi(z) * decay**i`` rescaled to ``mean(p) = active_per_sample / n`` and clipped to
      <= 1; each entry fires independently with probability ``p_i``; a sample with no non-zero
      code gets one uniformly random feature at exactly 1.0. ``Sigma`` is not a correlation
      matrix, so ``Phi(z)`` is nearly binary: the data distribution depends on the batch size.
      ``probs`` is only the nominal decay profile here; per-batch probabilities vary around it.
    - ``"none"`` -- independent Bernoulli(``probs[i]``), no empty-row filling. This is the
      fixed clean variant: the original's uncorrelated mode used ``p_i = decay**i *
      active_per_sample / n`` without rescaling, which gives ~0.97 active features per sample
      (not 5) at the report's settings.
    - ``"per_sample"`` -- Gaussian copula: per sample ``z ~ N(0, C)`` with ``C`` a unit-diagonal
      low-rank-plus-diagonal correlation (see :func:`toydata.structure.copula_factor`); feature
      ``i`` fires iff ``Phi(z_i) < probs[i]``, so its marginal firing probability is exactly
      ``probs[i]``. No empty-row filling.

    Active values follow ``config.magnitude``; ``x = codes @ features`` plus
    ``N(0, noise_std^2 I)`` noise when ``noise_std > 0``. Everything lives on the CPU.

    Each :meth:`sample` call draws, in order: the batch's ``z`` (``batch`` mode) or the copula
    normals (``per_sample``), the firing pattern, the magnitudes, the empty-row columns (``batch``
    mode) and the noise. The noise comes last, so ``noise_std`` does not change the codes. The
    firing pattern is drawn sparsely (see :func:`toydata.sampling.bernoulli_positions`): same
    distribution as one uniform per entry, a different stream from the replication code's.
    """

    config: ToyDataConfig
    features: Tensor
    probs: Tensor
    _decay: Tensor  # [n] float64 decay**i
    _structure: dict[str, Tensor]  # the correlation structure, as saved by ground_truth()

    @classmethod
    def build(cls, config: ToyDataConfig, feature_gen: torch.Generator, structure_gen: torch.Generator) -> ToyData:
        """Draw the features from ``feature_gen`` (independent of the correlation settings) and
        the correlation structure from ``structure_gen`` (nothing is drawn in ``"none"`` mode)."""
        n = config.n_features
        features = planted_features(n, config.dim, feature_gen)
        decay = decay_weights(n, config.decay)
        probs = base_probabilities(decay, config.active_per_sample)
        structure: dict[str, Tensor] = {}
        if config.correlation == "batch":
            structure["covariance_cholesky"] = batch_covariance_cholesky(n, structure_gen)
        elif config.correlation == "per_sample":
            factor, residual_std = copula_factor(
                n, config.correlation_rank, config.correlation_strength, structure_gen
            )
            structure["copula_factor"] = factor.to(torch.float32)
            structure["copula_residual_std"] = residual_std.to(torch.float32)
            # Phi(z_i) < p_i  <=>  z_i < Phi^{-1}(p_i); -inf / +inf for p_i = 0 / 1.
            structure["copula_threshold"] = torch.special.ndtri(probs).to(torch.float32)
        return cls(config, features, probs.to(torch.float32), decay, structure)

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A fresh batch: ``x`` ``[batch, d]`` float32 and ``codes`` ``[batch, n]`` float32 (>= 0, sparse)."""
        if isinstance(batch, bool) or not hasattr(batch, "__index__") or operator.index(batch) < 0:
            raise ValueError(f"batch must be a non-negative integer, got {batch!r}")
        batch = operator.index(batch)
        cfg = self.config
        n = cfg.n_features
        if cfg.correlation == "batch":
            g = torch.randn(n, generator=generator, dtype=torch.float64)
            z = self._structure["covariance_cholesky"] @ g
            p = batch_probabilities(z, self._decay, cfg.active_per_sample)
            rows, cols = bernoulli_positions(p, batch, generator)
        elif cfg.correlation == "none":
            rows, cols = bernoulli_positions(self.probs, batch, generator)
        else:
            rows, cols = self._copula_positions(batch, generator)
        values = magnitudes(cfg.magnitude, rows.numel(), generator)
        codes, x = assemble(rows, cols, values, self.features, batch)
        if cfg.correlation == "batch":
            fill_empty_rows(rows, values, codes, x, self.features, generator)
        if cfg.noise_std > 0:
            x = x + cfg.noise_std * torch.randn(batch, cfg.dim, generator=generator)
        return x, codes

    def _copula_positions(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        # z = F g + r e, one row per sample; F is only [n, rank], so this costs one normal per entry.
        s = self._structure
        factor = s["copula_factor"]
        g = torch.randn(batch, factor.shape[1], generator=generator)
        z = torch.randn(batch, factor.shape[0], generator=generator)
        z.mul_(s["copula_residual_std"]).addmm_(g, factor.T)
        return torch.nonzero(z < s["copula_threshold"], as_tuple=True)

    def ground_truth(self) -> dict[str, Tensor]:
        """Tensors to save (contiguous, no shared storage): ``features`` ``[n, d]``, ``probs`` ``[n]``,
        and the structure actually used: ``covariance_cholesky`` ``[n, n]`` float64 (``batch``), or
        ``copula_factor`` ``[n, rank]``, ``copula_residual_std`` ``[n]`` and ``copula_threshold`` ``[n]``
        (``per_sample``; ``C = F F^T + diag(residual_std^2)``, fire iff ``z < threshold``)."""
        out = {"features": self.features, "probs": self.probs, **self._structure}
        return {k: v.detach().clone().contiguous() for k, v in out.items()}
