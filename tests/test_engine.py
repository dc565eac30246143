import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from taildistill.experiment import build_config
from taildistill.engine.optim import SAM, lr_factor, set_lr
from taildistill.engine.trainer import fit, resume
from taildistill.errors import ConfigError, TrainingError
from taildistill.methods import register_method
from taildistill.methods.logit import Supervised

from conftest import finished


def tiny(name="t", epochs=3, method=None, teacher=None, **sections):
    raw = {
        "name": name,
        "data": {"source": "digits", "profile": "exp", "ratio": 10, "val_per_class": 3, "group_policy": "shots"},
        "augment": {"crop_padding": 1, "flip": False},
        "model": {"name": "convnet_small", "kwargs": {"width": 8}},
        "optim": {"lr": 0.05, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        "train": {"epochs": epochs, "batch_size": 64, "device": "cpu", "tensorboard": False, "progress": False},
        "method": method or {"name": "ce"},
    }
    if teacher:
        raw["teacher"] = {"run": str(teacher)}
    for k, v in sections.items():
        raw[k].update(v)
    return build_config(raw)


def test_run_directory_contents(tmp_path):
    from taildistill.report import write_run_report

    run = fit(tiny(), tmp_path / "run", quiet=True)
    for f in ("config.yaml", "data.json", "env.json", "metrics.jsonl", "final.json",
              "checkpoints/last.safetensors", "checkpoints/last_state.pt", "checkpoints/best.safetensors"):
        assert (run / f).is_file(), f
    assert not (run / "report.md").exists()  # reports are the caller's (CLI, suites), not the trainer's
    write_run_report(run)
    assert all((run / f).is_file() for f in ("report.md", "plots/per_class.png", "plots/curves.png"))
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    assert all("loss/sup" in r and r["images_per_s"] > 0 for r in lines)
    final = json.loads((run / "final.json").read_text())
    cm = torch.tensor(final["test"]["confusion"])
    assert cm.sum() == 539 and final["test"]["top1"] == pytest.approx(100 * cm.trace().item() / cm.sum().item())
    assert final["group_policy"] == "shots"
    assert set(k for k in final["test"] if k.startswith("group/")) == {"group/many", "group/medium", "group/few"}
    assert len(final["test"]["per_class"]) == 10 and final["best_on_val"]["epoch"] in (0, 1, 2)
    env = json.loads((run / "env.json").read_text())
    assert env["versions"]["torch"] == torch.__version__


def test_resume_matches_uninterrupted_run(tmp_path):
    full = fit(tiny(epochs=4), tmp_path / "full", quiet=True)

    def crash(epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny(epochs=4), tmp_path / "cut", quiet=True, on_epoch_end=crash)
    cut = tmp_path / "cut"
    assert not (cut / "final.json").exists()
    resume(cut, quiet=True)
    a, b = load_file(full / "checkpoints/last.safetensors"), load_file(cut / "checkpoints/last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fa, fb = json.loads((full / "final.json").read_text()), json.loads((cut / "final.json").read_text())
    assert fa["test"] == fb["test"]
    assert [json.loads(x)["epoch"] for x in (cut / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]


class _NaNAfterFirstEpoch(Supervised):
    """Test only: the supervised term turns NaN from epoch 1."""

    def loss_terms(self, batch, epoch):
        out = super().loss_terms(batch, epoch)
        if epoch >= 1:
            out.terms["sup"] = out.terms["sup"] * float("nan")
        return out


register_method("_test_nan", _NaNAfterFirstEpoch)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match="non-finite loss at epoch 1.*epoch 0"):
        fit(tiny(epochs=3, method={"name": "_test_nan"}), tmp_path / "nan", quiet=True)
    w = load_file(tmp_path / "nan/checkpoints/last.safetensors")
    assert all(torch.isfinite(v.float()).all() for v in w.values())
    lines = (tmp_path / "nan/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0]


def test_distillation_from_teacher_run(tmp_path):
    teacher = fit(tiny("teacher", epochs=2, model={"kwargs": {"width": 16}}), tmp_path / "teacher", quiet=True)
    for m in ("kd", "bkd", "ltkd", "cckd", "acckd", "dkd", "dist", "dive", "wkd"):
        run = fit(tiny(m, epochs=1, method={"name": m}, teacher=teacher), tmp_path / m, quiet=True)
        rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        assert rec["loss/sup"] > 0 and any(k != "loss/sup" and k.startswith("loss/") for k in rec), m


def test_schedules():
    from taildistill.config import ScheduleConfig

    ldam = ScheduleConfig(name="ldam_step", warmup_epochs=5, milestones=[160, 180], step_factors=[0.01, 0.0001])
    assert [lr_factor(ldam, e, 200) for e in (0, 4, 5, 159, 160, 179, 180, 199)] == \
        [0.2, 1.0, 1.0, 1.0, 0.01, 0.01, 0.0001, 0.0001]
    cos = ScheduleConfig(name="cosine", warmup_epochs=0, min_lr=0.0)
    assert lr_factor(cos, 0, 10) == pytest.approx(1.0) and lr_factor(cos, 5, 10) == pytest.approx(0.5)
    ms = ScheduleConfig(name="multistep", warmup_epochs=0, milestones=[2, 4], gamma=0.1)
    assert [lr_factor(ms, e, 6) for e in (0, 2, 4)] == pytest.approx([1, 0.1, 0.01])
    # TDE's and LADE's code: WarmupMultiStepLR (warm-up from 1/3, gamma 0.01 at [120, 160]) stepped at the start of
    # each 1-based epoch E, i.e. lr x (1/3 + 2/3 E/5) for E < 5 and 0.01 ** bisect_right([120, 160], E), written out
    tde = ScheduleConfig(name="ldam_step", warmup_epochs=5, warmup_start=1 / 3, milestones=[119, 159], step_factors=[0.01, 0.0001])

    def theirs(E):
        warm = 1 / 3 * (1 - E / 5) + E / 5 if E < 5 else 1.0
        return warm * 0.01 ** sum(E >= m for m in (120, 160))

    assert [lr_factor(tde, e, 200) for e in range(200)] == pytest.approx([theirs(e + 1) for e in range(200)])
    assert lr_factor(tde, 0, 200) == pytest.approx(7 / 15)
    assert lr_factor(ScheduleConfig(name="cosine", warmup_epochs=4, warmup_start=0.5), 2, 10) == pytest.approx(0.75)
    with pytest.raises(ConfigError, match="schedule.warmup_start"):
        build_config({"schedule": {"warmup_start": 1.5}})


def test_sam_uses_gradient_at_perturbed_point():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    sam = SAM(opt, rho=0.5)
    loss = lambda: (w ** 4).sum()  # noqa: E731
    loss().backward()
    g = torch.tensor([4.0, -32.0])
    eps = 0.5 * g / g.norm()
    sam.first_step()
    assert torch.allclose(w.detach(), torch.tensor([1.0, -2.0]) + eps)
    loss().backward()
    sam.second_step()
    expect = torch.tensor([1.0, -2.0]) - 0.1 * 4 * (torch.tensor([1.0, -2.0]) + eps) ** 3
    assert torch.allclose(w.detach(), expect, atol=1e-6)


def test_sam_changes_the_engines_update_exactly_as_sam_prescribes(tmp_path):
    """optim.sam_rho reaches the training step: the update is the base optimizer's step with the
    gradient taken at w + rho g/|g| (computed here directly), not the plain one."""
    from taildistill.engine.trainer import Trainer

    cfg = lambda rho, name: tiny(name, epochs=1, optim={"sam_rho": rho, "weight_decay": 0.0, "momentum": 0.0},  # noqa: E731
                                 augment={"crop_padding": 0})
    plain, sam = Trainer(cfg(0.0, "p"), tmp_path / "p", quiet=True), Trainer(cfg(0.5, "s"), tmp_path / "s", quiet=True)
    reference = copy.deepcopy(plain.method)  # the same initial weights (same seed)
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), sam.method.parameters()))
    batch = next(iter(plain.inputs.epoch(0)))
    for tr in (plain, sam):
        tr.method.train()
        set_lr(tr.optimizer, 0.05, 1.0)
        tr.step(batch, 0)
    # SAM by hand on the reference copy
    reference.train()
    params = [p for p in reference.parameters() if p.requires_grad]
    sum(reference(batch, 0).terms.values()).backward()
    grads = [p.grad.clone() for p in params]
    norm = torch.norm(torch.stack([g.norm() for g in grads]))
    eps = [0.5 * g / (norm + 1e-12) for g in grads]
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.add_(e)
            p.grad = None
    sum(reference(batch, 0).terms.values()).backward()
    with torch.no_grad():
        expect = [p - e - 0.05 * p.grad for p, e in zip(params, eps)]
    got = [p for p in sam.method.parameters() if p.requires_grad]
    moved_plain = [p for p in plain.method.parameters() if p.requires_grad]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, expect))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, moved_plain))
    finished(sam.run())


