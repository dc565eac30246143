"""Typed experiment configuration: defaults as dataclasses, YAML in, validated, resolved YAML out.

An experiment is one YAML file (see ``configs/``) or several composed left to right. Every key
is checked against the dataclasses below (:mod:`taildistill.typed`): an unknown key or a value of
the wrong type is a :class:`ConfigError` naming the key and listing the valid ones, and every
enum-like value is a ``Literal`` whose choices the error lists. Method-specific keys live under
``method:``; this module keeps them as a mapping, and :func:`taildistill.experiment.load_config`
validates them against the chosen method's own parameter dataclass (this module knows no method).

Composition: ``base: other.yaml`` or ``base: [dataset.yaml, ../methods/kd.yaml]`` merges the
bases in order, then the file itself on top; ``${VAR:-default}`` reads the environment.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError, RegistryError
from .typed import from_dict, to_dict

Profile = Literal["exp", "step", "pareto", "ltkd", "none"]
GroupPolicy = Literal["shots", "thirds", "cuts"]
SamplerKind = Literal["instance", "class_balanced", "sqrt", "effective_number", "class_aware"]
AutoAugmentPolicy = Literal["none", "cifar10", "imagenet", "svhn"]
OptimizerName = Literal["sgd", "adamw"]
ScheduleName = Literal["ldam_step", "cosine", "multistep", "constant"]
Precision = Literal["auto", "fp32", "bf16"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune"]
COMPILE_GRAPHS = ("reduce-overhead", "max-autotune")  # the compile modes that capture CUDA graphs themselves

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def _positive(prefix: str, **values) -> None:
    for key, v in values.items():
        if not v > 0:
            raise ConfigError(f"config key '{prefix}.{key}' must be > 0, got {v}")


def _non_negative(prefix: str, **values) -> None:
    for key, v in values.items():
        if v < 0:
            raise ConfigError(f"config key '{prefix}.{key}' must be >= 0, got {v}")


@dataclass
class DataConfig:
    """Where the data comes from and how the long-tailed training set is built."""

    source: str = "digits"  # a registered data source: digits, cifar10, cifar100, imagefolder, ...
    root: str = ""  # file or folder the source reads; empty for sources that ship with a package
    test_root: str = ""  # separate test file/folder where the source needs one (imagefolder)
    lists: dict[str, str] = field(default_factory=dict)  # listfile: {train, val, test} list files
    download: bool = False  # cifar10/cifar100: fetch the official archive into `root` with torchvision (online only)
    profile: Profile = "exp"  # long-tail profile
    ratio: float = 100.0  # imbalance ratio n_max / n_min
    n_max: int = 0  # images of the largest class; 0 = the smallest class's full count
    seed: int = 0  # seed of the long-tail subset and the validation split
    val_per_class: int = 0  # balanced validation images per class carved out before sub-sampling
    group_policy: GroupPolicy = "shots"
    group_cuts: list[int] = field(default_factory=list)  # class-index cuts for the `cuts` policy
    sampler: SamplerKind = "instance"
    sampler_beta: float = 0.9999  # beta of the effective-number sampler
    image_size: int = 0  # resize images to this size (0 = native)
    cache_dir: str = ""  # where decoded uint8 tensors are cached ("" = ~/.cache/taildistill)
    num_workers: int = 2  # DataLoader workers for datasets that are streamed from disk
    max_len: int = 64  # text: tokens per document
    vocab_size: int = 20000  # text: vocabulary size
    test_fraction: float = 0.3  # sources without an official test split: stratified held-out share

    def validate(self, prefix: str) -> None:
        if self.ratio < 1:
            raise ConfigError(f"config key '{prefix}.ratio' must be >= 1 (n_max / n_min), got {self.ratio}")
        _non_negative(prefix, n_max=self.n_max, val_per_class=self.val_per_class, image_size=self.image_size,
                      num_workers=self.num_workers)
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"config key '{prefix}.test_fraction' must be in (0, 1), got {self.test_fraction}")
        if not 0 < self.sampler_beta < 1:
            raise ConfigError(f"config key '{prefix}.sampler_beta' must be in (0, 1), got {self.sampler_beta}")


@dataclass
class AugmentConfig:
    """Batch augmentation, run on the training device (see ``taildistill.data.augment``)."""

    crop_padding: int = 0  # pad-and-random-crop padding (4 for CIFAR), 0 = off
    random_resized_crop: int = 0  # random-resized-crop to this size (DeiT-LT's 32 -> 224 px; evaluation resizes to it), 0 = off
    rrc_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # the crop's area range, as a share of the image
    flip: bool = False  # random horizontal flip
    rotation: float = 0.0  # random rotation in [-degrees, degrees] (LT-SpikingFormer's weak augmentation), 0 = off
    autoaugment: AutoAugmentPolicy = "none"  # AutoAugment policy (cifar10 for CIFAR)
    randaugment_n: int = 0  # RandAugment operations per image (0 = off)
    randaugment_m: int = 9  # RandAugment magnitude, in (0, 30)
    color_jitter: float = 0.0  # brightness/contrast/saturation strength
    hue: float = 0.0  # colour jitter's hue shift, in turns of the colour circle (torchvision's hue; <= 0.5)
    color_jitter_p: float = 1.0  # probability that an image is colour-jittered (SimCLR / MoCo v2: 0.8)
    grayscale: float = 0.0  # probability of turning an image grey
    gaussian_blur: float = 0.0  # probability of a Gaussian blur (sigma drawn from blur_sigma, px)
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    cutout: int = 0  # Cutout: one square of this side (px) per image set to 0 before normalisation, 0 = off
    random_erasing: float = 0.0  # probability of erasing a random rectangle
    random_erasing_mode: Literal["const", "pixel"] = "const"  # fill: the mean (const) or per-pixel noise (pixel, timm / DeiT)
    mixup_alpha: float = 0.0  # mixup Beta(alpha, alpha); 0 = off
    cutmix_alpha: float = 0.0  # cutmix Beta(alpha, alpha); 0 = off
    mix_prob: float = 1.0  # probability that a batch is mixed when mixup/cutmix are on
    mix_until_epoch: int = -1  # mixup/cutmix stop from this epoch on (DeiT-LT's DRW phase); -1 = never
    repeated: int = 1  # repeated augmentation: each sampled image appears this many times
    normalize: bool = True  # subtract the training set's channel mean, divide by its std

    def validate(self, prefix: str) -> None:
        _non_negative(prefix, crop_padding=self.crop_padding, randaugment_n=self.randaugment_n,
                      color_jitter=self.color_jitter, mixup_alpha=self.mixup_alpha, cutmix_alpha=self.cutmix_alpha)
        _non_negative(prefix, cutout=self.cutout, random_resized_crop=self.random_resized_crop, rotation=self.rotation)
        if len(self.rrc_scale) != 2 or not 0 < self.rrc_scale[0] <= self.rrc_scale[1] <= 1:
            raise ConfigError(f"config key '{prefix}.rrc_scale' is the crop's area range [low, high] as a share of the "
                              f"image, 0 < low <= high <= 1, got {self.rrc_scale}")
        if self.randaugment_n > 15:  # (kornia's RandAugment: 1 to 15 operations, magnitudes in (0, 30))
            raise ConfigError(f"config key '{prefix}.randaugment_n' is RandAugment's operations per image, at most 15, "
                              f"got {self.randaugment_n}")
        if self.randaugment_n > 0 and not 0 < self.randaugment_m < 30:
            raise ConfigError(f"config key '{prefix}.randaugment_m' is RandAugment's magnitude in (0, 30), "
                              f"got {self.randaugment_m}")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"config key '{prefix}.hue' is a share of the colour circle in [0, 0.5], got {self.hue}")
        if len(self.blur_sigma) != 2 or not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ConfigError(f"config key '{prefix}.blur_sigma' must be [low, high] with 0 < low <= high, got {self.blur_sigma}")
        for key in ("random_erasing", "mix_prob", "color_jitter_p", "grayscale", "gaussian_blur"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"config key '{prefix}.{key}' is a probability in [0, 1], got {getattr(self, key)}")
        if self.repeated < 1:
            raise ConfigError(f"config key '{prefix}.repeated' must be >= 1, got {self.repeated}")


def _no_input_kwargs(key: str, kwargs: dict) -> None:
    """The data sets a model's classes, channels and input size: kwargs may not (they would clash)."""
    given = [k for k in ("num_classes", "in_channels", "image_size") if k in kwargs]
    if given:
        raise ConfigError(f"config key '{key}' sets {given[0]}, which the data decides; remove it")


