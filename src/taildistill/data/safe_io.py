"""Safe readers for untrusted files: archives that never write outside their target and a
restricted unpickler for the official CIFAR python batches."""
from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

from ..errors import DataError


def _refusal(member: tarfile.TarInfo, target: Path, exc: Exception) -> DataError:
    """The stdlib data filter's refusal as one line naming the member."""
    if isinstance(exc, (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError)):
        why = f"links outside {target}"
    elif isinstance(exc, tarfile.SpecialFileError):
        why = "is a device or fifo"
    elif isinstance(exc, (tarfile.AbsolutePathError, tarfile.OutsideDestinationError)):
        why = f"would be written outside {target}"
    else:
        why = str(exc)
    return DataError(f"archive member '{member.name}' {why}; refusing")


def archive_error(exc: BaseException) -> str:
    """tarfile's reason on one line: opening an unknown format lists every method it tried, one per
    line ("file could not be opened successfully:\n- method gz: ..."); a file that is no archive of
    any kind is said as such."""
    text = str(exc)
    if isinstance(exc, tarfile.ReadError) and "could not be opened successfully" in text:
        return "not a tar, tar.gz, tar.bz2 or tar.xz archive, or a damaged one"
    return " ".join(text.split())


def safe_extract(archive: str | Path, target: str | Path) -> Path:
    """Extract a .tar/.tar.gz into `target` with the standard library's `data` extraction filter
    (PEP 706: no absolute paths, no `..`, no links leaving the target, no device files, no
    set-uid bits). Every member is checked before anything is written; the archive is extracted
    into a temporary folder beside `target` and renamed into place, so a refused or interrupted
    extraction never leaves a partial `target` behind."""
    archive, target = Path(archive), Path(target)
    if not hasattr(tarfile, "data_filter"):  # Python < 3.10.12 / 3.11.4
        raise DataError("safe archive extraction needs Python >= 3.10.12 or >= 3.11.4 (tarfile's data filter)")
    target.parent.mkdir(parents=True, exist_ok=True)
    target = target.resolve()
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                if m.name.startswith(("/", "\\")) or Path(m.name).is_absolute():
                    raise DataError(f"archive member '{m.name}' has an absolute path and would be written outside {target}; refusing")
                try:
                    tarfile.data_filter(m, str(target))
                except tarfile.FilterError as exc:
                    raise _refusal(m, target, exc) from None
            tmp.mkdir()
            tar.extractall(tmp, members=members, filter="data")
        if target.exists():  # an older, complete extraction is replaced (one rename, never merged)
            shutil.rmtree(target)
        os.replace(tmp, target)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot extract archive {archive}: {archive_error(exc)}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
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
