"""Supervised training (teachers, CE-only students) and the logit-distillation methods.

Every distillation method here is `sup_weight * supervised + kd_weight * criterion(student,
teacher)`; the criterion is a registered pure loss, so a method differs from KD only in the
criterion and its parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..losses import (
    bkd_loss, cckd_loss, dist_loss, dive_loss, dkd_loss, inverse_frequency_weights,
    kd_loss, ltkd_loss, weighted_kd_loss,
)
from ..registry import Registry
from .base import Method, SupervisedParams

# A criterion maps (method, student logits, teacher logits, batch, epoch) -> scalar loss.
CRITERIA: Registry = Registry("distillation criterion")


@CRITERIA.register("kd")
def _kd(m, s, t, batch, epoch):
    return kd_loss(s, t, m.params.temperature)


@CRITERIA.register("wkd")
def _wkd(m, s, t, batch, epoch):
    return weighted_kd_loss(s, t, batch["y"], m.inv_freq_weights, m.params.temperature)


@CRITERIA.register("bkd")
def _bkd(m, s, t, batch, epoch):
    p = m.params
    if epoch < p.bkd_start_epoch:  # BKD on CIFAR-10: plain KD until the DRW-style switch
        return kd_loss(s, t, p.temperature)
    return bkd_loss(s, t, m.cb_weights, p.temperature)


@CRITERIA.register("ltkd")
def _ltkd(m, s, t, batch, epoch):
    p = m.params
    return ltkd_loss(s, t, m.class_groups, p.ltkd_alpha, p.ltkd_beta, p.temperature, num_groups=m.num_groups)


@CRITERIA.register("cckd")
def _cckd(m, s, t, batch, epoch):
    return cckd_loss(s, t, m.teacher_prior, m.student_train_prior, None, m.params.temperature)


@CRITERIA.register("dkd")
def _dkd(m, s, t, batch, epoch):
    p = m.params
    warm = min(1.0, (epoch + 1) / p.dkd_warmup) if p.dkd_warmup > 0 else 1.0
    return warm * dkd_loss(s, t, batch["y"], p.dkd_alpha, p.dkd_beta, p.temperature)


@CRITERIA.register("dist")
def _dist(m, s, t, batch, epoch):
    p = m.params
    return dist_loss(s, t, p.dist_beta, p.dist_gamma, p.temperature)


@CRITERIA.register("dive")
def _dive(m, s, t, batch, epoch):
    return dive_loss(s, t, m.params.temperature, m.params.dive_power)


@dataclass
class DistillParams(SupervisedParams):
    """Parameters shared by the logit-distillation methods (each method sets its defaults)."""

    criterion: str = "kd"
    kd_weight: float = 1.0
    temperature: float = 4.0
    bkd_start_epoch: int = 0  # BKD: epoch from which the class-balanced weights switch on
    ltkd_alpha: float = 1.0
    ltkd_beta: float = 1.0
    ltkd_groups: str = "thirds"  # LTKD's class groups: a group policy (thirds, shots, cuts) or "data" (the reporting policy)
    cckd_prior_source: str = "val"  # cckd: estimate p^t(y) on the validation split, or 'balanced_train'
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dkd_warmup: int = 20
    dist_beta: float = 1.0
    dist_gamma: float = 1.0
    dive_power: float = 0.5


class LogitDistill(Method):
    """sup_weight * supervised(student) + kd_weight * criterion(student, teacher)."""

    Params = DistillParams
    needs_teacher = True

    def __init__(self, params, student, teacher, info):
        super().__init__(params, student, teacher, info)
        CRITERIA.get(params.criterion)
        self.register_buffer("inv_freq_weights", inverse_frequency_weights(info.class_counts), persistent=False)
        groups = info.groups
        if params.ltkd_groups not in ("thirds", "shots", "data"):
            raise ConfigError("method.ltkd_groups must be thirds, shots or data (the data's group policy, e.g. cuts)")
        if params.ltkd_groups != "data":
            from ..data.groups import make_groups

            groups = make_groups(params.ltkd_groups, info.class_counts)
        # group ids compacted to 0..G-1 here, once, so the loss never has to find them on the device
        used = sorted(set(groups.class_to_group))
        self.num_groups = len(used)
        self.register_buffer("class_groups", torch.tensor([used.index(g) for g in groups.class_to_group], dtype=torch.long),
                             persistent=False)
        # CCKD priors (Eq. 4 and 9) are estimated by the engine through `prepare` before training.
        self.register_buffer("teacher_prior", self.class_prior.clone(), persistent=True)
        self.register_buffer("student_train_prior", self.class_prior.clone(), persistent=True)

    def loss_terms(self, batch: dict, epoch: int) -> dict:
        p = self.params
        out = self.student_outputs(batch["x"])
        t = self.teacher_outputs(batch.get("x_teacher", batch["x"]))["logits"]
        terms = {"sup": p.sup_weight * self.supervised_loss(out["logits"], batch, epoch)}
        terms[p.criterion] = p.kd_weight * CRITERIA.get(p.criterion)(self, out["logits"], t, batch, epoch)
        return {"terms": terms, "logits": out["logits"]}

    @torch.no_grad()
    def prepare(self, teacher_on) -> None:
        """Estimate what needs the teacher over whole splits before training (CCKD's priors).
        `teacher_on(which, key)` -> (outputs (N, ...), labels (N,))."""
        if self.params.criterion != "cckd":
            return
        src = "val" if self.params.cckd_prior_source == "val" else "balanced_train"
        zt, _ = teacher_on(src)  # (N, C) teacher logits on a test-distributed set (Eq. 9)
        self.teacher_prior.copy_(torch.softmax(zt, 1).mean(0).clamp_min(1e-8))
        zt_train, _ = teacher_on("train")
        q = torch.softmax((zt_train - self.teacher_prior.log()[None, :]) / self.params.temperature, 1)
        self.student_train_prior.copy_(q.mean(0).clamp_min(1e-8))  # Eq. 4


class Supervised(Method):
    """A teacher recipe or a CE-only student: only the supervised loss (CE, focal, CB, LDAM(-DRW), LA, BSCE)."""

    Params = SupervisedParams

    def loss_terms(self, batch: dict, epoch: int) -> dict:
        out = self.student_outputs(batch["x"])
        return {"terms": {"sup": self.params.sup_weight * self.supervised_loss(out["logits"], batch, epoch)},
                "logits": out["logits"]}


def distill_params(criterion: str, **defaults):
    """A params dataclass for one named method: DistillParams with its own defaults."""
    fields = {"criterion": (str, field(default=criterion))}
    for k, v in defaults.items():
        fields[k] = (type(v), field(default=v))
    from dataclasses import make_dataclass

    return make_dataclass(f"{criterion.upper()}Params", [(k, t, f) for k, (t, f) in fields.items()], bases=(DistillParams,))
