"""Trained teachers a config can name (`teacher.pretrained: NAME`) instead of training one.

A teacher is a finished run directory reduced to what distillation and provenance need:
``config.yaml`` (architecture, augmentation), ``data.json`` (classes, normalisation), ``env.json``
(commit, hardware, versions), ``final.json`` (its test accuracy per group), ``metrics.jsonl`` and
``checkpoints/last.safetensors``. They are looked up by folder name in the folders of
``$TAILDISTILL_TEACHERS`` (``os.pathsep``-separated; your own) and then in the package's
``teachers/`` folder (the shipped ones, listed in its README). `taildistill teachers` lists them;
`taildistill teachers --export RUN NAME` makes one from a finished run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .errors import ConfigError
from .files import write_text_atomic
from .rundir import RunDir, load_weights, non_finite

SHIPPED = Path(__file__).resolve().parent / "teachers"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def roots() -> list[Path]:
    """The folders searched, first match wins: $TAILDISTILL_TEACHERS, then the shipped folder."""
    extra = [Path(p).expanduser() for p in os.environ.get("TAILDISTILL_TEACHERS", "").split(os.pathsep) if p]
    for p in extra:  # (a missing folder is fine: nothing exported there yet)
        if p.exists() and not p.is_dir():
            raise ConfigError(f"$TAILDISTILL_TEACHERS names {p}, which is not a folder (it lists folders of teachers)")
    return extra + [SHIPPED]


def available() -> dict[str, Path]:
    """name -> folder of every teacher found (a folder without finished weights is not one)."""
    found: dict[str, Path] = {}
    for root in roots():
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            run = RunDir(d)
            if d.is_dir() and not d.name.startswith(".") and d.name not in found and run.is_finished() \
                    and run.last_weights.is_file():  # (".NAME.tmp": an export in progress or cut off)
                found[d.name] = d
    return found


def find(name: str) -> Path:
    """The folder of teacher `name`, or a ConfigError listing the ones there are."""
    teachers = available()
    if name not in teachers:
        names = ", ".join(teachers) or "none"
        raise ConfigError(f"teacher.pretrained: no teacher named '{name}' (searched {', '.join(map(str, roots()))}); "
                          f"available: {names}")
    return teachers[name]


def describe(folder: Path) -> dict:
    """What `taildistill teachers` shows of one teacher."""
    run = RunDir(folder)
    final, env = run.final(), run.env()
    cfg = run.config()
    return {"name": folder.name, "model": cfg.model.name, "data": run.data_info().get("description", cfg.data.source),
            "method": cfg.method.name, "epochs": cfg.train.epochs, "test_top1": final.get("test", {}).get("top1"),
            "commit": env.get("commit"), "hardware": env.get("hardware"), "folder": str(folder)}


def export(run_dir: str | Path, name: str, root: str | Path, overwrite: bool = False) -> Path:
    """Copy the finished run `run_dir` into ROOT/NAME as a teacher; returns the folder."""
    if not _NAME.match(name):
        raise ConfigError(f"a teacher name is lower-case letters, digits, '_', '.', '-'; got '{name}'")
    run = RunDir(run_dir).require_run("teachers --export")
    if not run.is_finished() or not run.last_weights.is_file():
        raise ConfigError(f"{run.path} has not finished; only a finished run can be a teacher")
    # read what a student will read, so that a damaged run is refused here and not where it is used
    run.config(), run.final(), run.data_info()
    bad = non_finite(load_weights(run.last_weights))
    if bad:
        raise ConfigError(f"{run.last_weights} holds non-finite values (in {bad[:3]}): not a teacher to ship")
    dest = Path(root) / name
    if dest.exists() and not overwrite:
        raise ConfigError(f"{dest} exists; choose another name or pass --overwrite")
    tmp = RunDir(Path(root) / f".{name}.tmp")
    shutil.rmtree(tmp.path, ignore_errors=True)
    tmp.checkpoints.mkdir(parents=True)
    for pick in (lambda r: r.config_file, lambda r: r.data_file, lambda r: r.env_file, lambda r: r.final_file,
                 lambda r: r.metrics_file, lambda r: r.last_weights):
        if pick(run).is_file():
            shutil.copy2(pick(run), pick(tmp))
    tmp = tmp.path
    write_text_atomic(tmp / "source.json", json.dumps({"exported_from": str(run.path.resolve())}, indent=1))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)  # the teacher appears whole or not at all
    return dest
