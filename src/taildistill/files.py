"""Filesystem primitives every writer uses: atomic writes, leftovers of killed writes, and an
exclusive lock held for a process's life."""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from pathlib import Path

from .errors import TaildistillError

_TMP = re.compile(r"^\..+\.tmp(\d+)(\.[A-Za-z0-9]+)?$")


def temporary_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place (same folder, so the rename is atomic)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_atomic(path: Path, write) -> None:
    """`write(tmp)` writes a temporary file, which is fsynced and renamed onto `path`: readers see
    the old file or the whole new one, never a truncated one (a full disk leaves the old file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        try:
            write(tmp)
        except OSError:
            raise
        except Exception as exc:  # re-raised unless it is a serialiser's failed write, below
            if not _failed_write(exc):
                raise
            # torch's and safetensors' writers report a failed write (a full disk) as their own errors
            raise OSError(errno.EIO, f"cannot write {path}: {str(exc).strip().splitlines()[-1]} "
                                     "(is the disk full?)") from exc
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _failed_write(exc: Exception) -> bool:
    """Whether a serialiser's own error is its write to the file failing: safetensors' "No space
    left on device" (its SafetensorError), torch's zip writer's "unexpected pos" or "PytorchStreamWriter
    failed writing file" (RuntimeErrors)."""
    text = str(exc)
    return (type(exc).__name__ == "SafetensorError" and any(k in text for k in ("IoError", "os error", "No space"))) or \
        (isinstance(exc, RuntimeError) and (("inline_container" in text and "unexpected pos" in text)
                                            or "PytorchStreamWriter failed" in text or "file write failed" in text))


def check_writable_folder(folder: Path, what: str) -> None:
    """Refuse, before any long work, a folder that cannot take a file (read-only, not a folder,
    no permission): creates it if missing, then writes and removes a probe file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise TaildistillError(f"{what} {folder} is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / temporary_name(folder / ".write-probe").name
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TaildistillError(f"{what} {folder} cannot be written: {exc.strerror or exc}") from None


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files (and folders) of writes whose process has died (a `kill -9`
    between write and rename); returns what was removed. Another live writer's are left alone."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TMP.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


_HELD: dict[str, int] = {}


class LockedError(TaildistillError):
    """Another process holds the lock."""


def lock_exclusive(path: Path, what: str) -> None:
    """Take an exclusive lock on `path` (created if needed) for this process's life, or until
    :func:`unlock`; the OS releases it when the process dies, however it dies. Taking a lock this
    process already holds is a no-op. Another holder is an error naming its pid."""
    path = Path(path)
    key = str(path.resolve())
    if key in _HELD:
        return
    try:
        import fcntl
    except ImportError:  # no flock on this platform: one writer per run is the user's responsibility
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LockedError(f"{what} is in use by another process (pid {holder}); wait for it to end or stop it") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD[key] = fd


def unlock(path: Path) -> None:
    fd = _HELD.pop(str(Path(path).resolve()), None)
    if fd is not None:
        os.close(fd)


def unlock_removing_bare_folder(folder: Path, lock: Path) -> None:
    """Release `lock`; when `folder` holds nothing but it (a run or grid refused before it wrote
    anything), remove both. The lock file goes while still held, so no other process can take a
    lock on a file about to vanish."""
    folder = Path(folder)
    bare = folder.is_dir() and all(q.name == Path(lock).name for q in folder.iterdir())
    if bare:
        Path(lock).unlink(missing_ok=True)
    unlock(lock)
    if bare:
        folder.rmdir()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (weights and archives need not fit in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
