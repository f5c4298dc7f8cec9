"""Sparse autoencoders on tensors: models, ensemble training, initialisations, metrics.

A plain library: it knows nothing of specs, bundles or the CLI, and takes all of its
randomness from ``torch.Generator`` objects passed in.
"""

from .init import INIT_KINDS, init_weights
from .matching import F1Counter, assign_latents, latent_f1, mcc
from .metrics import cosine_matrix, evaluate, max_cosine, mmcs, mmcs_larger, mmcs_truth
from .relu_l1 import ReluL1
from .train import curve_points, train, train_members

__all__ = [
    "F1Counter",
    "INIT_KINDS",
    "ReluL1",
    "assign_latents",
    "latent_f1",
    "mcc",
    "train_members",
    "cosine_matrix",
    "curve_points",
    "evaluate",
    "init_weights",
    "max_cosine",
    "mmcs",
    "mmcs_larger",
    "mmcs_truth",
    "train",
]
