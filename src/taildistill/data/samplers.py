"""Epoch samplers over a long-tailed training set, as per-sample weights or permutations.

Each sampler returns the indices of one epoch from a seeded torch.Generator, so an epoch is
reproducible and identical on every DDP rank before sharding. An epoch is N indices (the
training-set size), except class-aware sampling's C x n_max (see :func:`class_aware_indices`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError

SAMPLERS = ("instance", "class_balanced", "sqrt", "effective_number", "class_aware")
# class-aware sampling draws this many images of a class at each visit (the decoupling reference
# code's ClassAwareSampler, num_samples_cls: 4, which Kang et al. 2020 train their classifiers with)
CLASS_AWARE_RUN = 4


def sample_weights(labels: np.ndarray, class_counts: list[int], kind: str, beta: float = 0.9999) -> np.ndarray | None:
    """Per-sample sampling weights (None for instance sampling, a plain permutation, and for
    class-aware sampling, which visits classes in turn instead of drawing by weight).

    class_balanced: every class equally likely (w = 1/n_c); sqrt: class mass proportional to
    sqrt(n_c) (w = n_c^-1/2); effective_number: w = (1 - beta) / (1 - beta^n_c) (Cui et al.).
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if kind in ("instance", "class_aware"):
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
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.num_classes = len(class_counts)
        w = sample_weights(labels, class_counts, kind, beta)
        self.weights = None if w is None else torch.as_tensor(w, dtype=torch.float64)

    def indices(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.kind == "class_aware":
            return class_aware_indices(self.labels, self.num_classes, g)
        if self.weights is None:
            return torch.randperm(self.n, generator=g)
        return torch.multinomial(self.weights, self.n, replacement=True, generator=g)


def class_aware_indices(labels: torch.Tensor, num_classes: int, g: torch.Generator,
                        run: int = CLASS_AWARE_RUN) -> torch.Tensor:
    """One epoch of class-aware sampling (Shen et al. 2016; the sampler Kang et al. 2020 retrain
    classifiers with): C x n_max indices (n_max = the largest class's size), so an epoch shows
    as many images as a balanced set of the head class's size. Classes are visited in rounds, each
    round every class once in a new random order; each visit takes the next `run` images of the
    class, cycling through the class in a new random order each time it is exhausted (a tail
    class's images repeat, a head class's are each seen about once). labels: (N,) -> (C x n_max,)."""
    counts_all = torch.bincount(labels, minlength=num_classes)
    present = torch.nonzero(counts_all).flatten()
    total = int(counts_all.max()) * len(present)
    visits = -(-total // run)
    rounds = -(-visits // len(present))
    order = torch.cat([present[torch.randperm(len(present), generator=g)] for _ in range(rounds)])[:visits]
    per_class = torch.bincount(order, minlength=num_classes)
    by_class = torch.argsort(labels, stable=True)  # the training indices grouped by class
    first = torch.cumsum(counts_all, 0) - counts_all
    streams = []  # per class, its images for all its visits: reshuffled passes over the class
    for c in present.tolist():
        need = run * int(per_class[c])
        n = int(counts_all[c])
        passes = -(-need // n)
        perms = torch.rand(passes, n, generator=g).argsort(dim=1)
        streams.append(by_class[int(first[c]) + perms.flatten()[:need]])
    stream = torch.cat(streams)
    stream_first = torch.zeros(num_classes, dtype=torch.long)
    stream_first[present] = torch.cumsum(run * per_class[present], 0) - run * per_class[present]
    # the k-th visit of class c takes its stream's images k*run .. k*run + run - 1
    sorted_visits = torch.argsort(order, stable=True)
    visit_no = torch.empty(visits, dtype=torch.long)
    visit_no[sorted_visits] = torch.arange(visits) - (torch.cumsum(per_class, 0) - per_class)[order[sorted_visits]]
    idx = (stream_first[order] + visit_no * run).unsqueeze(1) + torch.arange(run)
    return stream[idx.flatten()][:total]