@dataclass
class ModelConfig:
    """A model from the registry (``taildistill models`` lists them)."""

    name: str = "convnet_small"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self, prefix: str) -> None:
        _no_input_kwargs(f"{prefix}.kwargs", self.kwargs)


@dataclass
class TeacherConfig:
    """The teacher of a distillation method: a finished run directory or a checkpoint file."""

    run: str = ""  # run directory of a finished teacher run (its config says the model)
    pretrained: str = ""  # or: a shipped / $TAILDISTILL_TEACHERS teacher by name (`taildistill teachers` lists them)
    checkpoint: str = ""  # or: a .safetensors file, with `model` below naming the architecture
    model: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    allow_unfinished: bool = False  # distil from a teacher run that has not finished (warns with the epoch it reached)
    mean: list[float] = field(default_factory=list)  # teacher.checkpoint: its inputs' channel mean (default: the student's)
    std: list[float] = field(default_factory=list)  # teacher.checkpoint: its inputs' channel std (default: the student's)
    normalize: bool = True  # teacher.checkpoint: whether it takes normalised inputs (a run records its own)

    def validate(self, prefix: str) -> None:
        _no_input_kwargs(f"{prefix}.kwargs", self.kwargs)


@dataclass
class OptimConfig:
    name: OptimizerName = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    sam_rho: float = 0.0  # > 0 wraps the optimizer in sharpness-aware minimisation
    decay_norm_and_bias: bool = False  # weight decay on 1-D parameters (norms, biases) and ViT tokens too (the BKD / LDAM / mdistiller code); off as in timm
    # learning-rate multipliers by parameter-name prefix, names as the method holds them (student.net.fc
    # is a torchvision ResNet's classifier): a new classifier on a pretrained backbone learning 10x
    # faster, as in OLTR's Places-LT recipe
    lr_scale: dict[str, float] = field(default_factory=dict)

    def validate(self, prefix: str) -> None:
        _positive(prefix, lr=self.lr)
        _non_negative(prefix, weight_decay=self.weight_decay, sam_rho=self.sam_rho)
        if not 0 <= self.momentum < 1:  # from 1 on the velocity never decays and training diverges
            raise ConfigError(f"config key '{prefix}.momentum' must be in [0, 1), got {self.momentum}")
        for name, scale in self.lr_scale.items():
            if not scale > 0:
                raise ConfigError(f"config key '{prefix}.lr_scale' multiplies learning rates by numbers > 0, got {name}: {scale}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"config key '{prefix}.betas' must be two numbers in [0, 1), got {self.betas}")


@dataclass
class ScheduleConfig:
    name: ScheduleName = "ldam_step"
    warmup_epochs: int = 5
    # the warm-up's starting fraction s of the learning rate: s + (1 - s) x the linear ramp (0: LDAM's e / warmup;
    # 1/3: the WarmupMultiStepLR of BBN's, TDE's and LADE's code)
    warmup_start: float = 0.0
    milestones: list[int] = field(default_factory=lambda: [160, 180])
    gamma: float = 0.1  # multistep decay factor
    step_factors: list[float] = field(default_factory=lambda: [0.01, 0.0001])  # ldam_step
    min_lr: float = 0.0  # cosine floor

    def validate(self, prefix: str) -> None:
        _non_negative(prefix, warmup_epochs=self.warmup_epochs, min_lr=self.min_lr)
        if not 0 <= self.warmup_start <= 1:
            raise ConfigError(f"config key '{prefix}.warmup_start' is a fraction of the learning rate in [0, 1], got {self.warmup_start}")
        if sorted(self.milestones) != list(self.milestones) or any(m < 0 for m in self.milestones):
            raise ConfigError(f"config key '{prefix}.milestones' must be increasing epochs >= 0, got {self.milestones}")


@dataclass
class TrainConfig:
    epochs: int = 200  # 0 only for a model with nothing to train (an NCM head)
    batch_size: int = 128
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Precision = "auto"  # auto = bf16 on CUDA
    channels_last: bool = True  # used on CUDA only
    compile: bool = False  # torch.compile the student (and the teacher)
    compile_mode: CompileMode = "default"  # reduce-overhead = CUDA graphs of the models (training shapes are static)
    # the whole step (forwards, backward, optimizer) as one CUDA graph, replayed per batch; eager where it cannot be
    # (CPU, DDP, grad_accum > 1, streamed inputs), with a notice. Computes what eager computes (not part of the hash)
    cuda_graph: bool = False
    sync_bn: bool = False  # DDP on CUDA: the student's BatchNorm statistics over the global batch (SyncBatchNorm)
    deterministic: bool = False
    seed: int = 0
    eval_every: int = 1  # evaluate on the validation split every N epochs (0 = only at the end)
    # write checkpoints/last every N epochs (and always at the end, and on SIGTERM/SIGINT); auto: every epoch
    # on CPU, on CUDA the fewest epochs that keep checkpoint writing under 2% of the training time (measured)
    checkpoint_every: int | Literal["auto"] = "auto"
    grad_clip: float = 0.0
    progress: bool = True
    tensorboard: bool = True
    # the run's report.md with its plots (per-class accuracy, confusion matrix, curves); --tiny smoke runs
    # leave the plots out: drawing them (about 1 s a run, matplotlib's text layout) took longer than training
    report_plots: bool = True
    max_steps_per_epoch: int = 0  # 0 = full epochs; >0 caps steps (smoke tests, benchmarks)
    calibrate: bool = False  # fit a temperature on the validation split after training (saved into cosine heads)
    report_best_test: bool = False  # also evaluate the test split every eval_every epochs and report the best epoch's accuracy (the papers' protocol: optimistic, never used for selection)
    grad_accum: int = 1  # optimizer step every N batches (effective batch = batch_size x N x processes)

    def validate(self, prefix: str) -> None:
        _positive(prefix, batch_size=self.batch_size, grad_accum=self.grad_accum)
        _non_negative(prefix, epochs=self.epochs, eval_every=self.eval_every, grad_clip=self.grad_clip,
                      max_steps_per_epoch=self.max_steps_per_epoch)
        if self.checkpoint_every != "auto":
            _positive(prefix, checkpoint_every=self.checkpoint_every)
        if self.cuda_graph and self.compile and self.compile_mode in COMPILE_GRAPHS:
            raise ConfigError(f"config keys '{prefix}.cuda_graph' and '{prefix}.compile_mode: {self.compile_mode}' both "
                              "capture CUDA graphs; use one (cuda_graph captures the whole step; compile_mode: default "
                              "compiles inside it)")
        if not _DEVICE.match(self.device):
            raise ConfigError(f"config key '{prefix}.device' must be auto, cpu, cuda or cuda:N, got '{self.device}'")


@dataclass
class MethodConfig:
    """`name` picks a registered method; every other key is that method's own parameter. `params`
    is a mapping here and the method's own dataclass once the experiment is resolved."""

    name: str = "ce"
    params: Any = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    name: str = ""  # run name; default: the (last) config file's stem
    out_dir: str = "runs"
    imports: list[str] = field(default_factory=list)  # modules imported first: they register your methods / models / sources
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)

    def validate(self, prefix: str) -> None:
        if any(sep in self.name for sep in ("/", "\\")) or self.name in (".", ".."):
            raise ConfigError(f"config key 'name' names one run directory; '{self.name}' is a path (use out_dir)")
        if len(self.name.encode()) > 200:
            raise ConfigError(f"config key 'name' is {len(self.name.encode())} bytes long; a run directory's name "
                              "must stay under 200 (file systems allow 255)")


