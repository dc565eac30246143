"""`taildistill eval`: evaluate a run directory or a bare checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config
from ..errors import ConfigError
from .metrics import summary


def evaluate_target(target: Path, config: str | None, overrides: list[str], split_name: str = "test") -> dict:
    """Rebuild the data and model of a run (or a checkpoint + config) and evaluate one split."""
    from ..engine import checkpoint as ckpt

    if target.is_dir():
        conf = target / "config.yaml"
        if not conf.is_file():
            raise ConfigError(f"{target} is not a run directory (no config.yaml)")
        weights = target / "checkpoints" / "last.safetensors"
        cfg = load_config(config or conf, overrides)
        out_file = target / f"eval_{split_name}.json"
    else:
        if not config:
            raise ConfigError("evaluating a bare checkpoint needs --config (model + data)")
        weights = target
        cfg = load_config(config, overrides)
        out_file = None
    import torch

    from ..data import build_data
    from ..data.augment import BatchAugment
    from ..engine.trainer import build_student, evaluate_split, resolve_device

    device = resolve_device(cfg.train.device)
    data = build_data(cfg.data)
    info = data.info
    student = build_student(cfg, info)
    student.load_state_dict(ckpt.load_weights(weights))
    student.to(device)
    split = {"test": data.test, "val": data.val, "train": data.train}[split_name]
    if split is None:
        raise ConfigError(f"the data has no '{split_name}' split")
    augment = BatchAugment(cfg.augment, info.mean, info.std, info.num_classes, info.input_kind)
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    with torch.no_grad():
        metrics = evaluate_split(student, split, info, augment, device, bf16)
    result = {"summary": summary(metrics, info.groups), "metrics": metrics}
    if out_file is not None:
        out_file.write_text(json.dumps(metrics, indent=1))
        result["written"] = str(out_file)
    return result
