"""Synthetic sparse-feature data with known ground truth (plain torch, no engine imports)."""

from .config import ToyDataConfig
from .features import planted_features
from .generator import ToyData
from .synth import SynthConfig, SynthData

__all__ = ["SynthConfig", "SynthData", "ToyData", "ToyDataConfig", "planted_features"]