def test_ddp_two_processes_identical_parameters(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(f"""
        import os, torch
        from taildistill.experiment import build_config
        from taildistill.engine.trainer import Trainer
        from test_engine import tiny
        cfg = tiny("ddp", epochs=2)
        t = Trainer(cfg, {str(tmp_path / 'run')!r}, quiet=True)
        t.run()
        rank = int(os.environ["RANK"])
        torch.save({{k: v.detach().clone() for k, v in t.method.student.state_dict().items()}},
                   {str(tmp_path)!r} + f"/rank{{rank}}.pt")
        from taildistill.errors import ConfigError
        try:  # SyncBatchNorm has no CPU kernels: refused with a message, not ignored
            Trainer(tiny("sbn", epochs=1, train={{"sync_bn": True}}), {str(tmp_path / 'sbn')!r}, quiet=True)
            raise SystemExit("train.sync_bn accepted on CPU")
        except ConfigError as exc:
            assert "sync_bn" in str(exc)
        try:  # PaCo's key queue is per process: refused under DDP, not trained with ranks' queues apart
            Trainer(tiny("paco", epochs=1, method={{"name": "paco"}}), {str(tmp_path / 'paco')!r}, quiet=True)
            raise SystemExit("paco accepted under DDP")
        except ConfigError as exc:
            assert "trains in one process" in str(exc), exc
        import torch.distributed as dist
        dist.destroy_process_group()
    """))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    finished(tmp_path / "run", test_size=539)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # only rank 0 writes


