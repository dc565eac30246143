"""`taildistill bench`: steady-state training throughput (images/s) of the real training step, and
the wall time of a whole recipe (teacher training + distillation + evaluation)."""
from __future__ import annotations

import copy
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from .config import MethodConfig, TeacherConfig
from .data import build_data
from .engine.provenance import provenance
from .engine.trainer import Trainer, fit, resolve_device
from .experiment import assemble, build_student, load_config, load_teacher, teacher_source
from .methods import resolve_params
from .rundir import RunDir


def _batches(trainer: Trainer):
    """The trainer's training batches, epoch after epoch, without end (a trainer always has a batch)."""
    epoch = 0
    while True:
        yield from trainer.inputs.epoch(epoch)
        epoch += 1


def _measure(trainer: Trainer, steps: int, warmup: int) -> dict:
    """Steady-state images/s of the trainer's own training step over `steps` steps after `warmup`
    (and, under train.cuda_graph, whether the step was replayed or why not)."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda *a: None)
    images = 0
    t0 = None
    trainer.method.train()
    batches = _batches(trainer)
    for done in range(warmup + steps):
        if done == warmup:
            sync()
            t0 = time.perf_counter()
        batch = next(batches)
        trainer.step(batch, 0)
        if done >= warmup:
            images += len(batch["y"])
    sync()
    elapsed = time.perf_counter() - t0
    graphs = trainer.graph_record()
    return {"images_per_s": images / elapsed, "steps": steps, "seconds": elapsed,
            "epoch_s_estimate": len(trainer.data.train) / (images / elapsed),
            **({"cuda_graph": graphs} if graphs is not None else {})}


class _Clock:
    """Time marks: CUDA events on CUDA (stream-ordered, so an interval is the device's time between
    two points of the step; read after one synchronisation at the end), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1000 if self.cuda else end - start


PHASES = ("data", "teacher_forward", "student_forward", "loss_backward", "optimizer")


def _phases(trainer: Trainer, steps: int) -> dict:
    """Milliseconds per step in each phase of the trainer's step (eager only: hooks on the teacher,
    the student and the optimizer mark where each part begins and ends). `loss_backward` runs from
    the end of the last forward to the optimizer step (the losses, backward, gradient clipping);
    `other` is what no phase covers: with SAM its first backward and perturbation, with gradient
    accumulation the backward of the calls that do not step."""
    clock = _Clock(trainer.device)
    method = trainer.method
    opened: dict = {}
    spans: list = []  # (phase, start, end), every step

    def pre(name):
        return lambda *args: opened.__setitem__(name, clock.mark())

    def post(name):
        return lambda *args: spans.append((name, opened.pop(name), clock.mark()))

    handles = [method.student.register_forward_pre_hook(pre("student_forward")),
               method.student.register_forward_hook(post("student_forward")),
               trainer.optimizer.register_step_pre_hook(pre("optimizer")),
               trainer.optimizer.register_step_post_hook(post("optimizer"))]
    if method.teacher is not None:
        handles += [method.teacher.register_forward_pre_hook(pre("teacher_forward")),
                    method.teacher.register_forward_hook(post("teacher_forward"))]
    steps_marks = []  # (step start, batch ready, step end, the step's spans)
    try:
        method.train()
        batches = _batches(trainer)
        for _ in range(steps):
            start = clock.mark()
            batch = next(batches)
            ready = clock.mark()
            first = len(spans)
            trainer.step(batch, 0)
            steps_marks.append((start, ready, clock.mark(), spans[first:]))
    finally:
        for h in handles:
            h.remove()
    if clock.cuda:
        torch.cuda.synchronize(trainer.device)
    totals = dict.fromkeys(PHASES, 0.0)
    step_total = 0.0
    for start, ready, end, mine in steps_marks:
        totals["data"] += clock.seconds(start, ready)
        for name, a, b in mine:
            totals[name] += clock.seconds(a, b)
        forwards = [b for name, _, b in mine if name.endswith("_forward")]
        opt = [a for name, a, _ in mine if name == "optimizer"]
        if forwards and opt:
            totals["loss_backward"] += clock.seconds(forwards[-1], opt[0])
        step_total += clock.seconds(start, end)
    ms = {k: round(1000 * v / steps, 3) for k, v in totals.items()}
    ms["other"] = round(1000 * step_total / steps - sum(ms.values()), 3)
    return {"ms_per_step": ms, "step_ms": round(1000 * step_total / steps, 3), "steps": steps,
            "timer": "cuda events" if clock.cuda else "perf_counter"}


