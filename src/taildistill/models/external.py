"""Any timm or torchvision classifier as a student or teacher: `model.name: timm:resnet18` or
`torchvision:resnet18`, or a module passed to the Python API (:func:`wrap_model`).

The wrapper gives the registry's output contract, so every method (feature methods included) works:
``{"logits": (B, C), "features": {"stage1".., "pre_pool", "pooled"}}``, with ``feature_dim`` the
classifier's input width. timm models give their stage features through `forward_intermediates`;
torchvision ResNet-style models through hooks on `layer1..4`, other torchvision models the pooled
feature (the classifier's input) only. Weights: `pretrained: true` downloads (online only),
`weights: PATH` loads a local .safetensors / .pth file (read with weights_only=True); every tensor
but a classifier of another class count must fit, and what was loaded is reported.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import ConfigError
from .common import KWARG_ERRORS, construct, read_weight_file


def _classifier(net: nn.Module) -> nn.Linear:
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    if head is None:
        raise ConfigError(f"{type(net).__name__} has no linear classifier; taildistill needs a classification model")
    return head


class ExternalClassifier(nn.Module):
    """A third-party classifier with the registry's output contract (see the module docstring)."""

    def __init__(self, net: nn.Module, in_channels: int = 3, expects_channels: int | None = None):
        super().__init__()
        self.net = net
        self.repeat_channels = expects_channels == 3 and in_channels == 1  # grey images to an RGB network
        self._head = [_classifier(net)]  # a reference, not a submodule: its weights are the net's own
        self.feature_dim = self.head.in_features
        self._captured: dict[str, torch.Tensor] = {}
        self.head.register_forward_pre_hook(lambda m, args: self._captured.__setitem__("pooled", args[0]))
        self.uses_intermediates = hasattr(net, "forward_intermediates") and hasattr(net, "forward_head")
        self.stage_modules = []
        if not self.uses_intermediates and all(hasattr(net, f"layer{i}") for i in range(1, 5)):
            self.stage_modules = [getattr(net, f"layer{i}") for i in range(1, 5)]
            for i, stage in enumerate(self.stage_modules):
                stage.register_forward_hook(lambda m, a, out, i=i: self._captured.__setitem__(f"stage{i + 1}", out))

    @property
    def head(self) -> nn.Linear:
        return self._head[0]

    def forward(self, x: torch.Tensor) -> dict:
        if self.repeat_channels:
            x = x.expand(-1, 3, -1, -1)
        self._captured.clear()
        feats: dict = {}
        if self.uses_intermediates:
            try:
                final, stages = self.net.forward_intermediates(x)
            except (NotImplementedError, TypeError, AssertionError):
                final, stages = self.net.forward_features(x), []
            for i, f in enumerate(stages):
                feats[f"stage{i + 1}"] = f
            if final.dim() == 4:
                feats["pre_pool"] = final
            pooled = self.net.forward_head(final, pre_logits=True)
            logits = self.head(pooled)
        else:
            logits = self.net(x)
            pooled = self._captured["pooled"]
            feats.update({k: v for k, v in self._captured.items() if k.startswith("stage")})
            if "stage4" in feats:
                feats["pre_pool"] = feats["stage4"]
        feats["pooled"] = pooled
        return {"logits": logits, "features": feats}


def _load_local(net: nn.Module, path: str, head: nn.Linear) -> None:
    p = Path(path).expanduser()
    state = read_weight_file(path)
    own = net.state_dict()
    head_keys = {n for n, p in net.named_parameters() if p is head.weight or p is head.bias}
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and own[k].dtype == v.dtype}
    missing = [k for k in own if k not in fitting and k not in head_keys]
    if missing:
        raise ConfigError(f"model weights {p} do not fit: {len(fitting)} of {len(own)} tensors match; "
                          f"missing or different {missing[:3]}")
    net.load_state_dict(fitting, strict=False)
    print(f"note: loaded {len(fitting)} of {len(own)} tensors from {p}"
          + ("" if len(fitting) == len(own) else " (the classifier is new: another class count)"), file=sys.stderr)


