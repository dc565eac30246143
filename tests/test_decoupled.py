"""Kang et al.'s decoupled classifiers (model `decoupled`: cRT, LWS, tau-norm, NCM), class-aware
sampling, and suites whose runs build on a stage-1 run."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from taildistill.data.samplers import EpochSampler
from taildistill.engine.trainer import Trainer, fit
from taildistill.errors import ConfigError
from taildistill.experiment import build_config, load_config
from taildistill.models import build_model
from taildistill.models.decoupled import TAU_GRID
from taildistill.reproduce import load_suite, suite_specs

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "taildistill" / "configs"
NET = {"network": "convnet_small", "network_kwargs": {"width": 16}}


def test_class_aware_stream_is_balanced_in_runs_of_four_and_goes_on_across_epochs():
    labels = np.repeat([0, 1, 2], [100, 12, 4])
    sampler = EpochSampler(labels, [100, 12, 4], "class_aware", seed=1)
    epochs = [sampler.indices(e).numpy() for e in range(5)]
    assert [len(e) for e in epochs] == [116] * 5  # N per epoch, as the reference's N / batch steps
    stream = np.concatenate(epochs)  # the epochs are consecutive pieces of one stream
    assert sorted(np.bincount(labels[stream]).tolist()) == [192, 192, 196]  # balanced (to a visit) whatever the counts
    runs = labels[stream].reshape(-1, 4)
    assert (runs == runs[:, :1]).all()  # each visit: 4 images of one class, across epoch boundaries too
    assert all(sorted(r) == [0, 1, 2] for r in runs[:, 0][:48].reshape(-1, 3))  # every class once per round
    head = stream[labels[stream] == 0]
    assert len(set(head[:100].tolist())) == 100  # a head class's images each once before any repeats
    tail = np.bincount(stream[labels[stream] == 2], minlength=116)[112:]
    assert tail.max() - tail.min() <= 1 and tail.min() >= 48  # reshuffled passes: each tail image as often
    assert torch.equal(sampler.indices(3), sampler.indices(3))  # an epoch alone, reproducibly (a resume)
    assert not torch.equal(sampler.indices(0), EpochSampler(labels, [100, 12, 4], "class_aware", seed=2).indices(0))


def _stage1(tmp_path, width=16):
    net = build_model("convnet_small", 10, 1, 8, width=width)
    path = tmp_path / f"stage1_w{width}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net.eval(), str(path)


def test_each_classifier_against_its_formula(tmp_path):
    net, ckpt = _stage1(tmp_path)
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        ref = net(x)
    f, W, b = ref["features"]["pooled"], net.fc.weight, net.fc.bias

    lws = build_model("decoupled", 10, 1, 8, **NET, checkpoint=ckpt, classifier="lws").eval()
    assert [n for n, p in lws.named_parameters() if p.requires_grad] == ["scales"]
    with torch.no_grad():
        lws.scales.copy_(torch.linspace(0.5, 2.0, 10))
        assert torch.allclose(lws(x)["logits"], (f @ W.t() + b) * lws.scales, atol=1e-5)  # bias scaled too

    tau = build_model("decoupled", 10, 1, 8, **NET, checkpoint=ckpt, classifier="tau_norm", tau=0.7).eval()
    assert not any(p.requires_grad for p in tau.parameters())
    with torch.no_grad():
        direct = f @ (W / W.norm(dim=1, keepdim=True) ** 0.7).t()  # no bias
        assert torch.allclose(tau(x)["logits"], direct, atol=1e-5)

    crt = build_model("decoupled", 10, 1, 8, **NET, checkpoint=ckpt, classifier="crt").eval()
    assert [n for n, p in crt.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert not torch.equal(crt.fc.weight, W)  # re-initialised, not the stage-1 classifier
    with torch.no_grad():
        assert torch.allclose(crt(x)["logits"], crt.fc(f), atol=1e-6)
        assert torch.equal(crt(x)["features"]["pooled"], f)  # the stage-1 network's features, loaded

    ncm = build_model("decoupled", 10, 1, 8, **NET, checkpoint=ckpt, classifier="ncm").eval()
    train_f, train_y = torch.randn(50, 32), torch.arange(50) % 10
    ncm.set_class_means(train_f, train_y)
    z = F.normalize(train_f - train_f.mean(0), dim=1)
    centroids = torch.stack([z[train_y == c].mean(0) for c in range(10)])
    with torch.no_grad():
        zq = F.normalize(f - train_f.mean(0), dim=1)
        direct = -((zq[:, None, :] - centroids[None]) ** 2).sum(-1)
        assert torch.allclose(ncm(x)["logits"], direct, atol=1e-4)
    ncm.set_class_means(train_f[train_y != 9], train_y[train_y != 9])  # a class without training images
    with torch.no_grad():
        assert (ncm(x)["logits"].argmax(1) != 9).all() and (ncm(torch.randn(64, 1, 8, 8))["logits"].argmax(1) != 9).all()


def test_tau_is_chosen_by_mean_class_accuracy_over_the_grid(tmp_path):
    _, ckpt = _stage1(tmp_path)
    model = build_model("decoupled", 10, 1, 8, **NET, checkpoint=ckpt, classifier="tau_norm", tau="val")
    g = torch.Generator().manual_seed(0)
    directions = F.normalize(torch.randn(10, 32, generator=g), dim=1)
    labels = torch.arange(300) % 10
    feats = directions[labels] + 0.8 * torch.randn(300, 32, generator=g)
    with torch.no_grad():  # a head-biased classifier: the right directions, large norms for the first classes
        model.network.fc.weight.copy_(directions * torch.linspace(3.0, 0.3, 10)[:, None])
    chosen = model.select_on_validation(feats, labels)
    W = model.network.fc.weight.double()

    def mean_class_acc(t):
        pred = (feats.double() @ (W / W.norm(dim=1, keepdim=True) ** t).t()).argmax(1)
        return np.mean([(pred[labels == c] == c).double().mean().item() for c in range(10)])

    scores = np.array([mean_class_acc(t) for t in TAU_GRID])
    best = int(np.flatnonzero(scores >= scores.max() - 1e-9)[0])  # the smallest tau of the best
    assert chosen["tau"] == TAU_GRID[best] and chosen["tau"] >= 0.5  # the head bias corrected
    assert scores[best] > scores[0] + 0.05  # (a grid where tau matters)
    assert chosen["val_mean_class_accuracy"] == pytest.approx(100 * scores[best], abs=1e-4)
    assert float(model.tau) == pytest.approx(chosen["tau"])


def test_bad_stage1_and_classifier_choices_are_config_errors(tmp_path):
    _, ckpt = _stage1(tmp_path, width=8)
    with pytest.raises(ConfigError, match="does not fit the model"):
        build_model("decoupled", 10, 1, 8, **NET, checkpoint=ckpt, classifier="crt")  # width 16 vs the file's 8
    with pytest.raises(ConfigError, match="one of crt, lws, tau_norm, ncm"):
        build_model("decoupled", 10, 1, 8, **NET, classifier="lsw")
    with pytest.raises(ConfigError, match="network"):
        build_model("decoupled", 10, 1, 8, classifier="crt")
    with pytest.raises(ConfigError, match="linear classifier"):  # a cosine head has no W to normalise
        build_model("decoupled", 10, 3, 32, network="resnet20", network_kwargs={"cosine_head": True}, classifier="tau_norm")
    with pytest.raises(ConfigError, match="tau"):
        build_model("decoupled", 10, 1, 8, **NET, classifier="tau_norm", tau=-1)


def _cfg(name, model, epochs, val=10, sampler="instance"):
    return build_config({
        "name": name, "data": {"source": "digits", "profile": "exp", "ratio": 10, "val_per_class": val,
                               "group_policy": "shots", "sampler": sampler},
        "model": model, "method": {"name": "ce"}, "schedule": {"name": "cosine", "warmup_epochs": 0},
        "train": {"epochs": epochs, "batch_size": 64, "device": "cpu", "tensorboard": False, "progress": False,
                  "report_plots": False, "eval_every": 0}})


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    run = fit(_cfg("ce", {"name": "convnet_small", "kwargs": {"width": 16}}, 4), out / "ce", quiet=True)
    return run


def test_crt_trains_the_classifier_alone_and_bn_statistics_follow_only_when_asked(stage1_run, tmp_path):
    ckpt = str(stage1_run / "checkpoints/last.safetensors")
    stage1 = load_file(ckpt)
    for bn_stats in (True, False):
        model = {"name": "decoupled", "kwargs": {**NET, "checkpoint": ckpt, "classifier": "crt", "bn_stats": bn_stats}}
        trainer = Trainer(_cfg(f"crt{bn_stats}", model, 2, sampler="class_aware"), tmp_path / f"crt{bn_stats}", quiet=True)
        assert trainer.steps == sum(trainer.data.info.class_counts) // 64
        fc_before = trainer.method.student.fc.weight.clone()
        trainer.run()
        trainer.close()
        after = load_file(trainer.run_dir / "checkpoints/last.safetensors")
        weights = [k for k in stage1 if "running" not in k and "num_batches" not in k]
        assert all(torch.equal(after[f"network.{k}"], stage1[k]) for k in weights)  # the representation is frozen
        stats_moved = not torch.equal(after["network.stage1.1.running_mean"], stage1["stage1.1.running_mean"])
        assert stats_moved == bn_stats
        assert not torch.equal(after["fc.weight"], fc_before)


def test_untrained_classifiers_record_what_they_chose_and_eval_repeats_them(stage1_run, tmp_path):
    from taildistill.evaluation import evaluate_target

    ckpt = str(stage1_run / "checkpoints/last.safetensors")
    ce_top1 = json.loads((stage1_run / "final.json").read_text())["test"]["top1"]
    for classifier in ("tau_norm", "ncm"):
        model = {"name": "decoupled", "kwargs": {**NET, "checkpoint": ckpt, "classifier": classifier}}
        run = fit(_cfg(classifier, model, 0), tmp_path / classifier, quiet=True)
        final = json.loads((run / "final.json").read_text())
        assert final["classifier"]["classifier"] == classifier
        if classifier == "tau_norm":
            assert final["classifier"]["tau_chosen_on"] == "val" and final["classifier"]["tau"] in TAU_GRID
        assert final["test"]["top1"] != ce_top1  # another classifier than the stage-1 one
        again = evaluate_target(run, None, [])
        assert again["metrics"]["top1"] == pytest.approx(final["test"]["top1"])  # from the run alone (no stage-1 file read)


def test_untrainable_or_unselectable_setups_are_refused_before_training(stage1_run, tmp_path):
    ckpt = str(stage1_run / "checkpoints/last.safetensors")
    tau = {"name": "decoupled", "kwargs": {**NET, "checkpoint": ckpt, "classifier": "tau_norm", "tau": "val"}}
    with pytest.raises(ConfigError, match="validation split"):
        Trainer(_cfg("t", tau, 0, val=0), tmp_path / "t", quiet=True)
    ncm = {"name": "decoupled", "kwargs": {**NET, "checkpoint": ckpt, "classifier": "ncm"}}
    with pytest.raises(ConfigError, match="nothing to train"):
        Trainer(_cfg("n", ncm, 3), tmp_path / "n", quiet=True)
    assert not (tmp_path / "t" / "final.json").exists() and not (tmp_path / "n" / "final.json").exists()


def test_a_suite_run_builds_on_its_stage1_run_seed_for_seed(tmp_path):
    suite = load_suite("bkd-places-lt", CONFIGS)
    specs = {s.key: s for s in suite_specs("bkd-places-lt", suite, tmp_path, 2, False, CONFIGS, ["lws"], None, nproc=4)}
    assert set(specs) == {"all/ce/seed0", "all/ce/seed1", "all/lws/seed0", "all/lws/seed1"}  # --only pulls stage 1 in
    lws = specs["all/lws/seed1"]
    assert lws.deps == ["all/ce/seed1"]
    assert f"model.kwargs.checkpoint={tmp_path / 'all/ce/seed1/checkpoints/last.safetensors'}" in lws.overrides
    cfg = load_config(lws.config_files, lws.overrides)
    assert cfg.train.batch_size == 256 // 4  # its own effective batch ([35]'s 256), not the suite's 128
    assert (cfg.model.name, cfg.model.kwargs["network"], cfg.model.kwargs["classifier"]) == ("decoupled", "resnet152", "lws")
    # the smoke replaces the network, and keeps the stage-1 checkpoint its overrides set
    tiny = {s.key: s for s in suite_specs("bkd-places-lt", suite, tmp_path, 1, True, CONFIGS, ["crt"], None)}
    cfg = load_config(tiny["all/crt/seed0"].config_files, tiny["all/crt/seed0"].overrides)
    assert cfg.model.kwargs["network"] == "resnet10" and cfg.model.kwargs["checkpoint"].endswith("all/ce/seed0/checkpoints/last.safetensors")
    bad = {**suite, "runs": [{"name": "crt", "config": "places_lt_bkd/crt.yaml", "stage1": "ce"}, *suite["runs"]]}
    (tmp_path / "reproduce").mkdir()
    (tmp_path / "reproduce" / "bad.yaml").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="stage1 'ce' that is not an earlier run"):
        load_suite("bad", tmp_path)


def test_the_decoupled_recipes_are_the_reference_codes():
    # [35]'s code: config/ImageNet_LT/cls_crt.yaml, cls_lws.yaml; iNaturalist18/cls_crt.yaml; Places_LT/cls_*.yaml
    crt = load_config(CONFIGS / "imagenet_lt_bkd" / "crt.yaml")
    assert (crt.train.epochs, crt.train.batch_size, crt.optim.lr, crt.optim.weight_decay, crt.schedule.name) == \
        (10, 512, 0.2, 5e-4, "cosine")
    assert (crt.data.sampler, crt.optim.decay_norm_and_bias, crt.model.kwargs["classifier"]) == ("class_aware", True, "crt")
    assert load_config(CONFIGS / "imagenet_lt_bkd" / "lws.yaml").train.epochs == 5
    assert load_config(CONFIGS / "imagenet_lt_bkd" / "tau_norm.yaml").model.kwargs["tau"] == "val"
    places = load_config(CONFIGS / "places_lt_bkd" / "crt.yaml")
    assert (places.train.epochs, places.train.batch_size, places.optim.lr, places.optim.lr_scale) == (10, 256, 0.1, {})
    inat = load_suite("bkd-inaturalist", CONFIGS)
    assert next(r for r in inat["runs"] if r["name"] == "crt")["overrides"] == ["train.epochs=30"]
    assert load_config(CONFIGS / "inat18_bkd" / "crt.yaml").optim.weight_decay == 1e-4
    for suite in ("bkd-imagenet-lt", "bkd-inaturalist", "bkd-places-lt"):  # cRT's paper row is Mixup + cRT
        assert not any(k.startswith("crt") for cell in load_suite(suite, CONFIGS)["paper"].values() for k in cell)


def test_a_run_whose_stage1_weights_changed_since_it_started_is_trained_again(tmp_path):
    import yaml

    from taildistill.scheduler import RunSpec, plan_action

    net, ckpt = _stage1(tmp_path)
    config = tmp_path / "ncm.yaml"
    model = {"name": "decoupled", "kwargs": {**NET, "checkpoint": ckpt, "classifier": "ncm"}}
    config.write_text(yaml.safe_dump({"name": "ncm", "data": {"source": "digits", "ratio": 10}, "model": model,
                                      "train": {"epochs": 0, "device": "cpu", "progress": False,
                                                "tensorboard": False, "report_plots": False}}))
    spec = RunSpec("ncm", tmp_path / "ncm", [str(config)], [])
    fit(load_config(spec.config_files), spec.run_dir, quiet=True)
    final = json.loads((spec.run_dir / "final.json").read_text())
    assert final["init_files"]["model.kwargs.checkpoint"]["path"] == str(Path(ckpt).resolve())
    assert plan_action(spec) == ("reuse", "")
    with torch.no_grad():  # stage 1 trained again: other weights in the same file
        net.fc.weight.add_(1.0)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, ckpt)
    action, why = plan_action(spec)
    assert action == "overwrite" and "model.kwargs.checkpoint" in why


def test_decoupled_seeds_are_one_configuration_and_a_moved_suite_folder_is_reused(tmp_path):
    """A decoupled run is known by what its stage-1 file is, not where it lies: seed aside, by the
    stage-1 run's experiment (`taildistill report` puts its seeds together), with its seed by the
    file's bytes (a suite moved elsewhere reuses it)."""
    import shutil

    import yaml

    from taildistill.report import group_by_config, read_run
    from taildistill.scheduler import RunSpec, plan_action

    base = {"data": {"source": "digits", "ratio": 10, "val_per_class": 5}, "method": {"name": "ce"},
            "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "progress": False, "tensorboard": False,
                      "report_plots": False, "eval_every": 0}}
    (tmp_path / "ce.yaml").write_text(yaml.safe_dump({**base, "name": "ce", "model": {"name": "convnet_small", "kwargs": {"width": 16}}}))
    (tmp_path / "ncm.yaml").write_text(yaml.safe_dump({**base, "name": "ncm", "model": {"name": "decoupled", "kwargs": {**NET, "classifier": "ncm"}},
                                                       "train": {**base["train"], "epochs": 0}}))

    def specs(suite):
        out = []
        for seed in (0, 1):
            stage1 = RunSpec(f"ce{seed}", suite / f"ce/seed{seed}", [str(tmp_path / "ce.yaml")], [f"train.seed={seed}"])
            ckpt = stage1.run_dir / "checkpoints/last.safetensors"
            out += [stage1, RunSpec(f"ncm{seed}", suite / f"ncm/seed{seed}", [str(tmp_path / "ncm.yaml")],
                                    [f"train.seed={seed}", f"model.kwargs.checkpoint={ckpt}"])]
        return out

    for spec in specs(tmp_path / "suite"):
        fit(load_config(spec.config_files, spec.overrides), spec.run_dir, quiet=True)
    ncm = [read_run(tmp_path / f"suite/ncm/seed{s}") for s in (0, 1)]
    assert ncm[0]["test"]["top1"] != ncm[1]["test"]["top1"]  # each on its own seed's stage 1
    assert [(label, [r["seed"] for r in rs]) for label, rs in group_by_config(ncm)] == [("ncm", [0, 1])]
    shutil.move(tmp_path / "suite", tmp_path / "moved")
    assert [plan_action(s) for s in specs(tmp_path / "moved")] == [("reuse", "")] * 4
    swapped = specs(tmp_path / "moved")[1]  # seed 0's classifier pointed at seed 1's stage 1: another experiment
    swapped.overrides[-1] = f"model.kwargs.checkpoint={tmp_path / 'moved/ce/seed1/checkpoints/last.safetensors'}"
    action, why = plan_action(swapped)
    assert action == "overwrite" and "other contents of model.kwargs.checkpoint" in why
