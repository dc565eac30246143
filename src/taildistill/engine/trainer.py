"""The one training loop for every teacher recipe and distillation method.

``fit(cfg)`` builds data, models and the method, trains, evaluates and writes the run directory:

    config.yaml      the fully resolved config          data.json   the training set (DataInfo)
    env.json         command, commit, hardware, versions metrics.jsonl  one line per epoch
    final.json       last-epoch test metrics (+ best-on-validation ones when a val split exists)
    checkpoints/     last.safetensors + last_state.pt (resume), best.safetensors (best on val)
    report.md, plots/*.png, tb/ (TensorBoard)
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ExperimentConfig, build_config, dump_config, load_raw
from ..data import build_data
from ..data.samplers import EpochSampler
from ..errors import ConfigError, TrainingError
from ..eval.metrics import classification_metrics, summary
from ..methods import build_method
from ..models import build_model
from . import checkpoint as ckpt
from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_buffers, cleanup, init_distributed
from .inputs import StreamInput, TensorInput, eval_batches
from .optim import SAM, build_optimizer, lr_factor, set_lr
from .provenance import provenance


def resolve_device(name: str, dist: DistInfo | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device is '{name}' but no CUDA device is available")
        if dist is not None and dist.enabled:
            return torch.device("cuda", dist.local_rank)
    return torch.device(name)


def use_bf16(train_cfg, device: torch.device) -> bool:
    """bf16 autocast: asked for, or `auto` on CUDA."""
    if train_cfg.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.precision must be auto, fp32 or bf16, got '{train_cfg.precision}'")
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


def model_input_args(info) -> dict:
    if info.input_kind == "tokens":
        return {"in_channels": 0, "image_size": info.input_shape[0]}
    return {"in_channels": info.input_shape[0], "image_size": info.input_shape[-1]}


def build_student(cfg: ExperimentConfig, info, vocab: dict | None = None) -> torch.nn.Module:
    kwargs = dict(cfg.model.kwargs)
    if info.input_kind == "tokens":
        kwargs.setdefault("vocab_size", info.vocab_size)
        if kwargs.get("vectors"):
            kwargs["vocab"] = vocab
    return build_model(cfg.model.name, info.num_classes, **model_input_args(info), **kwargs)


def load_teacher(cfg: ExperimentConfig, info) -> torch.nn.Module | None:
    """The frozen teacher from a finished run directory or a safetensors checkpoint."""
    t = cfg.teacher
    if not t.run and not t.checkpoint:
        return None
    if t.run:
        run = Path(t.run).expanduser()
        conf = run / "config.yaml"
        if not conf.is_file():
            raise ConfigError(f"teacher.run: {run} is not a run directory (no config.yaml)")
        tcfg = build_config(load_raw(conf))
        name, kwargs = tcfg.model.name, dict(tcfg.model.kwargs)
        weights = run / "checkpoints" / "last.safetensors"
        tdata = json.loads((run / "data.json").read_text()) if (run / "data.json").is_file() else {}
        if tdata and tdata.get("num_classes") != info.num_classes:
            raise ConfigError(f"teacher run {run} has {tdata.get('num_classes')} classes, the data has {info.num_classes}")
        in_args = {"in_channels": tdata["input_shape"][0], "image_size": tdata["input_shape"][-1]} if tdata else model_input_args(info)
        if tdata.get("input_kind") == "tokens":
            in_args = model_input_args(info)
            kwargs.setdefault("vocab_size", tdata.get("vocab_size", info.vocab_size))
    else:
        if not t.model:
            raise ConfigError("teacher.checkpoint needs teacher.model (the architecture name)")
        name, kwargs, weights = t.model, dict(t.kwargs), Path(t.checkpoint).expanduser()
        in_args = model_input_args(info)
    teacher = build_model(name, info.num_classes, **in_args, **kwargs)
    state = ckpt.load_weights(weights)
    missing, unexpected = teacher.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"teacher weights {weights} do not fit model '{name}': missing {missing[:3]}, unexpected {unexpected[:3]}")
    return teacher


@torch.no_grad()
def predict_split(model, split, info, augment, device, bf16=False, channels_last=False,
                  features: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Logits of every head on a whole split (no augmentation): {'logits': (N, C), ...} on the CPU,
    plus the named `features` ({'features/<name>': (N, ...)})."""
    was = model.training
    model.eval()
    outs: dict[str, list] = {}
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    for x, _ in eval_batches(split, info, augment, device, 512, channels_last):
        with ctx:
            o = model(x)
        for k in ("logits", "logits_cls", "logits_dist"):
            if k in o:
                outs.setdefault(k, []).append(o[k].float().cpu())
        for f in features:
            outs.setdefault(f"features/{f}", []).append(o["features"][f].float().cpu())
    model.train(was)
    return {k: torch.cat(v) for k, v in outs.items()}