def create_fetching(spec: str, create, name: str, pretrained: bool, **kwargs) -> nn.Module:
    """`create(name, **kwargs)`; with `pretrained`, a failure to get the published weights (offline, or
    none published) is named as such."""
    try:
        return create(name, **kwargs)
    except (OSError, RuntimeError) as exc:
        # a download that failed (OSError: no network, hub errors) or timm's "No pretrained weights exist";
        # any other refusal is the model's, named by `construct`
        if not pretrained or (isinstance(exc, RuntimeError) and "pretrained" not in str(exc).lower()):
            raise
        raise ConfigError(f"cannot fetch pretrained weights for {spec} ({type(exc).__name__}: {exc}); offline, "
                          "download them elsewhere and give model.kwargs.weights=PATH") from None


def build_external(spec: str, num_classes: int, in_channels: int = 3, image_size: int = 32, pretrained: bool = False,
                   weights: str = "", kwargs_key: str = "model.kwargs", **kwargs) -> ExternalClassifier:
    """`timm:NAME` or `torchvision:NAME` with `num_classes` outputs (kwargs go to the library)."""
    kind, _, name = spec.partition(":")
    if kind == "timm":
        import timm

        if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
            raise ConfigError(f"timm has no model '{name}' (timm.list_models() lists them)")
        fixed = {"num_classes": num_classes, "in_chans": in_channels}
        if ("vit" in name or "deit" in name) and "img_size" not in kwargs:
            fixed["img_size"] = image_size  # a ViT's position embeddings are sized for the data's images
        net = construct(spec, lambda **kw: create_fetching(spec, timm.create_model, name, pretrained=pretrained, **kw),
                        kwargs, kwargs_key, **fixed)
        expects = in_channels
    elif kind == "torchvision":
        import torchvision.models as tvm

        if name not in tvm.list_models():
            raise ConfigError(f"torchvision has no model '{name}' (torchvision.models.list_models() lists them)")
        net = construct(spec, lambda **kw: create_fetching(spec, tvm.get_model, name, pretrained=pretrained,
                                                           weights="DEFAULT" if pretrained else None, **kw), kwargs, kwargs_key)
        head = _classifier(net)
        if head.out_features != num_classes:  # a new classifier for this data's classes
            new = nn.Linear(head.in_features, num_classes)
            for parent in net.modules():
                for child_name, child in parent.named_children():
                    if child is head:
                        setattr(parent, child_name, new)
        if in_channels not in (1, 3):
            raise ConfigError(f"torchvision models take RGB images; the data has {in_channels} channels")
        expects = 3
    else:
        raise ConfigError(f"an external model is timm:NAME or torchvision:NAME, got '{spec}'")
    model = ExternalClassifier(net, in_channels, expects)
    if kwargs:
        _probe(model, spec, kwargs, kwargs_key, in_channels, image_size)
    if weights:
        _load_local(net, weights, model.head)
    return model


def _probe(model: ExternalClassifier, spec: str, kwargs: dict, what: str, in_channels: int, image_size: int) -> None:
    """Two blank images through a library model built with a user's kwargs (eval mode, no
    gradients): kwargs the constructor takes but the forward pass refuses (timm's `drop_rate: -1`)
    are named as the cause before training, not as a traceback at its first step."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, in_channels, image_size, image_size))
    except KWARG_ERRORS as exc:
        raise ConfigError(f"model '{spec}' with {what} {kwargs} fails on {in_channels}x{image_size}x{image_size} "
                          f"images: {type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was_training)


def wrap_model(module: nn.Module) -> nn.Module:
    """A model with the registry's output contract: taildistill's own models as they are, any other
    classifier (timm, torchvision, yours) wrapped in :class:`ExternalClassifier`."""
    if type(module).__module__.startswith("taildistill."):
        return module
    return ExternalClassifier(module)
