"""Shared pieces of the CNNs' forward passes: named stage taps and the pooled linear head."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError


# what a model's constructor raises for argument values it cannot build: an unknown keyword (TypeError),
# a value it checks (ValueError, AssertionError: timm's ViT asserts `dim % num_heads == 0`) or one torch
# cannot make a tensor of (RuntimeError: a negative width)
KWARG_ERRORS = (TypeError, ValueError, AssertionError, RuntimeError)


def construct(spec: str, factory, kwargs: dict, what: str = "model.kwargs", **fixed) -> nn.Module:
    """`factory(**fixed, **kwargs)`, with the user's kwargs (the config key `what`) named as the
    cause when the constructor rejects them, or when they leave a layer without parameters (a width
    of 0 builds, but fails at the first forward pass with a message about weight shapes). Without
    user kwargs a failure is a bug of the model and keeps its traceback; with them, the model's own
    exception stays chained to the error (`__cause__`) for a debugger or the Python API."""
    if not kwargs:
        return factory(**fixed)
    try:
        model = factory(**fixed, **kwargs)
    except KWARG_ERRORS as exc:
        raise ConfigError(f"model '{spec}' cannot be built with {what} {kwargs}: {type(exc).__name__}: {exc}") from exc
    except ConfigError as exc:  # the model's own check of a value: which model and which config key said it
        raise ConfigError(f"model '{spec}' with {what} {kwargs}: {exc}") from exc
    empty = [name for name, p in model.named_parameters() if p.numel() == 0]
    if empty:
        raise ConfigError(f"model '{spec}' with {what} {kwargs} has empty layers ({', '.join(empty[:3])}"
                          f"{', ...' if len(empty) > 3 else ''}): a width or size is 0")
    return model


def read_weight_file(path: str) -> dict[str, torch.Tensor]:
    """A local .safetensors or torch checkpoint (read with weights_only=True: no pickled code),
    unwrapped from a {'state_dict' | 'model': ...} container."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"model weights not found: {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors / weights_only refusals and corrupt files have many types
        raise ConfigError(f"cannot read model weights {p}: {exc}") from None
    return state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Load `state` into `model` strictly: the same tensor names, shapes and dtypes (an int32
    tensor is not silently cast into a float model), or one ConfigError naming `what`, how many of
    the model's tensors it matches and the first differences."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: {tuple(state[k].shape)} {str(state[k].dtype)[6:]} vs {tuple(v.shape)} {str(v.dtype)[6:]}"
             for k, v in expected.items() if k in state and (state[k].shape != v.shape or state[k].dtype != v.dtype)]
    if missing or unexpected or wrong:
        fits = len(expected) - len(missing) - len(wrong)
        detail = "; ".join(part for part in (
            f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
            f"different {wrong[:2]}" if wrong else "") if part)
        raise ConfigError(f"{what} does not fit the model ({fits} of {len(expected)} tensors match): {detail}")
    model.load_state_dict(state)
    return model


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


class Renormalized(nn.Module):
    """A model that takes inputs normalised with other statistics than its own: each batch is
    mapped channel-wise (x * a + b, on the device) to the model's own normalisation first. Other
    attributes (fc, feature_dim, ...) are the model's."""

    def __init__(self, model: nn.Module, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.inner = model
        self.register_buffer("scale", scale.view(1, -1, 1, 1).float())
        self.register_buffer("shift", shift.view(1, -1, 1, 1).float())

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def forward(self, x: torch.Tensor) -> dict:
        return self.inner(x * self.scale.to(x.dtype) + self.shift.to(x.dtype))


def logit_scale_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of `model` holding a `logit_scale` tensor (cosine heads), in module order."""
    return [m for m in model.modules() if isinstance(getattr(m, "logit_scale", None), torch.Tensor)]


def prediction_scales(model: nn.Module, cosine_heads: bool = False) -> list[torch.Tensor]:
    """The logit scales that make `model`'s prediction (what temperature calibration divides):
    the model's own `prediction_scales()` where it has one (a multi-expert network: every
    expert's head), else the last module's holding one (a decoupled classifier's new head, not its
    frozen stage-1 one; a pretrained teacher's own scale). `cosine_heads`: only modules that are
    cosine heads themselves (with a `weight`), as LDAM needs."""
    own = getattr(model, "prediction_scales", None)
    if callable(own):
        return own()
    return [m.logit_scale for m in logit_scale_modules(model) if not cosine_heads or hasattr(m, "weight")][-1:]


def renormalizer(src_mean, src_std, src_normalized: bool, dst_mean, dst_std, dst_normalized: bool):
    """(a, b) mapping inputs normalised as `src` to inputs normalised as `dst` (x_dst = a x_src + b),
    or None when the two are the same. u = x_src * std + mean (or x_src when not normalised)."""
    sm, ss = torch.tensor(src_mean or [0.0]), torch.tensor(src_std or [1.0])
    dm, ds = torch.tensor(dst_mean or [0.0]), torch.tensor(dst_std or [1.0])
    if not src_normalized:
        sm, ss = torch.zeros_like(sm), torch.ones_like(ss)
    if not dst_normalized:
        dm, ds = torch.zeros_like(dm), torch.ones_like(ds)
    if sm.shape == dm.shape and torch.allclose(sm, dm) and torch.allclose(ss, ds):
        return None
    return ss / ds, (sm - dm) / ds
