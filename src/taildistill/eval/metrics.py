"""Metrics from logits: top-1/top-5, per-class and per-group accuracy, confusion matrix, ECE."""
from __future__ import annotations

import math

import numpy as np
import torch


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class."""
    return np.bincount(target * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def expected_calibration_error(probs: np.ndarray, target: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: sum_b |B|/N * |acc(B) - conf(B)|."""
    conf = probs.max(1)
    correct = probs.argmax(1) == target
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def classification_metrics(logits: torch.Tensor | np.ndarray, target, groups, prefix: str = "") -> dict:
    """All metrics for one set of logits (N, C) against labels (N,).

    Group accuracy is the mean of the per-class accuracies of the group's classes (equal to the
    sample accuracy on a balanced test set); a group with no test class reports NaN (None in JSON).
    Keys: top1, top5, group/<name>, per_class (list), confusion (list of lists), ece, group_policy.
    """
    logits = torch.as_tensor(logits).float()
    target_np = np.asarray(target, dtype=np.int64)
    C = logits.shape[1]
    probs = torch.softmax(logits, 1).numpy()
    pred = probs.argmax(1)
    cm = confusion_matrix(pred, target_np, C)
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    k = min(5, C)
    top5 = (torch.topk(logits, k, 1).indices == torch.as_tensor(target_np)[:, None]).any(1).float().mean().item()
    out = {
        "top1": float((pred == target_np).mean() * 100.0),
        "top5": float(top5 * 100.0),
        "ece": expected_calibration_error(probs, target_np),
        "group_policy": groups.policy,
        "per_class": [None if math.isnan(a) else float(a * 100.0) for a in per_class],
        "confusion": cm.tolist(),
    }
    for gi, name in enumerate(groups.names):
        members = [c for c in groups.members(gi) if support[c] > 0]
        out[f"group/{name}"] = float(np.mean(per_class[members]) * 100.0) if members else None
    if prefix:
        out = {f"{prefix}{k}": v for k, v in out.items()}
    return out


def summary(metrics: dict, groups) -> dict:
    """The scalar part (no per-class lists or matrices), for logs and tables."""
    return {k: v for k, v in metrics.items() if not isinstance(v, list)}
