"""Epoch samplers over a long-tailed training set, as per-sample weights or permutations.

Each sampler returns the indices of one epoch (length N, the training-set size) from a seeded
torch.Generator, so an epoch is reproducible and identical on every DDP rank before sharding.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError

SAMPLERS = ("instance", "class_balanced", "sqrt", "effective_number")


def sample_weights(labels: np.ndarray, class_counts: list[int], kind: str, beta: float = 0.9999) -> np.ndarray | None:
    """Per-sample sampling weights (None for instance sampling: a plain permutation).

    class_balanced: every class equally likely (w = 1/n_c); sqrt: class mass proportional to
    sqrt(n_c) (w = n_c^-1/2); effective_number: w = (1 - beta) / (1 - beta^n_c) (Cui et al.).
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if kind == "instance":
        return None
    if kind == "class_balanced":
        per_class = 1.0 / counts
    elif kind == "sqrt":
        per_class = counts ** -0.5
    elif kind == "effective_number":
        per_class = (1.0 - beta) / (1.0 - np.power(beta, counts))
    else:
        raise ConfigError(f"unknown sampler '{kind}'; choose one of {', '.join(SAMPLERS)}")
    w = per_class[np.asarray(labels, dtype=np.int64)]
    return w / w.sum()


class EpochSampler:
    """Indices for each epoch: `indices(epoch)` -> LongTensor (N,), deterministic in (seed, epoch)."""

    def __init__(self, labels: np.ndarray, class_counts: list[int], kind: str = "instance",
                 beta: float = 0.9999, seed: int = 0):
        self.n = len(labels)
        self.kind = kind
        self.seed = seed
        w = sample_weights(labels, class_counts, kind, beta)
        self.weights = None if w is None else torch.as_tensor(w, dtype=torch.float64)

    def indices(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.weights is None:
            return torch.randperm(self.n, generator=g)
        return torch.multinomial(self.weights, self.n, replacement=True, generator=g)
