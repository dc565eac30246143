"""Shared pieces of the CNNs' forward passes: named stage taps and the pooled linear head."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def run_stages(h: torch.Tensor, stages, feats: dict) -> torch.Tensor:
    """Apply `stages` in order, recording each output as features['stage<i>'] (1-based)."""
    for i, stage in enumerate(stages):
        h = stage(h)
        feats[f"stage{i + 1}"] = h
    return h


def pooled_head(h: torch.Tensor, fc: nn.Module, feats: dict) -> dict:
    """Global average pool + linear head; records `pre_pool` and `pooled`; returns the ModelOutput."""
    feats["pre_pool"] = h
    pooled = F.adaptive_avg_pool2d(h, 1).flatten(1)
    feats["pooled"] = pooled
    return {"logits": fc(pooled), "features": feats}