# ----------------------------------------------------------------------------- files

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_CONFIGS = PACKAGE_DIR / "configs"


def config_dirs() -> list[Path]:
    """Where config names are looked up: the folders of $TAILDISTILL_CONFIG_PATH (a user's own,
    searched first; ':'-separated), then the configs that ship with the package."""
    user = [Path(p).expanduser() for p in os.environ.get("TAILDISTILL_CONFIG_PATH", "").split(os.pathsep) if p]
    for p in user:
        if p.exists() and not p.is_dir():
            raise ConfigError(f"$TAILDISTILL_CONFIG_PATH names {p}, which is not a folder (it lists folders of configs)")
    return [*user, PACKAGE_CONFIGS]


def resolved(path: Path, what: str) -> Path:
    """`path.resolve()`, with a symbolic link loop named as a ConfigError (RuntimeError before Python 3.13)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:
        raise ConfigError(f"{what} {path} cannot be resolved: {exc}") from None


def find_config(name: str | Path) -> Path:
    """A config given as a path (absolute or relative to the current folder) or as a name relative
    to a config folder, with or without `.yaml` (`cifar10_lt/bkd`, `configs/cifar10_lt/bkd.yaml`)."""
    p = Path(name).expanduser()
    if p.is_file():
        return p
    parts = p.parts[1:] if p.parts and p.parts[0] == "configs" else p.parts
    rel = Path(*parts) if parts else p
    for folder in config_dirs():
        for cand in (folder / rel, folder / rel.with_name(rel.name + ".yaml")):
            if cand.is_file():
                return cand
    return p  # not found: the reader names it


def import_modules(names: list[str]) -> None:
    """Import a user's modules (they register methods, models, data sources as a side effect)."""
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"cannot import '{name}' (from --import / imports): {exc}") from None
        except SyntaxError as exc:  # where the parser stopped, not importlib's frame
            raise ConfigError(f"importing '{name}' (from --import / imports) failed: SyntaxError: {exc.msg} "
                              f"({exc.filename}, line {exc.lineno})") from None
        except Exception as exc:
            import traceback

            frames = traceback.extract_tb(exc.__traceback__)
            inside = [Path(f.filename).resolve().is_relative_to(PACKAGE_DIR) for f in frames]
            if inside[-1] and not isinstance(exc, RegistryError):
                raise  # raised inside taildistill (a bug, or a refusal a traceback explains best)
            # the user's module failed while running, or a registration it made was refused: its line
            frame = next((f for f, ours in zip(reversed(frames), reversed(inside)) if not ours), frames[-1])
            raise ConfigError(f"importing '{name}' (from --import / imports) failed: {type(exc).__name__}: {exc} "
                              f"({frame.filename}, line {frame.lineno})") from None


