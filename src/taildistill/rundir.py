"""The run directory: the one place that knows its file names and formats.

    config.yaml      the fully resolved config          data.json      the training set (DataInfo)
    env.json         command, commit, hardware, versions metrics.jsonl  one line per epoch
    final.json       last-epoch test metrics (+ best-on-validation ones when a val split exists)
    checkpoints/     last.safetensors (student), last_state.pt (all that resume needs), best.safetensors
    report.md, plots/*.png, tb/ (TensorBoard)

Every file is written atomically (a temporary name in the same folder, fsync, rename), so a crash
mid-write never leaves a truncated file behind. Weights are safetensors; the trainer state is read
with ``torch.load(weights_only=True)``: nothing here unpickles arbitrary objects.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from .config import ExperimentConfig, load_raw, parse_config, yaml_error
from .errors import TaildistillError, TrainingError
from .files import (clean_stale_temporaries, lock_exclusive, sha256_file, unlock, unlock_removing_bare_folder,
                    write_atomic, write_text_atomic)

# settings that do not change what a run computes: two runs that differ only in these (and the
# seed) are seeds of one configuration
_NOT_THE_EXPERIMENT = {"name": None, "out_dir": None,
                       "train": ("seed", "progress", "tensorboard", "eval_every", "checkpoint_every", "device",
                                 "cuda_graph", "report_plots")}
# what a resumed run may change (`train --resume RUN KEY=VALUE`): how it executes, never what it computes
# or selects (eval_every decides which epochs the best-on-validation weights are chosen from)
RESUME_KEYS = tuple(f"train.{k}" for k in _NOT_THE_EXPERIMENT["train"] if k not in ("seed", "eval_every"))


_NUMBER = (int, float)
# what the readers of a finished run (report, eval, teachers, suites) rely on: a file of another shape
# (valid JSON written by something else) is named, not a KeyError deep in a report
_FINAL_SHAPE = {"name": str, "method": str, "model": str, "group_policy": str, "class_counts": list}
_TEST_SHAPE = {"top1": _NUMBER, "per_class": list, "confusion": list}
_METRICS_SHAPE = {"epoch": int, "loss": _NUMBER, "train_acc": _NUMBER}


def shape_error(record, shape: dict) -> str:
    """'' when `record` is a mapping holding every key of `shape` with a value of its type; else what is wrong."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not a mapping"
    for key, kind in shape.items():
        if key not in record:
            return f"no '{key}'"
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            return f"'{key}' is {record[key]!r}"
    return ""


def execution_overrides(overrides: list[str]) -> list[str]:
    """Of a run's KEY=VALUE overrides, the ones a resume passes on (RESUME_KEYS)."""
    return [o for o in overrides if o.split("=", 1)[0] in RESUME_KEYS]


def resume_overrides(overrides: list[str]) -> list[str]:
    """The KEY=VALUE overrides a resumed run accepts (RESUME_KEYS); any other is an error, since it
    would change the experiment the checkpoint belongs to."""
    allowed = execution_overrides(overrides)
    bad = [o for o in overrides if o not in allowed]
    if bad:
        raise TaildistillError(f"a resumed run keeps its experiment: {', '.join(bad)} cannot change; a resume may "
                               f"set only {', '.join(RESUME_KEYS)}")
    return allowed


# keys added after runs were saved without them: left out of the hash while empty, so that an old
# run and its re-run with today's defaults are still the same experiment
_ADDED_EMPTY = {"teacher": ("pretrained",), "optim": ("lr_scale",), "schedule": ("warmup_start",)}


def flat_config(cfg) -> dict:
    """A resolved config as dotted keys -> values (TensorBoard's hyper-parameters, CSV headers)."""
    import dataclasses

    def walk(prefix, value, out):
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v, out)
        else:
            out[prefix] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
        return out

    return walk("", cfg, {})


def init_file_identity(record: dict, with_seed: bool) -> str:
    """What an initialisation file a run read is (a record of experiment.init_file_digests): its
    bytes (SHA-256); seed aside, a run's weights (a stage-1 network) are the experiment that run is,
    so that the seeds of a decoupled classifier, each on its own seed's stage 1, are one configuration."""
    if not with_seed and record.get("run_config_hash"):
        return f"run {record['run_config_hash']}"
    return f"file {record['sha256']}"