def test_deitlt_and_ltsf_train_end_to_end(tmp_path):
    teacher = fit(tiny("teacher", epochs=1, model={"kwargs": {"width": 16}}), tmp_path / "teacher", quiet=True)
    vit = {"name": "deit_ti_distilled", "kwargs": {"patch_size": 2, "depth": 1, "embed_dim": 16, "num_heads": 2}}
    run = fit(tiny("deitlt", epochs=2, method={"name": "deitlt", "dist": {"drw_epoch": 1}}, teacher=teacher, model=vit,
                   augment={"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mix_until_epoch": 1}), tmp_path / "deitlt", quiet=True)
    final = json.loads((run / "final.json").read_text())
    assert "cls/top1" in final["test"] and "dist/group/few" in final["test"]
    rec = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("loss/cls" in r and "loss/dist" in r for r in rec)
    assert all("metric/teacher_acc" in r and "loss/metric/teacher_acc" not in r for r in rec)  # logged, not a loss
    # composition: DeiT-LT's OOD distillation with LTKD's loss on the DIST head is a config change
    fit(tiny("deitlt_ltkd", epochs=1, method={"name": "deitlt", "dist_criterion": "ltkd"}, teacher=teacher, model=vit),
        tmp_path / "deitlt_ltkd", quiet=True)
    snn = {"name": "spikingformer", "kwargs": {"patch_size": 2, "dim": 16, "depth": 3, "heads": 2, "time_steps": 2}}
    run = fit(tiny("ltsf", epochs=1, method={"name": "ltsf"}, teacher=teacher, model=snn,
                   data={"sampler": "effective_number"}), tmp_path / "ltsf", quiet=True)
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["loss/loc"] > 0 and rec["loss/glo"] > 0


def test_ltsf_class_means_and_norm_loss():
    from taildistill.methods.ltsf import norm_guided_loss

    b = torch.tensor([2.0, 3.0])
    mapped = torch.tensor([[3.0, 4.0], [0.0, 3.0]])
    assert norm_guided_loss(b, mapped).item() == pytest.approx((3.0 + 0.0) / 2)


def test_ltsf_prepare_computes_teacher_class_means():
    from taildistill.data import make_groups
    from taildistill.data.dataset import DataInfo
    from taildistill.methods import build_method, resolve_params
    from taildistill.models import build_model

    info = DataInfo(3, [2, 1, 1], make_groups("thirds", [2, 1, 1]), ["a", "b", "c"], (3, 32, 32))
    student = build_model("spikingformer", 3, 3, 32, dim=16, depth=3, heads=2, time_steps=1)
    teacher = build_model("convnet_small", 3, 3, 32, width=4)
    m = build_method("ltsf", resolve_params("ltsf", {}), student, teacher, info)
    feats = torch.tensor([[1.0] * 8, [3.0] * 8, [5.0] * 8, [7.0] * 8])
    labels = torch.tensor([0, 0, 2, 1])
    m.prepare(lambda which, key, view=None: (feats, labels))
    assert torch.allclose(m.class_means[:, 0], torch.tensor([2.0, 7.0, 5.0]))


