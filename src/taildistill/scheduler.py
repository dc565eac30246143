"""Run many training runs at once: a dependency graph of runs (a student waits for its teacher),
executed as separate processes, several per GPU and over every visible GPU (local executor), or
as Ray tasks with fractional GPUs over a Ray cluster (`--executor ray`).

Every run is an ordinary `taildistill train` process writing its own run directory (and its log,
`train.log`, there), so a suite on a cluster shares the same cache and report as one on a laptop:
- a finished run whose resolved config matches is reused; one trained with another config is
  trained again (said so), and so is a student whose teacher trains again or changed its weights;
- an unfinished run with a checkpoint resumes from it (`train --resume`), exactly;
- a failed run does not stop the others; the runs that need it are skipped, with the reason;
- after a time limit, or on SIGTERM, no run starts and the running ones are sent SIGTERM (each
  writes a checkpoint at its next step; a DDP run at the end of its epoch, and torchrun gives its
  workers 30 s, so a longer epoch resumes from the run's previous checkpoint): the same command
  later continues them. The inline executor checks the time limit between runs.

Runs per GPU (`--per-gpu`): a ResNet-32 step at batch 128 uses a small part of an H100 (measured:
7.1k images/s at batch 128 eager, against 73.8k at batch 512 with CUDA graphs, so one small run
leaves most of the GPU idle), so small models (< 20M parameters at batch <= 256, e.g. every CIFAR
network here) default to 4 runs per GPU; anything else to 1. This rule is provisional until the
GPU benchmark in results/benchmarks.md measures the best K. CPU threads are split evenly between
the concurrent runs (OMP_NUM_THREADS).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, Interrupted, TaildistillError
from .files import lock_exclusive, unlock, unlock_removing_bare_folder
from .rundir import RunDir, config_hash, execution_overrides, init_file_identity


@dataclass
class RunSpec:
    """One run of a graph."""

    key: str  # unique within the graph, e.g. "ratio100/kd/seed0"
    run_dir: Path
    config_files: list[str]
    overrides: list[str]
    deps: list[str] = field(default_factory=list)  # keys this run needs finished first (its teacher)
    nproc: int = 1  # processes (GPUs) of a DDP run launched with torchrun
    small: bool = True  # a small model: several runs share a GPU


@dataclass
class Outcome:
    key: str
    status: str  # finished | reused | failed | skipped | stopped (time limit or SIGTERM: resumes next time)
    run_dir: Path
    seconds: float = 0.0
    gpus: list[int] = field(default_factory=list)
    reason: str = ""
    ended: float = 0.0  # wall-clock time the run ended (runs overlap when several run at once)


def _dump_hash(cfg, teacher: str | None = None, init_files: dict[str, str] | None = None) -> str:
    import yaml

    from .config import dump_config

    return config_hash(yaml.safe_load(dump_config(cfg)), with_seed=True, teacher=teacher, init_files=init_files)


def plan_action(spec: RunSpec) -> tuple[str, str]:
    """What a run needs: ('reuse', ''), ('resume', why), ('new', ''), ('overwrite', why).

    A finished student is compared with its config by the teacher run it learnt from (what that
    run is, not where it lies: a moved suite folder is reused), and is trained again when that
    teacher's weights are no longer the ones it learnt from."""
    from .experiment import init_file_digests, init_file_paths, load_config, teacher_run_path

    cfg = load_config(spec.config_files, spec.overrides)  # a bad config stops the graph before it starts
    run = RunDir(spec.run_dir)
    if not run.is_run():
        return "new", ""
    learnt = run.teacher_learnt()
    teacher = RunDir(teacher_run_path(cfg.teacher)) if cfg.teacher.run or cfg.teacher.pretrained else None
    now = None  # what the config's teacher run is now, for a student that recorded what it learnt from
    if cfg.teacher.run and "config_hash" in learnt:
        if not teacher.is_run():
            return "overwrite", f"{run.path}: its teacher run {teacher.path} is gone; training it again after it"
        now = teacher.config_hash(with_seed=True)
    started = run.init_files()  # what its initialisation files were (by content: a moved suite folder is reused)
    current = init_file_digests(cfg) if started else {}
    for key, record in started.items():
        if key in current and current[key]["sha256"] != record["sha256"]:
            return "overwrite", (f"{run.path} started from other contents of {key} ({current[key]['path']}); "
                                 "training it again")
    named = init_file_paths(cfg) if started else {}  # (a file gone since counts by its path)
    init = {k: init_file_identity(record, with_seed=True) for k, record in started.items()
            if k in current or str(named.get(k)) == record["path"]}
    if run.config_hash(with_seed=True) != _dump_hash(cfg, now, init):
        return "overwrite", f"{run.path} was trained with another config; training it again"
    if teacher is not None and learnt.get("weights_sha256") and teacher.last_weights.is_file() \
            and teacher.weights_digest() != learnt["weights_sha256"]:
        return "overwrite", f"{run.path} learnt from other weights of its teacher {teacher.path}; training it again"
    if run.is_finished():
        return "reuse", ""
    if run.last_state.is_file():
        return "resume", f"{run.path} stopped before its end; resuming from its checkpoint"
    return "overwrite", f"{run.path} stopped before its first checkpoint; starting it again"


