"""A spec small enough to run end to end in a few seconds; shared by the end-to-end tests."""

TINY = """\
name: tiny
seed: 0
sources:
  toy: {kind: toy, n_features: 12, dim: 8, active_per_sample: 2, correlation: none}
sae:
  dict_ratio: [1, 2]
  l1: [0.03, 0.1]
  train: {steps: 150, batch: 64, lr: 3.0e-3}
eval: {samples: 512, curve_every: 50}
"""
