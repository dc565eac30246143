"""Shared pieces of the CNNs' forward passes: named stage taps and the pooled linear head."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError


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
