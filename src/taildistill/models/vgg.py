"""VGG with batch norm for CIFAR, as in the distillation benchmarks (vgg8, vgg11, vgg13)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import MODELS
from .common import pooled_head

_CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class VGG(nn.Module):
    def __init__(self, layout, num_classes: int, in_channels: int = 3):
        super().__init__()
        blocks, cin = [], in_channels
        for stage in layout:
            layers = []
            for w in stage:
                layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(cin, num_classes)
        self.feature_dim = cin

    def forward(self, x: torch.Tensor) -> dict:
        feats = {}
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            feats[f"stage{i + 1}"] = h
            if i < len(self.blocks) - 1 and h.shape[-1] > 1:
                h = F.max_pool2d(h, 2)
        return pooled_head(h, self.fc, feats)


def _vgg(name: str):
    def factory(num_classes: int, in_channels: int = 3, image_size: int = 32):
        return VGG(_CFG[name], num_classes, in_channels)

    return factory


for _name in _CFG:
    MODELS.register(_name)(_vgg(_name))