def config_hash(raw: dict, with_seed: bool = False, teacher: str | None = None,
                init_files: dict[str, str] | None = None) -> str:
    """A short hash of a resolved config (as written to config.yaml) minus its name, folder and
    the settings that do not change the result; the seed too unless `with_seed`. `teacher`, the
    teacher run's own hash (with its seed), stands for `teacher.run`'s path when given, and
    `init_files` ({"model.kwargs.checkpoint": identity}, see :func:`init_file_identity`) for those
    files' paths: a run is then the same experiment wherever its suite folder lies or however the
    path is spelt."""
    data = json.loads(json.dumps(raw))
    if teacher is not None and (data.get("teacher") or {}).get("run"):
        data["teacher"]["run"] = f"run {teacher}"
    for dotted, identity in (init_files or {}).items():
        *parents, leaf = dotted.split(".")
        node = data
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf):
            node[leaf] = identity
    for key, sub in _NOT_THE_EXPERIMENT.items():
        if sub is None:
            data.pop(key, None)
        else:
            for k in sub:
                if k != "seed" or not with_seed:
                    (data.get(key) or {}).pop(k, None)
    for key, sub in _ADDED_EMPTY.items():
        for k in sub:
            if not (data.get(key) or {}).get(k):
                (data.get(key) or {}).pop(k, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

# ----------------------------------------------------------------------------- weights and state


def save_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    write_atomic(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata or {}))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt or foreign files
        raise TrainingError(f"cannot read checkpoint {path}: {exc}") from None


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors holding NaN or inf (a broken teacher)."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def save_state(state: dict, path: Path) -> None:
    write_atomic(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"trainer state not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusal (pickled objects) or corruption
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"cannot read trainer state {path} (damaged, or not a taildistill state file): "
                            f"{first}") from None


# ----------------------------------------------------------------------------- the directory


_DIGESTS: dict[tuple, str] = {}  # file_digest's memo


