import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from taildistill.experiment import build_config
from taildistill.engine.trainer import fit
from taildistill.errors import ConfigError
from taildistill.eval.calibration import fit_temperature
from taildistill.models import build_model

from conftest import finished


def digits_cfg(name, model, method=None, epochs=0, **train):
    raw = {"name": name,
           "data": {"source": "digits", "profile": "exp", "ratio": 10, "val_per_class": 10, "group_policy": "shots"},
           "model": model, "method": method or {"name": "ce", "sup_loss": "la"},
           "schedule": {"name": "constant", "warmup_epochs": 0},
           "train": {"epochs": epochs, "batch_size": 64, "device": "cpu", "tensorboard": False, "progress": False, **train}}
    return build_config(raw)


BACKBONE = {"backbone": "registry:convnet_small", "backbone_kwargs": {"width": 16}}


def test_temperature_scaling_recovers_known_temperature():
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=g) * 2
    labels = torch.multinomial(F.softmax(true_logits, 1), 1, generator=g).squeeze(1)
    t = fit_temperature(true_logits * 3.0, labels)  # over-confident by 3x
    assert t == pytest.approx(3.0, rel=0.1)


def test_ncm_head_fit_from_training_features_and_calibrated(tmp_path):
    ckpt = tmp_path / "backbone.safetensors"
    net = build_model("convnet_small", 1, 1, 8, width=16)
    save_file({k: v.contiguous() for k, v in net.state_dict().items() if not k.startswith("fc.")}, str(ckpt))
    model = {"name": "pretrained", "kwargs": {**BACKBONE, "checkpoint": str(ckpt), "head": "ncm", "scale": 30.0}}
    run = fit(digits_cfg("ncm", model, calibrate=True), tmp_path / "ncm", quiet=True)
    final = json.loads((run / "final.json").read_text())
    w = load_file(run / "checkpoints/last.safetensors")
    assert torch.allclose(w["class_weights"].norm(dim=1), torch.ones(10), atol=1e-5)
    assert w["logit_scale"].item() == pytest.approx(30.0 / final["calibration_temperature"], rel=1e-5)
    assert final["test"]["top1"] > 30  # class means of features of a random conv net separate digits well above chance
    # the backbone came from the local checkpoint
    assert torch.equal(w["backbone.inner.stage1.0.weight"], net.state_dict()["stage1.0.weight"])


def test_zeroshot_head_uses_given_embeddings(tmp_path):
    emb = torch.randn(10, 32)
    np.save(tmp_path / "emb.npy", emb.numpy())
    m = build_model("pretrained", 10, 1, 8, **BACKBONE, head="zeroshot", class_embeddings=str(tmp_path / "emb.npy"), scale=10.0)
    x = torch.randn(4, 1, 8, 8)
    out = m.eval()(x)
    f = F.normalize(out["features"]["embedding"], dim=1)
    assert torch.allclose(out["logits"], 10.0 * f @ F.normalize(emb, dim=1).t(), atol=1e-5)
    with pytest.raises(ConfigError, match="shape"):
        np.save(tmp_path / "bad.npy", np.zeros((3, 32), np.float32))
        build_model("pretrained", 10, 1, 8, **BACKBONE, head="zeroshot", class_embeddings=str(tmp_path / "bad.npy"))


def test_linear_probe_with_la_loss_keeps_backbone_frozen(tmp_path):
    model = {"name": "pretrained", "kwargs": {**BACKBONE, "head": "linear"}}
    cfg = digits_cfg("probe", model, epochs=2)
    from taildistill.engine.trainer import Trainer

    trainer = Trainer(cfg, tmp_path / "probe", quiet=True)
    before = {k: v.clone() for k, v in trainer.method.student.state_dict().items()}
    trainer.run()
    after = trainer.method.student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(before["fc.weight"], after["fc.weight"])


def test_adaptformer_adapters_train_on_frozen_vit():
    m = build_model("pretrained", 4, 3, 32, backbone="timm:vit_tiny_patch16_224",
                    backbone_kwargs={"img_size": 32, "patch_size": 8, "depth": 2}, head="linear", adapter_dim=8)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(("adapter" in n) or n.startswith("fc.") for n in trainable)
    out = m.train()(torch.randn(2, 3, 32, 32))
    out["logits"].sum().backward()
    assert m.backbone.blocks[0].mlp.adapter.up.weight.grad is not None
    assert m.backbone.blocks[0].mlp.mlp.fc1.weight.grad is None


def test_pretrained_teacher_teaches_through_cckd(tmp_path):
    model = {"name": "pretrained", "kwargs": {**BACKBONE, "head": "ncm"}}
    teacher = fit(digits_cfg("t", model), tmp_path / "t", quiet=True)
    student = {"name": "convnet_small", "kwargs": {"width": 8}}
    cfg = digits_cfg("s", student, method={"name": "cckd"}, epochs=1)
    cfg.teacher.run = str(teacher)
    run = fit(cfg, tmp_path / "s", quiet=True)
    assert finished(run)["method"] == "cckd"


TEACHER_RECIPES = ["cifar10_lt/ce_teacher", "cifar10_lt/ldam_drw_teacher", "cifar10_lt/ldam_drw_sam_teacher",
                   "cifar10_lt/ce_sam_teacher", "cifar10_lt/la_teacher", "cifar10_lt/cb_focal_teacher",
                   "imagenet_lt/ce_teacher", "imagenet_lt/ldam_drw_teacher", "imagenet_lt/ldam_drw_sam_teacher",
                   "imagenet_lt/ce_sam_teacher", "imagenet_lt/la_teacher", "imagenet_lt/cb_focal_teacher"]


@pytest.mark.parametrize("recipe", TEACHER_RECIPES)
def test_teacher_recipes_train_at_tiny_size(recipe, tmp_path):
    """Each recipe's method, optimizer and schedule, on digits-LT at tiny size (same model family)."""
    from pathlib import Path

    from taildistill.experiment import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / f"{recipe}.yaml"
    small = "resnet20" if "cifar" in recipe else "resnet10"
    cfg = load_config(path, ["data.source=digits", "data.root=", "data.test_root=", "data.lists={}", "data.n_max=0",
                             "data.ratio=10", "data.profile=exp", "data.image_size=0", f"model.name={small}",
                             "train.epochs=2", "train.max_steps_per_epoch=2", "train.batch_size=16",
                             "train.device=cpu", "train.tensorboard=false", "train.progress=false",
                             "schedule.milestones=[1, 2]"]
                      # another model drops the recipe's model.kwargs: LDAM's cosine head is asked for again
                      + (["method.drw_epoch=1", "model.kwargs.cosine_head=true"] if "ldam" in recipe else []))
    run = fit(cfg, tmp_path / "run", quiet=True)
    rec = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rec) == 2 and all(np.isfinite(r["loss"]) for r in rec)