def test_text_pipeline_with_local_vectors(tmp_path):
    rows = ['"3","Stocks up","Markets rallied today on strong earnings"', '"2","Team wins","Final score three to one"',
            '"1","Summit","Leaders met in the capital"', '"4","New chip","Faster processors announced"']
    csv = tmp_path / "news.csv"
    csv.write_text("\n".join(rows * 12) + "\n")
    vec = tmp_path / "vectors.txt"
    vec.write_text("markets " + " ".join(["0.5"] * 8) + "\nteam " + " ".join(["-0.5"] * 8) + "\n")
    raw = {"name": "text", "data": {"source": "ag_news", "root": str(csv), "profile": "exp", "ratio": 4,
                                    "group_policy": "thirds", "max_len": 12, "test_fraction": 0.25},
           "augment": {"normalize": False},
           "model": {"name": "textcnn", "kwargs": {"embed_dim": 8, "channels": 4, "vectors": str(vec)}},
           "schedule": {"name": "constant", "warmup_epochs": 0},
           "train": {"epochs": 2, "batch_size": 8, "device": "cpu", "tensorboard": False, "progress": False}}
    run = fit(build_config(raw), tmp_path / "run", quiet=True)
    final = json.loads((run / "final.json").read_text())
    assert final["model"] == "textcnn" and len(final["test"]["per_class"]) == 4
    # a student reads its teacher's vocabulary: token ids of other texts would mean other words
    student = copy.deepcopy(raw)
    student["method"] = {"name": "kd"}
    student["teacher"] = {"run": str(run)}
    del student["model"]["kwargs"]["vectors"]
    student["data"]["vocab_size"] = 10  # the 8 most frequent words only
    with pytest.raises(ConfigError, match="another vocabulary than this data's"):
        fit(build_config(student), tmp_path / "other", quiet=True)
    student["data"]["vocab_size"] = raw["data"].get("vocab_size", 20000)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(vec), str(tmp_path / "gone.txt")))
    kd = fit(build_config(student), tmp_path / "kd", quiet=True)  # (the teacher's vectors file is not read again)
    assert json.loads((kd / "final.json").read_text())["method"] == "kd"
    # eval reads neither the vectors (trained weights replace them) nor a run of another vocabulary
    from taildistill.cli import main

    assert main(["eval", str(run)]) == 0
    other = tmp_path / "other_vocabulary"
    shutil.copytree(run, other)
    recorded = json.loads((other / "data.json").read_text())
    (other / "data.json").write_text(json.dumps({**recorded, "vocab_digest": "0" * 64}))  # trained on other texts
    with pytest.raises(ConfigError, match=f"the run {other} was trained with another vocabulary"):
        resume(other, quiet=True)
    assert main(["eval", str(other)]) == 2
    # a text run from before vocabularies were recorded: its token ids may mean other words
    info = json.loads((run / "data.json").read_text())
    del info["vocab_digest"]
    (run / "data.json").write_text(json.dumps(info))
    student["data"]["vocab_size"] = raw["data"].get("vocab_size", 20000)
    with pytest.raises(ConfigError, match="before taildistill recorded a text run's vocabulary"):
        fit(build_config(student), tmp_path / "kd_old", quiet=True)


def test_analyses_from_the_papers():
    from taildistill.eval.analysis import feature_deviation, feature_rank, feature_separability

    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 16, generator=g)
    low = torch.randn(200, 3, generator=g) @ basis  # rank-3 features
    assert feature_rank(low, low[:50]) <= 3
    full = torch.randn(200, 16, generator=g)
    assert feature_rank(full, full[:50]) > 10
    y = torch.arange(200) % 4
    dev = feature_deviation(low, y, low, y, 4)
    assert all(abs(d) < 1e-6 for d in dev)
    sep_tight = feature_separability(torch.eye(4)[y] * 10 + 0.01 * torch.randn(200, 4, generator=g), y, 4)
    assert all(s < 0.1 for s in sep_tight)


