"""Safe readers for untrusted files: archives that never write outside their target and a
restricted unpickler for the official CIFAR python batches."""
from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

from ..errors import DataError


def _check_member(member: tarfile.TarInfo, target: Path) -> None:
    dest = (target / member.name).resolve()
    if not (dest == target or str(dest).startswith(str(target) + os.sep)):
        raise DataError(f"archive member '{member.name}' would be written outside {target}; refusing")
    if member.issym() or member.islnk():
        link = (dest.parent / member.linkname).resolve() if member.issym() else (target / member.linkname).resolve()
        if not str(link).startswith(str(target) + os.sep):
            raise DataError(f"archive member '{member.name}' links outside {target}; refusing")
    if member.isdev() or member.isfifo():
        raise DataError(f"archive member '{member.name}' is a device or fifo; refusing")


def safe_extract(archive: str | Path, target: str | Path) -> Path:
    """Extract a .tar/.tar.gz into `target`, refusing absolute paths, `..`, links that leave the
    target and device files. Every member is checked before anything is written."""
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    target = target.resolve()
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, target)
            for m in members:
                tar.extract(m, target, set_attrs=False, filter="data") if hasattr(tarfile, "data_filter") \
                    else tar.extract(m, target, set_attrs=False)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot extract archive {archive}: {exc}") from None
    return target


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR python format holds: builtins and numpy arrays/dtypes."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "bytes"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def load_cifar_pickle(data: bytes | Path, what: str) -> dict:
    """Load one CIFAR python batch with the restricted unpickler; keys are decoded to str."""
    raw = data.read_bytes() if isinstance(data, Path) else data
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # any corruption or refused class -> one clear line
        raise DataError(f"{what} is not a valid CIFAR python batch: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{what} is not a valid CIFAR python batch (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
