"""The Python API: what `import taildistill` offers (see the README's "Python API").

    import taildistill as td
    cfg = td.load_config(["digits/_base", "methods/bkd"], ["train.epochs=20"])
    data = td.build_data(cfg.data)
    teacher = td.fit(td.load_config("digits/ce_teacher", ["train.epochs=20"]), "runs/t")
    ...
"""
from __future__ import annotations

from pathlib import Path

import torch

from .config import ExperimentConfig, dump_config
from .data import SOURCES, DataBundle, build_data
from .data.augment import BatchAugment
from .engine.trainer import Trainer, fit, resolve_device, resume
from .eval import evaluate_split, summary
from .evaluation import evaluate_target
from .experiment import Experiment, assemble, build_config, build_student, load_config, load_teacher
from .methods import (
    CRITERIA, METHODS, Batch, BatchRequest, Criterion, Method, MethodOutput, SupervisedParams, build_method,
    register_method,
)
from .models import MODELS, build_model, wrap_model
from .report import write_comparison, write_run_report


def register_model(name: str):
    """Decorator: register a model factory `f(num_classes, in_channels, image_size, **kwargs)`
    returning a module whose forward gives `{"logits": (B, C), "features": {name: tensor}}`
    (or any timm / torchvision classifier, which is wrapped)."""
    return MODELS.register(name)


def register_source(name: str):
    """Decorator: register a data source `f(data_cfg) -> SourceData` (see taildistill.data.sources)."""
    return SOURCES.register(name)


def evaluate(target, data: DataBundle | None = None, split: str = "test", device: str = "auto",
             config: str | None = None, cfg: ExperimentConfig | None = None) -> dict:
    """Metrics of a model on a split: top-1/top-5, per group (policy named), per class, confusion, ECE.

    `target` is a run directory (or a .safetensors checkpoint with its `config` file), evaluated
    as `taildistill eval` does, or an in-memory model (any module of the registry's contract, or a
    timm / torchvision classifier) evaluated on `data` (a DataBundle from :func:`build_data`),
    normalised with `data`'s training statistics (`cfg.augment.normalize` decides whether)."""
    if isinstance(target, (str, Path)):
        return evaluate_target(Path(target), config, [], split)["metrics"]
    if data is None:
        raise TypeError("evaluating a model in memory needs `data` (a DataBundle from build_data)")
    model = wrap_model(target)
    info = data.info
    dev = resolve_device(device)
    cfg = cfg if cfg is not None else ExperimentConfig()  # (its augment normalises; its data.num_workers decode a streamed split)
    augment = BatchAugment(cfg.augment, info.mean, info.std, info.num_classes, info.input_kind)
    split_data = {"test": data.test, "val": data.val, "train": data.train}[split]
    with torch.no_grad():
        return evaluate_split(model.to(dev), split_data, info, augment, dev, num_workers=cfg.data.num_workers)


__all__ = [
    "load_config", "build_config", "dump_config", "ExperimentConfig", "build_data", "DataBundle", "build_model",
    "wrap_model", "build_student", "load_teacher", "build_method", "assemble", "Experiment", "fit", "resume", "Trainer",
    "evaluate", "summary", "write_run_report", "write_comparison", "register_method", "register_model",
    "register_source", "Method", "MethodOutput", "Batch", "BatchRequest", "SupervisedParams", "Criterion",
    "METHODS", "MODELS", "CRITERIA", "SOURCES",
]