def _dependents_first_trained(specs: list[RunSpec], actions: dict[str, str]) -> list[RunSpec]:
    """Turn to 'overwrite' every reused or resumed run that depends (directly or through others)
    on a run that trains ('new', 'overwrite', or 'resume': its weights change, and a student may
    have learnt from its unfinished checkpoint); returns the runs changed."""
    changed, again = [], True
    while again:
        again = False
        for s in specs:
            if actions[s.key] in ("reuse", "resume") and any(actions.get(d) in ("new", "overwrite", "resume") for d in s.deps):
                actions[s.key] = "overwrite"
                changed.append(s)
                again = True
    return changed


def train_command(spec: RunSpec, action: str) -> list[str]:
    """The `taildistill train` command line of a run (under torchrun for a DDP run)."""
    if action == "resume":  # the saved config, with the suite's say on how it executes (train.cuda_graph...)
        args = ["train", "--resume", str(spec.run_dir), *execution_overrides(spec.overrides), "--quiet"]
    else:
        args = ["train", *spec.config_files, *spec.overrides, "--out", str(spec.run_dir), "--quiet"]
        if action == "overwrite":
            args.append("--overwrite")
    if spec.nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.nproc}",
                "-m", "taildistill", *args]
    return [sys.executable, "-m", "taildistill", *args]


def visible_gpus() -> list[int]:
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except ImportError:
        return []


def default_per_gpu(specs: list[RunSpec]) -> int:
    """The provisional rule of the module docstring."""
    return 4 if all(s.small for s in specs) else 1