def file_digest(path: Path) -> str:
    """SHA-256 of a file, memoised per (path, inode, size, mtime): a suite planning a hundred runs
    reads each teacher's or stage-1 network's file once."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    key = (str(p), st.st_ino, st.st_size, st.st_mtime_ns)  # (an atomic rewrite is a new inode)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(p)
    return _DIGESTS[key]


_KEPT = {".lock", "train.log"}  # a run's lock and the log its scheduler writes, kept across --overwrite


class RunDir:
    """A run directory (existing or to be written). Readers and the trainer use only this class."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # file names
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def data_file(self) -> Path:
        return self.path / "data.json"

    @property
    def env_file(self) -> Path:
        return self.path / "env.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def final_file(self) -> Path:
        return self.path / "final.json"

    @property
    def log_file(self) -> Path:
        """The run's console output when a scheduler (suite, sweep) started it."""
        return self.path / "train.log"

    @property
    def report_file(self) -> Path:
        return self.path / "report.md"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_weights(self) -> Path:
        return self.checkpoints / "last.safetensors"

    @property
    def last_state(self) -> Path:
        return self.checkpoints / "last_state.pt"

    @property
    def best_weights(self) -> Path:
        return self.checkpoints / "best.safetensors"

    # state
    def is_run(self) -> bool:
        return self.config_file.is_file()

    def is_finished(self) -> bool:
        return self.final_file.is_file()

    def check_new(self, overwrite: bool = False) -> None:
        """Before a new run is written here: the path must be a folder that holds no run (or
        `overwrite`) and nothing else; a file, or another run's directory, is an error."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise TaildistillError(f"{p} is a file, not a run directory; choose another --out / name")
        if self.is_run() and not overwrite:
            state = "a finished run" if self.is_finished() else "an unfinished run"
            raise TaildistillError(f"{p} holds {state}; continue it with `taildistill train --resume {p}`, "
                                   "replace it with --overwrite, or give another --out / name")
        if p.is_dir() and not self.is_run() and any(q.name not in _KEPT for q in p.iterdir()):
            raise TaildistillError(f"{p} is a folder that is not empty and holds no run; choose another --out / name")

    def clear(self) -> None:
        """Remove a run's files (--overwrite), keeping the folder and its lock."""
        import shutil

        for q in self.path.iterdir():
            if q.name in _KEPT:
                continue
            shutil.rmtree(q) if q.is_dir() else q.unlink()

    def require_run(self, what: str = "") -> "RunDir":
        if not self.is_run():
            raise TaildistillError(f"{what + ': ' if what else ''}{self.path} is not a run directory (no config.yaml)")
        return self

    # readers
    def config_raw(self) -> dict:
        return load_raw(self.require_run().config_file)

    def config(self) -> ExperimentConfig:
        """The saved config (method parameters as a mapping; see experiment.load_config to resolve them)."""
        return parse_config(self.config_raw())

    def _json(self, path: Path, what: str) -> dict:
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TaildistillError(f"{path} is damaged ({what}: {exc})") from None

    def data_info(self) -> dict:
        return self._json(self.data_file, "the training-set description") if self.data_file.is_file() else {}

    def env(self) -> dict:
        return self._json(self.env_file, "provenance") if self.env_file.is_file() else {}

    def final(self) -> dict:
        if not self.is_finished():
            raise TaildistillError(f"{self.path} has no final.json (not a finished run)")
        final = self._json(self.final_file, "final metrics")
        wrong = shape_error(final, _FINAL_SHAPE) or ("test" in final and shape_error(final["test"], _TEST_SHAPE))
        if wrong:
            raise TaildistillError(f"{self.final_file} is not a run's final metrics ({wrong})")
        return final

    def metrics(self) -> list[dict]:
        """One record per logged epoch. A last line cut off by a crash mid-write is ignored (a resume
        removes it); damage anywhere else is an error naming the line."""
        if not self.metrics_file.is_file():
            return []
        lines = [ln for ln in self.metrics_file.read_text().splitlines() if ln.strip()]
        out = []
        for i, ln in enumerate(lines):
            try:
                record = json.loads(ln)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break
                raise TaildistillError(f"{self.metrics_file} is damaged at line {i + 1}") from None
            wrong = shape_error(record, _METRICS_SHAPE)
            if wrong:
                raise TaildistillError(f"{self.metrics_file} line {i + 1} is not an epoch's record ({wrong})")
            out.append(record)
        return out

    def config_hash(self, with_seed: bool = False) -> str:
        """What experiment this run is (see :func:`config_hash`), from its config.yaml; a finished
        student's teacher run by the hash its final.json recorded (by its path before that), the
        initialisation files its student read by what env.json recorded of them (by their paths in
        runs that recorded none)."""
        try:
            raw = yaml.safe_load(self.require_run().config_file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise TaildistillError(f"{self.config_file} is damaged: {yaml_error(exc)}") from None
        init = {k: init_file_identity(rec, with_seed) for k, rec in self.init_files().items()}
        return config_hash(raw, with_seed, self.teacher_learnt().get("config_hash"), init)

    def init_files(self) -> dict[str, dict]:
        """The initialisation files the run's student read when it started (path, sha256, and
        run_config_hash for a run's weights), as env.json recorded them; {} for older runs."""
        return self.env().get("init_files") or {}

    def teacher_learnt(self) -> dict:
        """The teacher run a finished student learnt from, as its final.json recorded it (run,
        config_hash, weights_sha256; older runs lack the last); {} otherwise."""
        return (self.final().get("teacher") or {}) if self.is_finished() else {}

    def weights_digest(self) -> str:
        """SHA-256 of the run's last weights (what a student loads as its teacher; memoised, see
        :func:`file_digest`)."""
        return file_digest(self.last_weights)

    # writers (the trainer's)
    def lock(self) -> None:
        """One writer per run: an exclusive lock on `.lock`, held until :meth:`unlock` or the
        process ends (the OS releases it after a crash). Leftovers of killed writes are removed."""
        try:  # safetensors and TensorBoard take UTF-8 paths only: refused before anything is written
            str(self.path.absolute()).encode("utf-8")
        except UnicodeEncodeError:
            raise TaildistillError(f"the run folder {str(self.path)!r} is not a UTF-8 path; the weights and "
                                   "TensorBoard files need one") from None
        self.path.mkdir(parents=True, exist_ok=True)
        lock_exclusive(self.path / ".lock", f"run directory {self.path}")
        for folder in (self.path, self.checkpoints):
            clean_stale_temporaries(folder)

    def unlock(self) -> None:
        unlock(self.path / ".lock")

    def unlock_removing_if_empty(self) -> None:
        """Release the lock and remove the folder if it holds nothing but the lock (a run that
        failed before writing)."""
        unlock_removing_bare_folder(self.path, self.path / ".lock")

    def write_header(self, config_text: str, data_info: dict, env: dict) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config_file, config_text)
        write_text_atomic(self.data_file, json.dumps(data_info, indent=1))
        write_text_atomic(self.env_file, json.dumps(env, indent=1))

    def record_resume(self, env: dict) -> None:
        """A resume keeps the original provenance and appends its own to `resumed`."""
        old = self.env()
        old.setdefault("resumed", []).append(env)
        write_text_atomic(self.env_file, json.dumps(old, indent=1))

    def note(self, key: str, value) -> None:
        """Record a fact about how the run was executed (not its result) in env.json under `key`."""
        env = self.env()
        env[key] = value
        write_text_atomic(self.env_file, json.dumps(env, indent=1))

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")

    def keep_metrics_before(self, epoch: int) -> None:
        """Drop the epochs logged after the checkpoint a resumed run continues from (and a last
        line cut off by a crash)."""
        if self.metrics_file.is_file():
            keep = [r for r in self.metrics() if r["epoch"] < epoch]
            write_text_atomic(self.metrics_file, "".join(json.dumps(r) + "\n" for r in keep))

    def write_metrics_csv(self) -> None:
        """metrics.csv beside metrics.jsonl: one row per epoch, one column per key ever logged."""
        import csv
        import io

        records = self.metrics()
        keys: list[str] = []
        for r in records:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows(records)
        write_text_atomic(self.metrics_csv, buf.getvalue())

    def write_final(self, final: dict) -> None:
        """final.json marks a finished run (suites reuse those): never half-written."""
        write_text_atomic(self.final_file, json.dumps(final, indent=1))