def test_eval_cli_analyses(tmp_path, capsys):
    from taildistill.cli import main

    snn = {"name": "spikingformer", "kwargs": {"patch_size": 2, "dim": 16, "depth": 3, "heads": 2, "time_steps": 1}}
    run = fit(tiny("snn", epochs=1, model=snn), tmp_path / "snn", quiet=True)
    assert main(["eval", str(run), "--analysis", "rank,deviation", "--analysis", "firing"]) == 0
    res = json.loads((run / "eval_test.json").read_text())["analysis"]
    assert res["rank"]["tail_group"] == "few" and res["rank"]["pooled"] >= 1
    assert len(res["deviation"]["per_class"]) == 10 and len(res["firing"]) > 10
    vit = {"name": "deit_ti_distilled", "kwargs": {"patch_size": 2, "depth": 2, "embed_dim": 16, "num_heads": 2}}
    run = fit(tiny("vit", epochs=1, model=vit), tmp_path / "vit", quiet=True)
    capsys.readouterr()
    assert main(["eval", str(run), "--analysis", "attention,rank", "data.val_per_class=4"]) == 0  # the override is not
    printed = capsys.readouterr().out                                                             # taken for an analysis
    assert "mean attention distance per ViT block" in printed and "feature rank" in printed
    res = json.loads((run / "eval_test.json").read_text())["analysis"]
    assert len(res["attention"]["mean_distance_per_block"]) == 2 and set(res["rank"]) >= {"cls", "dist"}
    att = res["attention"]  # over the tail classes' test images only, per head, in pixels
    tail = res["rank"]["tail_classes"]
    assert att["images"] == sum(json.loads((run / "final.json").read_text())["test"]["confusion"][c][k]
                                for c in tail for k in range(10))
    assert len(att["mean_distance_per_block_and_head"][0]) == 2 and att["unit"].startswith("pixels")
    assert len(res["rank"]["per_block"]["dist"]) == 2
    assert main(["eval", str(run), "--analysis", "firing"]) == 2
    assert "spiking model" in capsys.readouterr().err


def test_compiled_student_trains(tmp_path):
    run = fit(tiny("compiled", epochs=1, train={"compile": True}), tmp_path / "c", quiet=True)
    finished(run)
    w = load_file(run / "checkpoints/last.safetensors")
    assert not any(k.startswith("_orig_mod") for k in w)  # compiled in place: the same weight names


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    run = fit(tiny(epochs=1), tmp_path / "a", quiet=True)
    import yaml

    conf = yaml.safe_load((run / "config.yaml").read_text())
    conf["model"]["kwargs"]["width"] = 12
    conf["train"]["epochs"] = 2
    (run / "config.yaml").write_text(yaml.safe_dump(conf))
    with pytest.raises(TrainingError, match="does not fit"):
        resume(run, quiet=True)
    with pytest.raises(TrainingError, match="no checkpoint"):
        (run / "checkpoints" / "last_state.pt").unlink()
        resume(run, quiet=True)


def test_ltkd_groups_default_to_thirds_whatever_the_reporting_policy():
    from taildistill.data import make_groups
    from taildistill.data.dataset import DataInfo
    from taildistill.methods import build_method, resolve_params
    from taildistill.models import build_model

    counts = [100, 80, 60, 40, 30, 20, 10, 8, 5, 2]
    info = DataInfo(10, counts, make_groups("shots", counts), [str(i) for i in range(10)], (1, 8, 8))
    mk = lambda **p: build_method("ltkd", resolve_params("ltkd", p), build_model("convnet_small", 10, 1, 8),  # noqa: E731
                                  build_model("convnet_small", 10, 1, 8), info)
    assert mk().criterion.class_groups.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    data_groups = info.groups.class_to_group  # shots: no class has > 100 images, group 0 is empty
    assert min(data_groups) == 1 and mk(ltkd_groups="data").criterion.class_groups.tolist() == [g - 1 for g in data_groups]
    assert mk(ltkd_groups="data").criterion.num_groups == 2 and mk().criterion.num_groups == 3
    with pytest.raises(ConfigError):
        mk(ltkd_groups="cuts")


