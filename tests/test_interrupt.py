"""Stopping a run: SIGTERM/SIGINT write a resumable checkpoint at the next step boundary, and the
resumed run is the uninterrupted one exactly; checkpoint frequency."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from taildistill.engine.step import TrainStep
from taildistill.engine.trainer import Trainer, fit, resume
from taildistill.errors import ConfigError, Interrupted, TrainingError
from taildistill.rundir import load_state

from test_engine import tiny


def _signal_on_call(monkeypatch, call: int, signum=signal.SIGTERM):
    """Deliver `signum` to this process during the `call`-th training step."""
    original = TrainStep.__call__
    count = {"n": 0}

    def step(self, batch, epoch):
        count["n"] += 1
        if count["n"] == call:
            os.kill(os.getpid(), signum)
        return original(self, batch, epoch)

    monkeypatch.setattr(TrainStep, "__call__", step)


def _metrics(run):
    timing = ("images_per_s", "epoch_s")
    return [{k: v for k, v in json.loads(x).items() if k not in timing}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


# mixup (per-batch scalars from the CPU generator, the permutation from the device one) and
# random erasing (per-sample draws): a resume that restarted the epoch's generators would differ
AUG = {"crop_padding": 2, "mixup_alpha": 1.0, "mix_prob": 0.5, "random_erasing": 0.5}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_epoch_checkpoints_and_the_resumed_run_is_the_uninterrupted_one(tmp_path, monkeypatch, signum):
    handler = signal.getsignal(signal.SIGTERM)  # (another library's, when one installed its own earlier in the process)
    full = fit(tiny(epochs=3, augment=AUG), tmp_path / "full", quiet=True)
    _signal_on_call(monkeypatch, 10, signum)  # the third step of the second epoch (digits-LT at batch 64: 7 steps)
    with pytest.raises(Interrupted) as info:
        fit(tiny(epochs=3, augment=AUG), tmp_path / "cut", quiet=True)
    monkeypatch.undo()
    cut = tmp_path / "cut"
    assert info.value.exit_code == 128 + signum and "epoch 1, step 3 of 7" in str(info.value)
    state = load_state(cut / "checkpoints/last_state.pt")
    assert state["partial"]["epoch"] == 1 and state["partial"]["step"] == 3 and state["epoch"] == 0
    assert not (cut / "final.json").exists()
    assert signal.getsignal(signal.SIGTERM) is handler  # the handlers are given back
    resume(cut, quiet=True)
    a, b = load_file(full / "checkpoints/last.safetensors"), load_file(cut / "checkpoints/last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(full) == _metrics(cut)  # the interrupted epoch's loss and accuracy too
    fa, fb = (json.loads((r / "final.json").read_text()) for r in (full, cut))
    assert fa["test"] == fb["test"]


def _streamed(root, num_workers=0):
    """A run on images streamed from list files (the DataLoader path: random-resized crops drawn
    per image), 18 training images in 4 batches of 4 per epoch."""
    from conftest import write_image_folder
    from taildistill.experiment import build_config

    if not (root / "img").is_dir():
        write_image_folder(root / "img", classes=("x", "y", "z"), per_class=(8, 6, 4), size=12)
        lines = [f"{c}/{i:04d}.png {k}" for k, (c, n) in enumerate(zip("xyz", (8, 6, 4))) for i in range(n)]
        (root / "train.txt").write_text("\n".join(lines) + "\n")
        (root / "test.txt").write_text("\n".join(lines[::3]) + "\n")
    return build_config({
        "data": {"source": "listfile", "root": str(root / "img"), "profile": "none", "image_size": 8,
                 "num_workers": num_workers, "lists": {"train": str(root / "train.txt"), "test": str(root / "test.txt")}},
        "augment": {"flip": True}, "model": {"name": "convnet_small", "kwargs": {"width": 4}},
        "optim": {"lr": 0.05}, "schedule": {"name": "constant", "warmup_epochs": 0},
        "train": {"epochs": 2, "batch_size": 4, "device": "cpu", "tensorboard": False, "progress": False}})


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # (3 training workers on a 2-core machine)
def test_a_streamed_split_is_evaluated_with_the_runs_loader_workers(tmp_path, monkeypatch):
    """Evaluation decodes a streamed split with data.num_workers processes (an ImageNet-LT config's
    12), in training and in `taildistill eval`, as the training loader does; the analyses, which
    take images by index, decode them from disk too."""
    from taildistill.eval import predict
    from taildistill.evaluation import evaluate_target

    asked = []

    class Loader(predict.DataLoader):  # records the workers asked for, decodes in this process
        def __init__(self, *args, num_workers=0, **kwargs):
            asked.append(num_workers)
            super().__init__(*args, num_workers=0, **kwargs)

    monkeypatch.setattr(predict, "DataLoader", Loader)
    cfg = _streamed(tmp_path, num_workers=3)
    cfg.train.eval_every = 1
    run = fit(cfg, tmp_path / "run", quiet=True)
    assert asked and set(asked) == {3}  # every evaluation of the run (each epoch's and the last)
    asked.clear()
    result = evaluate_target(run, None, ["data.num_workers=5"], "test", analyses=["rank"])
    assert asked and set(asked) == {5} and result["metrics"]["top1"] == json.loads((run / "final.json").read_text())["test"]["top1"]


def test_a_streamed_run_resumes_with_the_same_random_crops_whatever_its_workers(tmp_path, monkeypatch):
    """Each streamed image's crop is seeded from the run's seed and its place in the epoch: a run
    stopped inside an epoch resumes exactly, and the loader's worker count changes nothing."""
    full = fit(_streamed(tmp_path), tmp_path / "full", quiet=True)
    _signal_on_call(monkeypatch, 6)  # the second step of epoch 1
    with pytest.raises(Interrupted, match="epoch 1, step 2 of 4"):
        fit(_streamed(tmp_path), tmp_path / "cut", quiet=True)
    monkeypatch.undo()
    resume(tmp_path / "cut", quiet=True)
    workers = fit(_streamed(tmp_path, num_workers=2), tmp_path / "workers", quiet=True)
    a = load_file(full / "checkpoints/last.safetensors")
    for other in (tmp_path / "cut", workers):
        b = load_file(other / "checkpoints/last.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), other
    assert _metrics(full) == _metrics(tmp_path / "cut")


def test_a_signal_at_an_epochs_last_step_resumes_into_the_next_epoch_exactly(tmp_path, monkeypatch):
    full = fit(tiny(epochs=2), tmp_path / "full", quiet=True)
    _signal_on_call(monkeypatch, 7)  # the last of epoch 0's 7 steps
    with pytest.raises(Interrupted, match="epoch 0, step 7 of 7"):
        fit(tiny(epochs=2), tmp_path / "cut", quiet=True)
    monkeypatch.undo()
    resume(tmp_path / "cut", quiet=True)
    assert _metrics(full) == _metrics(tmp_path / "cut")  # epoch 0's record too (its lr, loss, accuracy)
    a, b = load_file(full / "checkpoints/last.safetensors"), load_file(tmp_path / "cut/checkpoints/last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_inline_suite_stops_when_its_run_is_signalled_and_the_same_call_continues_it(tmp_path, monkeypatch):
    from taildistill.reproduce import run_suite
    from taildistill.scheduler import SuiteStopped

    from test_reproduce import CONFIGS, outcomes

    out = tmp_path / "s"
    _signal_on_call(monkeypatch, 3)  # inside the CE teacher, the suite's first run
    with pytest.raises(SuiteStopped, match="stopped by SIGTERM: 0 of 2 runs finished, 2 stopped"):
        run_suite("bkd-cifar10", out, seeds=1, tiny=True, configs=CONFIGS, only=["kd"], executor="inline", quiet=True)
    monkeypatch.undo()
    assert set(outcomes(out).values()) == {"stopped"}  # not failed, and its student not skipped
    assert "stopped by SIGTERM" in (out / "report.md").read_text()
    run_suite("bkd-cifar10", out, seeds=1, tiny=True, configs=CONFIGS, only=["kd"], executor="inline", quiet=True)
    assert set(outcomes(out).values()) == {"finished"}
    assert "--resume" in (out / "ratio100/ce_teacher/seed0/train.log").read_text()


def test_a_signal_during_the_first_epoch_does_not_prepare_the_method_twice(tmp_path, monkeypatch):
    # BKD's effective-number weights and an NCM head are fitted before the first step; a resumed first
    # epoch must keep what was fitted, not refit it from the partly trained student
    calls = []
    from taildistill.methods.base import Method

    original = Method.prepare
    monkeypatch.setattr(Method, "prepare", lambda self, teacher_on: (calls.append(1), original(self, teacher_on))[1])
    full = fit(tiny(epochs=2), tmp_path / "full", quiet=True)
    _signal_on_call(monkeypatch, 2)
    with pytest.raises(Interrupted):
        fit(tiny(epochs=2), tmp_path / "cut", quiet=True)
    resume(tmp_path / "cut", quiet=True)
    assert len(calls) == 2  # the full run's and the cut run's first start; not the resume's
    a, b = load_file(full / "checkpoints/last.safetensors"), load_file(tmp_path / "cut/checkpoints/last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_command_line_stops_on_sigterm_with_the_signals_exit_code_and_resumes(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {source: digits, profile: exp, ratio: 10}\nmodel: {name: convnet_small, kwargs: {width: 8}}\n"
                   "train: {epochs: 400, batch_size: 64, device: cpu, tensorboard: false}\nmethod: {name: ce}\n")
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "taildistill", "train", str(cfg), "--out", str(run), "--quiet"],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() and time.time() < deadline:  # training has begun
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and f"--resume {run}" in err and "Traceback" not in err
    state = load_state(run / "checkpoints/last_state.pt")
    done = state["epoch"] + 1 if "partial" not in state else state["partial"]["epoch"]
    assert 0 < done < 400
    assert not (run / "final.json").exists()


def test_checkpoint_every_accepts_auto_or_a_positive_number():
    assert tiny().train.checkpoint_every == "auto"
    assert tiny(train={"checkpoint_every": 3}).train.checkpoint_every == 3
    for bad in (0, -1, "often"):
        with pytest.raises(ConfigError, match="checkpoint_every"):
            tiny(train={"checkpoint_every": bad})


def test_checkpoint_every_n_epochs_writes_every_nth_and_the_last(tmp_path, monkeypatch):
    written = []
    original = Trainer._save_checkpoint
    def save(self, epoch, partial=None):
        # a checkpoint of a known cost: 0.3 s is more than 2% of any digits epoch, however loaded the machine
        written.append(epoch)
        time.sleep(0.3)
        return original(self, epoch, partial)

    monkeypatch.setattr(Trainer, "_save_checkpoint", save)
    fit(tiny(epochs=5, train={"checkpoint_every": 2}), tmp_path / "r", quiet=True)
    assert written == [1, 3, 4]


def test_auto_checkpointing_spaces_checkpoints_by_their_measured_cost(tmp_path, monkeypatch):
    # on CUDA `auto` times the first checkpoint and keeps the rest under 2% of the training time;
    # here the CUDA rule is forced on CPU, where a checkpoint costs a large share of a tiny epoch
    written = []
    original = Trainer._save_checkpoint
    def save(self, epoch, partial=None):
        # a checkpoint of a known cost: 0.3 s is more than 2% of any digits epoch, however loaded the machine
        written.append(epoch)
        time.sleep(0.3)
        return original(self, epoch, partial)

    monkeypatch.setattr(Trainer, "_save_checkpoint", save)
    trainer = Trainer(tiny(epochs=12), tmp_path / "r", quiet=True)
    trainer.checkpoint_auto = True
    try:
        trainer.run()
    finally:
        trainer.close()
    note = json.loads((tmp_path / "r/env.json").read_text())["checkpoints"]
    n = note["checkpoint_every"]
    # the recorded seconds are rounded to 6 decimals: n is the rule's value for some pair within that rounding
    spent, epoch = note["checkpoint_seconds"], note["epoch_seconds"]
    assert math.ceil((spent - 5e-7) / (0.02 * (epoch + 5e-7))) <= n <= math.ceil((spent + 5e-7) / (0.02 * (epoch - 5e-7)))
    assert n > 1  # a 0.3 s checkpoint is far more than 2% of a 5-step digits epoch
    assert written == [0] + [e for e in range(1, 12) if (e + 1) % n == 0 and e != 11] + [11]


def progress(state: dict) -> tuple[int, int]:
    """(epoch, step) a checkpoint resumes from: inside an epoch, or at the start of the next."""
    return (state["partial"]["epoch"], state["partial"]["step"]) if "partial" in state else (state["epoch"] + 1, 0)


def test_a_time_limited_sweep_stops_its_runs_resumably_and_the_same_command_continues_them(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {source: digits, profile: exp, ratio: 10}\nmodel: {name: convnet_small, kwargs: {width: 8}}\n"
                   "train: {epochs: 5000, batch_size: 64, device: cpu, tensorboard: false, progress: false}\n"
                   "method: {name: ce}\n")
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "taildistill", "sweep", str(cfg), "--set", "optim.lr=0.05,0.1", "--out", str(out),
           "--jobs", "2", "--time-limit", "0.3", "--quiet"]
    # 18 s: the runs must get past their start (seconds on a machine shared with other test processes)
    # to stop with a checkpoint; a run stopped before its first step has nothing to resume
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 75, first.stderr
    assert "stopped at the time limit (0.3 min): 0 of 2 runs finished, 2 stopped" in first.stderr
    runs = json.loads((out / "outcomes.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["stopped", "stopped"]
    reached = {}
    for r in runs:  # each run stopped on the scheduler's SIGTERM with a checkpoint (inside an epoch, or at
        # its end when the signal came during the epoch's evaluation)
        state = load_state(os.path.join(r["run_dir"], "checkpoints", "last_state.pt"))
        reached[r["run_dir"]] = progress(state)
        assert reached[r["run_dir"]] > (0, 0)
        assert "stopped by SIGTERM" in open(os.path.join(r["run_dir"], "train.log")).read()
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 75, second.stderr
    assert second.stderr.count("stopped before its end; resuming from its checkpoint") == 2
    for run_dir, epoch in reached.items():
        # resumed where it stopped and went on (18 s are ample once started)
        assert progress(load_state(os.path.join(run_dir, "checkpoints", "last_state.pt"))) > epoch
        log = open(os.path.join(run_dir, "train.log")).read()
        assert "--resume" in log and "Traceback" not in log


def test_under_ddp_a_signal_to_one_rank_stops_every_rank_at_the_epochs_end_and_the_resume_is_exact(tmp_path):
    import textwrap
    from pathlib import Path

    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys, torch
        from taildistill.engine.step import TrainStep
        from taildistill.engine.trainer import Trainer
        from taildistill.errors import Interrupted
        from test_engine import tiny
        what, rank = sys.argv[1], int(os.environ["RANK"])
        run = {str(tmp_path)!r} + "/" + ("ref" if what == "ref" else "cut")
        if what == "cut" and rank == 1:  # one rank alone is told to stop, in the middle of epoch 1
            original, calls = TrainStep.__call__, [0]
            def step(self, batch, epoch):
                calls[0] += 1
                if epoch == 1 and calls[0] == 6:
                    os.kill(os.getpid(), signal.SIGTERM)
                return original(self, batch, epoch)
            TrainStep.__call__ = step
        t = Trainer(tiny("ddp", epochs=3, augment={{"crop_padding": 2, "mixup_alpha": 1.0}}), run, quiet=True,
                    resume=what == "resume")
        try:
            t.run()
            code = 0
        except Interrupted as exc:
            code = exc.exit_code
        finally:
            t.close()
        open({str(tmp_path)!r} + f"/{{what}}{{rank}}.code", "w").write(str(code))
    """))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent), OMP_NUM_THREADS="1")
    for what in ("ref", "cut", "resume"):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(script), what], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    codes = {p.stem: p.read_text() for p in tmp_path.glob("*.code")}
    assert codes == {"ref0": "0", "ref1": "0", "cut0": "143", "cut1": "143", "resume0": "0", "resume1": "0"}
    # both ranks stopped after epoch 1 (the one rank 1 was signalled in) with a whole-epoch checkpoint
    from taildistill.rundir import RunDir

    cut_log = [json.loads(x)["epoch"] for x in (tmp_path / "cut/metrics.jsonl").read_text().splitlines()]
    assert cut_log == [0, 1, 2]  # after the resume
    assert "resumed" in json.loads((tmp_path / "cut/env.json").read_text())
    a = load_file(RunDir(tmp_path / "ref").last_weights)
    b = load_file(RunDir(tmp_path / "cut").last_weights)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_resumes_only_on_the_device_type_it_trained_on(tmp_path):
    """precision auto, channels_last and the epoch's generators follow the device type: a checkpoint
    written on CUDA does not continue on the CPU (or the reverse), whatever train.device says."""
    from taildistill.rundir import save_state

    run = fit(tiny(epochs=1), tmp_path / "run", quiet=True)
    state = load_state(run / "checkpoints/last_state.pt")
    assert state["device_type"] == "cpu"
    state["device_type"] = "cuda"
    save_state(state, run / "checkpoints/last_state.pt")
    with pytest.raises(TrainingError, match="was trained on cuda; resume it on a cuda device"):
        resume(run, quiet=True)
