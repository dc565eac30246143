"""The one training loop for every teacher recipe and distillation method.

``fit(cfg)`` assembles the experiment (data, student, teacher, method), trains it, evaluates the
last epoch on the test split and writes the run directory (see :mod:`taildistill.rundir`). Reports
are written by the caller (the CLI, the suites), not here.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import COMPILE_GRAPHS, ExperimentConfig, dump_config, resolved
from ..data.samplers import EpochSampler
from ..errors import ConfigError, Interrupted, TrainingError
from ..eval import evaluate_split, predict_split, summary
from ..eval.calibration import fit_temperature
from ..experiment import (Experiment, assemble, check_vocabulary, init_file_digests, load_config, teacher_run_path,
                          teacher_source)
from ..models.common import prediction_scales
from ..rundir import RunDir, flat_config, load_state, load_weights, resume_overrides, save_state, save_weights
from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_buffers, cleanup, init_distributed
from .graphed import GraphedStep, graph_blocker
from .inputs import StreamInput, TensorInput
from .optim import build_optimizer, lr_factor, portable_state, set_lr
from .provenance import provenance
from .step import TrainStep


def resolve_device(name: str, dist: DistInfo | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device is '{name}' but no CUDA device is available")
        if dist is not None and dist.enabled:
            if name != "cuda":  # torchrun gives every process its GPU; an index would be silently ignored
                raise ConfigError(f"train.device is '{name}', but under torchrun each process trains on the GPU "
                                  "of its LOCAL_RANK: use train.device=cuda (choose the GPUs with CUDA_VISIBLE_DEVICES)")
            return torch.device("cuda", dist.local_rank)
        if name == "cuda":  # with its index, so that it equals the device of the tensors made on it
            return torch.device("cuda", torch.cuda.current_device())
        device = torch.device(name)  # the form was validated with the config
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device is '{name}' but this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    return torch.device(name)


def use_bf16(train_cfg, device: torch.device) -> bool:
    """bf16 autocast: asked for, or `auto` on CUDA."""
    return train_cfg.precision == "bf16" or (train_cfg.precision == "auto" and device.type == "cuda")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 parts (bf16 autocast does the rest)


def student_state(method) -> dict[str, torch.Tensor]:
    """The student's weights alone (what a later run uses as a teacher or evaluates)."""
    return dict(method.student.state_dict())


@dataclass
class RunState:
    epoch: int = 0  # next epoch to run
    best_val: float = -1.0
    best_epoch: int = -1


# a checkpoint may take at most this share of the training time when train.checkpoint_every is auto
CHECKPOINT_BUDGET = 0.02


