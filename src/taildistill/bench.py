"""`taildistill bench`: steady-state training throughput (images/s) of the real training step, and
the wall time of a whole recipe (teacher training + distillation + evaluation)."""
from __future__ import annotations

import time

import torch

from .config import load_config
from .engine.trainer import Trainer, build_student, cleanup
from .methods import build_method, resolve_method_params


def _measure(trainer: Trainer, steps: int, warmup: int) -> dict:
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
        trainer._step(batch, 0)
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
    import copy
    import shutil
    import tempfile
    from pathlib import Path

    from .config import MethodConfig, TeacherConfig
    from .engine.provenance import provenance
    from .engine.trainer import load_teacher

    cfg = load_config(config, overrides + ["train.tensorboard=false", "train.progress=false"])
    base = copy.deepcopy(cfg)  # the engine around the measured step: CE, no teacher
    base.method = MethodConfig("ce", resolve_method_params("ce", {}))
    base.teacher = TeacherConfig()
    trainer = Trainer(base, run_dir=Path(tempfile.mkdtemp(prefix="taildistill-bench-")) / "run", quiet=True)
    result = {"config": config, "overrides": overrides, "model": cfg.model.name, "batch_size": cfg.train.batch_size,
              "precision": "bf16" if trainer.bf16 else "fp32", "compile": cfg.train.compile,
              "train_images": len(trainer.data.train), **provenance(trainer.device)}
    info = trainer.data.info
    try:
        if mode in ("teacher", "both"):
            result["teacher"] = _measure(trainer, steps, warmup)
        if mode in ("distill", "both"):
            name = cfg.method.name if cfg.method.name != "ce" else "kd"
            params = cfg.method.params if name == cfg.method.name else resolve_method_params("kd", {})
            teacher = load_teacher(cfg, info) or build_student(cfg, info)
            method = trainer.place(build_method(name, params, build_student(cfg, info), teacher, info))
            result["distill_method"] = name
            trainer.method = trainer.model = method
            trainer.inputs.set_views(method.batch_views)
            trainer.optimizer = torch.optim.SGD(method.parameters(), lr=cfg.optim.lr, momentum=0.9)
            trainer.sam = None
            result["distill"] = _measure(trainer, steps, warmup)
    finally:
        cleanup(trainer.dist)
        shutil.rmtree(trainer.run_dir.parent, ignore_errors=True)
    return result


def run_recipe(student_config: str, teacher_config: str, overrides: list[str], out_dir: str | None = None,
               quiet: bool = False) -> dict:
    """Wall time of a whole recipe, as a user runs it: the teacher trained from `teacher_config`,
    then the student of `student_config` distilled from that teacher, each phase including data
    loading, training and the final evaluation. `overrides` apply to both configs, except
    `method.*` and `teacher.*` ones, which are the student's. The two run directories are kept
    under `out_dir` when given (else trained in a temporary folder)."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from .engine.provenance import provenance
    from .engine.trainer import fit, resolve_device

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
            final = json.loads((run / "final.json").read_text())
            records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln]
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
