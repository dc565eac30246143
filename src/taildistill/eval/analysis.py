"""Analyses from the papers, computed on a trained model:

- ``rank``: feature rank of tail-class features (DeiT-LT supplement G): centre the features of all
  test images, take the right singular vectors V, and report the least k such that projecting the
  tail-class features on V_k reconstructs them with relative squared error <= 1 %.
- ``deviation``: per-class feature deviation, the cosine distance between a class's mean feature on
  the training set and on the test set (CCKD Fig. 4a), and ``separability`` (CCKD Fig. 4b): mean
  distance of a test sample to its own class centre over the mean distance to the other centres.
- ``attention``: mean attention distance per block of a ViT (DeiT-LT Fig. 4b), in patches.
- ``firing``: mean firing rate per LIF layer of a spiking model on the test set.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import DataConfig

ANALYSES = ("rank", "deviation", "attention", "firing")


def feature_rank(all_features: torch.Tensor, subset_features: torch.Tensor, tol: float = 0.01) -> int:
    """Least k with ||F_sub - F_sub V_k V_k^T||^2 / ||F_sub||^2 <= tol (V from the centred F_all)."""
    mean = all_features.mean(0, keepdim=True)
    fa = (all_features - mean).double()
    fs = (subset_features - mean).double()
    _, _, vh = torch.linalg.svd(fa, full_matrices=False)
    total = (fs ** 2).sum()
    for k in range(1, vh.shape[0] + 1):
        vk = vh[:k].t()
        err = ((fs - fs @ vk @ vk.t()) ** 2).sum()
        if err <= tol * total:
            return k
    return vh.shape[0]


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype).index_add_(0, labels, features)
    return sums / torch.bincount(labels, minlength=num_classes).clamp_min(1)[:, None]


def feature_deviation(train_f, train_y, test_f, test_y, num_classes: int) -> list[float]:
    """Per class: 1 - cos(mean train feature, mean test feature)."""
    a, b = class_means(train_f, train_y, num_classes), class_means(test_f, test_y, num_classes)
    return (1 - F.cosine_similarity(a, b, dim=1)).tolist()


def feature_separability(test_f, test_y, num_classes: int) -> list[float]:
    """Per class: mean distance to the own class centre / mean distance to the other centres."""
    centres = class_means(test_f, test_y, num_classes)
    d = torch.cdist(test_f, centres)  # (N, C)
    own = d.gather(1, test_y[:, None]).squeeze(1)
    other = (d.sum(1) - own) / max(1, num_classes - 1)
    ratio = own / other.clamp_min(1e-12)
    return class_means(ratio[:, None], test_y, num_classes).squeeze(1).tolist()


@torch.no_grad()
def mean_firing_rates(model, split, info, augment, device, num_workers: int = DataConfig.num_workers) -> dict[str, float]:
    """Mean spike rate of every LIF layer over a split (weighted by batch size); a streamed split
    is decoded by `num_workers` loader processes."""
    from .predict import eval_batches

    model.eval()
    totals: dict[str, float] = {}
    n = 0
    for x, _ in eval_batches(split, info, augment, device, 256, num_workers=num_workers):
        rates = model(x)["firing_rates"]
        for k, v in rates.items():
            totals[k] = totals.get(k, 0.0) + float(v) * len(x)
        n += len(x)
    return {k: v / max(1, n) for k, v in totals.items()}
