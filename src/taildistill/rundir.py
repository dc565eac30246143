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

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ExperimentConfig, load_raw, parse_config
from .errors import TaildistillError, TrainingError

# ----------------------------------------------------------------------------- atomic files


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file so that readers see the old file or the whole new one."""
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def save_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    _atomic(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata or {}))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt or foreign files
        raise TrainingError(f"cannot read checkpoint {path}: {exc}") from None


def save_state(state: dict, path: Path) -> None:
    _atomic(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"trainer state not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusal (pickled objects) or corruption
        raise TrainingError(f"cannot read trainer state {path}: {exc}") from None


# ----------------------------------------------------------------------------- the directory


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
    def final_file(self) -> Path:
        return self.path / "final.json"

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
        return self._json(self.final_file, "final metrics")

    def metrics(self) -> list[dict]:
        if not self.metrics_file.is_file():
            return []
        return [json.loads(ln) for ln in self.metrics_file.read_text().splitlines() if ln.strip()]

    # writers (the trainer's)
    def write_header(self, config_text: str, data_info: dict, env: dict) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config_file, config_text)
        write_text_atomic(self.data_file, json.dumps(data_info, indent=1))
        write_text_atomic(self.env_file, json.dumps(env, indent=1))

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")

    def keep_metrics_before(self, epoch: int) -> None:
        """Drop the epochs logged after the checkpoint a resumed run continues from."""
        if self.metrics_file.is_file():
            keep = [r for r in self.metrics() if r["epoch"] < epoch]
            write_text_atomic(self.metrics_file, "".join(json.dumps(r) + "\n" for r in keep))

    def write_final(self, final: dict) -> None:
        """final.json marks a finished run (suites reuse those): never half-written."""
        write_text_atomic(self.final_file, json.dumps(final, indent=1))
