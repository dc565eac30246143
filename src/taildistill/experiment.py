"""One experiment from its config: the fully resolved config, then data -> student / teacher ->
method. Train, resume, eval, bench, reproduce and the demo all assemble an experiment here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from .config import ExperimentConfig, env_imports, import_modules, load_raw, parse_config
from .data import SOURCES, DataBundle, build_data
from .errors import ConfigError
from .methods import Method, build_method, method_class, resolve_params
from .models import build_model, check_model_name
from .models.common import Renormalized, load_state_strict, renormalizer
from .rundir import RunDir, file_digest, load_weights, non_finite


def build_config(raw: dict, overrides: list[str] | None = None) -> ExperimentConfig:
    """Validate a raw mapping (plus dotted overrides) into a fully resolved config: every section
    typed, registry names checked (data source, model, method), the method's parameters validated
    against its own dataclass with every default filled in (so the config written to a run lists
    every value that was used), and a distillation method's default teacher named."""
    cfg = parse_config(raw, overrides)
    cfg.imports = list(dict.fromkeys([*cfg.imports, *env_imports()]))
    import_modules(cfg.imports)
    SOURCES.get(cfg.data.source)
    check_model_name(cfg.model.name)
    if cfg.teacher.model:
        check_model_name(cfg.teacher.model)
    cls = method_class(cfg.method.name)
    cfg.method.params = resolve_params(cfg.method.name, cfg.method.params)
    if cfg.teacher.pretrained:
        if cfg.teacher.checkpoint or cfg.teacher.run:
            raise ConfigError("teacher.pretrained names a teacher, but teacher.run / teacher.checkpoint is set too; "
                              "keep one (e.g. teacher.run= teacher.pretrained=NAME)")
        teacher_run_path(cfg.teacher)  # exists (the name, not the folder, is saved: a run stays portable)
    has_teacher = bool(cfg.teacher.run or cfg.teacher.checkpoint or cfg.teacher.pretrained)
    if cls.needs_teacher and not has_teacher:
        cfg.teacher.run = str(Path(cfg.out_dir) / "ce_teacher")  # the benchmark's CE teacher run
    elif has_teacher and not cls.needs_teacher:
        raise ConfigError(f"method '{cfg.method.name}' uses no teacher, but teacher.run / teacher.checkpoint is set; "
                          "remove it (teacher.run= teacher.checkpoint=) or choose a distillation method")
    return cfg


def teacher_run_path(t) -> str:
    """The teacher's run directory: teacher.run, or the folder of the named teacher.pretrained."""
    if t.pretrained:
        from .teachers import find

        return str(find(t.pretrained).resolve())
    return t.run


def teacher_source(t) -> str:
    """How the config names its teacher, for messages."""
    return f"teacher.pretrained {t.pretrained}" if t.pretrained else (t.run or t.checkpoint)


def load_config(paths, overrides: list[str] | None = None) -> ExperimentConfig:
    """A config file (or several, composed left to right) plus overrides, fully resolved; the run
    name defaults to the last file's stem."""
    files = list(paths) if isinstance(paths, (list, tuple)) else [paths]
    cfg = build_config(load_raw(files), overrides)
    if not cfg.name:
        cfg.name = Path(files[-1]).stem
    return cfg


def model_input_args(info, augment=None) -> dict:
    """The model's input: channels and image size (the training crop's size when augmentation
    resizes, e.g. DeiT-LT's 224 px students on 32 px CIFAR)."""
    if info.input_kind == "tokens":
        return {"in_channels": 0, "image_size": info.input_shape[0]}
    size = augment.random_resized_crop if augment is not None and augment.random_resized_crop else info.input_shape[-1]
    return {"in_channels": info.input_shape[0], "image_size": size}


# model kwargs that name initialisation files (pretrained weights, word vectors, a frozen backbone's or
# a stage-1 network's checkpoint): not read for a model whose trained weights replace them (a resume,
# eval, a teacher run; the file may be elsewhere by now)
INIT_FILE_KWARGS = ("weights", "vectors", "checkpoint")


def init_file_paths(cfg: ExperimentConfig) -> dict[str, Path]:
    """The initialisation files the config names for its student, {"model.kwargs.KEY": absolute
    path} (whether or not they exist)."""
    return {f"model.kwargs.{key}": Path(value).expanduser().resolve() for key in INIT_FILE_KWARGS
            if isinstance(value := cfg.model.kwargs.get(key), str) and value}


def init_file_digests(cfg: ExperimentConfig) -> dict[str, dict]:
    """The initialisation files the student reads (model.kwargs.checkpoint / weights / vectors), as
    {"model.kwargs.KEY": {"path": absolute path, "sha256": digest}}, plus "run_config_hash" (seed
    aside) for a run's last weights: which bytes a run started from, so that a suite trains a run
    again whose stage-1 network has been trained again since, and reuses it in a moved folder."""
    out = {}
    for dotted, path in init_file_paths(cfg).items():
        if path.is_file():
            record = {"path": str(path), "sha256": file_digest(path)}
            run = RunDir(path.parent.parent)
            if path.parent.name == "checkpoints" and path == run.last_weights.resolve() and run.is_run():
                record["run_config_hash"] = run.config_hash()
            out[dotted] = record
    return out


def build_student(cfg: ExperimentConfig, info, vocab: dict | None = None, init_files: bool = True) -> nn.Module:
    """The config's model for the data described by `info` (DataInfo); word vectors
    (model.kwargs.vectors) are read with the data's `vocab`. `init_files=False` reads no
    initialisation file (INIT_FILE_KWARGS): for a model that trained weights will replace."""
    kwargs = {k: v for k, v in cfg.model.kwargs.items() if init_files or k not in INIT_FILE_KWARGS}
    if info.input_kind == "tokens":
        kwargs.setdefault("vocab_size", info.vocab_size)
        if kwargs.get("vectors"):
            kwargs["vocab"] = vocab
    return build_model(cfg.model.name, info.num_classes, **model_input_args(info, cfg.augment), **kwargs)


