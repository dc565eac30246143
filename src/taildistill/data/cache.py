"""Decode-once cache of image data sets as uint8 arrays, keyed so a changed source is never
served stale (path, size and modification time of every source file, plus the image size)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import DataError


def cache_root(cache_dir: str = "") -> Path:
    root = Path(cache_dir or os.environ.get("TAILDISTILL_CACHE", "~/.cache/taildistill")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _fingerprint(path: Path) -> list:
    path = path.resolve()
    if path.is_dir():  # a folder: its own entry list and the mtimes of its direct children
        kids = sorted(path.iterdir())
        return [str(path), len(kids), [(k.name, k.stat().st_mtime_ns, k.stat().st_size) for k in kids[:5000]]]
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def cache_key(kind: str, sources: list[Path], image_size: int) -> str:
    blob = json.dumps([kind, image_size, [_fingerprint(Path(s)) for s in sources]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached(cache_dir: str, kind: str, sources: list[Path], image_size: int, build):
    """Return (arrays, meta) from the cache, or call `build() -> (arrays, meta)` and store it.

    Arrays are stored with np.savez and read back with allow_pickle=False; the write is atomic.
    """
    root = cache_root(cache_dir)
    key = cache_key(kind, sources, image_size)
    path = root / f"{kind}-{key}.npz"
    meta_path = root / f"{kind}-{key}.json"
    if path.is_file() and meta_path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            return arrays, json.loads(meta_path.read_text())
        except (OSError, ValueError, json.JSONDecodeError):
            pass  # a damaged cache entry is rebuilt below
    arrays, meta = build()
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        tmp_meta = meta_path.with_suffix(f".tmp{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, meta_path)
    except OSError as exc:
        raise DataError(f"cannot write the data cache in {root}: {exc}") from None
    return arrays, meta
