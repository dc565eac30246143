"""Feature-map distillation losses of the two feature-based baselines LTKD compares with
(LTKD Table 1): ReviewKD's hierarchical context loss and CAT-KD's class-attention transfer.
Pure functions of tensors, like the logit losses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_activation_maps(feature_map: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Class activation maps (CAT-KD Sec. 3.1): the linear classifier applied at every position
    of the last feature map, i.e. the head as a 1x1 convolution. feature_map (B, D, H, W),
    weight (K, D), bias (K,) -> (B, K, H, W). Averaging the maps over H, W gives the logits."""
    cams = torch.einsum("bdhw,kd->bkhw", feature_map.float(), weight.float())
    if bias is not None:
        cams = cams + bias.float()[None, :, None, None]
    return cams


def cat_loss(student_cams: torch.Tensor, teacher_cams: torch.Tensor, resolution: int = 2,
             normalize: bool = True) -> torch.Tensor:
    """Class attention transfer (CAT-KD Sec. 3.3): both maps average-pooled to
    (resolution x resolution); with `normalize`, each class's pooled map is scaled to unit L2
    norm (so only where the class attends is transferred, not how strongly); then the mean
    squared difference over batch, classes and positions. CAMs (B, K, H, W), H and W may differ
    between student and teacher."""
    s = F.adaptive_avg_pool2d(student_cams.float(), resolution).flatten(2)  # (B, K, r*r)
    t = F.adaptive_avg_pool2d(teacher_cams.float(), resolution).flatten(2)
    if normalize:
        s, t = F.normalize(s, dim=2), F.normalize(t, dim=2)
    return (s - t).pow(2).mean()


def hcl_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor],
             levels: tuple[int, ...] = (4, 2, 1)) -> torch.Tensor:
    """ReviewKD's hierarchical context loss (Chen et al. 2021, Sec. 3.3), summed over feature
    pairs. For one pair (B, C, H, W) (the student's already mapped to the teacher's shape):
    MSE at full resolution with weight 1, plus MSE after adaptive average pooling to each level
    l < H with weights 1/2, 1/4, ... (halved per level used); the weighted sum is divided by
    the sum of the weights."""
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for fs, ft in zip(student_features, teacher_features, strict=True):
        fs, ft = fs.float(), ft.float()
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for level in levels:
            if level >= fs.shape[-1]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, level), F.adaptive_avg_pool2d(ft, level))
            weights += weight
        total = total + loss / weights
    return total