def load_weights_into(model: nn.Module, path: Path, what: str) -> nn.Module:
    """Load a safetensors file into `model` strictly (see :func:`load_state_strict`)."""
    return load_state_strict(model, load_weights(path), f"{what} {path}")


def check_vocabulary(recorded: dict, info, what: str) -> None:
    """A text model's weights are tied to its vocabulary (an embedding row per token id): `recorded`
    (a run's data.json) must name the vocabulary of the data `info` describes."""
    if recorded.get("input_kind") != "tokens" or info.input_kind != "tokens":
        return
    if not recorded.get("vocab_digest"):
        raise ConfigError(f"{what} was trained before taildistill recorded a text run's vocabulary (its vocabulary "
                          "then came from the whole training file): its token ids may mean other words; train it again")
    if recorded["vocab_digest"] != info.vocab_digest:
        raise ConfigError(f"{what} was trained with another vocabulary than this data's (other training texts, "
                          "data.vocab_size or tokens): its token ids would mean other words")


def load_teacher(cfg: ExperimentConfig, info) -> nn.Module | None:
    """The frozen teacher from a finished run directory or a safetensors checkpoint (None when the
    config names neither). An unfinished teacher run is refused unless teacher.allow_unfinished;
    a teacher whose input shape or classes differ from the data's, or whose weights are not
    finite, is an error."""
    t = cfg.teacher
    if not t.run and not t.checkpoint and not t.pretrained:
        return None
    if t.run or t.pretrained:
        run = RunDir(teacher_run_path(t))
        if not run.is_run():
            raise ConfigError(f"teacher.run: {run.path} is not a run directory (no config.yaml); train the teacher "
                              f"first or set teacher.run to its run directory")
        if not run.is_finished():
            reached = run.metrics()
            epoch = f"epoch {reached[-1]['epoch'] + 1} of {run.config().train.epochs}" if reached else "no epoch"
            if not t.allow_unfinished:
                raise ConfigError(f"teacher.run {run.path} has not finished ({epoch} done); finish it with "
                                  f"`taildistill train --resume {run.path}` or set teacher.allow_unfinished=true")
            import warnings

            warnings.warn(f"distilling from the unfinished teacher run {run.path} ({epoch} done)", stacklevel=2)
        tcfg = run.config()
        name = tcfg.model.name
        kwargs = {k: v for k, v in tcfg.model.kwargs.items() if k not in INIT_FILE_KWARGS}  # trained weights follow
        weights = run.last_weights
        tdata = run.data_info()
        t_mean, t_std, t_norm = tdata.get("mean") or info.mean, tdata.get("std") or info.std, tcfg.augment.normalize
        if tdata and tdata.get("num_classes") != info.num_classes:
            raise ConfigError(f"teacher run {run} has {tdata.get('num_classes')} classes, the data has {info.num_classes}")
        if tdata and tdata.get("input_kind", "image") == "image" and info.input_kind == "image" \
                and tuple(tdata["input_shape"])[0] != info.input_shape[0]:
            raise ConfigError(f"teacher run {run} was trained on {tdata['input_shape'][0]}-channel inputs "
                              f"({tdata.get('description', '')}), the data has {info.input_shape[0]} channels: "
                              "it is another benchmark's teacher")
        in_args = ({"in_channels": tdata["input_shape"][0],
                    "image_size": tcfg.augment.random_resized_crop or tdata["input_shape"][-1]} if tdata else model_input_args(info))
        if tdata.get("input_kind") == "tokens":
            check_vocabulary(tdata, info, f"teacher run {run}")
            in_args = model_input_args(info)
            kwargs.setdefault("vocab_size", tdata.get("vocab_size", info.vocab_size))
    else:
        if not t.model:
            raise ConfigError("teacher.checkpoint needs teacher.model (the architecture name)")
        name, kwargs, weights = t.model, dict(t.kwargs), Path(t.checkpoint).expanduser()
        in_args = model_input_args(info)
        t_mean, t_std, t_norm = (t.mean or info.mean), (t.std or info.std), t.normalize
    where = "teacher.kwargs" if t.checkpoint and not (t.run or t.pretrained) else "model.kwargs of the teacher run"
    teacher = build_model(name, info.num_classes, **in_args, kwargs_key=where, **kwargs)
    load_weights_into(teacher, weights, f"teacher weights (model '{name}')")
    bad = non_finite(teacher.state_dict())
    if bad:
        raise ConfigError(f"teacher weights {weights} hold non-finite values (in {bad[:3]}): the teacher is broken")
    if info.input_kind == "image":  # the teacher sees each batch normalised as it was trained, not as the student
        mapping = renormalizer(info.mean, info.std, cfg.augment.normalize, t_mean, t_std, t_norm)
        if mapping is not None:
            teacher = Renormalized(teacher, *mapping)
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


def assemble(cfg: ExperimentConfig, data: DataBundle | None = None, teacher=_FROM_CONFIG,
             init_files: bool = True) -> Experiment:
    """config -> data -> student and teacher -> method. `data` reuses a built DataBundle;
    `teacher` replaces the config's teacher (bench times a distillation step without one);
    `init_files=False` for a resume (see :func:`build_student`)."""
    cfg = build_config_if_raw(cfg)
    data = data or build_data(cfg.data)
    info = data.info
    student = build_student(cfg, info, data.vocab, init_files)
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
