"""The CUDA path of the engine. Skipped where no GPU is present (the CPU CI); run on a GPU
machine with `pytest tests/test_cuda.py`."""
import json

import pytest
import torch

from taildistill.engine.trainer import Trainer, fit

from conftest import finished
from test_engine import tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cuda_cfg(name, teacher=None, method=None, **train):
    return tiny(name, epochs=2, method=method, teacher=teacher, augment={"crop_padding": 1, "mixup_alpha": 1.0},
                train={"device": "cuda", **train})


def test_cuda_run_in_bf16_channels_last_with_cuda_graphs(tmp_path):
    teacher = fit(cuda_cfg("teacher"), tmp_path / "teacher", quiet=True)
    cfg = cuda_cfg("bkd", teacher=teacher, method={"name": "bkd"}, compile=True, compile_mode="reduce-overhead")
    trainer = Trainer(cfg, tmp_path / "bkd", quiet=True)
    assert trainer.bf16 and trainer.channels_last and trainer.step.cudagraphs
    conv = next(m for m in trainer.method.student.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    run = trainer.run()
    finished(run)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss/bkd"] > 0 and r["loss"] == r["loss"] for r in records)
    assert json.loads((run / "env.json").read_text())["hardware"] == torch.cuda.get_device_name()


def test_cuda_training_step_never_waits_for_the_device(tmp_path):
    # batch gathering, augmentation with mixup, teacher + student forward, loss, backward and the
    # fused optimizer step all queue work without a host synchronisation
    teacher = fit(cuda_cfg("teacher"), tmp_path / "teacher", quiet=True)
    trainer = Trainer(cuda_cfg("kd", teacher=teacher, method={"name": "bkd"}), tmp_path / "kd", quiet=True)
    trainer.method.train()
    for batch in trainer.inputs.epoch(0):  # warm-up (cuDNN autotuning, lazy initialisation)
        trainer.step(batch, 0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in trainer.inputs.epoch(1):
            trainer.step(batch, 1)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_cuda_and_cpu_give_the_same_fp32_predictions(tmp_path):
    run = fit(cuda_cfg("fp32", precision="fp32"), tmp_path / "fp32", quiet=True)
    from taildistill.evaluation import evaluate_target

    gpu = json.loads((run / "final.json").read_text())["test"]["top1"]
    cpu = evaluate_target(run, None, ["train.device=cpu"])["summary"]["top1"]
    assert abs(gpu - cpu) <= 1.0  # TF32 convolutions may flip a borderline prediction


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    from taildistill.demo import demo_config, DIGITS

    out = tmp_path_factory.mktemp("cuda_methods")
    cfg = demo_config("ce_teacher", [DIGITS / "ce_teacher.yaml"], ["train.device=cuda", "train.progress=false"], 2, out)
    fit(cfg, out / "ce_teacher", quiet=True)
    return out


def _demo_students():
    from taildistill.demo import DEMO_STUDENTS

    from test_engine import steps_beyond_the_demo

    return [pytest.param(name, files, over, id=name) for name, files, over in DEMO_STUDENTS + steps_beyond_the_demo()]


@pytest.mark.parametrize("name,files,overrides", _demo_students())
def test_every_methods_training_step_never_waits_for_the_device(digits_teacher, name, files, overrides):
    # every method of the demo, as the demo configures it on CUDA: after a warm-up epoch, a whole
    # epoch of steps (batch building, augmentation, teacher, student, loss, optimizer) under
    # CUDA's sync debug mode, which raises on any host synchronisation
    from taildistill.demo import demo_config

    cfg = demo_config(name, files, overrides(4) + ["train.device=cuda", "train.progress=false"], 4, digits_teacher)
    trainer = Trainer(cfg, digits_teacher / name, quiet=True)
    try:
        trainer._prepare_heads()
        trainer.method.prepare(trainer.teacher_on)
        trainer.method.train()
        for batch in trainer.inputs.epoch(0):
            trainer.step(batch, 0)
        torch.cuda.synchronize()
        epoch = cfg.train.epochs - 1  # the last epoch: deferred re-weighting and late losses are on
        torch.cuda.set_sync_debug_mode("error")
        try:
            for batch in trainer.inputs.epoch(epoch):
                trainer.step(batch, epoch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    finally:
        trainer.close()


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "cudnn_benchmark"])
def test_the_captured_step_trains_as_eager_does(tmp_path, deterministic):
    # train.cuda_graph: the same run eager and as replayed CUDA graphs (with deterministic kernels
    # they differ only by the float32 learning rate; with cuDNN's autotuning as runs use it, by
    # the kernels' own nondeterminism too); mixup on half the batches gives two graphs
    from safetensors.torch import load_file

    teacher = fit(cuda_cfg("teacher"), tmp_path / "teacher", quiet=True)
    runs = {}
    for graph in (False, True):
        cfg = tiny(f"g{graph}", epochs=2, method={"name": "bkd", "bkd_start_epoch": 1}, teacher=teacher,
                   augment={"crop_padding": 1, "mixup_alpha": 1.0, "mix_prob": 0.5},
                   train={"device": "cuda", "deterministic": deterministic, "cuda_graph": graph})
        runs[graph] = fit(cfg, tmp_path / f"g{graph}", quiet=True)
    record = json.loads((runs[True] / "env.json").read_text())["cuda_graph"]
    # 14 steps: 3 warm-up, one eager step before each graph (mixup or not; KD, then BKD), the rest replayed
    assert record["captures"] >= 2 and record["replays"] + record["eager_steps"] == 2 * 7 and record["replays"] >= 5
    assert "eager_reason" not in record
    eager, graph = (load_file(runs[g] / "checkpoints/last.safetensors") for g in (False, True))
    tol = 1e-4 if deterministic else 1e-2
    for k in eager:
        assert torch.allclose(eager[k].float(), graph[k].float(), rtol=tol, atol=tol / 10), k
    losses = [[json.loads(x)["loss"] for x in (runs[g] / "metrics.jsonl").read_text().splitlines()] for g in (False, True)]
    assert losses[0] == pytest.approx(losses[1], rel=tol)


@pytest.mark.parametrize("name,files,overrides", _demo_students())
def test_every_methods_step_is_captured_and_replays_without_host_syncs(digits_teacher, name, files, overrides):
    # train.cuda_graph for every method of the demo: the capture succeeds (no eager fallback) and
    # an epoch of replays (batch copies into the graph's inputs, learning-rate fills) never syncs
    from taildistill.demo import demo_config
    from taildistill.engine.graphed import GraphedStep
    from taildistill.engine.optim import set_lr

    cfg = demo_config(name, files, overrides(4) + ["train.device=cuda", "train.progress=false", "train.cuda_graph=true"],
                      4, digits_teacher)
    trainer = Trainer(cfg, digits_teacher / f"{name}_graph", quiet=True)
    try:
        assert isinstance(trainer.step, GraphedStep)
        trainer._prepare_heads()
        trainer.method.prepare(trainer.teacher_on)
        trainer.method.train()
        epoch = cfg.train.epochs - 1  # the last epoch's graphs too (deferred re-weighting on): captured first,
        for e in (0, epoch):  # since a capture synchronises the device
            for batch in trainer.inputs.epoch(e):
                trainer.step(batch, e)
        torch.cuda.synchronize()
        assert trainer.step.eager_reason is None and trainer.step.captures >= 1
        torch.cuda.set_sync_debug_mode("error")
        try:
            for batch in trainer.inputs.epoch(epoch):
                set_lr(trainer.optimizer, cfg.optim.lr, 0.5)
                trainer.step(batch, epoch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert trainer.step.eager_reason is None and trainer.step.replays >= 1
    finally:
        trainer.close()
