"""Pre-trained teachers for CCKD / ACCKD: a frozen backbone from a local checkpoint and a head.

Backbones (`backbone`): ``timm:<name>`` (any timm model, e.g. an open_clip-style ViT image
encoder such as ``vit_base_patch16_clip_224``), ``torchvision:<name>`` or ``registry:<name>`` (a
taildistill model). Weights come only from ``checkpoint`` (a local .safetensors / torch file read
with weights_only=True); nothing is downloaded.

Heads (`head`):
- ``zeroshot``: cosine classifier whose weights are given class embeddings (e.g. text embeddings
  of prompts), read from ``class_embeddings`` (.safetensors key ``embeddings``, .npy, or .pt);
- ``ncm``: cosine classifier on the class means of the training features (set by the engine
  before training through :meth:`set_class_means`);
- ``linear``: a linear probe, trained (e.g. with the logit-adjustment loss) while the backbone
  stays frozen; with ``adapter_dim > 0`` AdaptFormer bottleneck adapters are added in parallel to
  every transformer MLP of a timm ViT and trained with it.
Cosine heads multiply by ``scale``; the engine can fit it on the validation split (temperature
scaling, ``calibrate: true``) so the logits are calibrated.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from . import MODELS

HEADS = ("zeroshot", "ncm", "linear")


class Adapter(nn.Module):
    """AdaptFormer bottleneck: x -> up(relu(down(x))) * s, added to the frozen MLP's output."""

    def __init__(self, dim: int, bottleneck: int, scale: float = 0.1):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.down(x))) * self.scale


class AdaptedMLP(nn.Module):
    def __init__(self, mlp: nn.Module, dim: int, bottleneck: int):
        super().__init__()
        self.mlp = mlp
        self.adapter = Adapter(dim, bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.adapter(x)


def build_backbone(spec: str, in_channels: int, kwargs: dict) -> tuple[nn.Module, int]:
    """A module mapping images to (B, D) features, and D."""
    kind, _, name = spec.partition(":")
    if kind == "timm":
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels, **kwargs)
        return model, model.num_features
    if kind == "torchvision":
        import torchvision.models as tvm

        model = getattr(tvm, name)(weights=None, **kwargs)
        dim = model.fc.in_features
        model.fc = nn.Identity()
        return model, dim
    if kind == "registry":
        inner = MODELS.get(name)(num_classes=1, in_channels=in_channels, **kwargs)

        class Pooled(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner(x)["features"]["pooled"]

        return Pooled(inner), inner.feature_dim
    raise ConfigError(f"backbone must look like timm:<name>, torchvision:<name> or registry:<name>, got '{spec}'")


def read_embeddings(path: str) -> torch.Tensor:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"class embeddings file not found: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))["embeddings"].float()
        if p.suffix == ".npy":
            return torch.from_numpy(np.load(p, allow_pickle=False)).float()
        return torch.load(p, map_location="cpu", weights_only=True).float()
    except Exception as exc:
        raise ConfigError(f"cannot read class embeddings {p}: {exc}") from None


class PretrainedTeacher(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, backbone: str, checkpoint: str, head: str,
                 class_embeddings: str, scale: float, adapter_dim: int, input_size: int, backbone_kwargs: dict):
        super().__init__()
        from .imagenet import load_local_weights

        if head not in HEADS:
            raise ConfigError(f"pretrained head must be one of {', '.join(HEADS)}, got '{head}'")
        if not scale > 0 or adapter_dim < 0:
            raise ConfigError(f"a pretrained teacher needs scale > 0 and adapter_dim >= 0, got {scale} and {adapter_dim}")
        self.backbone, dim = build_backbone(backbone, in_channels, backbone_kwargs)
        if checkpoint:  # a registry model's checkpoint holds the unwrapped model's keys
            load_local_weights(getattr(self.backbone, "inner", self.backbone), checkpoint)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        if adapter_dim > 0:
            blocks = getattr(self.backbone, "blocks", None)
            if blocks is None:
                raise ConfigError("adapter_dim > 0 needs a transformer backbone with .blocks (a timm ViT)")
            for blk in blocks:
                blk.mlp = AdaptedMLP(blk.mlp, dim, adapter_dim)
        self.head_kind = head
        self.input_size = input_size
        self.feature_dim = dim
        self.needs_class_means = head == "ncm"
        self.register_buffer("logit_scale", torch.tensor(float(scale)))
        if head == "linear":
            self.fc = nn.Linear(dim, num_classes)
        else:
            weights = torch.zeros(num_classes, dim)
            if head == "zeroshot":
                if not class_embeddings:
                    raise ConfigError("the zeroshot head needs model.kwargs.class_embeddings (a local file)")
                weights = read_embeddings(class_embeddings)
                if weights.shape != (num_classes, dim):
                    raise ConfigError(f"class embeddings have shape {tuple(weights.shape)}, expected ({num_classes}, {dim})")
            self.register_buffer("class_weights", F.normalize(weights, dim=1))

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen statistics (BatchNorm, dropout) even while the head trains
        for m in self.backbone.modules():
            if isinstance(m, Adapter):
                m.train(mode)
        return self

    @torch.no_grad()
    def set_class_means(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """NCM head: cosine classifier on per-class means of (normalised) training features."""
        f = F.normalize(features.float(), dim=1)
        sums = torch.zeros_like(self.class_weights).index_add_(0, labels.to(f.device), f.to(self.class_weights.device))
        self.class_weights.copy_(F.normalize(sums, dim=1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> dict:
        f = self.embed(x)
        if self.head_kind == "linear":
            logits = self.fc(f)
        else:
            logits = self.logit_scale * F.normalize(f.float(), dim=1) @ self.class_weights.t()
        return {"logits": logits, "features": {"embedding": f, "pooled": f}}


@MODELS.register("pretrained")
def pretrained(num_classes: int, in_channels: int = 3, image_size: int = 224, backbone: str = "timm:resnet18",
               checkpoint: str = "", head: str = "linear", class_embeddings: str = "", scale: float = 30.0,
               adapter_dim: int = 0, input_size: int = 0, backbone_kwargs: dict | None = None):
    return PretrainedTeacher(num_classes, in_channels, backbone, checkpoint, head, class_embeddings, scale,
                             adapter_dim, input_size, backbone_kwargs or {})
