"""Typed experiment configuration: defaults as dataclasses, YAML in, validated, resolved YAML out.

An experiment is one YAML file (see ``configs/``). Every key is checked against the dataclasses
below: an unknown key or a value of the wrong type is a :class:`ConfigError` naming the key and
listing the valid ones. Method-specific keys live under ``method:`` and are validated against the
chosen method's own parameter dataclass (see ``taildistill.methods``).
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class DataConfig:
    """Where the data comes from and how the long-tailed training set is built."""

    source: str = "digits"  # a registered data source: digits, cifar10, cifar100, imagefolder, ...
    root: str = ""  # file or folder the source reads; empty for sources that ship with a package
    test_root: str = ""  # separate test file/folder where the source needs one (imagefolder)
    lists: dict[str, str] = field(default_factory=dict)  # listfile: {train, val, test} list files
    download: bool = False  # cifar10/cifar100: fetch the official archive into `root` with torchvision (online only)
    profile: str = "exp"  # long-tail profile: exp, step, pareto, ltkd, none
    ratio: float = 100.0  # imbalance ratio n_max / n_min
    n_max: int = 0  # images of the largest class; 0 = the smallest class's full count
    seed: int = 0  # seed of the long-tail subset and the validation split
    val_per_class: int = 0  # balanced validation images per class carved out before sub-sampling
    group_policy: str = "shots"  # shots | thirds | cuts
    group_cuts: list[int] = field(default_factory=list)  # class-index cuts for the `cuts` policy
    sampler: str = "instance"  # instance | class_balanced | sqrt | effective_number
    sampler_beta: float = 0.9999  # beta of the effective-number sampler
    image_size: int = 0  # resize images to this size (0 = native)
    cache_dir: str = ""  # where decoded uint8 tensors are cached ("" = ~/.cache/taildistill)
    num_workers: int = 2  # DataLoader workers for datasets that are streamed from disk
    max_len: int = 64  # text: tokens per document
    vocab_size: int = 20000  # text: vocabulary size
    test_fraction: float = 0.3  # sources without an official test split: stratified held-out share


@dataclass
class AugmentConfig:
    """Batch augmentation, run on the training device (see ``taildistill.data.augment``)."""

    crop_padding: int = 0  # pad-and-random-crop padding (4 for CIFAR), 0 = off
    flip: bool = False  # random horizontal flip
    autoaugment: str = "none"  # none | cifar10 (AutoAugment CIFAR-10 policy)
    randaugment_n: int = 0  # RandAugment operations per image (0 = off)
    randaugment_m: int = 9  # RandAugment magnitude (0-30)
    color_jitter: float = 0.0  # brightness/contrast/saturation strength
    random_erasing: float = 0.0  # probability of erasing a random rectangle
    mixup_alpha: float = 0.0  # mixup Beta(alpha, alpha); 0 = off
    cutmix_alpha: float = 0.0  # cutmix Beta(alpha, alpha); 0 = off
    mix_prob: float = 1.0  # probability that a batch is mixed when mixup/cutmix are on
    mix_until_epoch: int = -1  # mixup/cutmix stop from this epoch on (DeiT-LT's DRW phase); -1 = never
    repeated: int = 1  # repeated augmentation: each sampled image appears this many times
    normalize: bool = True  # subtract the training set's channel mean, divide by its std


@dataclass
class ModelConfig:
    """A model from the registry (``taildistill models`` lists them)."""

    name: str = "convnet_small"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherConfig:
    """The teacher of a distillation method: a finished run directory or a checkpoint file."""

    run: str = ""  # run directory of a finished teacher run (its config says the model)
    checkpoint: str = ""  # or: a .safetensors file, with `model` below naming the architecture
    model: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    sam_rho: float = 0.0  # > 0 wraps the optimizer in sharpness-aware minimisation


@dataclass
class ScheduleConfig:
    name: str = "ldam_step"  # ldam_step | cosine | multistep | constant
    warmup_epochs: int = 5
    milestones: list[int] = field(default_factory=lambda: [160, 180])
    gamma: float = 0.1  # multistep decay factor
    step_factors: list[float] = field(default_factory=lambda: [0.01, 0.0001])  # ldam_step
    min_lr: float = 0.0  # cosine floor


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA) | fp32 | bf16
    channels_last: bool = True  # used on CUDA only
    compile: bool = False  # torch.compile the student (and the teacher)
    compile_mode: str = "default"  # default | reduce-overhead (CUDA graphs; training shapes are static) | max-autotune
    sync_bn: bool = False  # DDP on CUDA: the student's BatchNorm statistics over the global batch (SyncBatchNorm)
    deterministic: bool = False
    seed: int = 0
    eval_every: int = 1  # evaluate on the validation split every N epochs (0 = only at the end)
    checkpoint_every: int = 1  # write checkpoints/last every N epochs
    grad_clip: float = 0.0
    progress: bool = True
    tensorboard: bool = True
    max_steps_per_epoch: int = 0  # 0 = full epochs; >0 caps steps (smoke tests, benchmarks)
    calibrate: bool = False  # fit a temperature on the validation split after training (saved into cosine heads)


@dataclass
class MethodConfig:
    """`name` picks a registered method; every other key is that method's own parameter."""

    name: str = "ce"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    name: str = ""  # run name; default: the config file's stem
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)


