"""train.cuda_graph: the captured training step computes what the eager step computes.

The graphs are emulated on the CPU (graph_emulator.py): capture records the step's operations and
leaves no trace, replay re-runs exactly those operations, so a Python number read at capture stays
frozen as in a real CUDA graph. The real graphs are run by tests/test_cuda.py on a GPU."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from graph_emulator import EmulatedBackend
from taildistill.config import dump_config
from taildistill.experiment import build_config
from taildistill.engine import graphed
from taildistill.engine.graphed import GraphedStep
from taildistill.engine.trainer import Trainer, fit
from taildistill.errors import ConfigError, TrainingError
from taildistill.methods.base import SupervisedLoss
from taildistill.rundir import config_hash

from test_engine import tiny

# mixup on half the batches (two batch layouts), a learning rate that changes every step (cosine
# with warm-up), BKD's class-balanced KL from epoch 1 and deferred re-weighting from epoch 2
AUG = {"crop_padding": 1, "mixup_alpha": 1.0, "mix_prob": 0.5}
BKD = {"name": "bkd", "bkd_start_epoch": 1, "drw_epoch": 2}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return fit(tiny("teacher", epochs=1), tmp_path_factory.mktemp("graphed") / "teacher", quiet=True)


def _train(run_dir, cfg, graph: bool, notices=None):
    trainer = Trainer(cfg, run_dir, quiet=True)
    backend = EmulatedBackend() if graph else None
    if graph:
        trainer.step = GraphedStep(trainer.step, backend=backend, notice=(notices if notices is not None else []).append)
    try:
        trainer.run()
    finally:
        trainer.close()
    timing = ("images_per_s", "epoch_s")
    metrics = [{k: v for k, v in json.loads(x).items() if k not in timing}
               for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return load_file(run_dir / "checkpoints/last.safetensors"), metrics, trainer.step


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_captured_bkd_step_trains_exactly_as_eager(tmp_path, teacher):
    cfg = tiny(epochs=3, method=BKD, teacher=teacher, augment=AUG, optim={"lr": 0.05, "momentum": 0.9, "nesterov": True})
    eager_w, eager_m, _ = _train(tmp_path / "eager", cfg, graph=False)
    graph_w, graph_m, step = _train(tmp_path / "graph", cfg, graph=True)
    assert _same(eager_w, graph_w) and eager_m == graph_m
    # keys: (DRW off, KD) in epoch 0, (off, BKD) in 1, (on, BKD) in 2; each with and without mixup,
    # each run eager once before its capture
    assert 3 <= step.captures <= 6 and step.method_key == (True, True)
    assert step.replays + step.eager_steps == 3 * 7 and step.replays >= 7 and step.eager_steps >= graphed.WARMUP_STEPS + 3
    assert all(g["lr"] is t for g, t in zip(step.step.optimizer.param_groups, step.lrs))  # made once, filled since
    record = json.loads((tmp_path / "graph/env.json").read_text())["cuda_graph"]
    assert record == {"captures": step.captures, "replays": step.replays, "eager_steps": step.eager_steps}


def test_sam_clipping_adamw_and_bf16_are_captured_too(tmp_path):
    cfg = tiny(epochs=2, optim={"name": "adamw", "lr": 2e-3, "sam_rho": 0.05, "weight_decay": 0.05},
               train={"precision": "bf16", "grad_clip": 1.0})
    eager_w, eager_m, _ = _train(tmp_path / "eager", cfg, graph=False)
    graph_w, graph_m, step = _train(tmp_path / "graph", cfg, graph=True)
    # one key, one layout: the warm-up, one watched eager step, then replays
    assert step.replays == 2 * 7 - graphed.WARMUP_STEPS - 1 and step.eager_reason is None
    assert _same(eager_w, graph_w) and eager_m == graph_m


@pytest.mark.parametrize("bug", ["float learning rate", "graph key without the epoch switches"])
def test_the_emulated_graph_catches_what_a_real_one_would_freeze(tmp_path, teacher, monkeypatch, bug):
    """The harness is strict enough to matter: a learning rate left as a Python float, or a
    graph key that misses BKD's start and DRW, freeze a value at capture and the run differs."""
    cfg = tiny(epochs=3, method=BKD, teacher=teacher, augment=AUG)
    eager_w, _, _ = _train(tmp_path / "eager", cfg, graph=False)
    if bug == "float learning rate":
        monkeypatch.setattr(GraphedStep, "_device_lr", lambda self: None)
    else:
        monkeypatch.setattr(GraphedStep, "__init__", _constant_key(GraphedStep.__init__))
    graph_w, _, _ = _train(tmp_path / "graph", cfg, graph=True)
    assert not _same(eager_w, graph_w)


