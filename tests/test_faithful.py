"""The papers' protocols the suites depend on: best-epoch test accuracy beside the last epoch,
weight decay on every parameter, gradient accumulation, ablations at the paper's setting only,
reports that show no paper column beside another experiment."""
import copy
import json
from pathlib import Path

import pytest
import torch

from taildistill.config import OptimConfig
from taildistill.engine.optim import build_optimizer
from taildistill.engine.step import TrainStep
from taildistill.engine.trainer import fit
from taildistill.methods import MethodOutput
from taildistill.reproduce import load_suite, run_suite, suite_specs, write_suite_report

from conftest import finished
from test_engine import tiny

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "taildistill" / "configs"


def test_best_epoch_test_accuracy_is_reported_beside_the_last_and_labelled(tmp_path):
    run = fit(tiny("b", epochs=3, train={"report_best_test": True, "eval_every": 1}), tmp_path / "b", quiet=True)
    final = finished(run)
    tested = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in tested if "test/top1" in r] == [0, 1, 2]
    best = max(tested, key=lambda r: r["test/top1"])
    assert final["best_epoch_test"]["top1"] == best["test/top1"] and final["best_epoch_test"]["epoch"] == best["epoch"]
    assert "optimistic" in final["best_epoch_test"]["protocol"]
    assert tested[-1]["test/top1"] == pytest.approx(final["test"]["top1"])  # the last epoch's is the headline


def test_weight_decay_on_every_parameter_when_asked():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    timm_like = build_optimizer(OptimConfig(weight_decay=0.1), net, "cpu")
    everything = build_optimizer(OptimConfig(weight_decay=0.1, decay_norm_and_bias=True), net, "cpu")
    assert [(len(g["params"]), g["weight_decay"]) for g in timm_like.param_groups] == [(1, 0.1), (3, 0.0)]
    assert [(len(g["params"]), g["weight_decay"]) for g in everything.param_groups] == [(4, 0.1)]