# ----------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-2` as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    raise ConfigError(f"config key '{key}' has an unsupported type {_type_name(tp)}")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrongly typed values."""
    where = f"'{prefix}'" if prefix else "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(
                f"unknown config key '{full}'; valid keys in {where}: {', '.join(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _method_section(raw: dict) -> dict:
    """`method:` in YAML is flat (name + the method's parameters); fold it into name/params."""
    section = raw.get("method")
    if section is None:
        return raw
    if isinstance(section, str):
        section = {"name": section}
    if not isinstance(section, dict):
        raise ConfigError(f"config section 'method' must be a mapping, got {section!r}")
    section = dict(section)
    name = section.pop("name", None)
    params = dict(section.pop("params", {}) or {})
    params.update(section)
    out = dict(raw)
    out["method"] = {"params": params} if name is None else {"name": name, "params": params}
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], yaml-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like dotted.key=value")
    key, value = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key part")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from None
    return key.split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = _method_section(dict(raw))
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] == "method" and len(parts) >= 2 and parts[1] not in ("name", "params"):
            parts = ["method", "params", *parts[1:]]
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            else:
                child = dict(child)
            node[part] = child
            node = child
        node[parts[-1]] = value
    return raw


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any) -> Any:
    """`${VAR}` / `${VAR:-default}` in string values come from the environment (paths to data
    differ per machine; configs never hard-code them)."""
    if isinstance(value, str):
        def sub(m):
            if m.group(1) in os.environ:
                return os.environ[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            raise ConfigError(f"config value '{value}' needs the environment variable {m.group(1)}")

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value


def load_raw(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    raw = expand_env(raw)
    if "base" in raw:  # `base: other.yaml` composes: this file's keys override the base's
        base_path = (path.parent / str(raw.pop("base"))).resolve()
        base, raw = _method_section(load_raw(base_path)), _method_section(raw)
        new_name = (raw.get("method") or {}).get("name")
        same_method = new_name is None or new_name == (base.get("method") or {}).get("name", "ce")
        raw = deep_merge(base, raw)
        if not same_method:  # another method: the base's method parameters do not apply to it
            raw["method"] = _method_section({"method": load_raw_method(path)})["method"]
    return raw


def load_raw_method(path: Path) -> dict:
    """The `method:` section written in the file itself (without its bases)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return expand_env(raw.get("method") or {})


def deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(raw: dict, overrides: list[str] | None = None) -> ExperimentConfig:
    """Validate a raw mapping (plus dotted overrides) into an :class:`ExperimentConfig`.

    The method's own parameters are validated and filled with their defaults here, so the
    resolved config written to a run directory lists every parameter that was used.
    """
    raw = apply_overrides(raw, overrides or [])
    cfg = from_dict(ExperimentConfig, raw)
    from .methods import resolve_method_params  # late import: methods depend on config

    cfg.method.params = resolve_method_params(cfg.method.name, cfg.method.params)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    cfg = build_config(load_raw(path), overrides)
    if not cfg.name:
        cfg.name = Path(path).stem
    return cfg


def dump_config(cfg: ExperimentConfig) -> str:
    data = to_dict(cfg)
    method = data.pop("method")
    data["method"] = {"name": method["name"], **method["params"]}
    return yaml.safe_dump(data, sort_keys=False)
