"""RIDE's multi-expert CIFAR ResNet (Wang et al., ICLR 2021, "Long-tailed Recognition by Routing
Diverse Distribution-Aware Experts"), the network of BKD Sec. 5.8 / Table 8 (RIDE-BKD).

The stem and the first stage are shared; every expert has its own second and third stage and its
own classifier, and the prediction is the mean of the experts' logits. With `reduce_dimension`
(the CIFAR setting of RIDE's code) the experts' stages are 24 and 48 channels wide instead of 32
and 64, so that three experts cost about as much as one ResNet-32. RIDE's optional router (which
skips experts at test time to save computation) is not modelled: every expert always runs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from . import MODELS
from .cifar_resnet import BasicBlock, CosineLinear


class RIDEResNet(nn.Module):
    """Shared stem + stage 1, then `num_experts` branches of stages 2-3 and a head each.

    Output: ``logits`` (B, C) the mean of ``expert_logits`` (B, E, C); ``features``: ``stem``,
    ``stage1`` and, concatenated over the experts along channels, ``stage2``, ``stage3``,
    ``pre_pool`` (B, E*w3, H, W) and ``pooled`` (B, E*w3)."""

    def __init__(self, n: int, num_classes: int, in_channels: int = 3, num_experts: int = 3,
                 reduce_dimension: bool = True, cosine_head: bool = True, cosine_scale: float = 30.0):
        super().__init__()
        if not (isinstance(num_experts, int) and not isinstance(num_experts, bool) and num_experts >= 1):
            raise ConfigError(f"num_experts must be an integer >= 1, got {num_experts!r}")
        w1, (w2, w3) = 16, ((24, 48) if reduce_dimension else (32, 64))
        self.num_experts = num_experts
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True))
        self.stage1 = nn.Sequential(*[BasicBlock(w1, w1, 1, "A") for _ in range(n)])

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(*[BasicBlock(cin if j == 0 else cout, cout, 2 if j == 0 else 1, "A") for j in range(n)])

        self.experts = nn.ModuleList(nn.Sequential(stage(w1, w2), stage(w2, w3)) for _ in range(num_experts))
        self.heads = nn.ModuleList((CosineLinear(w3, num_classes, cosine_scale) if cosine_head else nn.Linear(w3, num_classes))
                                   for _ in range(num_experts))
        self.feature_dim = num_experts * w3
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def prediction_scales(self) -> list[torch.Tensor]:
        """The logit scales temperature calibration divides: every expert's (the prediction is their mean)."""
        return [h.logit_scale for h in self.heads if isinstance(h, CosineLinear)]

    def forward(self, x: torch.Tensor) -> dict:
        h = self.stem(x)
        shared = self.stage1(h)
        feats = {"stem": h, "stage1": shared}
        mids = [branch[0](shared) for branch in self.experts]
        feats["stage2"] = torch.cat(mids, 1)
        feats["stage3"] = torch.cat([branch[1](mid) for branch, mid in zip(self.experts, mids)], 1)
        feats["pre_pool"] = feats["stage3"]
        feats["pooled"] = pooled = F.adaptive_avg_pool2d(feats["stage3"], 1).flatten(1)
        expert_logits = torch.stack([head(p) for head, p in zip(self.heads, pooled.chunk(self.num_experts, 1))], 1)
        return {"logits": expert_logits.mean(1), "expert_logits": expert_logits, "features": feats}


def _ride_resnet(depth: int):
    def factory(num_classes: int, in_channels: int = 3, image_size: int = 32, num_experts: int = 3,
                reduce_dimension: bool = True, cosine_head: bool = True, cosine_scale: float = 30.0) -> RIDEResNet:
        return RIDEResNet((depth - 2) // 6, num_classes, in_channels, num_experts, reduce_dimension, cosine_head,
                          cosine_scale)

    factory.__doc__ = (f"RIDE's ResNet-{depth} with `num_experts` experts; a cosine head of scale 30 per expert "
                       "(RIDE's CIFAR configs: `use_norm: true`, s = 30).")
    return factory


for _depth in (20, 32):  # RIDE's CIFAR network is the ResNet-32; the ResNet-20 keeps the digits demo quick
    MODELS.register(f"ride_resnet{_depth}")(_ride_resnet(_depth))