class _Linear(torch.nn.Module):
    """A method around a linear model, whose loss is a mean over samples."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, batch, epoch):
        z = self.lin(batch["x"])
        return MethodOutput({"sup": torch.nn.functional.cross_entropy(z, batch["y"])}, z)

    def after_step(self):  # (the Method contract: nothing to update per step)
        pass


def test_gradient_accumulation_is_one_step_on_the_whole_batch():
    torch.manual_seed(0)
    a = _Linear()
    b = copy.deepcopy(a)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    opt_a = torch.optim.SGD(a.parameters(), lr=0.5, momentum=0.9)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.5, momentum=0.9)
    TrainStep(a, a, opt_a, torch.device("cpu"))({"x": x, "y": y}, 0)
    step = TrainStep(b, b, opt_b, torch.device("cpu"), grad_accum=2)
    before = [p.clone() for p in b.parameters()]
    step({"x": x[:4], "y": y[:4]}, 0)
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), before))  # no step after the first half
    step({"x": x[4:], "y": y[4:]}, 0)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))


def test_grad_accum_and_sam_together_are_refused(tmp_path):
    from taildistill.engine.trainer import Trainer
    from taildistill.errors import ConfigError

    with pytest.raises(ConfigError, match="sam_rho with train.grad_accum"):
        Trainer(tiny("x", epochs=1, optim={"sam_rho": 0.05}, train={"grad_accum": 2}), tmp_path / "x", quiet=True)


def test_ablations_run_only_where_the_paper_has_them(tmp_path):
    suite = load_suite("ltsf-cifar10", CONFIGS)
    keys = {s.key for s in suite_specs("ltsf-cifar10", suite, tmp_path, 1, False, CONFIGS, None, None)}
    assert {"ratio100/snn_mixup/seed0", "ratio100/ltsf_glo/seed0", "ratio100/ltsf_loc/seed0"} <= keys
    assert not any(k.startswith(("ratio50/ltsf_", "ratio10/snn_mixup")) for k in keys)
    assert {"ratio50/ltsf/seed0", "ratio10/snn_ce/seed0"} <= keys
    # BKD Tables 1 and 2 give Mixup + VS at ratio 100 only (both profiles)
    for name, cells in (("bkd-cifar10", ["ratio100"]), ("bkd-cifar10-step", ["ratio100"]),
                        ("bkd-cifar100", ["profileexp_ratio100", "profilestep_ratio100"])):
        suite = load_suite(name, CONFIGS)
        keys = {s.key for s in suite_specs(name, suite, tmp_path / name, 1, False, CONFIGS, None, None)}
        assert sorted(k.split("/")[0] for k in keys if "/mixup_vs/" in k) == cells, name
        assert all(f"{c}/mixup_la/seed0" in keys for c in cells), name
    # and DiVE on the long-tailed profile only, each cell's student from that cell's own BSCE teacher
    specs = {s.key: s for s in suite_specs("bkd-cifar100", suite, tmp_path / "dive", 2, False, CONFIGS, None, None)}
    assert sorted(k for k in specs if "/dive" in k) == sorted(
        f"profileexp_ratio{r}/{run}" for r in (100, 50, 10) for run in ("dive_teacher/seed0", "dive/seed0", "dive/seed1"))
    assert specs["profileexp_ratio50/dive/seed1"].deps == ["profileexp_ratio50/dive_teacher/seed0"]
    # LADE too, with no teacher; TDE on both profiles, as Table 1 has them
    assert sorted(k for k in specs if "/lade/" in k) == sorted(
        f"profileexp_ratio{r}/lade/seed{s}" for r in (100, 50, 10) for s in (0, 1))
    assert specs["profileexp_ratio10/lade/seed0"].deps == []
    assert len([k for k in specs if "/tde/" in k]) == 6 * 2 and specs["profilestep_ratio50/tde/seed1"].deps == []
    for name in ("bkd-cifar10", "bkd-cifar10-step"):
        keys = {s.key for s in suite_specs(name, load_suite(name, CONFIGS), tmp_path / name, 1, False, CONFIGS, None, None)}
        assert sorted(k for k in keys if "/tde/" in k) == [f"ratio{r}/tde/seed0" for r in (10, 100, 50)], name


def test_a_suite_that_is_not_the_papers_experiment_says_so_first_and_shows_no_paper_column(tmp_path):
    out = tmp_path / "acckd"
    run_suite("acckd-cifar10", out, seeds=1, tiny=True, configs=CONFIGS, only=["ce", "la"], executor="inline", quiet=True)
    text = write_suite_report("acckd-cifar10", load_suite("acckd-cifar10", CONFIGS), out, tiny=False, seeds=1).read_text()
    assert text.splitlines()[2].startswith("**Not the paper's experiment:** The paper distils CLIP ViT-B/16 teachers")
    assert "paper All" not in text and "| la |" in text
    bkd = load_suite("bkd-cifar10", CONFIGS)
    assert "not_the_paper" not in bkd and bkd["paper"]["ratio100"]["bkd"] == 82.5  # a faithful suite keeps its column


def test_a_suite_report_plots_each_students_gain_beside_the_papers(tmp_path, monkeypatch):
    out = tmp_path / "bkd"
    run_suite("bkd-cifar10", out, seeds=2, tiny=True, configs=CONFIGS, only=["ce", "kd", "mixup_vs"], executor="inline", quiet=True)
    suite = load_suite("bkd-cifar10", CONFIGS)
    drawn = {}
    import taildistill.report as report

    real = report.plot_gains
    monkeypatch.setattr(report, "plot_gains", lambda gains, path, title: drawn.update({path.name: gains}) or real(gains, path, title))
    text = write_suite_report("bkd-cifar10", suite, out, tiny=False, seeds=2).read_text()
    gains = {g[0]: g[1:] for g in drawn["ratio100_gains.png"]}
    assert set(gains) == {"kd", "mixup_vs"}  # the students: neither the teacher nor the baseline itself
    top1 = {n: [json.loads((out / f"ratio100/{n}/seed{k}/final.json").read_text())["test"]["top1"] for k in (0, 1)]
            for n in ("ce", "kd", "mixup_vs")}
    mean = {n: sum(v) / 2 for n, v in top1.items()}
    assert gains["kd"][0] == pytest.approx(mean["kd"] - mean["ce"]) and gains["kd"][1] == pytest.approx(abs(top1["kd"][0] - top1["kd"][1]) / 2)
    assert gains["kd"][2] == pytest.approx(70.7 - 70.4) and gains["mixup_vs"][2] == pytest.approx(82.1 - 70.4)  # Table 2
    assert "![gains over the baseline, ours beside the paper's](plots/ratio100_gains.png)" in text
    # the table's gap to the paper's gain: ours minus the paper's, `short` beyond 2 points
    results = json.loads((out / "results.json").read_text())["cells"]["ratio100"]
    col = results["header"].index("gain - paper gain")
    rows = {row[0]: row[col] for row in results["rows"]}
    gap = gains["mixup_vs"][0] - (82.1 - 70.4)
    assert rows["mixup_vs"] == f"{gap:+.1f}" + (" short" if gap < -2 else "") and rows["ce"] == "–"
    assert rows["mixup_vs"].endswith(" short")  # (a 4-step digits run gains nothing like 11.7 points)
    assert (out / "plots/ratio100_gains.png").stat().st_size > 5000
    # a smoke's report draws none
    monkeypatch.setattr(report, "plot_gains", lambda *a: pytest.fail("a tiny report drew a plot"))
    assert "plots/" not in write_suite_report("bkd-cifar10", suite, out, tiny=True, seeds=2).read_text()


def test_deitlt_table1s_teacher_accuracy_is_a_column_beside_the_papers(tmp_path):
    # Table 1's Tch. Acc.: each run's metric/teacher_acc, its mean over the training epochs, beside the paper's
    out = tmp_path / "deitlt"
    run_suite("deitlt-cifar10", out, seeds=1, tiny=True, configs=CONFIGS, only=["deitlt_t1_strong_view"],
              executor="inline", quiet=True)
    report = write_suite_report("deitlt-cifar10", load_suite("deitlt-cifar10", CONFIGS), out, tiny=False, seeds=1)
    results = json.loads((out / "results.json").read_text())["cells"]["ratio100"]
    header, rows = results["header"], {row[0]: row for row in results["rows"]}
    assert header[-2:] == ["Tch. Acc.", "paper Tch. Acc."]
    history = [json.loads(line) for line in (out / "ratio100/deitlt_t1_strong_view/seed0/metrics.jsonl").read_text().splitlines()]
    epochs = [h["metric/teacher_acc"] for h in history if "metric/teacher_acc" in h]
    assert len(epochs) == 2  # the tiny run's two epochs
    assert rows["deitlt_t1_strong_view"][-2:] == [f"{sum(epochs) / 2:.2f}", "71.9"]
    assert rows["ldam_drw_sam_teacher"][-2:] == ["–", "–"]  # a teacher logs no teacher accuracy; the paper has none
    assert "Tch. Acc.: the run's logged `metric/teacher_acc` (metrics.jsonl), its mean over the training epochs." in report.read_text()


def test_the_faithful_recipes_resolve_to_the_papers_values():
    from taildistill.experiment import load_config

    bkd = load_config(CONFIGS / "cifar10_lt" / "bkd.yaml")
    assert (bkd.method.params.temperature, bkd.method.params.bkd_beta, bkd.method.params.bkd_start_epoch) == (2.0, 0.9999, 160)
    assert (bkd.train.epochs, bkd.train.batch_size, bkd.optim.lr, bkd.optim.weight_decay) == (200, 128, 0.1, 2e-4)
    assert bkd.optim.decay_norm_and_bias and bkd.schedule.milestones == [160, 180]
    # Table 1 (CIFAR-100): the same recipe, BKD from the first epoch (the epoch-160 switch is CIFAR-10's, Sec. 5.2)
    bkd100 = load_config(CONFIGS / "cifar100_lt_bkd" / "bkd.yaml")
    assert (bkd100.data.source, bkd100.data.n_max, bkd100.model.name, bkd100.method.params.bkd_start_epoch) == \
        ("cifar100", 500, "resnet32", 0)
    assert (bkd100.train.epochs, bkd100.optim.lr, bkd100.augment.mixup_alpha, bkd100.method.params.temperature) == \
        (200, 0.1, 1.0, 2.0)
    assert load_config(CONFIGS / "cifar100_lt_bkd" / "kd.yaml").method.params.temperature == 2.0
    # Table 3 (ImageNet-LT): 90 epochs, batch 512, SGD 0.2 cosine (Sec. 5.2), BKD from the first epoch
    inet = load_config(CONFIGS / "imagenet_lt_bkd" / "bkd.yaml")
    assert (inet.train.epochs, inet.train.batch_size, inet.optim.lr, inet.schedule.name, inet.model.name) == \
        (90, 512, 0.2, "cosine", "resnet10")
    assert (inet.method.params.bkd_start_epoch, inet.augment.mixup_alpha, inet.data.group_policy) == (0, 0.2, "shots")
    ltkd = load_config([CONFIGS / "cifar100_lt" / "_base.yaml", CONFIGS / "methods" / "ltkd.yaml"])
    assert (ltkd.method.params.ltkd_alpha, ltkd.method.params.ltkd_beta) == (6.0, 6.0)
    # the LTKD suites' ReviewKD and CAT-KD rows: their authors' settings for each pair
    specs = {s.key.split("/")[1]: s for s in suite_specs("ltkd-cifar100", load_suite("ltkd-cifar100", CONFIGS),
                                                          Path("out"), 1, False, CONFIGS, None, None, cells=["ratio100"])}
    cat = {name: load_config(specs[name].config_files, specs[name].overrides).method.params
           for name in ("catkd_r8x4", "catkd_vgg8", "catkd_shuv1", "catkd_mv2")}
    assert [(p.cat_weight, p.cam_resolution, p.normalize) for p in cat.values()] == \
        [(15.0, 2, False), (4.5, 2, False), (80.0, 4, True), (40.0, 2, True)]
    review = load_config(specs["reviewkd_mv2"].config_files, specs["reviewkd_mv2"].overrides).method.params
    assert (review.review_weight, review.mid_channels, review.warmup_epochs) == (5.0, 0, 20)
    deit = load_config(CONFIGS / "cifar10_lt" / "deitlt.yaml")
    assert (deit.model.name, deit.augment.random_resized_crop, deit.train.batch_size * deit.train.grad_accum) == \
        ("deit_b_distilled", 224, 1024)
    assert (deit.train.epochs, deit.method.params.dist.drw_epoch, deit.augment.mix_until_epoch) == (1200, 1100, 1100)
    assert deit.augment.random_erasing_mode == "pixel" and deit.method.params.teacher_image_size == 32
    assert load_config(CONFIGS / "cifar10_lt" / "ldam_drw_sam_teacher.yaml").optim.sam_rho == 0.8
    snn = load_config(CONFIGS / "cifar10_lt" / "snn_ce.yaml")
    assert snn.augment.autoaugment == "none" and snn.augment.mixup_alpha == 0 and snn.augment.rotation > 0
    ltsf = load_config(CONFIGS / "cifar10_lt" / "ltsf.yaml")
    assert ltsf.model.kwargs["depth"] % 3 == 0 and ltsf.model.kwargs["attention"] == "dual"
    # Table 1's SpikingFormer + Focal / + DRW: the baseline's student, recipe and weak augmentation
    focal, drw = (load_config(CONFIGS / "cifar10_lt" / f"snn_{k}.yaml") for k in ("focal", "drw"))
    assert (focal.method.params.sup_loss, focal.method.params.focal_gamma, focal.method.params.drw_epoch) == ("focal", 2.0, -1)
    assert (drw.method.params.sup_loss, drw.method.params.drw_epoch, drw.train.epochs) == ("ce", 480, 600)
    for run in (focal, drw):
        assert (run.model, run.augment, run.data.sampler, run.teacher.run) == (snn.model, snn.augment, "instance", "")
    assert load_config(CONFIGS / "cifar10_lt" / "ce_teacher.yaml").data.group_cuts == [3, 7]
    # BSCE and Mixup + LA (Tables 1, 2): those losses on the benchmark's CE recipe, nothing else changed
    for folder in ("cifar10_lt", "cifar100_lt_bkd"):
        ce, bsce, la, vs = (load_config(CONFIGS / folder / f"{name}.yaml") for name in ("ce_teacher", "bsce", "mixup_la", "mixup_vs"))
        assert (bsce.method.params.sup_loss, bsce.augment.mixup_alpha) == ("bsce", ce.augment.mixup_alpha), folder
        assert (la.method.params.sup_loss, la.method.params.la_tau, la.augment.mixup_alpha) == ("la", 1.0, 1.0), folder
        # Mixup + VS: the VS authors' CIFAR-10 LT-100 setting (gamma 0.2, tau 1.2), mixup as Mixup + LA
        assert (vs.method.params.sup_loss, vs.method.params.vs_gamma, vs.method.params.vs_tau, vs.augment.mixup_alpha) == \
            ("vs", 0.2, 1.2, 1.0), folder
        assert bsce.optim == ce.optim == la.optim == vs.optim and bsce.train == ce.train == la.train == vs.train, folder
        assert (vs.model, vs.data) == (ce.model, ce.data), folder
    # DiVE (Table 1, cited from its paper): its own recipe (BBN's schedule) from a BSCE teacher, alpha 0.5, T 3, power 0.5
    ce, teacher, dive = (load_config(CONFIGS / "cifar100_lt_bkd" / f"{n}.yaml") for n in ("ce_teacher", "dive_teacher", "dive"))
    assert (teacher.method.name, teacher.method.params.sup_loss) == ("ce", "bsce")
    p = dive.method.params
    assert (dive.method.name, p.sup_loss, p.sup_weight, p.kd_weight, p.temperature, p.dive_power) == ("dive", "bsce", 0.5, 0.5, 3.0, 0.5)
    for run in (teacher, dive):
        assert (run.schedule.milestones, run.schedule.step_factors) == ([120, 160], [0.01, 0.0001])
        assert (run.optim, run.train, run.data, run.model, run.augment) == (ce.optim, ce.train, ce.data, ce.model, ce.augment)
    # TDE and LADE (Tables 1 and 2, cited from their papers): the CIFAR-LT recipe of TDE's code (LADE's too) on
    # BBN's ResNet-32; TDE's de-confounded head (alpha 1.5 on CIFAR-100, 1.0 on CIFAR-10) and plain CE,
    # LADE's loss with its README command's alpha 0.1 and lambda 0.01
    lade = load_config(CONFIGS / "cifar100_lt_bkd" / "lade.yaml")
    p = lade.method.params
    assert (lade.method.name, p.sup_loss, p.lade_alpha, p.lade_lambda, p.drw_epoch) == ("ce", "lade", 0.1, 0.01, -1)
    assert (lade.model.name, lade.model.kwargs) == ("bbn_resnet32", {})
    for folder, alpha in (("cifar100_lt_bkd", 1.5), ("cifar10_lt", 1.0)):
        tde, ce = (load_config(CONFIGS / folder / f"{n}.yaml") for n in ("tde", "ce_teacher"))
        assert (tde.method.name, tde.method.params.sup_loss, tde.augment.mixup_alpha) == ("ce", "ce", 0.0), folder
        assert tde.model.name == "bbn_resnet32" and tde.model.kwargs == {
            "causal_head": {"heads": 2, "tau": 16.0, "gamma": 0.03125, "alpha": alpha, "momentum": 0.9}}, folder
        for run in (tde, lade):
            assert (run.train.batch_size, run.train.epochs) == (256, 200)
            assert (run.optim.lr, run.optim.momentum, run.optim.weight_decay, run.optim.decay_norm_and_bias) == (0.2, 0.9, 5e-4, True)
            # their WarmupMultiStepLR (from 1/3, x0.01 from 1-based epoch 120, x0.0001 from 160; tests/test_engine.py)
            assert (run.schedule.name, run.schedule.warmup_epochs, run.schedule.warmup_start, run.schedule.milestones,
                    run.schedule.step_factors) == ("ldam_step", 5, pytest.approx(1 / 3), [119, 159], [0.01, 0.0001])
        assert (tde.data, tde.augment) == (ce.data, ce.augment), folder
    ce100 = load_config(CONFIGS / "cifar100_lt_bkd" / "ce_teacher.yaml")
    assert (lade.data, lade.augment) == (ce100.data, ce100.augment)
    # CB (BKD Eq. 3, its code's Reweight rule): CE with Eq. 2's weights from the first epoch, each benchmark's recipe
    for folder in ("cifar10_lt", "cifar100_lt_bkd", "imagenet_lt_bkd", "places_lt_bkd", "ag_news_lt"):
        cb, ce = (load_config(CONFIGS / folder / f"{name}.yaml") for name in ("cb", "ce_teacher"))
        assert (cb.method.name, cb.method.params.sup_loss, cb.method.params.cb_beta) == ("ce", "cb", 0.9999), folder
        assert (cb.optim, cb.train, cb.data, cb.augment, cb.model) == (ce.optim, ce.train, ce.data, ce.augment, ce.model)
    # Table 6 (AG's News): TextCNN on 300-d GloVe, 30 epochs, batch 64, 0.1 x0.01 at 20 and 25, one group per class
    news = load_config(CONFIGS / "ag_news_lt" / "bkd.yaml")
    assert (news.model.name, news.model.kwargs["embed_dim"], news.train.epochs, news.train.batch_size) == ("textcnn", 300, 30, 64)
    assert (news.optim.lr, news.schedule.milestones, news.schedule.step_factors) == (0.1, [20, 25], [0.01, 0.0001])
    assert (news.data.ratio, news.data.group_cuts, news.augment.mixup_alpha, news.method.params.bkd_start_epoch) == \
        (100, [1, 2, 3], 0.0, 0)


def test_reproduce_print_shows_each_runs_resolved_recipe(capsys):
    from taildistill.cli import main

    assert main(["reproduce", "deitlt-cifar10", "--print", "--seeds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # two cells x (three teachers, vit_ce, its cRT, DeiT, DeiT-LT from two teachers); at rho 100 Table 5 (3),
    # Table 6 (2), Table 1 (3)
    assert len(lines) == 2 * 8 + 3 + 2 + 3
    crt = next(ln for ln in lines if ln.startswith("ratio50/vit_crt/seed0:"))  # on this seed's own ViT baseline
    for value in ("model.name=decoupled", "model.kwargs.classifier=crt", "data.sampler=class_aware", "train.epochs=10",
                  "runs/reproduce/deitlt-cifar10/ratio50/vit_ce/seed0/checkpoints/last.safetensors"):
        assert value in crt, value
    assert "mixup_alpha" not in crt and "augment.repeated" not in crt
    deit = next(ln for ln in lines if ln.startswith("ratio100/deitlt/seed0:"))
    for value in ("model.name=deit_b_distilled", "train.grad_accum=8", "augment.random_resized_crop=224",
                  "method.params.dist.drw_epoch=1100", "teacher.run=runs/reproduce/deitlt-cifar10/ratio100/ldam_drw_sam_teacher/seed0"):
        assert value in deit, value
    paco = next(ln for ln in lines if ln.startswith("ratio50/deitlt_paco/seed0:"))
    assert "teacher.run=runs/reproduce/deitlt-cifar10/ratio50/paco_sam_teacher/seed0" in paco
    no_drw = next(ln for ln in lines if ln.startswith("ratio100/deitlt_paco_no_sam_no_drw/seed0:"))
    # (DRW off is the default, -1: the line no longer differs from it, nor does mixing to the end)
    assert "ratio100/paco_teacher/seed0" in no_drw and "drw_epoch" not in no_drw and "mix_until_epoch" not in no_drw
    assert "optim.sam_rho" not in next(ln for ln in lines if ln.startswith("ratio100/paco_teacher/seed0:"))
    # Table 5's first row: DeiT from a RegNetY-16GF trained on the strong augmentation, at the student's 224 px
    deit = next(ln for ln in lines if ln.startswith("ratio100/deit/seed0:"))
    assert "teacher.run=runs/reproduce/deitlt-cifar10/ratio100/deit_regnety_teacher/seed0" in deit
    assert "teacher_image_size" not in deit and "drw_epoch" not in deit and "augment.mixup_alpha=0.8" in deit
    regnet = next(ln for ln in lines if ln.startswith("ratio100/deit_regnety_teacher/seed0:"))
    for value in ("model.name=timm:regnety_160", "augment.mixup_alpha=0.8", "augment.random_resized_crop=224",
                  "augment.repeated=3", "method.name=ce", "train.epochs=1200"):
        assert value in regnet, value
    # Table 1: only the weak row gives the teacher a view of its own; only the mixed row mixes
    t1 = {k: next(ln for ln in lines if ln.startswith(f"ratio100/deitlt_t1_{k}/seed0:")) for k in ("weak_view", "strong_view", "strong_mix")}
    assert ["teacher_augment.crop_padding=4" in t1[k] for k in t1] == [True, False, False]
    assert ["mixup_alpha" in t1[k] for k in t1] == [False, False, True]
    assert all("ldam_drw_sam_teacher/seed0" in ln and "drw_epoch" not in ln for ln in t1.values())
    teacher = next(ln for ln in lines if ln.startswith("ratio50/paco_sam_teacher/seed0:"))
    for value in ("method.name=paco", "optim.sam_rho=0.05", "train.epochs=400", "augment.cutout=16",
                  "method.params.key_augment.random_resized_crop=32", "data.ratio=50"):
        assert value in teacher, value


def test_the_step_imbalanced_suites_train_on_the_step_profile_with_the_papers_numbers_per_cell(tmp_path):
    from taildistill.experiment import load_config

    specs = suite_specs("bkd-cifar10-step", load_suite("bkd-cifar10-step", CONFIGS), tmp_path, 1, False, CONFIGS, None, None)
    cfg = load_config(next(s for s in specs if s.key == "ratio50/bkd/seed0").config_files,
                      next(s for s in specs if s.key == "ratio50/bkd/seed0").overrides)
    assert (cfg.data.profile, cfg.data.ratio, cfg.data.group_policy, cfg.data.group_cuts) == ("step", 50, "cuts", [5])
    assert cfg.method.params.bkd_start_epoch == 160  # CIFAR-10: plain KD first (Sec. 5.2)
    c100 = load_suite("bkd-cifar100", CONFIGS)
    specs = suite_specs("bkd-cifar100", c100, tmp_path, 1, False, CONFIGS, None, None)
    step = next(s for s in specs if s.key == "profilestep_ratio10/mixup/seed0")
    cfg = load_config(step.config_files, step.overrides)
    assert (cfg.data.profile, cfg.data.ratio, cfg.augment.mixup_alpha, cfg.method.name) == ("step", 10, 1.0, "ce")
    assert c100["paper"]["profilestep_ratio10"]["bkd"] == 61.8 and c100["paper"]["profileexp_ratio100"]["bkd"] == 46.5