def _constant_key(init):
    def patched(self, step, *args, **kwargs):
        init(self, step, *args, **kwargs)
        step.method.graph_key = lambda epoch: "always"
    return patched


def test_a_host_read_inside_the_step_is_found_before_capture_and_the_run_trains_eager(tmp_path, monkeypatch):
    cfg = tiny(epochs=2)
    eager_w, eager_m, _ = _train(tmp_path / "eager", cfg, graph=False)
    forward = SupervisedLoss.forward

    def reads_on_the_host(self, logits, batch, epoch):
        loss = forward(self, logits, batch, epoch)
        float(loss.detach())  # a device sync in a real graph
        return loss

    monkeypatch.setattr(SupervisedLoss, "forward", reads_on_the_host)
    notices: list = []
    graph_w, graph_m, step = _train(tmp_path / "graph", cfg, graph=True, notices=notices)
    assert notices == ["train.cuda_graph: the step reads a device value on the host (a tensor was read on the host); "
                       "training on eager"]
    assert step.captures == 0 and step.replays == 0 and step.eager_steps == graphed.WARMUP_STEPS + 1
    assert _same(eager_w, graph_w) and eager_m == graph_m


def test_a_capture_that_fails_stops_the_run_with_the_way_on(tmp_path, monkeypatch):
    from graph_emulator import EmulatedBackend as Backend

    def fails(self, graph):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(Backend, "capture", fails)
    with pytest.raises(TrainingError, match=r"capturing the training step failed \(operation not permitted.*"
                                            r"taildistill train --resume RUN_DIR train.cuda_graph=false"):
        _train(tmp_path / "graph", tiny(epochs=1), graph=True)


def test_cuda_graph_on_a_cpu_run_trains_eager_and_says_why(tmp_path, capsys):
    cfg = tiny(epochs=1, train={"cuda_graph": True})
    trainer = Trainer(cfg, tmp_path / "run")
    try:
        assert not isinstance(trainer.step, GraphedStep)
        trainer.run()
    finally:
        trainer.close()
    assert "notice: train.cuda_graph: CUDA graphs need a CUDA device (this run is on cpu); training on eager" \
        in capsys.readouterr().err
    env = json.loads((tmp_path / "run/env.json").read_text())
    assert env["cuda_graph"] == {"eager_reason": "CUDA graphs need a CUDA device (this run is on cpu)"}


def test_cuda_graph_is_not_part_of_the_experiment_and_excludes_compiled_graphs():
    plain, graph = tiny(), tiny(train={"cuda_graph": True})
    assert config_hash(yaml.safe_load(dump_config(plain))) == config_hash(yaml.safe_load(dump_config(graph)))
    for mode in ("reduce-overhead", "max-autotune"):  # both capture graphs of their own
        with pytest.raises(ConfigError, match="cuda_graph"):
            tiny(train={"cuda_graph": True, "compile": True, "compile_mode": mode})
    assert tiny(train={"cuda_graph": True, "compile": True}).train.compile_mode == "default"
    assert build_config({"train": {"cuda_graph": False}}).train.cuda_graph is False


def test_a_graphed_runs_checkpoint_resumes_eager(tmp_path):
    """The checkpoint holds the optimizer as an eager run has it (a float learning rate, AdamW's
    capturable off): a run trained captured continues eager, exactly as an eager run would."""
    from taildistill.engine.trainer import resume
    from taildistill.rundir import load_state

    def cfg(epochs):  # a schedule that does not depend on the number of epochs
        return tiny(epochs=epochs, optim={"name": "adamw", "lr": 2e-3, "weight_decay": 0.05},
                    schedule={"name": "multistep", "milestones": [1], "warmup_epochs": 0})

    _train(tmp_path / "graph", cfg(2), graph=True)
    groups = load_state(tmp_path / "graph/checkpoints/last_state.pt")["optimizer"]["param_groups"]
    assert all(type(g["lr"]) is float and g["capturable"] is False for g in groups)
    config = tmp_path / "graph/config.yaml"
    config.write_text(config.read_text().replace("epochs: 2", "epochs: 3"))
    resume(tmp_path / "graph", quiet=True)
    full = fit(cfg(3), tmp_path / "eager", quiet=True)
    assert _same(load_file(full / "checkpoints/last.safetensors"), load_file(tmp_path / "graph/checkpoints/last.safetensors"))