class Trainer:
    """Holds everything one run needs. `run()` trains from `state.epoch` to the end.

    The run directory is `run_dir`, or OUT_DIR/NAME from the config, exactly: one that already
    holds a run is an error unless `resume` (continue it) or `overwrite` (replace it). The writing
    process holds an exclusive lock on it. `experiment` gives an already assembled experiment
    (bench builds one with a stand-in teacher); by default the config is assembled here."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path | None = None, resume: bool = False, quiet: bool = False,
                 experiment: Experiment | None = None, overwrite: bool = False, nested: bool = False,
                 resume_overrides: list[str] = ()):
        self.cfg = cfg
        self.quiet = quiet
        tc = cfg.train
        probe = resolve_device(tc.device)
        self.dist = init_distributed(probe.type)
        self.device = resolve_device(tc.device, self.dist)
        self.is_main = self.dist.is_main
        # a run's bar stays on screen when done; nested under a caller's bar (the demo) it is replaced
        self.leave_bar, self.bar_position = (False, 1) if nested else (True, None)
        # the run directory is checked (and locked) before the data and models are built
        self.rundir = RunDir(run_dir if run_dir else Path(cfg.out_dir) / (cfg.name or "run"))
        if resume:
            self.rundir.require_run("--resume")
        else:
            self.rundir.check_new(overwrite)
        teacher_run = RunDir(teacher_run_path(cfg.teacher)) if cfg.teacher.run or cfg.teacher.pretrained else None
        if teacher_run is not None and not resume and resolved(teacher_run.path, "teacher.run") == resolved(self.rundir.path, "run folder"):
            raise ConfigError(f"teacher.run is {self.rundir.path}, the run directory this run would write; "
                              "give the student another --out / name")
        barrier(self.dist)  # every rank has checked before rank 0 writes
        # a run folder this run made and could not set up is left as it was: absent (no empty
        # folder holding a lock for a run that never started)
        made = not self.rundir.path.exists()
        if self.is_main:
            self.rundir.lock()
        try:
            self._setup(cfg, experiment, resume, overwrite, resume_overrides, teacher_run)
        except BaseException:
            if self.is_main:
                if made:
                    self.rundir.unlock_removing_if_empty()
                else:
                    self.rundir.unlock()
            raise

    def _setup(self, cfg, experiment, resume: bool, overwrite: bool, resume_overrides, teacher_run) -> None:
        """Data, models, method, optimizer, step and the run folder's header (the run folder is locked)."""
        tc = cfg.train
        seed_everything(tc.seed, tc.deterministic)
        cuda = self.device.type == "cuda"
        self.bf16 = use_bf16(tc, self.device)
        self.channels_last = cuda and tc.channels_last

        exp = experiment or assemble(cfg, init_files=not resume)
        self.data = exp.data
        info = self.data.info
        method = exp.method
        if tc.sync_bn and self.dist.enabled:
            if not cuda:  # SyncBatchNorm has no CPU kernels; say so instead of training per-rank BN silently
                raise ConfigError("train.sync_bn needs CUDA devices (torch's SyncBatchNorm has no CPU implementation)")
            method.student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method.student)
        self.method = self.place(method)
        trainable = any(p.requires_grad for p in self.method.parameters())
        if tc.epochs == 0 and trainable:
            raise ConfigError("train.epochs=0 would leave the model untrained; only a model with nothing to train "
                              "(an NCM head, a tau-normalised classifier) may run 0 epochs")
        if self.dist.enabled and not trainable:
            raise ConfigError(f"model '{cfg.model.name}' has nothing to train: run it in one process, not over "
                              f"{self.dist.world_size} (torchrun)")
        if tc.epochs > 0 and not trainable:
            raise ConfigError(f"model '{cfg.model.name}' with method '{cfg.method.name}' has nothing to train (an NCM "
                              f"head, a tau-normalised classifier): set train.epochs=0, not {tc.epochs}")
        if getattr(method.student, "selects_on_validation", False) and self.data.val is None:
            raise ConfigError("model.kwargs.tau: val chooses tau on the validation split, and this data has none: "
                              "set data.val_per_class > 0 (or a val list), or give tau a number")
        cudagraphs = tc.compile and tc.compile_mode in COMPILE_GRAPHS and cuda
        if tc.compile:
            self.method.student.compile(mode=tc.compile_mode)
            if self.method.teacher is not None:
                self.method.teacher.compile(mode=tc.compile_mode)
        self.optimizer = build_optimizer(cfg.optim, self.method, self.device.type)
        model = self.method
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(self.method, device_ids=[self.device.index] if cuda else None)
        split = self.data.train
        if self.method.single_process and (self.dist.enabled or tc.grad_accum > 1):
            raise ConfigError(f"method '{cfg.method.name}' trains in one process without gradient accumulation (its "
                              "per-step state, e.g. a key queue, is not gathered over ranks or micro-batches); "
                              "run it without torchrun and with train.grad_accum=1")
        unmixed = self.method.refuses_mixing()
        if unmixed and (cfg.augment.mixup_alpha > 0 or cfg.augment.cutmix_alpha > 0):
            raise ConfigError(f"method '{cfg.method.name}' takes unmixed batches ({unmixed}); "
                              "set augment.mixup_alpha=0 and augment.cutmix_alpha=0")
        if tc.grad_accum > 1 and cfg.optim.sam_rho > 0:
            raise ConfigError("optim.sam_rho with train.grad_accum > 1 is not supported (SAM's two passes need the "
                              "whole batch's gradient); use a larger train.batch_size or more processes")
        self.step = TrainStep(self.method, model, self.optimizer, self.device, self.bf16, cfg.optim.sam_rho,
                              tc.grad_clip, cudagraphs, tc.grad_accum)
        self.graph_blocker: str | None = None  # why train.cuda_graph trains on eager
        if tc.cuda_graph:
            self.graph_blocker = graph_blocker(self.step, split.x is None, self.dist.enabled)
            if self.graph_blocker is None:
                self.step = GraphedStep(self.step, notice=self._notice)
            else:
                self._notice(f"train.cuda_graph: {self.graph_blocker}; training on eager")

        input_cls = TensorInput if split.x is not None else StreamInput
        kwargs = {"num_workers": cfg.data.num_workers} if input_cls is StreamInput else {}
        self.inputs = input_cls(split, info, cfg.augment, self.device, tc.batch_size, self.dist, tc.seed,
                                self.method.batch_request(), cfg.data.sampler, cfg.data.sampler_beta,
                                self.channels_last and info.input_kind == "image", **kwargs)
        self.steps = self.inputs.steps_per_epoch()
        if tc.max_steps_per_epoch > 0:
            self.steps = min(self.steps, tc.max_steps_per_epoch)
        self.steps -= self.steps % tc.grad_accum  # whole accumulation groups only: an epoch ends on an optimizer step
        if self.steps == 0:
            raise ConfigError(f"train.batch_size {tc.batch_size} leaves no full batch of the {len(split)} training images")

        self.state = RunState()
        self.partial: dict | None = None  # an interrupted epoch's position, from a mid-epoch checkpoint
        self.stop_signal: int | None = None  # set by SIGTERM/SIGINT: checkpoint after this step and stop
        self.stop_everywhere = False  # DDP: some rank was asked to stop (agreed at the epoch's end)
        self.epoch_rng = None  # the running epoch's (g, host) generators, for a mid-epoch checkpoint
        ce = tc.checkpoint_every
        self.checkpoint_every = ce if ce != "auto" else 1  # auto on CUDA: re-chosen after the first checkpoint
        self.checkpoint_auto = ce == "auto" and cuda
        # which training of the teacher run this student learns from (the file assemble just read; a
        # given experiment, the bench's, may hold a stand-in teacher instead)
        self.teacher_digest = (teacher_run.weights_digest() if experiment is None and self.is_main
                               and teacher_run is not None else None)
        # the initialisation files the student read (a stage-1 network, pretrained weights): which bytes
        self.init_files = init_file_digests(cfg) if experiment is None and self.is_main and not resume else {}
        if resume and self.is_main and self.teacher_digest != self.rundir.env().get("teacher_weights_sha256", self.teacher_digest):
            raise ConfigError(f"{teacher_source(cfg.teacher)} holds other weights than when {self.rundir.path} started "
                              f"(the teacher was trained again): train this run again with --overwrite")
        if resume:
            check_vocabulary(self.rundir.data_info(), info, f"the run {self.rundir.path}")
            self._load_checkpoint()
        if self.is_main:
            env = provenance(self.device)
            env["world_size"] = self.dist.world_size
            if self.teacher_digest:
                env["teacher_weights_sha256"] = self.teacher_digest
            if self.init_files:
                env["init_files"] = self.init_files
            if resume:
                if resume_overrides:  # how this part of the run executed differently from its config.yaml
                    env["overrides"] = list(resume_overrides)
                self.rundir.record_resume(env)
            else:
                if overwrite and self.rundir.is_run():  # only now that the new run has data, models and a valid setup
                    self.rundir.clear()
                self.rundir.write_header(dump_config(cfg), info.to_json(), env)
        self.tb = None

    @property
    def run_dir(self) -> Path:
        return self.rundir.path

    def close(self) -> None:
        """Release the run directory's lock and the process group."""
        if self.is_main:
            self.rundir.unlock()
        cleanup(self.dist)

    def _notice(self, line: str) -> None:
        if self.is_main and not self.quiet:
            print(f"notice: {line}", file=sys.stderr)

    def place(self, method):
        """Move a method (student, its modules, the frozen teacher) to the device and memory format."""
        method = method.to(self.device)
        fmt = torch.channels_last if self.channels_last and self.data.info.input_kind == "image" else None
        if fmt is not None:
            method.student.to(memory_format=fmt)
        method.teacher_to(self.device, fmt)
        return method

    # ------------------------------------------------------------------ files
    def _save_checkpoint(self, epoch: int, partial: dict | None = None) -> None:
        """last_state.pt holds everything resume needs in one atomically written file (the method's
        trainable state, optimizer, epoch), so a crash between two writes can never pair weights
        of one epoch with an optimizer of another; last.safetensors is the student for users.
        `partial` marks a checkpoint inside epoch `epoch` (after an interrupt): the next step, the
        epoch's running sums and every random generator's state, so that resuming continues the
        epoch exactly where it stopped."""
        state = {"epoch": epoch, "method": {k: v.detach().cpu() for k, v in self.method.state_dict().items()},
                 "optimizer": portable_state(self.optimizer), "best_val": self.state.best_val,
                 "best_epoch": self.state.best_epoch, "device_type": self.device.type}
        meta = {"epoch": str(epoch), "model": self.cfg.model.name}
        if partial is not None:
            state["partial"] = partial
            meta = {"epoch": str(partial["epoch"]), "step": str(partial["step"]), "model": self.cfg.model.name}
        save_state(state, self.rundir.last_state)
        save_weights(student_state(self.method), self.rundir.last_weights, meta)

    def _load_checkpoint(self) -> None:
        if not self.rundir.last_state.is_file():
            raise TrainingError(f"{self.rundir} has no checkpoint to resume from (checkpoints/last_state.pt)")
        state = load_state(self.rundir.last_state)
        trained_on = state.get("device_type", self.device.type)
        if trained_on != self.device.type:  # (precision auto, channels_last and the epoch's generators follow it)
            raise TrainingError(f"{self.rundir.path} was trained on {trained_on}; resume it on a {trained_on} device "
                                f"(this one is {self.device.type}: its precision and random generators would differ)")
        try:
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise TrainingError(f"checkpoint {self.rundir.last_state} does not fit this run's model and method: {exc}") from None
        self.state = RunState(int(state["epoch"]) + 1, float(state["best_val"]), int(state["best_epoch"]))
        if "partial" in state:  # stopped inside the next epoch: it continues from the step where it stopped
            self.partial = state["partial"]
        self.rundir.keep_metrics_before(self.state.epoch)

    def _log(self, record: dict) -> None:
        self.rundir.append_metrics(record)
        self.rundir.write_metrics_csv()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and v is not None and k != "epoch":
                    self.tb.add_scalar(k, v, record["epoch"])

    # ------------------------------------------------------------------ evaluation
    def predict_split(self, split, model=None, **kwargs) -> dict[str, torch.Tensor]:
        return predict_split(model or self.method.student, split, self.data.info, self.inputs.augment,
                             self.device, self.bf16, self.channels_last, num_workers=self.cfg.data.num_workers, **kwargs)

    def evaluate(self, split, prefix: str = "", progress: str = "") -> dict:
        show = progress if self.cfg.train.progress and self.is_main and not self.quiet else ""
        return evaluate_split(self.method.student, split, self.data.info, self.inputs.augment, self.device,
                              self.bf16, self.channels_last, prefix, progress=show, num_workers=self.cfg.data.num_workers)

    def teacher_on(self, which: str, key: str = "logits", view=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's `key` output ('logits' or 'features/<name>') over a whole split, with the
        split's labels, for methods that estimate statistics before training. `which`: train,
        val (falls back to a class-balanced resample of train when there is no val split), or
        balanced_train. `view` maps each input batch to the teacher's view first."""
        teacher = self.method.teacher
        if teacher is None:
            raise ConfigError(f"method '{self.cfg.method.name}' asked for teacher outputs but has no teacher")
        if which == "val" and self.data.val is None:
            which = "balanced_train"
        if which == "val":
            split = self.data.val
        elif which == "train":
            split = self.data.train
        else:  # a class-balanced resample of the training set (CCKD Sec. 3.2, when no val split)
            idx = EpochSampler(self.data.train.y, self.data.info.class_counts, "class_balanced", seed=self.cfg.train.seed).indices(0)
            split = self.data.train.subset(idx.numpy())
        feats = (key.split("/", 1)[1],) if key.startswith("features/") else ()
        out = self.predict_split(split, teacher, features=feats, view=view)
        return out[key].to(self.device), torch.as_tensor(split.y, dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------ training
    def train_epoch(self, epoch: int, bar=None) -> dict:
        cfg = self.cfg
        self.method.train()
        torch.manual_seed((cfg.train.seed * 1_000_003 + epoch) % (2**63))
        total = torch.zeros((), device=self.device)
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=self.device)
        seen, start, before = 0, 0, 0.0
        self.epoch_rng = self.inputs.generators(epoch)
        lr, batch = 0.0, None
        if self.partial is not None and self.partial["epoch"] == epoch:  # continue an interrupted epoch
            p, self.partial = self.partial, None
            if p.get("world_size", 1) != self.dist.world_size:
                raise TrainingError(f"{self.rundir.path} was stopped inside epoch {epoch} by a run of "
                                    f"{p.get('world_size', 1)} process(es); resume it with as many")
            start, seen, before, lr = p["step"], p["seen"], p["seconds"], p.get("lr", 0.0)
            total, correct = p["total"].to(self.device), p["correct"].to(self.device)
            sums = {k: v.to(self.device) for k, v in p["sums"].items()}
            self._set_rng(p["rng"])
            if bar is not None:
                bar.update(start)
        t0 = time.perf_counter()
        # reading a device value waits for the queue to drain: on CUDA the loop looks at the loss
        # only every 100 steps (non-finite check, progress) and at the end of the epoch
        check_every = 1 if self.device.type == "cpu" else 100
        single = not self.dist.enabled
        for step, batch in enumerate(self.inputs.epoch(epoch, start, self.epoch_rng), start):
            if step >= self.steps:
                break
            lr = set_lr(self.optimizer, cfg.optim.lr, lr_factor(cfg.schedule, epoch + step / self.steps, cfg.train.epochs))
            loss, terms, logits = self.step(batch, epoch)
            total += loss
            for k, v in terms.items():
                sums[k] = sums.get(k, torch.zeros((), device=self.device)) + v
            correct += (logits.argmax(1) == batch["y"]).sum()
            seen += len(batch["y"])
            # a host-side flag, no device read: stop between two optimizer steps (DDP ranks agree at the epoch's end)
            stopping = self.stop_signal is not None and single and self.step.calls % cfg.train.grad_accum == 0
            if (stopping or (step + 1) % check_every == 0) and not torch.isfinite(total):
                self._non_finite(epoch, step, terms, batch)  # (a stop never saves a broken step over a good checkpoint)
            if stopping:
                self._stop_mid_epoch(epoch, step + 1, total, correct, seen, sums, before + time.perf_counter() - t0, lr)
            if bar is not None:
                bar.update(1)  # host-side only: the ETA counts steps, never waits for the device
                if (step + 1) % check_every == 0 and (step + 1) % 10 == 0:  # the loss is on the host already there
                    bar.set_postfix(epoch=epoch, loss=f"{float(total) / (step + 1):.3f}",
                                    img_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
        if not torch.isfinite(total):
            self._non_finite(epoch, self.steps - 1, sums, batch)
        broadcast_buffers(self.method, self.dist)
        stop = torch.tensor(float(self.stop_signal is not None), device=self.device)
        stats = torch.stack([total, correct, torch.tensor(float(seen), device=self.device)] + list(sums.values()) + [stop])
        stats = all_reduce_sum(stats, self.dist)
        self.stop_everywhere = bool(stats[-1] > 0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = before + time.perf_counter() - t0
        steps = self.steps * self.dist.world_size
        record = {"epoch": epoch, "lr": lr, "loss": float(stats[0]) / steps, "train_acc": float(stats[1] / stats[2]) * 100,
                  "images_per_s": float(stats[2]) / elapsed, "epoch_s": elapsed}
        for i, k in enumerate(sums):  # (a method's metrics come as metric/<name>: logged under that name)
            record[k if k.startswith("metric/") else f"loss/{k}"] = float(stats[3 + i]) / steps
        return record

    def _rng(self) -> dict:
        """Every random generator a step draws from: the epoch's two, torch's global CPU (and CUDA) one."""
        g, host = self.epoch_rng
        rng = {"g": g.get_state(), "host": host.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def _set_rng(self, rng: dict) -> None:
        g, host = self.epoch_rng
        g.set_state(rng["g"])
        host.set_state(rng["host"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def _stop_mid_epoch(self, epoch: int, next_step: int, total, correct, seen: int, sums: dict, seconds: float,
                        lr: float):
        """Write a checkpoint inside the epoch (the run resumes at `next_step`) and stop."""
        partial = {"epoch": epoch, "step": next_step, "seen": seen, "seconds": seconds, "lr": lr,
                   "total": total.detach().cpu(), "correct": correct.detach().cpu(),
                   "sums": {k: v.detach().cpu() for k, v in sums.items()}, "rng": self._rng(),
                   "world_size": self.dist.world_size}
        # the epoch in the file is the last whole one, so an old reader would redo this epoch, never skip it
        self._save_checkpoint(epoch - 1, partial)
        raise Interrupted(self.stop_signal, f"epoch {epoch}, step {next_step} of {self.steps}", self.rundir.path)

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, keeping the previous checkpoint
        self.stop_signal = signum
        if self.is_main and not self.quiet:
            print(f"\n{signal.Signals(signum).name}: writing a checkpoint after this step, then stopping "
                  "(Ctrl-C again stops at once)", file=sys.stderr)

    def _handle_signals(self) -> dict:
        """SIGTERM (a scheduler's or cluster's stop) and SIGINT (Ctrl-C) end the run at the next step
        boundary with a resumable checkpoint. Returns the handlers to restore."""
        if threading.current_thread() is not threading.main_thread():
            return {}  # signals are delivered to the main thread only
        return {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _timed_checkpoint(self, epoch: int, epoch_seconds: float) -> None:
        """Write the checkpoint; with checkpoint_every auto on CUDA, the first one's cost sets how
        often the next are written: the fewest epochs that keep checkpoints under CHECKPOINT_BUDGET
        of the training time (a killed run loses at most that many epochs; a stopped one none)."""
        t0 = time.perf_counter()
        self._save_checkpoint(epoch)
        if self.checkpoint_auto:
            self.checkpoint_auto = False
            spent = time.perf_counter() - t0
            self.checkpoint_every = max(1, math.ceil(spent / (CHECKPOINT_BUDGET * max(epoch_seconds, 1e-9))))
            record = {"checkpoint_seconds": round(spent, 6), "epoch_seconds": round(epoch_seconds, 6),
                      "checkpoint_every": self.checkpoint_every}
            self.rundir.note("checkpoints", record)

    def _non_finite(self, epoch: int, step: int, terms: dict, batch=None) -> None:
        bad = {k: float(v) for k, v in terms.items()}
        last = self.state.epoch - 1
        where = f"checkpoints/last.safetensors (epoch {last})" if last >= 0 and self.rundir.last_weights.exists() else "no checkpoint yet"
        cause = "lower optim.lr or check the data"
        teacher = self.method.teacher
        if teacher is not None and batch is not None:
            with torch.no_grad():
                out = teacher(batch["x"])["logits"]
            if not torch.isfinite(out).all():  # not the student's learning rate: the teacher is broken
                cause = f"the teacher ({teacher_source(self.cfg.teacher)}) gives non-finite outputs"
        raise TrainingError(f"non-finite loss at epoch {epoch}, step {step} (terms {bad}); training stopped, "
                            f"the last good checkpoint is {where}; {cause}")

    def run(self, on_epoch_end=None) -> Path:
        cfg = self.cfg
        from tqdm import tqdm

        if self.is_main and cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.rundir.tensorboard))
            except ImportError:
                self.tb = None
        if self.state.epoch == 0 and self.partial is None:  # (an interrupted first epoch has prepared already)
            self._prepare_heads()
            self.method.prepare(self.teacher_on)
        epochs = range(self.state.epoch, cfg.train.epochs)
        show = cfg.train.progress and self.is_main and not self.quiet
        # one bar over the run's steps: its ETA is the run's, and it stays on screen when done
        bar = tqdm(total=len(epochs) * self.steps, desc=f"{cfg.name or 'train'} [{cfg.method.name}]", unit="step",
                   disable=not show, dynamic_ncols=True, leave=self.leave_bar, position=self.bar_position,
                   mininterval=0.5)
        previous = self._handle_signals()
        try:
            for epoch in epochs:
                record = self.train_epoch(epoch, bar)
                last = epoch == cfg.train.epochs - 1
                eval_now = last or (cfg.train.eval_every > 0 and (epoch + 1) % cfg.train.eval_every == 0)
                if cfg.train.report_best_test and self.data.test is not None and eval_now:
                    # the papers' protocol, reported beside the last epoch and never used to choose anything
                    test = summary(self.evaluate(self.data.test, "test/"), self.data.info.groups)
                    record.update({k: v for k, v in test.items() if k in ("test/top1",) or k.startswith("test/group/")})
                if self.data.val is not None and eval_now:
                    val = summary(self.evaluate(self.data.val, "val/"), self.data.info.groups)
                    record.update({k: v for k, v in val.items() if k != "val/group_policy"})
                    if val["val/top1"] > self.state.best_val:
                        self.state.best_val, self.state.best_epoch = val["val/top1"], epoch
                        if self.is_main:
                            save_weights(student_state(self.method), self.rundir.best_weights, {"epoch": str(epoch)})
                bar.set_postfix(epoch=epoch, loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.1f}",
                                img_s=f"{record['images_per_s']:.0f}", **({"val": f"{record['val/top1']:.1f}"} if "val/top1" in record else {}))
                # under DDP only what the ranks agreed on counts: a signal after the epoch's all-reduce waits for the next
                stopping = self.stop_everywhere if self.dist.enabled else self.stop_signal is not None
                if self.is_main:
                    self._log(record)
                    if last or stopping or (epoch + 1) % self.checkpoint_every == 0:
                        self._timed_checkpoint(epoch, record["epoch_s"])
                self.state.epoch = epoch + 1
                barrier(self.dist)
                if stopping and not last:
                    raise Interrupted(self.stop_signal or signal.SIGTERM, f"the end of epoch {epoch}", self.rundir.path)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, record)
            bar.close()
            if self.is_main:
                self._log_final(self.finish())
        finally:
            if self.is_main:
                self._note_graphs()
            for sig, handler in previous.items():
                if handler is not None:  # (None: a handler installed outside Python, which cannot be put back)
                    signal.signal(sig, handler)
            bar.close()
            if self.tb is not None:
                self.tb.close()
        barrier(self.dist)
        return self.run_dir

    def graph_record(self) -> dict | None:
        """This process's train.cuda_graph record: its captures, replays and eager steps, or why it
        trained eager (None: the run did not ask for graphs)."""
        if isinstance(self.step, GraphedStep):
            return self.step.record()
        return {"eager_reason": self.graph_blocker} if self.cfg.train.cuda_graph else None

    def _note_graphs(self) -> None:
        """env.json's record of train.cuda_graph, the counts summed over the run's processes (a
        stopped run and its resumes)."""
        record = self.graph_record()
        if record is None:
            return
        before = self.rundir.env().get("cuda_graph", {})
        for k in ("captures", "replays", "eager_steps"):
            if k in record or k in before:
                record[k] = record.get(k, 0) + before.get(k, 0)
        self.rundir.note("cuda_graph", record)

    def _log_final(self, final: dict) -> None:
        """TensorBoard: the last-epoch test metrics per group and the run's hyper-parameters."""
        if self.tb is None or "test" not in final:
            return
        scalars = {k: v for k, v in final["test"].items() if isinstance(v, (int, float)) and v is not None}
        for k, v in scalars.items():
            self.tb.add_scalar(f"test/{k}", v, self.cfg.train.epochs - 1)
        hparams = {k: v for k, v in flat_config(self.cfg).items() if isinstance(v, (int, float, str, bool))}
        self.tb.add_hparams(hparams, {f"hparam/test/{k}": v for k, v in scalars.items()}, run_name=".")

    def _prepare_heads(self) -> None:
        """Heads fitted from data before training: an NCM head's class means of training features,
        a tau-normalised classifier's tau chosen on the validation split."""
        student = self.method.student
        if getattr(student, "needs_class_means", False):
            out = self.predict_split(self.data.train, student, features=("embedding",))
            student.set_class_means(out["features/embedding"], torch.as_tensor(self.data.train.y))
        if getattr(student, "selects_on_validation", False):
            out = self.predict_split(self.data.val, student, features=("embedding",))
            student.select_on_validation(out["features/embedding"], torch.as_tensor(self.data.val.y))

    def _calibrate(self) -> float:
        """Temperature scaling on the validation split; folded into the cosine head's logit scale."""
        if self.data.val is None:
            raise ConfigError("train.calibrate needs a validation split (data.val_per_class > 0)")
        scales = prediction_scales(self.method.student)
        if not scales:
            raise ConfigError("train.calibrate folds the temperature into a cosine head's scale; this model has none")
        logits = self.predict_split(self.data.val)["logits"]
        temperature = fit_temperature(logits, torch.as_tensor(self.data.val.y))
        for scale in scales:  # (each expert's, for a multi-expert mean: mean(z_e) / T = mean(z_e / T))
            scale.div_(temperature)
        return temperature

    def _teacher_record(self) -> dict:
        t = self.cfg.teacher
        if not t.run and not t.pretrained:
            return {"checkpoint": t.checkpoint, "model": t.model}
        run = RunDir(teacher_run_path(t))
        record = {"run": str(run.path), "config_hash": run.config_hash(with_seed=True),
                  "weights_sha256": self.teacher_digest}  # which training of it (read when the run started)
        if t.pretrained:
            record["pretrained"] = t.pretrained
        if run.is_finished():
            test = run.final().get("test", {})
            record.update({"test_top1": test.get("top1"), "test_groups": {k[6:]: v for k, v in test.items() if k.startswith("group/")}})
        return record

    def finish(self) -> dict:
        """Last-epoch test metrics (and best-on-validation ones) into final.json."""
        info = self.data.info
        temperature = self._calibrate() if self.cfg.train.calibrate else None
        if temperature is not None or not self.rundir.last_weights.is_file():
            self._save_checkpoint(max(0, self.cfg.train.epochs - 1))
        final = {"name": self.cfg.name, "method": self.cfg.method.name, "model": self.cfg.model.name,
                 "epochs": self.cfg.train.epochs, "group_policy": info.groups.policy,
                 "groups": {n: info.groups.members(i) for i, n in enumerate(info.groups.names)},
                 "class_counts": info.class_counts, "class_names": list(info.class_names)}
        if temperature is not None:
            final["calibration_temperature"] = temperature
        if hasattr(self.method.student, "head_record"):  # a decoupled classifier: which, and its tau
            final["classifier"] = self.method.student.head_record()
        init_files = self.rundir.init_files()  # (recorded when the run started, before any resume)
        if init_files:
            final["init_files"] = init_files
        if self.method.teacher is not None:  # which teacher, exactly, this student learnt from
            final["teacher"] = self._teacher_record()
        if self.data.test is not None:
            final["test"] = self.evaluate(self.data.test, progress=f"{self.cfg.name} test")
        if self.data.val is not None:
            final["val"] = summary(self.evaluate(self.data.val), info.groups)
        tested = [r for r in self.rundir.metrics() if "test/top1" in r]
        if tested:
            best = max(tested, key=lambda r: r["test/top1"])
            final["best_epoch_test"] = {
                "protocol": "the best test accuracy over the evaluated epochs, as the papers' code reports it; optimistic "
                            "(chosen on the test set) and never used for selection",
                "epoch": best["epoch"], "epochs_evaluated": len(tested), "top1": best["test/top1"],
                **{k[5:]: v for k, v in best.items() if k.startswith("test/group/")}}
        if self.data.test is not None and self.rundir.best_weights.is_file():
            current = {k: v.clone() for k, v in self.method.student.state_dict().items()}
            self.method.student.load_state_dict(load_weights(self.rundir.best_weights))
            final["best_on_val"] = {"epoch": self.state.best_epoch, "val_top1": self.state.best_val,
                                    "test": summary(self.evaluate(self.data.test), info.groups)}
            self.method.student.load_state_dict(current)
        self.rundir.write_final(final)
        return final


def fit(cfg: ExperimentConfig, run_dir: Path | None = None, quiet: bool = False, on_epoch_end=None,
        experiment: Experiment | None = None, overwrite: bool = False, nested: bool = False) -> Path:
    """Train `cfg` to the end and return the run directory (`run_dir`, or OUT_DIR/NAME).
    `quiet` hides the progress bar; `nested` shows it under a caller's bar."""
    trainer = Trainer(cfg, run_dir, quiet=quiet, experiment=experiment, overwrite=overwrite, nested=nested)
    try:
        return trainer.run(on_epoch_end)
    finally:
        trainer.close()


def resume(run_dir: Path, quiet: bool = False, on_epoch_end=None, overrides: list[str] = ()) -> Path:
    """Continue a run from its last checkpoint, with the config saved in its directory; `overrides`
    may change how it executes (device, train.cuda_graph, progress...: RESUME_KEYS), nothing else."""
    rundir = RunDir(run_dir).require_run("--resume")
    overrides = resume_overrides(list(overrides))
    cfg = load_config(rundir.config_file, overrides)
    trainer = Trainer(cfg, rundir.path, resume=True, quiet=quiet, resume_overrides=overrides)
    try:
        return trainer.run(on_epoch_end)
    finally:
        trainer.close()