def evaluate_split(model, split, info, augment, device, bf16=False, channels_last=False, prefix: str = "") -> dict:
    """Metrics of the prediction head and, for two-head models, of each head (`cls/`, `dist/`)."""
    preds = predict_split(model, split, info, augment, device, bf16, channels_last)
    m = classification_metrics(preds["logits"], split.y, info.groups, prefix)
    for head in ("logits_cls", "logits_dist"):
        if head in preds:
            name = head.split("_")[1]
            m.update(summary(classification_metrics(preds[head], split.y, info.groups, f"{prefix}{name}/"), info.groups))
    return m


@dataclass
class RunState:
    epoch: int = 0  # next epoch to run
    best_val: float = -1.0
    best_epoch: int = -1


def _unique_dir(path: Path) -> Path:
    if not path.exists():
        return path
    i = 2
    while (path.parent / f"{path.name}-{i}").exists():
        i += 1
    return path.parent / f"{path.name}-{i}"


class Trainer:
    """Holds everything one run needs. `run()` trains from `state.epoch` to the end."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path | None = None, resume: bool = False, quiet: bool = False):
        self.cfg = cfg
        self.quiet = quiet
        tc = cfg.train
        probe = resolve_device(tc.device)
        self.dist = init_distributed(probe.type)
        self.device = resolve_device(tc.device, self.dist)
        seed_everything(tc.seed, tc.deterministic)
        cuda = self.device.type == "cuda"
        self.bf16 = use_bf16(tc, self.device)
        self.channels_last = cuda and tc.channels_last

        self.data = build_data(cfg.data)
        info = self.data.info
        student = build_student(cfg, info, self.data.vocab)
        teacher = load_teacher(cfg, info)
        if tc.sync_bn and self.dist.enabled:
            if not cuda:  # SyncBatchNorm has no CPU kernels; say so instead of training per-rank BN silently
                raise ConfigError("train.sync_bn needs CUDA devices (torch's SyncBatchNorm has no CPU implementation)")
            student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
        self.method = self.place(build_method(cfg.method.name, cfg.method.params, student, teacher, info))
        # CUDA graphs (reduce-overhead) replay into the same output buffers: each step is marked
        # so that a graph never overwrites outputs the previous step may still hold
        self.cudagraphs = tc.compile and tc.compile_mode == "reduce-overhead" and cuda
        if tc.compile:
            if tc.compile_mode not in ("default", "reduce-overhead", "max-autotune"):
                raise ConfigError(f"train.compile_mode must be default, reduce-overhead or max-autotune, got '{tc.compile_mode}'")
            self.method.student.compile(mode=tc.compile_mode)
            if self.method.teacher is not None:
                self.method.teacher.compile(mode=tc.compile_mode)
        self.optimizer = build_optimizer(cfg.optim, self.method, self.device.type)
        self.sam = SAM(self.optimizer, cfg.optim.sam_rho) if cfg.optim.sam_rho > 0 else None
        self.model = self.method
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(self.method, device_ids=[self.device.index] if cuda else None)

        split = self.data.train
        input_cls = TensorInput if split.x is not None else StreamInput
        kwargs = {"num_workers": cfg.data.num_workers} if input_cls is StreamInput else {}
        self.inputs = input_cls(split, info, cfg.augment, self.device, tc.batch_size, self.dist, tc.seed,
                                self.method.batch_views, cfg.data.sampler, cfg.data.sampler_beta,
                                self.channels_last and info.input_kind == "image", **kwargs)
        self.inputs.mix_alpha = getattr(self.method.params, "mix_alpha", self.inputs.mix_alpha)  # ACCKD's Beta(a, a)
        self.steps = self.inputs.steps_per_epoch()
        if tc.max_steps_per_epoch > 0:
            self.steps = min(self.steps, tc.max_steps_per_epoch)
        if self.steps == 0:
            raise ConfigError(f"train.batch_size {tc.batch_size} leaves no full batch of the {len(split)} training images")

        self.state = RunState()
        if resume:
            self.run_dir = Path(run_dir)
            self._load_checkpoint()
        else:
            base = Path(run_dir) if run_dir else Path(cfg.out_dir) / (cfg.name or "run")
            self.run_dir = _unique_dir(base) if self.dist.is_main else base
            if self.dist.enabled:  # every rank names the directory rank 0 chose
                import torch.distributed as tdist

                chosen = [str(self.run_dir)]
                tdist.broadcast_object_list(chosen, src=0)
                self.run_dir = Path(chosen[0])
        self.is_main = self.dist.is_main
        if self.is_main:
            self._write_header()
        self.tb = None

    def place(self, method):
        """Move a method (student, its modules, the frozen teacher) to the device and memory format."""
        method = method.to(self.device)
        fmt = torch.channels_last if self.channels_last and self.data.info.input_kind == "image" else None
        if fmt is not None:
            method.student.to(memory_format=fmt)
        method.teacher_to(self.device, fmt)
        return method

    # ------------------------------------------------------------------ files
    def _write_header(self) -> None:
        d = self.run_dir
        (d / "checkpoints").mkdir(parents=True, exist_ok=True)
        (d / "config.yaml").write_text(dump_config(self.cfg))
        (d / "data.json").write_text(json.dumps(self.data.info.to_json(), indent=1))
        env = provenance(self.device)
        env["world_size"] = self.dist.world_size
        (d / "env.json").write_text(json.dumps(env, indent=1))

    def _save_checkpoint(self, epoch: int) -> None:
        """last_state.pt holds everything resume needs in one atomically written file (the method's
        trainable state, optimizer, epoch), so a crash between two writes can never pair weights
        of one epoch with an optimizer of another; last.safetensors is the student for users."""
        d = self.run_dir / "checkpoints"
        ckpt.save_state({"epoch": epoch, "method": {k: v.detach().cpu() for k, v in self.method.state_dict().items()},
                         "optimizer": self.optimizer.state_dict(), "best_val": self.state.best_val,
                         "best_epoch": self.state.best_epoch}, d / "last_state.pt")
        ckpt.save_weights(ckpt.student_state(self.method), d / "last.safetensors",
                          {"epoch": str(epoch), "model": self.cfg.model.name})

    def _load_checkpoint(self) -> None:
        d = self.run_dir / "checkpoints"
        if not (d / "last_state.pt").is_file():
            raise TrainingError(f"{self.run_dir} has no checkpoint to resume from (checkpoints/last_state.pt)")
        state = ckpt.load_state(d / "last_state.pt")
        try:
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise TrainingError(f"checkpoint {d / 'last_state.pt'} does not fit this run's model and method: {exc}") from None
        self.state = RunState(int(state["epoch"]) + 1, float(state["best_val"]), int(state["best_epoch"]))
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.is_file():  # drop epochs logged after the checkpoint we resume from
            keep = [ln for ln in metrics.read_text().splitlines() if ln and json.loads(ln)["epoch"] < self.state.epoch]
            metrics.write_text("".join(ln + "\n" for ln in keep))

    def _log(self, record: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and v is not None and k != "epoch":
                    self.tb.add_scalar(k, v, record["epoch"])

    # ------------------------------------------------------------------ evaluation
    def predict_split(self, split, model=None) -> dict[str, torch.Tensor]:
        return predict_split(model or self.method.student, split, self.data.info, self.inputs.augment,
                             self.device, self.bf16, self.channels_last)

    def evaluate(self, split, prefix: str = "") -> dict:
        return evaluate_split(self.method.student, split, self.data.info, self.inputs.augment, self.device,
                              self.bf16, self.channels_last, prefix)

    def teacher_on(self, which: str, key: str = "logits") -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's `key` output ('logits' or 'features/<name>') over a whole split, with the
        split's labels, for methods that estimate statistics before training. `which`: train,
        val (falls back to a class-balanced resample of train when there is no val split), or
        balanced_train."""
        teacher = self.method.teacher
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
        out = predict_split(teacher, split, self.data.info, self.inputs.augment, self.device, self.bf16,
                            self.channels_last, feats)
        return out[key].to(self.device), torch.as_tensor(split.y, dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------ training
    def _step(self, batch: dict, epoch: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with ctx:
            out = self.model(batch, epoch)
        terms = out["terms"]
        loss = sum(terms.values())
        loss.backward()
        if self.sam is not None:
            self.sam.first_step()
            if self.cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            with ctx:
                loss2 = sum(self.model(batch, epoch)["terms"].values())
            loss2.backward()
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.train.grad_clip)
        if self.sam is not None:
            self.sam.second_step()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), {k: v.detach() for k, v in terms.items()}, out["logits"].detach()

    def train_epoch(self, epoch: int, bar=None) -> dict:
        cfg = self.cfg
        self.method.train()
        self.method.on_epoch_start(epoch)
        torch.manual_seed((cfg.train.seed * 1_000_003 + epoch) % (2**63))
        total = torch.zeros((), device=self.device)
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=self.device)
        seen = 0
        t0 = time.perf_counter()
        lr = 0.0
        # reading a device value waits for the queue to drain: on CUDA the loop looks at the loss
        # only every 100 steps (non-finite check, progress) and at the end of the epoch
        check_every = 1 if self.device.type == "cpu" else 100
        for step, batch in enumerate(self.inputs.epoch(epoch)):
            if step >= self.steps:
                break
            lr = set_lr(self.optimizer, cfg.optim.lr, lr_factor(cfg.schedule, epoch + step / self.steps, cfg.train.epochs))
            loss, terms, logits = self._step(batch, epoch)
            total += loss
            for k, v in terms.items():
                sums[k] = sums.get(k, torch.zeros((), device=self.device)) + v
            correct += (logits.argmax(1) == batch["y"]).sum()
            seen += len(batch["y"])
            if (step + 1) % check_every == 0 and not torch.isfinite(total):
                self._non_finite(epoch, step, terms)
            if bar is not None and (step + 1) % 100 == 0:
                bar.set_postfix(loss=f"{float(total) / (step + 1):.3f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        if not torch.isfinite(total):
            self._non_finite(epoch, self.steps - 1, sums)
        broadcast_buffers(self.method, self.dist)
        stats = torch.stack([total, correct, torch.tensor(float(seen), device=self.device)] + list(sums.values()))
        stats = all_reduce_sum(stats, self.dist)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        world = self.dist.world_size
        steps = self.steps * world
        record = {"epoch": epoch, "lr": lr, "loss": float(stats[0]) / steps, "train_acc": float(stats[1] / stats[2]) * 100,
                  "images_per_s": float(stats[2]) / elapsed, "epoch_s": elapsed}
        for i, k in enumerate(sums):
            record[f"loss/{k}"] = float(stats[3 + i]) / steps
        return record

    def _non_finite(self, epoch: int, step: int, terms: dict) -> None:
        bad = {k: float(v) for k, v in terms.items()}
        last = self.state.epoch - 1
        where = f"checkpoints/last.safetensors (epoch {last})" if last >= 0 and (self.run_dir / "checkpoints/last.safetensors").exists() else "no checkpoint yet"
        raise TrainingError(f"non-finite loss at epoch {epoch}, step {step} (terms {bad}); training stopped, "
                            f"the last good checkpoint is {where}; lower optim.lr or check the data")

    def run(self, on_epoch_end=None) -> Path:
        cfg = self.cfg
        from tqdm import tqdm

        if self.is_main and cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:
                self.tb = None
        if self.state.epoch == 0:
            self._prepare_heads()
            if hasattr(self.method, "prepare") and self.method.teacher is not None:
                self.method.prepare(self.teacher_on)
        epochs = range(self.state.epoch, cfg.train.epochs)
        show = cfg.train.progress and self.is_main and not self.quiet
        bar = tqdm(epochs, desc=f"{cfg.name or 'train'} [{cfg.method.name}]", unit="ep", disable=not show,
                   dynamic_ncols=True, leave=False)
        try:
            for epoch in bar:
                record = self.train_epoch(epoch, bar)
                last = epoch == cfg.train.epochs - 1
                if self.data.val is not None and (last or (cfg.train.eval_every > 0 and (epoch + 1) % cfg.train.eval_every == 0)):
                    val = summary(self.evaluate(self.data.val, "val/"), self.data.info.groups)
                    record.update({k: v for k, v in val.items() if k != "val/group_policy"})
                    if val["val/top1"] > self.state.best_val:
                        self.state.best_val, self.state.best_epoch = val["val/top1"], epoch
                        if self.is_main:
                            ckpt.save_weights(ckpt.student_state(self.method), self.run_dir / "checkpoints" / "best.safetensors",
                                              {"epoch": str(epoch)})
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.1f}",
                                img_s=f"{record['images_per_s']:.0f}", **({"val": f"{record['val/top1']:.1f}"} if "val/top1" in record else {}))
                if self.is_main:
                    self._log(record)
                    if last or (cfg.train.checkpoint_every > 0 and (epoch + 1) % cfg.train.checkpoint_every == 0):
                        self._save_checkpoint(epoch)
                self.state.epoch = epoch + 1
                barrier(self.dist)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, record)
        finally:
            bar.close()
            if self.tb is not None:
                self.tb.close()
        if self.is_main:
            self.finish()
        barrier(self.dist)
        return self.run_dir

    def _prepare_heads(self) -> None:
        """Heads fitted from data before training: an NCM head's class means of training features."""
        student = self.method.student
        if getattr(student, "needs_class_means", False):
            out = predict_split(student, self.data.train, self.data.info, self.inputs.augment, self.device,
                                self.bf16, self.channels_last, ("embedding",))
            student.set_class_means(out["features/embedding"], torch.as_tensor(self.data.train.y))

    def _calibrate(self) -> float | None:
        """Temperature scaling on the validation split; folded into a cosine head's logit scale."""
        from ..eval.calibration import fit_temperature

        if self.data.val is None:
            raise ConfigError("train.calibrate needs a validation split (data.val_per_class > 0)")
        logits = self.predict_split(self.data.val)["logits"]
        temperature = fit_temperature(logits, torch.as_tensor(self.data.val.y))
        scale = getattr(self.method.student, "logit_scale", None)
        if isinstance(scale, torch.Tensor):
            scale.div_(temperature)
        return temperature

    def finish(self) -> dict:
        """Last-epoch test metrics (and best-on-validation ones) into final.json + the run report."""
        info = self.data.info
        temperature = self._calibrate() if self.cfg.train.calibrate else None
        if temperature is not None or not (self.run_dir / "checkpoints" / "last.safetensors").is_file():
            self._save_checkpoint(max(0, self.cfg.train.epochs - 1))
        final = {"name": self.cfg.name, "method": self.cfg.method.name, "model": self.cfg.model.name,
                 "epochs": self.cfg.train.epochs, "group_policy": info.groups.policy,
                 "groups": {n: info.groups.members(i) for i, n in enumerate(info.groups.names)},
                 "class_counts": info.class_counts}
        if temperature is not None:
            final["calibration_temperature"] = temperature
        if self.data.test is not None:
            final["test"] = self.evaluate(self.data.test)
        if self.data.val is not None:
            final["val"] = summary(self.evaluate(self.data.val), info.groups)
        best = self.run_dir / "checkpoints" / "best.safetensors"
        if self.data.test is not None and best.is_file():
            current = {k: v.clone() for k, v in self.method.student.state_dict().items()}
            self.method.student.load_state_dict(ckpt.load_weights(best))
            final["best_on_val"] = {"epoch": self.state.best_epoch, "val_top1": self.state.best_val,
                                    "test": summary(self.evaluate(self.data.test), info.groups)}
            self.method.student.load_state_dict(current)
        # final.json marks a finished run (reproduction suites skip those): never half-written
        ckpt.write_text_atomic(self.run_dir / "final.json", json.dumps(final, indent=1))
        from ..report import write_run_report

        write_run_report(self.run_dir)
        return final


def fit(cfg: ExperimentConfig, run_dir: Path | None = None, quiet: bool = False, on_epoch_end=None) -> Path:
    """Train `cfg` to the end and return the run directory."""
    trainer = Trainer(cfg, run_dir, quiet=quiet)
    try:
        return trainer.run(on_epoch_end)
    finally:
        cleanup(trainer.dist)


def resume(run_dir: Path, quiet: bool = False, on_epoch_end=None) -> Path:
    """Continue a run from its last checkpoint, with the config saved in its directory."""
    run_dir = Path(run_dir)
    conf = run_dir / "config.yaml"
    if not conf.is_file():
        raise ConfigError(f"--resume: {run_dir} is not a run directory (no config.yaml)")
    cfg = build_config(load_raw(conf))
    trainer = Trainer(cfg, run_dir, resume=True, quiet=quiet)
    try:
        return trainer.run(on_epoch_end)
    finally:
        cleanup(trainer.dist)