def run_env(threads: int, gpus: list[int] | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    return env


def _start_process(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    """Start one training process, its command line and output appended to `log` (in its run directory)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)


def _run_process(cmd: list[str], log: Path, env: dict) -> int:
    """Run one training process to its end (see :func:`_start_process`); its exit code."""
    return _start_process(cmd, log, env).wait()


STOP_GRACE = 60  # seconds a stopped run has to write its checkpoint (one step plus the write)


class LocalExecutor:
    """Runs processes on this machine: `jobs` at a time; on CUDA, each GPU has `per_gpu` slots, a
    small run takes one, a large run (or each GPU of a DDP run) a whole GPU."""

    name = "local"

    def __init__(self, jobs: int, per_gpu: int, threads: int | None = None):
        self.jobs = jobs
        self.per_gpu = per_gpu
        self.gpus = visible_gpus()
        cores = os.cpu_count() or 1
        self.threads = threads or max(1, cores // jobs)
        self.load = {g: 0 for g in self.gpus}  # slots in use per GPU
        self.running: dict[str, tuple[subprocess.Popen, list[int], float, int]] = {}

    def _slots(self, spec: RunSpec) -> int:
        return 1 if spec.small and spec.nproc == 1 else self.per_gpu

    def can_start(self, spec: RunSpec) -> list[int] | None:
        """The GPUs a run would get now ([] on CPU), or None when it must wait."""
        if len(self.running) >= self.jobs:
            return None
        if not self.gpus:
            return []
        need = self._slots(spec)
        free = sorted((g for g in self.gpus if self.load[g] + need <= self.per_gpu), key=lambda g: self.load[g])
        return free[:spec.nproc] if len(free) >= spec.nproc else None

    def start(self, spec: RunSpec, cmd: list[str], gpus: list[int]) -> None:
        proc = _start_process(cmd, spec.run_dir / "train.log", run_env(self.threads, gpus if self.gpus else None))
        need = self._slots(spec)
        for g in gpus:
            self.load[g] += need
        self.running[spec.key] = (proc, gpus, time.time(), need)

    def poll(self, timeout: float = 0.5) -> list[tuple[str, int, float, list[int]]]:
        """Finished runs: (key, exit code, seconds, gpus)."""
        deadline = time.time() + timeout
        while True:
            done = []
            for key, (proc, gpus, t0, need) in list(self.running.items()):
                rc = proc.poll()
                if rc is not None:
                    for g in gpus:
                        self.load[g] -= need
                    del self.running[key]
                    done.append((key, rc, time.time() - t0, gpus))
            if done or time.time() >= deadline or not self.running:
                return done
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM to every run (each writes a checkpoint at its next step and exits), then wait;
        a run still alive after STOP_GRACE seconds is killed (it resumes from its last checkpoint)."""
        for proc, *_ in self.running.values():
            proc.terminate()
        for proc, *_ in self.running.values():
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class InlineExecutor:
    """Runs the graph one run at a time inside this process (`--executor inline`): no process
    start-up per run (tests, debugging with pdb). A run that raises is marked failed, its
    traceback in its train.log; the others go on."""

    name = "inline"

    def __init__(self):
        self.running: dict = {}
        self._done: list = []
        self.interrupted = ""  # the signal that stopped a run inside this process (the time limit waits for a run's end)

    def can_start(self, spec: RunSpec) -> list[int] | None:
        return [] if not self._done else None

    def start(self, spec: RunSpec, cmd: list[str], gpus: list[int]) -> None:
        import traceback

        from .engine.trainer import fit, resume
        from .experiment import load_config

        t0 = time.time()
        log = spec.run_dir / "train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(f"\n$ (inline) {shlex.join(cmd)}\n")
        try:
            if "--resume" in cmd:
                resume(spec.run_dir, quiet=True, overrides=execution_overrides(spec.overrides))
            else:
                fit(load_config(spec.config_files, spec.overrides), spec.run_dir, quiet=True,
                    overwrite="--overwrite" in cmd)
            rc = 0
        except Interrupted as exc:  # SIGTERM / Ctrl-C reached the run: it checkpointed; the graph stops too
            with open(log, "a") as f:
                f.write(f"{exc}\n")
            rc = exc.exit_code
            self.interrupted = exc.signal_name
        except TaildistillError as exc:  # bad input found by the run: one line, as `taildistill train` says it
            with open(log, "a") as f:
                f.write(f"error: {exc}\n")
            rc = 2  # the command line's exit code for bad input
        except Exception:  # an isolation boundary: the failure is logged and reported, the graph goes on
            with open(log, "a") as f:
                f.write(traceback.format_exc())
            rc = 1
        self._done.append((spec.key, rc, time.time() - t0, []))

    def poll(self, timeout: float = 0.5):
        done, self._done = self._done, []
        return done

    def stop(self) -> None:
        pass


class RayExecutor:
    """Submits each run as a Ray task with a fractional GPU (1 / per_gpu) on a Ray cluster
    (RAY_ADDRESS, or a local instance); the task runs the same `taildistill train` process on its
    node, so the output folder must be shared by the nodes."""

    name = "ray"

    def __init__(self, jobs: int, per_gpu: int, threads: int | None = None, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'taildistill[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                     log_to_driver=False, **({} if address or os.environ.get("RAY_ADDRESS") else {"num_cpus": os.cpu_count()}))
        self.jobs = jobs
        self.per_gpu = per_gpu
        cluster = ray.cluster_resources()
        self.has_gpus = cluster.get("GPU", 0) > 0
        self.threads = threads or max(1, int(cluster.get("CPU", 1)) // jobs)
        self.running: dict = {}

        @ray.remote
        def _task(cmd, log, env_extra):
            import os as _os

            env = dict(_os.environ, **env_extra)
            ids = ray.get_gpu_ids()
            if ids:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(int(i)) for i in ids)
            t0 = time.time()
            rc = _run_process(cmd, Path(log), env)
            return rc, time.time() - t0, [int(i) for i in ids]

        self._task = _task

    def can_start(self, spec: RunSpec) -> list[int] | None:
        return [] if len(self.running) < self.jobs else None

    def start(self, spec: RunSpec, cmd: list[str], gpus: list[int]) -> None:
        gpu = (spec.nproc if spec.nproc > 1 else (1.0 / self.per_gpu if spec.small else 1.0)) if self.has_gpus else 0
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads), "PYTHONUNBUFFERED": "1"}
        ref = self._task.options(num_cpus=self.threads, num_gpus=gpu).remote(cmd, str(spec.run_dir / "train.log"), env)
        self.running[ref] = spec.key

    def poll(self, timeout: float = 0.5):
        if not self.running:
            return []
        ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            key = self.running.pop(ref)
            try:
                rc, seconds, gpus = self.ray.get(ref)
            except Exception as exc:  # a task lost with its node, or Ray's own failure: the run failed
                rc, seconds, gpus = 1, 0.0, []
                print(f"note: the Ray task of {key} failed: {exc}", file=sys.stderr)
            out.append((key, rc, seconds, gpus))
        return out

    def stop(self) -> None:
        """Ray cancels a task by killing its worker: such a run resumes from its last epoch checkpoint."""
        for ref in self.running:
            self.ray.cancel(ref, force=True)


def run_graph(specs: list[RunSpec], executor, desc: str = "runs", quiet: bool = False,
              time_limit: float | None = None) -> list[Outcome]:
    """Execute the graph: each run when its dependencies have finished, as many at once as the
    executor allows. Returns one outcome per run (in the graph's order).

    After `time_limit` seconds, or on SIGTERM, no run starts and the running ones are stopped
    (SIGTERM: each writes a checkpoint and exits); they and the runs not started are `stopped`,
    and the same graph run again continues them."""
    import signal
    import threading

    from tqdm import tqdm

    deadline = time.time() + time_limit if time_limit else None
    stop: list[str] = []

    def on_sigterm(signum, frame):
        stop.append("SIGTERM")

    def stop_reason(time_limit_too: bool = True) -> str:
        """Why the graph stops now: a signal (to it, or to a run inside it), or the time limit; '' to go on."""
        by = stop[0] if stop else getattr(executor, "interrupted", "")
        if by:
            why = f"stopped by {by}"
        elif time_limit_too and deadline is not None and time.time() >= deadline:
            why = f"stopped at the time limit ({time_limit / 60:g} min)"
        else:
            return ""
        return why + "; the same command continues it"

    previous = signal.signal(signal.SIGTERM, on_sigterm) if threading.current_thread() is threading.main_thread() else None

    by_key = {s.key: s for s in specs}
    for s in specs:
        missing = [d for d in s.deps if d not in by_key]
        if missing:
            raise ConfigError(f"run {s.key} depends on {missing}, which are not in the graph")
    outcomes: dict[str, Outcome] = {}
    actions: dict[str, str] = {}
    for s in specs:  # what each run needs, decided before anything starts (a bad config stops here)
        actions[s.key], why = plan_action(s)
        if why:
            print(f"note: {why}", file=sys.stderr)
    for s in _dependents_first_trained(specs, actions):  # a teacher trained (again) retrains its students
        print(f"note: {s.run_dir}: its teacher trains (again), so it is trained again after it", file=sys.stderr)
    for s in specs:
        if actions[s.key] == "reuse":
            outcomes[s.key] = Outcome(s.key, "reused", s.run_dir)
    todo = [s for s in specs if s.key not in outcomes]
    bar = tqdm(total=len(todo), desc=desc, unit="run", dynamic_ncols=True, disable=quiet)

    def refresh():
        running = len(executor.running)
        failed = sum(o.status == "failed" for o in outcomes.values())
        skipped = sum(o.status == "skipped" for o in outcomes.values())
        done = sum(o.status == "finished" for o in outcomes.values())
        reused = sum(o.status == "reused" for o in outcomes.values())
        bar.set_postfix_str(f"done {done}, running {running}, failed {failed}, skipped {skipped}, reused {reused}")

    waiting = list(todo)

    def finish(key, rc, seconds, gpus, stopped_why=""):
        s = by_key[key]
        ok = rc == 0 and RunDir(s.run_dir).is_finished()
        if ok:
            outcomes[key] = Outcome(key, "finished", s.run_dir, seconds, gpus, "", time.time())
        elif stopped_why:
            outcomes[key] = Outcome(key, "stopped", s.run_dir, seconds, gpus, stopped_why, time.time())
        else:
            outcomes[key] = Outcome(key, "failed", s.run_dir, seconds, gpus,
                                    _failure_reason(rc, s.run_dir / "train.log"), time.time())
        bar.update(1)

    try:
        while waiting or executor.running:
            why = stop_reason()
            if why:
                executor.stop()
                while executor.running:  # collect the stopped runs (one that just finished counts as finished)
                    for item in executor.poll(1.0):
                        finish(*item, stopped_why=why)
                for s in waiting:
                    outcomes[s.key] = Outcome(s.key, "stopped", s.run_dir, reason=why + " (not started)")
                waiting = []
                break
            started = False
            for s in list(waiting):
                dep_status = [outcomes[d].status if d in outcomes else None for d in s.deps]
                bad = [d for d, st in zip(s.deps, dep_status) if st in ("failed", "skipped")]
                if bad:
                    outcomes[s.key] = Outcome(s.key, "skipped", s.run_dir, reason=f"{bad[0]} did not finish")
                    waiting.remove(s)
                    bar.update(1)
                    continue
                if any(st not in ("finished", "reused") for st in dep_status):
                    continue
                gpus = executor.can_start(s)
                if gpus is None:
                    continue
                executor.start(s, train_command(s, actions[s.key]), gpus)
                waiting.remove(s)
                started = True
            refresh()
            for item in executor.poll(0.05 if started else 0.5):
                finish(*item, stopped_why=stop_reason(time_limit_too=False))  # (a run that fails on its own is failed)
                refresh()
    except KeyboardInterrupt:
        executor.stop()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        bar.close()
    return [outcomes[s.key] for s in specs]


def make_executor(kind: str, jobs: int, per_gpu: int, threads: int | None = None):
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    if per_gpu < 1:
        raise ConfigError(f"--per-gpu must be at least 1, got {per_gpu}")
    if kind == "local":
        return LocalExecutor(jobs, per_gpu, threads)
    if kind == "inline":
        return InlineExecutor()
    if kind == "ray":
        return RayExecutor(jobs, per_gpu, threads)
    raise ConfigError(f"--executor must be local, inline or ray, got '{kind}'")


def execute(specs: list[RunSpec], out: Path, what: str, executor: str = "local", jobs: int = 1,
            per_gpu: int | None = None, quiet: bool = False, command: str = "", report=None,
            time_limit: float | None = None) -> Path | None:
    """Run a graph into output folder `out` (locked for the time being), write the run reports and
    OUT/outcomes.json (statuses and the cost), then `report(outcomes, cost)` -> the report's path.
    Raises :class:`SuiteFailed` after the report is written when runs failed or were skipped, and
    :class:`SuiteStopped` when the time limit (seconds) or a SIGTERM stopped it before its end."""
    from .report import write_run_report

    per_gpu = default_per_gpu(specs) if per_gpu is None else per_gpu
    if RunDir(out).is_run():  # its report.md and plots are the run's own
        raise ConfigError(f"--out {out} is a run folder; a {what} would write its report over the run's: "
                          "give a folder of its own")
    ex = make_executor(executor, jobs, per_gpu)
    made = not out.exists()
    lock = lock_output(out, what)
    outcomes: list[Outcome] = []
    try:
        t0 = time.time()
        outcomes = run_graph(specs, ex, desc=what, quiet=quiet, time_limit=time_limit)
        for o in outcomes:  # a run's own `taildistill train` process wrote its report (not the inline executor)
            run = RunDir(o.run_dir)
            if o.status == "finished" and not (run.report_file.is_file()
                                               and run.report_file.stat().st_mtime_ns >= run.final_file.stat().st_mtime_ns):
                write_run_report(o.run_dir)
        cost = accounting(outcomes, time.time() - t0, per_gpu, len(getattr(ex, "gpus", [])))
        write_outcomes(out / "outcomes.json", outcomes, {"executor": ex.name, "jobs": jobs, "per_gpu": per_gpu,
                                                        "command": command, "accounting": cost})
        path = report(outcomes, cost) if report is not None else None
    finally:
        # refused before anything ran: no folder left behind
        if made:
            unlock_removing_bare_folder(out, lock)
        else:
            release_output(lock)
        if executor == "ray":
            import ray

            ray.shutdown()
    problems = failures_message(outcomes)
    if problems:
        raise SuiteFailed(f"{problems}" + (f"; the report has the runs that finished: {path}" if path else ""))
    stopped = [o for o in outcomes if o.status == "stopped"]
    if stopped:
        done = sum(o.status in ("finished", "reused") for o in outcomes)
        raise SuiteStopped(f"{stopped[0].reason.split(';')[0]}: {done} of {len(outcomes)} runs finished, "
                           f"{len(stopped)} stopped (each resumes from its checkpoint); run the same command again "
                           f"to continue" + (f"; the report so far: {path}" if path else ""))
    return path


def lock_output(out: Path, what: str) -> Path:
    """One suite or sweep per output folder at a time."""
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".suite.lock"
    lock_exclusive(lock, f"{what} output folder {out}")
    return lock


def release_output(lock: Path) -> None:
    unlock(lock)


def accounting(outcomes: list[Outcome], wall: float, per_gpu: int, gpus_visible: int) -> dict:
    """What the grid cost: wall time, GPU-hours (each run's time times its GPU share), images/s
    per run (median over its epochs) and in aggregate (images trained / wall time)."""
    runs = []
    images = 0.0
    gpu_seconds = 0.0
    for o in outcomes:
        if o.status != "finished":
            continue
        records = RunDir(o.run_dir).metrics()
        rates = sorted(r["images_per_s"] for r in records if "images_per_s" in r)
        n = sum(r["images_per_s"] * r["epoch_s"] for r in records if "images_per_s" in r)
        images += n
        share = (len(o.gpus) if len(o.gpus) > 1 else (1.0 / per_gpu if o.gpus else 0.0))
        gpu_seconds += o.seconds * share
        runs.append({"run": o.key, "seconds": round(o.seconds, 1), "gpus": o.gpus,
                     "median_images_per_s": round(rates[len(rates) // 2], 1) if rates else None})
    return {"wall_seconds": round(wall, 1), "gpu_hours": round(gpu_seconds / 3600, 4), "gpus_visible": gpus_visible,
            "runs_trained": len(runs), "aggregate_images_per_s": round(images / wall, 1) if wall > 0 else None,
            "per_run": runs}


def write_outcomes(path: Path, outcomes: list[Outcome], extra: dict) -> None:
    data = {**extra, "runs": [{"key": o.key, "status": o.status, "run_dir": str(o.run_dir), "seconds": round(o.seconds, 1),
                               "ended": round(o.ended, 2), "gpus": o.gpus, "reason": o.reason} for o in outcomes]}
    from .files import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1))


def _failure_reason(rc: int, log: Path) -> str:
    """Why a run failed: its own `error:` line (the last in its log) and where the log is."""
    said = ""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))  # the end of the log is enough
            lines = f.read().decode("utf-8", "replace").replace("\r", "\n").splitlines()
        said = next((ln.strip() for ln in reversed(lines) if ln.startswith("error: ")), "")
    except OSError:  # no log (the process did not start): the exit code alone
        pass
    return (f"{said}; " if said else "") + f"exit code {rc}; log: {log}"


def failures_message(outcomes: list[Outcome]) -> str:
    bad = [o for o in outcomes if o.status in ("failed", "skipped")]
    return "; ".join(f"{o.key} {o.status} ({o.reason})" for o in bad)


class SuiteFailed(TaildistillError):
    """Some runs of a suite or sweep failed; the report was written with the others."""


class SuiteStopped(TaildistillError):
    """A suite or sweep stopped before its end (time limit, SIGTERM); running it again continues it."""

    exit_code = 75  # EX_TEMPFAIL: not an error, try again
