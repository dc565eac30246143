"""Mobile models: CIFAR MobileNetV2 (width 0.5 in the distillation benchmarks), CIFAR ShuffleNetV1,
and MobileNetV1 for ImageNet-size inputs."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import MODELS
from .common import pooled_head, run_stages


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(_conv_bn(cin, hidden, 1, 1), _conv_bn(hidden, hidden, 3, stride, hidden),
                                  _conv_bn(hidden, cout, 1, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2 as the distillation benchmarks have it (`mobile_half`: a stride-2 stem, then
    their stage layout; 16x16 maps after the stem at 32 px); `width` multiplies channels."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 0.5):
        super().__init__()
        cin = int(32 * width)
        self.stem = _conv_bn(in_channels, cin, 3, 2)
        stages = []
        for t, c, n, s in self.SETTINGS:
            cout = int(c * width)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.last = _conv_bn(cin, 1280, 1, 1)
        self.fc = nn.Linear(1280, num_classes)
        self.feature_dim = 1280

    def forward(self, x: torch.Tensor) -> dict:
        feats: dict = {}
        h = run_stages(self.stem(x), self.stages, feats)
        return pooled_head(self.last(h), self.fc, feats)


@MODELS.register("mobilenetv2")
def mobilenetv2(num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 0.5):
    return MobileNetV2(num_classes, in_channels, width)


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    B, C, H, W = x.shape
    return x.view(B, groups, C // groups, H, W).transpose(1, 2).reshape(B, C, H, W)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        branch = cout - cin if stride == 2 else cout  # a stride-2 unit concatenates its pooled input
        mid = branch // 4  # the bottleneck is a quarter of what the branch itself outputs
        g = 1 if cin == 24 else groups  # the first unit's input has too few channels to group
        self.conv1 = _conv_bn(cin, mid, 1, 1, groups=g)
        self.groups = g
        self.conv2 = _conv_bn(mid, mid, 3, stride, groups=mid, act=False)
        self.conv3 = _conv_bn(mid, branch, 1, 1, groups=groups, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(_shuffle(self.conv1(x), self.groups)))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    """CIFAR ShuffleNetV1 (g = 3): stages of 4 / 8 / 4 units with 240 / 480 / 960 channels."""

    def __init__(self, num_classes: int, in_channels: int = 3, groups: int = 3,
                 out_planes=(240, 480, 960), num_blocks=(4, 8, 4)):
        super().__init__()
        self.stem = _conv_bn(in_channels, 24, 1, 1)
        cin = 24
        stages = []
        for cout, n in zip(out_planes, num_blocks):
            units = []
            for i in range(n):
                units.append(ShuffleUnit(cin, cout, 2 if i == 0 else 1, groups))
                cin = cout
            stages.append(nn.Sequential(*units))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(cin, num_classes)
        self.feature_dim = cin

    def forward(self, x: torch.Tensor) -> dict:
        feats: dict = {}
        return pooled_head(run_stages(self.stem(x), self.stages, feats), self.fc, feats)


@MODELS.register("shufflenetv1")
def shufflenetv1(num_classes: int, in_channels: int = 3, image_size: int = 32, groups: int = 3):
    return ShuffleNetV1(num_classes, in_channels, groups)


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al.) for ImageNet-size inputs: depthwise-separable convolutions."""

    CFG = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        cin = int(32 * width)
        layers = [_conv_bn(in_channels, cin, 3, 2)]
        for c, s in self.CFG:
            cout = int(c * width)
            layers.append(nn.Sequential(_conv_bn(cin, cin, 3, s, groups=cin), _conv_bn(cin, cout, 1, 1)))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        self.feature_dim = cin

    def forward(self, x: torch.Tensor) -> dict:
        return pooled_head(self.body(x), self.fc, {})


@MODELS.register("mobilenetv1")
def mobilenetv1(num_classes: int, in_channels: int = 3, image_size: int = 224, width: float = 1.0,
                weights: str = ""):
    from .imagenet import load_local_weights

    return load_local_weights(MobileNetV1(num_classes, in_channels, width), weights)