def test_bf16_autocast_runs_the_network_in_bf16_and_the_losses_in_fp32(tmp_path):
    from taildistill.engine.trainer import Trainer

    teacher = fit(tiny("t16", epochs=1, train={"precision": "bf16"}), tmp_path / "t16", quiet=True)
    cfg = tiny("ltkd16", epochs=1, method={"name": "ltkd"}, teacher=teacher, train={"precision": "bf16"})
    trainer = Trainer(cfg, tmp_path / "ltkd16", quiet=True)
    assert trainer.bf16
    batch = next(iter(trainer.inputs.epoch(0)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert trainer.method.student(batch["x"])["logits"].dtype == torch.bfloat16
        out = trainer.method(batch, 0)
    assert out.logits.dtype == torch.float32
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.terms.values())
    run = trainer.run()
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["loss/ltkd"] > 0
    finished(run)


def test_optimizers_are_fused_without_decay_on_1d_parameters():
    from taildistill.config import OptimConfig
    from taildistill.engine.optim import build_optimizer

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    for name in ("sgd", "adamw"):
        opt = build_optimizer(OptimConfig(name=name, nesterov=True, weight_decay=0.1), net, "cpu")
        assert opt.defaults["fused"] is True
        assert [(len(g["params"]), g["weight_decay"]) for g in opt.param_groups] == [(1, 0.1), (3, 0.0)]
        net(torch.randn(5, 3)).square().sum().backward()
        before = net[0].weight.detach().clone()
        opt.step()
        assert not torch.equal(before, net[0].weight)
    frozen = torch.nn.Linear(3, 4).requires_grad_(False)  # nothing to train (an NCM head): one empty group
    assert [len(g["params"]) for g in build_optimizer(OptimConfig(), frozen, "cpu").param_groups] == [0]


def test_lr_scale_gives_named_parameters_their_own_learning_rate_through_the_schedule():
    from taildistill.config import OptimConfig
    from taildistill.engine.optim import build_optimizer

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))  # "1" plays a new classifier
    opt = build_optimizer(OptimConfig(lr=0.01, weight_decay=0.1, lr_scale={"1": 10.0}), net, "cpu")
    lrs = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    assert lrs[id(net[0].weight)] == (0.01, 0.1) and lrs[id(net[0].bias)] == (0.01, 0.0)
    assert lrs[id(net[1].weight)] == (pytest.approx(0.1), 0.1) and lrs[id(net[1].bias)] == (pytest.approx(0.1), 0.0)
    assert set_lr(opt, 0.01, 0.5) == 0.005  # the schedule scales both, keeping the ratio
    assert sorted(round(g["lr"], 6) for g in opt.param_groups) == [0.005, 0.005, 0.05, 0.05]
    # the step is SGD's at each group's rate: the classifier moves 10x as far as it would unscaled
    moved = []
    for scale in ({}, {"1": 10.0}):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        o = build_optimizer(OptimConfig(lr=0.005, weight_decay=0.0, momentum=0.0, lr_scale=scale), m, "cpu")
        m(torch.ones(2, 3)).sum().backward()
        before = [p.detach().clone() for p in m.parameters()]
        o.step()
        moved.append([p.detach() - b for p, b in zip(m.parameters(), before)])
    assert torch.allclose(moved[1][0], moved[0][0]) and torch.allclose(moved[1][2], 10 * moved[0][2])
    with pytest.raises(ConfigError, match="no trainable parameter is named 2"):  # a misspelt prefix scales nothing
        build_optimizer(OptimConfig(lr_scale={"2": 10.0}), net, "cpu")


def test_runs_saved_before_lr_scale_existed_are_still_the_same_experiment():
    from taildistill.rundir import config_hash

    old = {"method": {"name": "ce"}, "optim": {"lr": 0.1}}
    assert config_hash(old) == config_hash({"method": {"name": "ce"}, "optim": {"lr": 0.1, "lr_scale": {}}})
    assert config_hash(old) != config_hash({"method": {"name": "ce"}, "optim": {"lr": 0.1, "lr_scale": {"student.fc": 10.0}}})
    # schedule.warmup_start likewise: 0 (the ramp alone, as before it existed) is the old experiment
    sched = {"method": {"name": "ce"}, "schedule": {"warmup_epochs": 5}}
    assert config_hash(sched) == config_hash({**sched, "schedule": {"warmup_epochs": 5, "warmup_start": 0.0}})
    assert config_hash(sched) != config_hash({**sched, "schedule": {"warmup_epochs": 5, "warmup_start": 0.25}})


def test_reviewkd_and_catkd_train_end_to_end(tmp_path):
    teacher = fit(tiny("teacher", epochs=1, model={"kwargs": {"width": 16}}), tmp_path / "teacher", quiet=True)
    methods = {"reviewkd": {"name": "reviewkd", "student_features": ["stage1", "stage2", "pooled"],
                            "teacher_features": ["stage1", "stage2", "pooled"], "mid_channels": 8, "warmup_epochs": 2},
               "catkd": {"name": "catkd", "cam_resolution": 1}}
    for name, method in methods.items():
        run = fit(tiny(name, epochs=2, method=method, teacher=teacher), tmp_path / name, quiet=True)
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        term = "loss/review" if name == "reviewkd" else "loss/cat"
        assert all(r[term] > 0 and r["loss/sup"] > 0 for r in recs), name
        finished(run)
        state = torch.load(run / "checkpoints/last_state.pt", weights_only=True)
        if name == "reviewkd":  # the ABF modules train with the student and are checkpointed for resume
            assert any(k.startswith("abfs.") for k in state["method"])