def run_bench(config: str, overrides: list[str], mode: str = "both", steps: int = 50, warmup: int = 10,
              phases: bool = True) -> dict:
    """Throughput of teacher training (CE on the config's model) and of distillation (the config's
    method, or KD, with a same-architecture teacher: random weights unless teacher.run is set)."""
    if steps < 1 or warmup < 0:
        from .errors import ConfigError

        raise ConfigError(f"bench needs --steps >= 1 and --warmup >= 0, got {steps} and {warmup}")
    cfg = load_config(config, overrides + ["train.tensorboard=false", "train.progress=false"])
    tmp = Path(tempfile.mkdtemp(prefix="taildistill-bench-"))
    result: dict = {"config": config, "overrides": overrides, "model": cfg.model.name, "batch_size": cfg.train.batch_size,
                    "compile": cfg.train.compile, "cuda_graph": cfg.train.cuda_graph}
    trainers = []
    try:
        if mode in ("teacher", "both"):
            base = copy.deepcopy(cfg)  # the engine around the measured step: CE, no teacher
            base.method = MethodConfig("ce", resolve_params("ce", {}))
            base.teacher = TeacherConfig()
            trainer = Trainer(base, run_dir=tmp / "teacher", quiet=True)
            trainers.append(trainer)
            result["teacher"] = _measure(trainer, steps, warmup)
            if phases and not base.train.compile and not base.train.cuda_graph:
                result["teacher"]["phases"] = _phases(trainer, steps)
        if mode in ("distill", "both"):
            dcfg = copy.deepcopy(cfg)
            if dcfg.method.name == "ce":
                dcfg.method = MethodConfig("kd", resolve_params("kd", {}))
            data = build_data(dcfg.data)
            given = dcfg.teacher.checkpoint or dcfg.teacher.pretrained or (dcfg.teacher.run and RunDir(dcfg.teacher.run).is_run())
            # without a trained teacher, a same-architecture stand-in with random weights (speed only),
            # said on stderr and recorded: a misspelt teacher.run must not pass for the real teacher
            teacher = load_teacher(dcfg, data.info) if given else build_student(dcfg, data.info, init_files=False)
            why = f"teacher.run '{dcfg.teacher.run}' is not a run" if dcfg.teacher.run else "no teacher configured"
            result["distill_teacher"] = (teacher_source(dcfg.teacher) if given else
                                         f"random weights, the student's model ({why})")
            if not given:
                print(f"bench: distilling from {result['distill_teacher']}; throughput only", file=sys.stderr)
            exp = assemble(dcfg, data=data, teacher=teacher)
            trainer = Trainer(dcfg, run_dir=tmp / "distill", quiet=True, experiment=exp)
            trainers.append(trainer)
            result["distill_method"] = dcfg.method.name
            result["distill"] = _measure(trainer, steps, warmup)
            if phases and not dcfg.train.compile and not dcfg.train.cuda_graph:
                result["distill"]["phases"] = _phases(trainer, steps)
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
            rundir = RunDir(run)
            final, records, env = rundir.final(), rundir.metrics(), rundir.env()
            rates = sorted(r["images_per_s"] for r in records)
            result[phase] = {"method": final["method"], "model": final["model"], "epochs": final["epochs"],
                             "seconds": seconds, "train_seconds": sum(r["epoch_s"] for r in records),
                             "median_images_per_s": rates[len(rates) // 2] if rates else None,
                             "test": {k: v for k, v in final.get("test", {}).items() if not isinstance(v, (list, dict))},
                             **({"cuda_graph": env["cuda_graph"]} if "cuda_graph" in env else {}),
                             **({"run": str(run)} if out_dir else {})}
        result["total_seconds"] = t2 - t0
    finally:
        if not out_dir:
            shutil.rmtree(out, ignore_errors=True)
    return result


COMPARED = {"eager": ["train.compile=false", "train.cuda_graph=false"],
            "compiled": ["train.compile=true", "train.compile_mode=default", "train.cuda_graph=false"],
            # CUDA graphs of the models' forwards and backwards (torch.compile's cudagraph trees)
            "captured": ["train.compile=true", "train.compile_mode=reduce-overhead", "train.cuda_graph=false"],
            # the whole step as one CUDA graph: forwards, backward, optimizer (train.cuda_graph)
            "graphed": ["train.compile=false", "train.cuda_graph=true"],
            # both: Inductor's fused kernels, launched from one graph
            "compiled_graphed": ["train.compile=true", "train.compile_mode=default", "train.cuda_graph=true"]}
NEEDS_CUDA = ("captured", "graphed", "compiled_graphed")


def run_compare(config: str, overrides: list[str], mode: str = "both", steps: int = 50, warmup: int = 10) -> dict:
    """The same benchmark eager, compiled (torch.compile), captured (the models as CUDA graphs
    through compile's reduce-overhead mode), graphed (the whole step one CUDA graph,
    train.cuda_graph) and compiled and graphed, one after the other in this process; the
    per-phase times are the eager run's (hooks would break a compiled graph and never fire in a
    replayed one)."""
    cuda = resolve_device(load_config(config, overrides).train.device).type == "cuda"
    result: dict = {"compare": {}}
    for name, extra in COMPARED.items():
        if name in NEEDS_CUDA and not cuda:
            result["compare"][name] = {"skipped": "CUDA graphs need a CUDA device"}
            continue
        result["compare"][name] = run_bench(config, overrides + extra, mode, steps, warmup, phases=name == "eager")
    return result

