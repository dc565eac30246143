"""Checkpoints: weights as safetensors, trainer state via torch.save loaded with weights_only=True.
Every file is written to a temporary name in the same folder and renamed into place, so a
crash mid-write never leaves a truncated checkpoint behind."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import TrainingError


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
    """Write a small text file (final.json) so that readers see the old file or the whole new one."""
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
    except Exception as exc:  # corrupt or not a safetensors file
        raise TrainingError(f"cannot read checkpoint {path}: {exc}") from None


def save_state(state: dict, path: Path) -> None:
    _atomic(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"trainer state not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"cannot read trainer state {path}: {exc}") from None


def student_state(method) -> dict[str, torch.Tensor]:
    """The student's weights alone (what a later run uses as a teacher or evaluates)."""
    return {k: v for k, v in method.student.state_dict().items()}