def test_reviewkd_maps_student_features_to_the_teachers_shapes():
    from taildistill.data import make_groups
    from taildistill.data.dataset import DataInfo
    from taildistill.methods import build_method, resolve_params
    from taildistill.models import build_model

    counts = [50, 30, 20, 10, 5, 5, 4, 3, 2, 2]
    info = DataInfo(10, counts, make_groups("thirds", counts), [str(i) for i in range(10)], (3, 32, 32))
    student, teacher = build_model("resnet8x4", 10, 3, 32), build_model("resnet32", 10, 3, 32)
    method = build_method("reviewkd", resolve_params("reviewkd", {"mid_channels": 16}), student, teacher, info)
    x = torch.randn(4, 3, 32, 32)
    s_feats = student(x)["features"]
    mapped = method.review([s_feats[f] for f in ("stage1", "stage2", "stage3", "pooled")])
    t_feats = teacher(x)["features"]
    assert [tuple(m.shape) for m in mapped] == [tuple(t_feats[f].shape) for f in ("stage1", "stage2", "stage3")] + [(4, 64, 1, 1)]
    # deeper levels reach shallower ones through the fused residual: the stage1 output depends on the pooled feature
    pooled = s_feats["pooled"].detach().requires_grad_(True)
    out = method.review([s_feats["stage1"].detach(), s_feats["stage2"].detach(), s_feats["stage3"].detach(), pooled])
    out[0].sum().backward()
    assert pooled.grad is not None and pooled.grad.abs().sum() > 0
    # the first epochs ramp the review term up
    batch = {"x": x, "y": torch.tensor([0, 1, 2, 3])}
    early, late = method(batch, 0).terms["review"], method(batch, 40).terms["review"]
    assert early.item() == pytest.approx(late.item() / 20, rel=1e-4)
    with pytest.raises(ConfigError, match="no feature"):
        build_method("reviewkd", resolve_params("reviewkd", {"student_features": ["stage1", "stage9", "stage3", "pooled"]}),
                     student, teacher, info)
    with pytest.raises(ConfigError, match="linear layer"):
        build_method("catkd", resolve_params("catkd", {}), build_model("resnet32", 10, 3, 32, cosine_head=True), teacher, info)


def test_resolve_device_refuses_what_it_would_ignore(monkeypatch):
    from taildistill.engine.distributed import DistInfo
    from taildistill.engine.trainer import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    # under torchrun each process takes its LOCAL_RANK's GPU: a named index would be dropped silently
    with pytest.raises(ConfigError, match="under torchrun each process .* use train.device=cuda"):
        resolve_device("cuda:1", DistInfo(1, 2, 1))
    assert resolve_device("cuda", DistInfo(1, 2, 1)) == torch.device("cuda", 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="'cuda:2' but this machine has 2 CUDA device"):
        resolve_device("cuda:2")


def test_a_student_records_its_teachers_weights_and_refuses_to_resume_on_other_ones(tmp_path):
    import hashlib

    from safetensors.torch import save_file

    teacher = fit(tiny("teacher", epochs=1), tmp_path / "teacher", quiet=True)
    weights = teacher / "checkpoints" / "last.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()

    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny("kd", epochs=2, method={"name": "kd"}, teacher=teacher), tmp_path / "kd", quiet=True, on_epoch_end=stop)
    assert json.loads((tmp_path / "kd" / "env.json").read_text())["teacher_weights_sha256"] == digest
    original = weights.read_bytes()
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in load_file(weights).items()}, str(weights))  # trained again
    with pytest.raises(ConfigError, match="holds other weights than when .* started .*--overwrite"):
        resume(tmp_path / "kd", quiet=True)
    weights.write_bytes(original)  # the same weights back: the resume goes on, and final.json names them
    resume(tmp_path / "kd", quiet=True)
    assert json.loads((tmp_path / "kd" / "final.json").read_text())["teacher"]["weights_sha256"] == digest


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    from taildistill.demo import DIGITS, demo_config

    out = tmp_path_factory.mktemp("whole_step")
    fit(demo_config("ce_teacher", [DIGITS / "ce_teacher.yaml"], ["train.progress=false"], 1, out), out / "ce_teacher",
        quiet=True)
    return out


