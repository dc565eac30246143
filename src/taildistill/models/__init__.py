"""Model registry. Every model maps an input batch to a dict (the ModelOutput):

- ``logits`` (B, C): what prediction uses;
- ``features``: ordered name -> tensor (stage outputs, ``pre_pool``, ``pooled``);
- optional extras: ``logits_cls`` / ``logits_dist`` (two-head ViT), ``expert_logits`` (B, E, C)
  (multi-expert RIDE network), ``firing_rates`` (SNN).

``build_model(name, num_classes, in_channels, image_size, **kwargs)`` builds one by name;
``taildistill models`` lists them with parameter counts.
"""
from __future__ import annotations

from ..registry import Registry

MODELS: Registry = Registry("model")


EXTERNAL = ("timm:", "torchvision:")


def check_model_name(name: str) -> None:
    """A registered name, or timm:NAME / torchvision:NAME (checked when built)."""
    if not name.startswith(EXTERNAL):
        MODELS.get(name)


def build_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32,
                kwargs_key: str = "model.kwargs", **kwargs):
    """A registered model, or any timm / torchvision classifier (`timm:resnet18`), with the
    output contract above. `kwargs_key` names where the kwargs came from, for errors."""
    from .common import construct

    if name.startswith(EXTERNAL):
        from .external import build_external

        return build_external(name, num_classes, in_channels, image_size, kwargs_key=kwargs_key, **kwargs)
    return construct(name, MODELS.get(name), kwargs, kwargs_key, num_classes=num_classes, in_channels=in_channels,
                     image_size=image_size)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


from . import cifar_resnet, decoupled, imagenet, mobile, pretrained, ride, small, spiking, vgg, vit, wrn  # noqa: E402,F401  (registration side effects)
from .external import ExternalClassifier, wrap_model  # noqa: E402
