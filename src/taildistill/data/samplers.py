"""Epoch samplers over a long-tailed training set, as per-sample weights or permutations.

Each sampler returns the indices of one epoch from a seeded torch.Generator, so an epoch is
reproducible and identical on every DDP rank before sharding. An epoch is N indices (the
training-set size).
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
        if self.kind == "class_aware":
            return class_aware_indices(self.labels, self.num_classes, self.seed, epoch, self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.weights is None:
            return torch.randperm(self.n, generator=g)
        return torch.multinomial(self.weights, self.n, replacement=True, generator=g)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: uint64 -> well-spread uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(seed: int, *parts: np.ndarray) -> np.ndarray:
    """A pseudo-random uint64 per element of equally long integer arrays, fixed by (seed, parts)."""
    h = _mix(np.full(len(parts[0]), seed, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    for part in parts:
        h = _mix(h ^ part.astype(np.uint64))
    return h


def _generator(*key: int) -> torch.Generator:
    seed = 0
    for k in key:
        seed = (seed * 1_000_003 + k + 1) % (2**63)
    return torch.Generator().manual_seed(seed)


def class_aware_indices(labels: torch.Tensor, num_classes: int, seed: int, epoch: int, n: int,
                        run: int = CLASS_AWARE_RUN) -> torch.Tensor:
    """Epoch `epoch`'s n indices of one endless class-aware stream (Shen et al. 2016; the sampler
    Kang et al. 2020 retrain classifiers with, whose code ends each epoch after N / batch steps of it:
    an epoch is N images, and the stream goes on where the last epoch stopped). The stream visits
    the classes in rounds, every class once per round in a new random order; a visit takes the
    class's next `run` images, each class cycling through its images in a new random order per pass.
    A class is seen equally often, a head class's images each once before any repeats, a tail
    class's over and over. Deterministic in (seed, epoch), without replaying earlier epochs: round r
    and pass p of class c have their own seeded orders. labels: (N,) -> (n,)."""
    counts = torch.bincount(labels, minlength=num_classes)
    present = torch.nonzero(counts).flatten()
    by_class = torch.argsort(labels, stable=True)  # the training indices grouped by class
    first = torch.cumsum(counts, 0) - counts
    q = torch.arange(epoch * n, (epoch + 1) * n)  # stream positions of this epoch
    visit, j = q // run, q % run
    rnd, slot = visit // len(present), visit % len(present)
    r0 = int(rnd[0])
    orders = torch.stack([torch.randperm(len(present), generator=_generator(seed, 0, r))
                          for r in range(r0, int(rnd[-1]) + 1)])
    cls = present[orders[rnd - r0, slot]]
    t = rnd * run + j  # position in the class's own stream: its r-th visit is in round r
    size = counts[cls]
    pas, off = t // size, t % size
    # each needed pass (c, p): its class's images ordered by a hash of (seed, c, p, image): one
    # vectorised sort instead of a seeded generator per pass (tens of thousands on iNaturalist)
    stride = int(pas.max()) + 1
    pairs, inverse = torch.unique(cls * stride + pas, return_inverse=True)
    pair_c, pair_p = pairs // stride, pairs % stride
    sizes = counts[pair_c]
    group = torch.repeat_interleave(torch.arange(len(pairs)), sizes)
    base = torch.cumsum(sizes, 0) - sizes
    image = torch.arange(int(sizes.sum())) - base[group]
    key = _hash(seed, pair_c[group].numpy(), pair_p[group].numpy(), image.numpy())
    order = np.lexsort((key, group.numpy()))  # by pass, then by the hash within the pass
    within = image[torch.from_numpy(order)][base[inverse] + off]
    return by_class[first[cls] + within]