def steps_beyond_the_demo():
    """The digits runs whose training steps the step checks cover beside the demo's (here and in
    tests/test_cuda.py): (name, config files, overrides by epochs), as DEMO_STUDENTS."""
    from taildistill.demo import DIGITS

    return [("ride", [DIGITS / "ride.yaml"], lambda e: [f"method.drw_epoch={e - 1}"]),  # (slower on CPU: not in the demo)
            ("ride_bkd", [DIGITS / "ride_bkd.yaml"], lambda e: []),
            ("paco", [DIGITS / "paco.yaml"], lambda e: ["optim.sam_rho=0.05"])]  # (a teacher objective; its queue and key encoder)


def _whole_step_cases():
    from taildistill.demo import DEMO_STUDENTS

    files = dict((n, f) for n, f, _ in DEMO_STUDENTS)
    # every augmentation the recipes use, on the ViT (its own 12 px crops) and on a CNN with AutoAugment
    every = ["augment.random_resized_crop=12", "augment.flip=true", "augment.rotation=15", "augment.randaugment_n=2",
             "augment.color_jitter=0.4", "augment.random_erasing=0.5", "augment.random_erasing_mode=pixel",
             "augment.mixup_alpha=0.8", "augment.cutmix_alpha=1.0", "augment.repeated=2"]
    augment = [("vit_every_augmentation", files["vit_ce"], lambda e: every),
               ("cnn_autoaugment_mixup", files["kd"], lambda e: ["augment.autoaugment=cifar10", "augment.mixup_alpha=1.0",
                                                                 "augment.random_erasing=0.5"])]
    return [pytest.param(n, f, o, id=n) for n, f, o in DEMO_STUDENTS + steps_beyond_the_demo() + augment]


def _step_under_the_sync_check(out, name, files, overrides, steps=3, run="run"):
    """`steps` whole training steps (batch gather, augmentation, the balanced mix, teacher, student,
    loss, backward, optimizer) in the first and in the last epoch (deferred re-weighting and late
    losses on, mixing off where it stops), under tests/host_syncs.py's mode; returns what it saw."""
    from host_syncs import HostSyncs
    from taildistill.demo import demo_config
    from taildistill.engine.trainer import Trainer

    cfg = demo_config(name, files, overrides(4) + ["train.progress=false"], 4, out)
    trainer = Trainer(cfg, out / run / name, quiet=True)
    seen, host_reads = [], 0
    try:
        trainer._prepare_heads()
        trainer.method.prepare(trainer.teacher_on)
        trainer.method.train()
        for epoch in (0, cfg.train.epochs - 1):
            g, host = trainer.inputs.generators(epoch)
            with HostSyncs(host) as mode:
                for step, batch in enumerate(trainer.inputs.epoch(epoch, 0, (g, host))):
                    if step == steps:
                        break
                    trainer.step(batch, epoch)
            seen += mode.seen
            host_reads += len(mode.from_host)
    finally:
        trainer.close()
    return seen, host_reads


@pytest.mark.parametrize("name,files,overrides", _whole_step_cases())
def test_no_whole_training_step_reads_the_device_on_the_host(digits_teacher, name, files, overrides):
    """The CPU side of tests/test_cuda.py's sync-debug test, for every method of the demo and every
    augmentation: nothing in the step reads a device value on the host or makes a data-dependent
    shape (only the per-batch scalars drawn from the CPU generator are read, by design)."""
    seen, host_reads = _step_under_the_sync_check(digits_teacher, name, files, overrides)
    assert not seen, sorted(set(seen))
    if name in ("acckd", "vit_every_augmentation", "cnn_autoaugment_mixup"):
        assert host_reads > 0  # the CPU generator's draws were followed (and not counted)


def test_the_whole_step_sync_check_sees_a_host_read(digits_teacher, monkeypatch):
    # which one-line bug the check above catches: a loss read as a Python number inside the step
    from taildistill.demo import DEMO_STUDENTS
    from taildistill.methods.base import SupervisedLoss

    forward = SupervisedLoss.forward

    def reads_on_the_host(self, logits, batch, epoch):
        loss = forward(self, logits, batch, epoch)
        if loss > 100:  # a Python branch on a device value
            pass
        return loss

    monkeypatch.setattr(SupervisedLoss, "forward", reads_on_the_host)
    name, files, overrides = DEMO_STUDENTS[0]
    seen, _ = _step_under_the_sync_check(digits_teacher, name, files, overrides, steps=1, run="bug")
    assert seen and all("_local_scalar_dense" in s and "test_engine" not in s for s in seen), seen
