"""`taildistill bench`: steady-state training throughput (images/s) of the real training step, and
the wall time of a whole recipe (teacher training + distillation + evaluation)."""
from __future__ import annotations

import copy
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .config import MethodConfig, TeacherConfig
from .data import build_data
from .engine.provenance import provenance
from .engine.trainer import Trainer, fit, resolve_device
from .experiment import assemble, build_student, load_config, load_teacher
from .methods import resolve_params
from .rundir import RunDir


def _measure(trainer: Trainer, steps: int, warmup: int) -> dict:
    """Steady-state images/s of the trainer's own training step over `steps` steps after `warmup`."""
    epoch = 0
    it = iter(())
    done = 0
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda *a: None)
    images = 0
    t0 = None
    trainer.method.train()
    while done < warmup + steps:
        try:
            batch = next(it)
        except StopIteration:
            it = trainer.inputs.epoch(epoch)
            epoch += 1
            continue
        if done == warmup:
            sync()
            t0 = time.perf_counter()
        trainer.step(batch, 0)
        if done >= warmup:
            images += len(batch["y"])
        done += 1
    sync()
    elapsed = time.perf_counter() - t0
    return {"images_per_s": images / elapsed, "steps": steps, "seconds": elapsed,
            "epoch_s_estimate": len(trainer.data.train) / (images / elapsed)}


def run_bench(config: str, overrides: list[str], mode: str = "both", steps: int = 50, warmup: int = 10) -> dict:
    """Throughput of teacher training (CE on the config's model) and of distillation (the config's
    method, or KD, with a same-architecture teacher: random weights unless teacher.run is set)."""
    if steps < 1 or warmup < 0:
        from .errors import ConfigError

        raise ConfigError(f"bench needs --steps >= 1 and --warmup >= 0, got {steps} and {warmup}")
    cfg = load_config(config, overrides + ["train.tensorboard=false", "train.progress=false"])
    tmp = Path(tempfile.mkdtemp(prefix="taildistill-bench-"))
    result: dict = {"config": config, "overrides": overrides, "model": cfg.model.name, "batch_size": cfg.train.batch_size,
                    "compile": cfg.train.compile}
    trainers = []
    try:
        if mode in ("teacher", "both"):
            base = copy.deepcopy(cfg)  # the engine around the measured step: CE, no teacher
            base.method = MethodConfig("ce", resolve_params("ce", {}))
            base.teacher = TeacherConfig()
            trainer = Trainer(base, run_dir=tmp / "teacher", quiet=True)
            trainers.append(trainer)
            result["teacher"] = _measure(trainer, steps, warmup)
        if mode in ("distill", "both"):
            dcfg = copy.deepcopy(cfg)
            if dcfg.method.name == "ce":
                dcfg.method = MethodConfig("kd", resolve_params("kd", {}))
            data = build_data(dcfg.data)
            given = dcfg.teacher.checkpoint or (dcfg.teacher.run and RunDir(dcfg.teacher.run).is_run())
            # without a trained teacher, a same-architecture stand-in with random weights (speed only)
            teacher = load_teacher(dcfg, data.info) if given else build_student(dcfg, data.info)
            exp = assemble(dcfg, data=data, teacher=teacher)
            trainer = Trainer(dcfg, run_dir=tmp / "distill", quiet=True, experiment=exp)
            trainers.append(trainer)
            result["distill_method"] = dcfg.method.name
            result["distill"] = _measure(trainer, steps, warmup)
        result["precision"] = "bf16" if trainers[0].bf16 else "fp32"
        result["train_images"] = len(trainers[0].data.train)
        result.update(provenance(trainers[0].device))
    finally:
        for t in trainers:
            t.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def run_recipe(student_config: str, teacher_config: str, overrides: list[str], out_dir: str | None = None,
               quiet: bool = False) -> dict:
    """Wall time of a whole recipe, as a user runs it: the teacher trained from `teacher_config`,
    then the student of `student_config` distilled from that teacher, each phase including data
    loading, training and the final evaluation. `overrides` apply to both configs, except
    `method.*` and `teacher.*` ones, which are the student's. The two run directories are kept
    under `out_dir` when given (else trained in a temporary folder)."""
    student_only = [o for o in overrides if o.startswith(("method.", "teacher."))]
    tcfg = load_config(teacher_config, [o for o in overrides if o not in student_only])
    load_config(student_config, list(overrides) + ["teacher.run="])  # a bad student config fails before the teacher trains
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="taildistill-recipe-"))
    result: dict = {"student_config": student_config, "teacher_config": teacher_config, "overrides": list(overrides),
                    **provenance(resolve_device(tcfg.train.device))}
    try:
        t0 = time.perf_counter()
        teacher_run = fit(tcfg, out / "teacher", quiet=quiet)
        t1 = time.perf_counter()
        student_run = fit(load_config(student_config, list(overrides) + [f"teacher.run={teacher_run}"]), out / "student", quiet=quiet)
        t2 = time.perf_counter()
        for phase, run, seconds in (("teacher", teacher_run, t1 - t0), ("student", student_run, t2 - t1)):
            final = RunDir(run).final()
            records = RunDir(run).metrics()
            rates = sorted(r["images_per_s"] for r in records)
            result[phase] = {"method": final["method"], "model": final["model"], "epochs": final["epochs"],
                             "seconds": seconds, "train_seconds": sum(r["epoch_s"] for r in records),
                             "median_images_per_s": rates[len(rates) // 2] if rates else None,
                             "test": {k: v for k, v in final.get("test", {}).items() if not isinstance(v, (list, dict))},
                             **({"run": str(run)} if out_dir else {})}
        result["total_seconds"] = t2 - t0
    finally:
        if not out_dir:
            shutil.rmtree(out, ignore_errors=True)
    return result
