"""One experiment from its config: the fully resolved config, then data -> student / teacher ->
method. Train, resume, eval, bench, reproduce and the demo all assemble an experiment here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from .config import ExperimentConfig, load_raw, parse_config
from .data import SOURCES, DataBundle, build_data
from .errors import ConfigError
from .methods import Method, build_method, method_class, resolve_params
from .models import MODELS, build_model
from .rundir import RunDir, load_weights


def build_config(raw: dict, overrides: list[str] | None = None) -> ExperimentConfig:
    """Validate a raw mapping (plus dotted overrides) into a fully resolved config: every section
    typed, registry names checked (data source, model, method), the method's parameters validated
    against its own dataclass with every default filled in (so the config written to a run lists
    every value that was used), and a distillation method's default teacher named."""
    cfg = parse_config(raw, overrides)
    SOURCES.get(cfg.data.source)
    MODELS.get(cfg.model.name)
    if cfg.teacher.model:
        MODELS.get(cfg.teacher.model)
    cls = method_class(cfg.method.name)
    cfg.method.params = resolve_params(cfg.method.name, cfg.method.params)
    has_teacher = bool(cfg.teacher.run or cfg.teacher.checkpoint)
    if cls.needs_teacher and not has_teacher:
        cfg.teacher.run = str(Path(cfg.out_dir) / "ce_teacher")  # the benchmark's CE teacher run
    elif has_teacher and not cls.needs_teacher:
        raise ConfigError(f"method '{cfg.method.name}' uses no teacher, but teacher.run / teacher.checkpoint is set; "
                          "remove it (teacher.run= teacher.checkpoint=) or choose a distillation method")
    return cfg


def load_config(paths, overrides: list[str] | None = None) -> ExperimentConfig:
    """A config file (or several, composed left to right) plus overrides, fully resolved; the run
    name defaults to the last file's stem."""
    files = list(paths) if isinstance(paths, (list, tuple)) else [paths]
    cfg = build_config(load_raw(files), overrides)
    if not cfg.name:
        cfg.name = Path(files[-1]).stem
    return cfg


def model_input_args(info) -> dict:
    if info.input_kind == "tokens":
        return {"in_channels": 0, "image_size": info.input_shape[0]}
    return {"in_channels": info.input_shape[0], "image_size": info.input_shape[-1]}


def build_student(cfg: ExperimentConfig, info, vocab: dict | None = None) -> nn.Module:
    """The config's model for the data described by `info` (DataInfo)."""
    kwargs = dict(cfg.model.kwargs)
    if info.input_kind == "tokens":
        kwargs.setdefault("vocab_size", info.vocab_size)
        if kwargs.get("vectors"):
            kwargs["vocab"] = vocab
    return build_model(cfg.model.name, info.num_classes, **model_input_args(info), **kwargs)


def load_teacher(cfg: ExperimentConfig, info) -> nn.Module | None:
    """The frozen teacher from a finished run directory or a safetensors checkpoint (None when the
    config names neither)."""
    t = cfg.teacher
    if not t.run and not t.checkpoint:
        return None
    if t.run:
        run = RunDir(t.run).require_run("teacher.run")
        tcfg = run.config()
        name, kwargs = tcfg.model.name, dict(tcfg.model.kwargs)
        weights = run.last_weights
        tdata = run.data_info()
        if tdata and tdata.get("num_classes") != info.num_classes:
            raise ConfigError(f"teacher run {run} has {tdata.get('num_classes')} classes, the data has {info.num_classes}")
        in_args = {"in_channels": tdata["input_shape"][0], "image_size": tdata["input_shape"][-1]} if tdata else model_input_args(info)
        if tdata.get("input_kind") == "tokens":
            in_args = model_input_args(info)
            kwargs.setdefault("vocab_size", tdata.get("vocab_size", info.vocab_size))
    else:
        if not t.model:
            raise ConfigError("teacher.checkpoint needs teacher.model (the architecture name)")
        name, kwargs, weights = t.model, dict(t.kwargs), Path(t.checkpoint).expanduser()
        in_args = model_input_args(info)
    teacher = build_model(name, info.num_classes, **in_args, **kwargs)
    state = load_weights(weights)
    try:
        missing, unexpected = teacher.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise ConfigError(f"teacher weights {weights} do not fit model '{name}': {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ConfigError(f"teacher weights {weights} do not fit model '{name}': missing {missing[:3]}, unexpected {unexpected[:3]}")
    return teacher


@dataclass
class Experiment:
    """Everything one run trains: the resolved config, the data, and the method (which holds the
    student and the frozen teacher)."""

    cfg: ExperimentConfig
    data: DataBundle
    method: Method

    @property
    def student(self) -> nn.Module:
        return self.method.student

    @property
    def teacher(self) -> nn.Module | None:
        return self.method.teacher


_FROM_CONFIG = object()


def assemble(cfg: ExperimentConfig, data: DataBundle | None = None, teacher=_FROM_CONFIG) -> Experiment:
    """config -> data -> student and teacher -> method. `data` reuses a built DataBundle;
    `teacher` replaces the config's teacher (bench times a distillation step without one)."""
    cfg = build_config_if_raw(cfg)
    data = data or build_data(cfg.data)
    info = data.info
    student = build_student(cfg, info, data.vocab)
    cls = method_class(cfg.method.name)
    if teacher is _FROM_CONFIG:
        teacher = load_teacher(cfg, info) if cls.needs_teacher else None
    method = build_method(cfg.method.name, cfg.method.params, student, teacher, info)
    return Experiment(cfg, data, method)


def build_config_if_raw(cfg: ExperimentConfig) -> ExperimentConfig:
    """A config whose method parameters are still a mapping gets them resolved."""
    if isinstance(cfg.method.params, dict):
        cfg.method.params = resolve_params(cfg.method.name, cfg.method.params)
    return cfg
