"""What produced a number: command, commit, hardware and versions (written into every run)."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import torch


def git_commit(path: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=path or Path(__file__).resolve().parent, timeout=5)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=path or Path(__file__).resolve().parent, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def provenance(device: torch.device) -> dict:
    import numpy

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    for mod in ("torchvision", "timm", "kornia"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    from ..version import __version__

    versions["taildistill"] = __version__
    return {"command": " ".join(sys.argv), "commit": git_commit(), "hardware": hardware(device),
            "cuda": torch.version.cuda, "versions": versions}
