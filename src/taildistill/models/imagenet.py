"""ImageNet-size ResNets (torchvision's architectures, built from scratch) with feature taps.
Weights are only ever loaded from a local file (`weights: path`), never downloaded."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import ConfigError
from . import MODELS
from .common import pooled_head, read_weight_file, run_stages


def load_local_weights(model: nn.Module, path: str, strict: bool = False) -> nn.Module:
    """Load a local .safetensors or torch checkpoint (read with weights_only=True) into `model`.
    Tensors that do not fit (a head for another class count, a stem changed by `cifar_stem`) are
    skipped, so a checkpoint loads the backbone it shares with the model; a warning names every
    model tensor left at its initialisation, so a skipped stem or a key prefix is never silent."""
    if not path:
        return model
    p = Path(path).expanduser()
    state = read_weight_file(path)
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise ConfigError(f"no tensor of {p} fits the model (is it the right architecture?)")
    left = [k for k in own if k not in fitting and not k.endswith("num_batches_tracked")]
    if left:
        def why(k: str) -> str:
            return (f"{k} (file {list(state[k].shape)}, model {list(own[k].shape)})" if k in state
                    else f"{k} (not in the file)")
        shown = ", ".join(why(k) for k in left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
        warnings.warn(f"weights {p}: {len(left)} of the model's tensors keep their initialisation: {shown}",
                      stacklevel=2)
    model.load_state_dict(fitting, strict=strict and len(fitting) == len(own))
    return model


class TorchvisionResNet(nn.Module):
    """Wraps torchvision's ResNet/ResNeXt: stem, layer1-4 as features, pooled, fc."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.feature_dim = net.fc.in_features

    def forward(self, x: torch.Tensor) -> dict:
        n = self.net
        feats: dict = {}
        h = run_stages(n.maxpool(n.relu(n.bn1(n.conv1(x)))), (n.layer1, n.layer2, n.layer3, n.layer4), feats)
        return pooled_head(h, n.fc, feats)


def _tv(builder: str):
    def factory(num_classes: int, in_channels: int = 3, image_size: int = 224, weights: str = "",
                cosine_head: bool = False, cosine_scale: float = 30.0, cifar_stem: bool = False):
        import torchvision.models as tvm
        from torchvision.models.resnet import BasicBlock, ResNet

        if builder == "resnet10":
            net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
        else:
            net = getattr(tvm, builder)(weights=None, num_classes=num_classes)
        if cifar_stem:  # 32 px inputs: a 3x3 stride-1 stem and no max-pool (the CIFAR ResNet-50 of the KD benchmarks)
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        model = TorchvisionResNet(net)
        if weights:
            load_local_weights(model.net, weights)
        if cosine_head:  # LDAM's normalised classifier
            from .cifar_resnet import CosineLinear

            net.fc = CosineLinear(net.fc.in_features, num_classes, cosine_scale)
        return model

    return factory


for _name in ("resnet10", "resnet18", "resnet34", "resnet50", "resnext50_32x4d", "resnet152"):
    MODELS.register(_name)(_tv(_name))
