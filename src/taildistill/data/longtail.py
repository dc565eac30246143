"""Long-tailed subset construction: per-class counts for each profile and the exact subset.

``exp`` follows Cao et al. (LDAM-DRW) exactly, so the subset equals the one the widely used
reference code picks from the same labels and seed.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError

PROFILES = ("exp", "step", "pareto", "ltkd", "none")


def longtail_counts(n_max: int, num_classes: int, profile: str = "exp", ratio: float = 100.0) -> list[int]:
    """Images per class for a long-tailed training set, classes in index order.

    - ``exp``: ``n_i = int(n_max * (1/ratio) ** (i / (C - 1)))`` (Cao et al. 2019).
    - ``step``: the first ``C // 2`` classes keep ``n_max``, the rest ``int(n_max / ratio)``.
    - ``pareto``: a power-law (Pareto-shaped, alpha = 6 as ImageNet-LT) decay
      ``n_i = int(n_max * x_i ** -6)`` with ``x_i`` spaced linearly from 1 to ``ratio ** (1/6)``,
      so the largest class has ``n_max`` and the smallest ``n_max / ratio``.
    - ``ltkd``: ``n_c = int(n_max * ratio ** (-c / C))`` (LTKD Eq. 15).
    - ``none``: every class ``n_max`` (balanced).

    Raises DataError for ratio < 1, an unknown profile, or a class that would be left empty.
    """
    if num_classes < 1:
        raise DataError(f"num_classes must be >= 1, got {num_classes}")
    if n_max < 1:
        raise DataError(f"n_max must be >= 1, got {n_max}")
    if ratio < 1:
        raise DataError(f"imbalance ratio must be >= 1, got {ratio}")
    C = num_classes
    if profile == "exp":
        counts = [int(n_max * (1.0 / ratio) ** (i / (C - 1.0))) if C > 1 else n_max for i in range(C)]
    elif profile == "step":
        counts = [n_max if i < C // 2 else int(n_max / ratio) for i in range(C)]
    elif profile == "pareto":
        alpha = 6.0
        xs = np.linspace(1.0, ratio ** (1.0 / alpha), C) if C > 1 else np.ones(1)
        counts = [int(round(n_max * float(x) ** -alpha, 6)) for x in xs]
    elif profile == "ltkd":
        counts = [int(n_max * ratio ** (-c / C)) for c in range(C)]
    elif profile == "none":
        counts = [n_max] * C
    else:
        raise DataError(f"unknown long-tail profile '{profile}'; choose one of {', '.join(PROFILES)}")
    empty = [i for i, n in enumerate(counts) if n < 1]
    if empty:
        raise DataError(
            f"profile '{profile}' with n_max={n_max}, ratio={ratio} leaves class(es) {empty} empty; "
            "raise n_max or lower the ratio"
        )
    return counts


def longtail_indices(labels, counts, seed: int = 0) -> np.ndarray:
    """Indices of the long-tailed subset: for each class in index order, that class's indices
    (ascending) shuffled by one ``np.random.RandomState(seed)`` (seeded once, before the first
    class), keeping the first ``counts[c]``. Returns int64 indices grouped by class.

    No global RNG state is touched. Raises DataError if a class has fewer images than asked.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.RandomState(seed)
    out = []
    for cls, n in enumerate(counts):
        idx = np.where(labels == cls)[0]
        if len(idx) < n:
            raise DataError(f"class {cls} has {len(idx)} images but the long-tail profile asks for {n}")
        if n < 1:
            raise DataError(f"class {cls} would be left empty by the long-tail sampling")
        rng.shuffle(idx)
        out.append(idx[:n])
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


def balanced_split(labels, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Carve ``per_class`` images of every class out of ``labels`` (for a balanced validation
    split). Returns (kept indices, carved indices), both sorted. Uses its own RandomState."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.RandomState(seed + 7919)
    carved = []
    for cls in np.unique(labels):
        idx = np.where(labels == cls)[0]
        if len(idx) <= per_class:
            raise DataError(
                f"class {cls} has {len(idx)} images, too few to carve {per_class} for validation"
            )
        carved.append(rng.permutation(idx)[:per_class])
    carved_idx = np.sort(np.concatenate(carved)) if carved else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[carved_idx] = False
    return np.where(mask)[0], carved_idx


def stratified_split(labels, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split into (rest, held-out) with ``fraction`` of every class held out (at least one)."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.RandomState(seed + 104729)
    held = []
    for cls in np.unique(labels):
        idx = np.where(labels == cls)[0]
        k = max(1, int(round(len(idx) * fraction)))
        held.append(rng.permutation(idx)[:k])
    held_idx = np.sort(np.concatenate(held))
    mask = np.ones(len(labels), dtype=bool)
    mask[held_idx] = False
    return np.where(mask)[0], held_idx