def test_bench_says_whether_its_graphed_step_was_replayed(tmp_path):
    from taildistill.bench import run_bench

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": "digits", "profile": "exp", "ratio": 10},
                                   "model": {"name": "convnet_small", "kwargs": {"width": 4}},
                                   "train": {"device": "cpu", "batch_size": 64, "cuda_graph": True}}))
    result = run_bench(str(cfg), [], mode="teacher", steps=1, warmup=0, phases=False)
    assert result["cuda_graph"] is True
    assert result["teacher"]["cuda_graph"] == {"eager_reason": "CUDA graphs need a CUDA device (this run is on cpu)"}


def test_ride_distill_from_a_calibrated_multi_expert_teacher_is_captured_as_eager(tmp_path):
    """RIDE-BKD end to end: a 2-expert RIDE teacher (every expert's cosine scale divided by the
    calibration temperature, since the prediction is their mean), then a RIDE student with LDAM,
    deferred re-weighting (which switches the diversity temperatures too) and BKD per expert,
    whose captured step trains exactly as the eager one."""
    ride = {"name": "ride_resnet20", "kwargs": {"num_experts": 2}}
    teacher = fit(tiny("ride_teacher", epochs=1, method={"name": "ride", "sup_loss": "ce"}, model=ride,
                       train={"calibrate": True}), tmp_path / "teacher", quiet=True)
    T = json.loads((teacher / "final.json").read_text())["calibration_temperature"]
    scales = load_file(teacher / "checkpoints/last.safetensors")
    assert T != pytest.approx(1.0) and [scales[f"heads.{e}.logit_scale"].item() for e in (0, 1)] == \
        [pytest.approx(30.0 / T, rel=1e-5)] * 2
    cfg = tiny(epochs=3, method={"name": "ride_distill", "sup_loss": "ldam", "drw_epoch": 2, "kd": {"temperature": 2.0}},
               teacher=teacher, model=ride, augment=AUG)
    eager_w, eager_m, _ = _train(tmp_path / "eager", cfg, graph=False)
    graph_w, graph_m, step = _train(tmp_path / "graph", cfg, graph=True)
    assert _same(eager_w, graph_w) and eager_m == graph_m
    assert step.eager_reason is None, step.eager_reason
    assert step.replays >= 7 and step.method_key == ((True, True), True)  # (LDAM-DRW and its temperatures on, BKD)
    last = json.loads((tmp_path / "graph/metrics.jsonl").read_text().splitlines()[-1])
    assert last["loss/bkd"] > 0 and last["loss/diversity"] < 0  # (the diversity term is subtracted)
    test = json.loads((tmp_path / "graph/final.json").read_text())["test"]  # each expert evaluated alone too
    assert {"expert0/top1", "expert1/top1", "expert1/group/few"} <= set(test) and "expert2/top1" not in test
    assert test["expert0/top1"] != test["expert1/top1"]
    from taildistill.report import write_run_report

    assert "- expert 1 alone: top-1" in write_run_report(tmp_path / "graph").read_text()


def test_pacos_queue_and_key_encoder_update_inside_the_captured_step(tmp_path):
    # PaCo's after_step (keys into the queue, the momentum key encoder) is part of the step: replayed
    # graphs move them exactly as eager steps do, SAM's second pass included
    paco = {"name": "paco", "queue_size": 48, "key_augment": {"flip": True, "gaussian_blur": 0.5}}
    cfg = tiny(epochs=2, method=paco, optim={"sam_rho": 0.05})
    eager_w, eager_m, _ = _train(tmp_path / "eager", cfg, graph=False)
    graph_w, graph_m, step = _train(tmp_path / "graph", cfg, graph=True)
    assert step.replays >= 5 and step.eager_reason is None
    assert _same(eager_w, graph_w) and eager_m == graph_m
    states = [torch.load(tmp_path / g / "checkpoints/last_state.pt", weights_only=True)["method"] for g in ("eager", "graph")]
    assert states[0]["queue_filled"].all() and _same(states[0], states[1])