def env_imports() -> list[str]:
    """Modules named by `taildistill --import` (or $TAILDISTILL_IMPORTS, comma-separated)."""
    return [m for m in os.environ.get("TAILDISTILL_IMPORTS", "").split(",") if m.strip()]


# ----------------------------------------------------------------------------- raw YAML


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
    params = section.pop("params", {}) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"config section 'method.params' must be a mapping, got {params!r}")
    params = dict(params)
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
        parsed = yaml.load(value, Loader=_ConfigLoader) if value != "" else ""  # (a SafeLoader, as for files)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({yaml_error(exc)})") from None
    _acyclic(parsed, f"override '{text}'")
    return key.split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Dotted overrides on a raw mapping. `method.name=X` and `model.name=Y` are applied first,
    whatever their position: naming another method (model) drops the previous one's parameters
    (kwargs), and the other `method.*` (`model.kwargs.*`) overrides then set X's (Y's)."""
    raw = _method_section(dict(raw))
    parsed = [(text, *parse_override(text)) for text in overrides]
    for text, parts, value in sorted(parsed, key=lambda p: p[1] not in (["method", "name"], ["model", "name"])):
        if parts[0] == "method" and len(parts) >= 2 and parts[1] not in ("name", "params"):
            parts = ["method", "params", *parts[1:]]
        if parts == ["method", "name"]:
            section = raw.get("method") or {}
            if section.get("name", "ce") != value:
                raw["method"] = {"name": value, "params": {}}
            continue
        if parts == ["model", "name"]:
            section = raw.get("model") or {}
            if isinstance(section, dict) and section.get("name") != value:
                raw["model"] = {"name": value}  # the previous architecture's kwargs do not apply
            continue
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


_ENV = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")
_REF = re.compile(r"\$\{([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*)\}")


def expand_env(value: Any) -> Any:
    """`${VAR}` / `${VAR:-default}` (upper-case names) in string values come from the environment
    (paths to data differ per machine; configs never hard-code them). As in the shell, the default
    also stands in for a variable that is set but empty."""
    if isinstance(value, str):
        def sub(m):
            if os.environ.get(m.group(1)) or (m.group(1) in os.environ and m.group(2) is None):
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


def yaml_error(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own text spans several)."""
    mark = getattr(exc, "problem_mark", None)
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return what + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping (PyYAML keeps the last
    silently: a typo'd duplicate would override without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key '{key}' is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _acyclic(value, where: str, stack: tuple[int, ...] = ()) -> None:
    """Refuse a YAML alias that contains itself (`a: &x [*x]`): it would recurse without end."""
    if isinstance(value, (dict, list)):
        if id(value) in stack:
            raise ConfigError(f"{where} has a YAML alias that contains itself")
        for v in (value.values() if isinstance(value, dict) else value):
            _acyclic(v, where, stack + (id(value),))


def _read_yaml(path: Path) -> dict:
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder, not a YAML file")
    if not path.is_file():
        hint = ""
        if path.suffix != ".yaml" and re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+$", str(path)):
            hint = f" (an override is KEY=VALUE: {path}=...)"
        raise ConfigError(f"config file not found: {path}{hint}")
    try:
        raw = yaml.load(path.read_text(), Loader=_ConfigLoader)  # (a SafeLoader: no Python objects)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {yaml_error(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    _acyclic(raw, f"config file {path}")
    return raw


# config values that name input files: relative ones do not depend on where a command is run
# (model weights and word vectors too: they are inputs like the data)
DATA_PATH_KEYS = (("data", "root"), ("data", "test_root"), ("teacher", "checkpoint"),
                  ("model", "kwargs", "weights"), ("model", "kwargs", "vectors"), ("teacher", "kwargs", "weights"))
# ... and, typed on the command line, made absolute as well: a run's output that a model starts from
# (a stage-1 network, a frozen backbone), which config files name relative to the current folder as
# they do teacher runs (runs/...); absolute in config.yaml, it is the same file wherever the run resumes
CLI_PATH_KEYS = (*DATA_PATH_KEYS, ("model", "kwargs", "checkpoint"))


def data_dir() -> Path:
    """The documented data folder: $TAILDISTILL_DATA, else ~/data."""
    return Path(os.environ.get("TAILDISTILL_DATA", "~/data")).expanduser()


def _path_keys(raw: dict, keys=DATA_PATH_KEYS) -> list[tuple[str, ...]]:
    """Where a raw mapping holds input-file values: `keys` and each of data.lists."""
    lists = (raw.get("data") or {}).get("lists") if isinstance(raw.get("data"), dict) else None
    return [*keys, *(("data", "lists", k) for k in (lists if isinstance(lists, dict) else ()))]


def _map_paths(raw: dict, fix, keys=DATA_PATH_KEYS) -> dict:
    """Apply `fix(value) -> value` to the input-file values of a raw mapping (:func:`_path_keys`)."""
    def apply(mapping: dict, where: tuple[str, ...]) -> dict:
        head, rest = where[0], where[1:]
        value = mapping.get(head)
        if not rest:
            return {**mapping, head: fix(value)} if isinstance(value, str) and value else mapping
        return {**mapping, head: apply(value, rest)} if isinstance(value, dict) else mapping

    for where in _path_keys(raw, keys):
        raw = apply(raw, where)
    return dict(raw)


def _path_values(raw: dict, keys=DATA_PATH_KEYS) -> dict:
    """Only the input-file values of a raw mapping (:func:`_path_keys`), nested as there."""
    out: dict = {}
    for where in _path_keys(raw, keys):
        value = raw
        for k in where:
            value = value.get(k) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            node = out
            for k in where[:-1]:
                node = node.setdefault(k, {})
            node[where[-1]] = value
    return out


def resolve_data_paths(raw: dict, config_dir: Path | None = None) -> dict:
    """Input paths of a config: `./x` and `../x` are relative to the config file that says them,
    other relative paths to the data folder (:func:`data_dir`); never to the current folder."""
    def fix(value: str) -> str:
        if "${" in value:  # a reference, resolved later
            return value
        p = Path(value).expanduser()
        if p.is_absolute():
            return str(p)
        if value.startswith(("./", "../")):  # already resolved against its file by load_raw, if it had one
            return str(resolved(config_dir / p, "path")) if config_dir is not None else value
        return str(data_dir() / p)

    return _map_paths(raw, fix)


def merge(base: dict, top: dict) -> dict:
    """`top` over `base` (both raw, method sections folded): mappings merge key by key; when `top`
    names another method (model), the base's method parameters (model.kwargs) are dropped: they
    belong to the other one."""
    base, top = _method_section(base), _method_section(top)
    out = deep_merge(base, {k: v for k, v in top.items() if k != "method"})
    new_model, old_model = top.get("model"), base.get("model")
    if isinstance(new_model, dict) and isinstance(old_model, dict) and "name" in new_model \
            and new_model["name"] != old_model.get("name"):
        out["model"] = new_model  # another architecture: the base's model.kwargs belong to the old one
    if "method" in top:
        new, old = top["method"], base.get("method") or {}
        if "name" in new and new["name"] != old.get("name", "ce"):
            out["method"] = new
        else:
            out["method"] = deep_merge(old, new)
    return out


def load_raw(paths: str | Path | list, _stack: tuple[Path, ...] = ()) -> dict:
    """The merged raw mapping of one config file (with its `base:` chain) or of several files
    composed left to right. A `base:` cycle is an error naming the chain."""
    if isinstance(paths, (list, tuple)):
        if not paths:
            raise ConfigError("no config file given")
        out: dict = {}
        for p in paths:
            out = merge(out, load_raw(p, _stack))
        return out
    path = find_config(paths) if not _stack else Path(paths).expanduser()
    key = resolved(path, "config file")
    if key in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, key))
        raise ConfigError(f"config files include each other in a cycle: {chain}")
    raw = _map_paths(expand_env(_read_yaml(path)),
                     lambda v: str(resolved(path.parent / v, "path")) if v.startswith(("./", "../")) else v)
    bases = raw.pop("base", None)
    if bases is None:
        return _method_section(raw)
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"config file {path}: `base` must be a file name or a list of them, got {bases!r}")
    merged = load_raw([(path.parent / b) for b in bases], (*_stack, key))
    return merge(merged, raw)


def deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_references(raw: dict) -> dict:
    """`${dotted.key}` (lower-case) in a string value is replaced by that key's value in the same
    config (after composition and overrides, defaults included), e.g. a teacher run named after
    the benchmark's output folder: `teacher: {run: "${out_dir}/ldam_drw_sam_teacher"}`."""
    defaults = to_dict(ExperimentConfig())

    def lookup(key: str, where: str):
        node: Any = raw
        for tree in (raw, defaults):
            node = tree
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
                if node is None:
                    break
            if node is not None:
                break
        if node is None or isinstance(node, (dict, list)):
            raise ConfigError(f"config value '{where}' refers to '${{{key}}}', which is not a config value")
        if isinstance(node, str) and _REF.search(node):
            raise ConfigError(f"config value '{where}' refers to '${{{key}}}', which refers to another key")
        return str(node)

    def walk(value: Any) -> Any:
        if isinstance(value, str) and _REF.search(value):
            return _REF.sub(lambda m: lookup(m.group(1), value), value)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(raw)


def parse_config(raw: dict, overrides: list[str] | None = None) -> ExperimentConfig:
    """Validate a raw mapping (plus dotted overrides) into an :class:`ExperimentConfig` whose
    `method.params` is still a mapping (see :func:`taildistill.experiment.build_config`). Relative
    input paths from config files resolve against the data folder; relative paths given as
    overrides (typed in a shell) against the current folder (every key of CLI_PATH_KEYS)."""
    cli = apply_overrides({}, overrides or [])
    cli = _map_paths(cli, lambda v: str(resolved(Path(v).expanduser(), "path")), CLI_PATH_KEYS)
    raw = apply_overrides(resolve_data_paths(raw), overrides or [])
    raw = deep_merge(raw, _path_values(cli, CLI_PATH_KEYS))
    raw = resolve_references(raw)
    return from_dict(ExperimentConfig, raw)


def dump_config(cfg: ExperimentConfig) -> str:
    data = to_dict(cfg)
    method = data.pop("method")
    data["method"] = {"name": method["name"], **(method["params"] or {})}
    return yaml.safe_dump(data, sort_keys=False)
