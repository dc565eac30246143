"""Logit-distillation criteria: small self-contained modules, one per loss.

A criterion owns its parameters (its ``Params`` dataclass), its buffers (class weights, groups,
priors) and, where the loss needs statistics over whole splits, a ``prepare``. It maps
(student logits (B, C), teacher logits (B, C), batch, epoch) to a scalar loss. A logit
distillation method holds one criterion; DeiT-LT's DIST head holds one chosen by config, so any
criterion composes with DeiT-LT's out-of-distribution distillation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Hashable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.groups import make_groups
from ..errors import ConfigError
from ..losses import (
    bkd_loss, cckd_loss, class_balanced_weights, dist_loss, dive_loss, dkd_loss, inverse_frequency_weights,
    kd_loss, ltkd_loss, weighted_kd_loss,
)
from ..registry import Registry
from ..typed import from_dict
from .base import Batch, TeacherOutputs, linear_ramp

CRITERIA: Registry = Registry("distillation criterion")


def parse_chosen_criterion(params, name_key: str, params_key: str):
    """A method that holds a criterion chosen by config (`params.<name_key>`, a registered name)
    gets that criterion's own parameters from the mapping at `params.<params_key>`, validated
    against its dataclass (an unknown key names the valid ones). Returns `params`."""
    criterion = CRITERIA.get(getattr(params, name_key))
    setattr(params, params_key, from_dict(criterion.Params, getattr(params, params_key), f"method.{params_key}"))
    return params


def build_chosen_criterion(params, name_key: str, params_key: str, info) -> "Criterion":
    """The criterion named by `params.<name_key>`, built from its parameters at `params.<params_key>`."""
    name, own = getattr(params, name_key), getattr(params, params_key)
    criterion = CRITERIA.get(name)
    if not isinstance(own, criterion.Params):
        raise ConfigError(f"method.{params_key} must hold the parameters of criterion '{name}'")
    return criterion(own, info)


def _check_temperature(prefix: str, t: float) -> None:
    if not t > 0:
        raise ConfigError(f"config key '{prefix}.temperature' must be > 0, got {t}")


class Criterion(nn.Module):
    """Base: `forward(student_logits, teacher_logits, batch, epoch) -> scalar`."""

    Params: ClassVar[type]
    uses_epoch: ClassVar[bool] = True  # False: forward ignores its epoch argument

    def __init__(self, params, info):
        super().__init__()
        self.params = params

    def epoch_key(self, epoch: int) -> Hashable:
        """What of `epoch` this loss depends on (see :meth:`Method.graph_key`): the epoch itself
        unless the criterion ignores it or says what of it matters."""
        return epoch if self.uses_epoch else None

    def prepare(self, teacher_on: TeacherOutputs, view=None) -> None:
        """Statistics over whole splits before training (none by default)."""

    def forward(self, s: torch.Tensor, t: torch.Tensor, batch: Batch, epoch: int) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class KDParams:
    temperature: float = 4.0  # T of softmax(z / T); the KL term is scaled by T^2 (Hinton et al.)

    def validate(self, prefix: str) -> None:
        _check_temperature(prefix, self.temperature)


@CRITERIA.register("kd")
class KD(Criterion):
    """T^2 KL(softmax(t/T) || softmax(s/T)) (Hinton et al. 2015)."""

    uses_epoch = False

    Params = KDParams

    def forward(self, s, t, batch, epoch):
        return kd_loss(s, t, self.params.temperature)


@dataclass
class WKDParams(KDParams):
    temperature: float = 1.0


@CRITERIA.register("wkd")
class WKD(Criterion):
    """KD terms weighted by the label's inverse class frequency (normalised to sum to C)."""

    uses_epoch = False

    Params = WKDParams

    def __init__(self, params, info):
        super().__init__(params, info)
        self.register_buffer("class_weights", inverse_frequency_weights(info.class_counts), persistent=False)

    def forward(self, s, t, batch, epoch):
        return weighted_kd_loss(s, t, batch["y"], self.class_weights, self.params.temperature)


@dataclass
class BKDParams(KDParams):
    temperature: float = 2.0  # BKD Sec. 4.1: T = 2
    bkd_beta: float = 0.9999  # effective-number beta of the class weights (BKD Eq. 2)
    bkd_start_epoch: int = 0  # plain KD before this epoch, the class-balanced KL from it on (DRW style)

    def validate(self, prefix: str) -> None:
        if not 0 < self.bkd_beta < 1:
            raise ConfigError(f"config key '{prefix}.bkd_beta' must be in (0, 1), got {self.bkd_beta}")


@CRITERIA.register("bkd")
class BKD(Criterion):
    """Class-balanced KL: T^2 KL(normalise(w * softmax(t/T)) || softmax(s/T)), w the
    effective-number weights (BKD Eq. 8)."""

    Params = BKDParams

    def __init__(self, params, info):
        super().__init__(params, info)
        self.register_buffer("class_weights", class_balanced_weights(info.class_counts, params.bkd_beta), persistent=False)

    def epoch_key(self, epoch: int) -> Hashable:
        return epoch >= self.params.bkd_start_epoch

    def forward(self, s, t, batch, epoch):
        p = self.params
        if epoch < p.bkd_start_epoch:
            return kd_loss(s, t, p.temperature)
        return bkd_loss(s, t, self.class_weights, p.temperature)


@dataclass
class LTKDParams(KDParams):
    temperature: float = 4.0
    ltkd_alpha: float = 1.0  # weight of the cross-group KL (LTKD Eq. 14)
    ltkd_beta: float = 1.0  # weight of the summed within-group KLs (LTKD Eq. 14)
    ltkd_groups: Literal["thirds", "shots", "data"] = "thirds"  # the class groups; data = the reporting policy (e.g. cuts)


@CRITERIA.register("ltkd")
class LTKD(Criterion):
    """Rebalanced cross-group KL + equally weighted within-group KLs (LTKD Eq. 9-14)."""

    uses_epoch = False

    Params = LTKDParams

    def __init__(self, params, info):
        super().__init__(params, info)
        groups = info.groups if params.ltkd_groups == "data" else make_groups(params.ltkd_groups, info.class_counts)
        # group ids compacted to 0..G-1 once, so the loss never has to find them on the device
        used = sorted(set(groups.class_to_group))
        self.num_groups = len(used)
        self.register_buffer("class_groups", torch.tensor([used.index(g) for g in groups.class_to_group], dtype=torch.long),
                             persistent=False)

    def forward(self, s, t, batch, epoch):
        p = self.params
        return ltkd_loss(s, t, self.class_groups, p.ltkd_alpha, p.ltkd_beta, p.temperature, num_groups=self.num_groups)


@dataclass
class CCKDParams(KDParams):
    temperature: float = 2.0
    cckd_prior_source: Literal["val", "balanced_train"] = "val"  # where p^t(y) is estimated (CCKD Eq. 9)


@CRITERIA.register("cckd")
class CCKD(Criterion):
    """Class-conditional KD on prior-corrected logits (CCKD Eq. 3-9). The teacher prior p^t(y)
    (Eq. 9, the teacher's mean prediction on a test-distributed set) and the student's training
    prior p_tr(y) (Eq. 4) are estimated in `prepare` and saved with the method's state."""

    uses_epoch = False

    Params = CCKDParams

    def __init__(self, params, info):
        super().__init__(params, info)
        counts = torch.tensor(info.class_counts, dtype=torch.float32)
        prior = counts / counts.sum()
        self.register_buffer("teacher_prior", prior.clone(), persistent=True)
        self.register_buffer("student_train_prior", prior.clone(), persistent=True)

    @torch.no_grad()
    def prepare(self, teacher_on, view=None) -> None:
        zt, _ = teacher_on(self.params.cckd_prior_source, "logits", view)  # (N, C) on a test-distributed set
        self.teacher_prior.copy_(torch.softmax(zt, 1).mean(0).clamp_min(1e-8))
        zt_train, _ = teacher_on("train", "logits", view)
        q = torch.softmax((zt_train - self.teacher_prior.log()[None, :]) / self.params.temperature, 1)
        self.student_train_prior.copy_(q.mean(0).clamp_min(1e-8))  # Eq. 4

    def forward(self, s, t, batch, epoch):
        return cckd_loss(s, t, self.teacher_prior, self.student_train_prior, None, self.params.temperature)


@dataclass
class DKDParams(KDParams):
    temperature: float = 4.0
    dkd_alpha: float = 1.0  # weight of the target-class term (TCKD)
    dkd_beta: float = 8.0  # weight of the non-target-class term (NCKD)
    dkd_warmup: int = 20  # the DKD term ramps up linearly over these epochs (0 = off)


@CRITERIA.register("dkd")
class DKD(Criterion):
    """Decoupled KD: alpha TCKD + beta NCKD (Zhao et al. 2022), ramped up over `dkd_warmup` epochs."""

    Params = DKDParams

    def epoch_key(self, epoch: int) -> Hashable:
        return linear_ramp(epoch, self.params.dkd_warmup)

    def forward(self, s, t, batch, epoch):
        p = self.params
        return linear_ramp(epoch, p.dkd_warmup) * dkd_loss(s, t, batch["y"], p.dkd_alpha, p.dkd_beta, p.temperature)


@dataclass
class DISTParams(KDParams):
    temperature: float = 1.0
    dist_beta: float = 1.0  # weight of the inter-class relation
    dist_gamma: float = 1.0  # weight of the intra-class relation


@CRITERIA.register("dist")
class DIST(Criterion):
    """DIST: inter- and intra-class Pearson relations (Huang et al. 2022)."""

    uses_epoch = False

    Params = DISTParams

    def forward(self, s, t, batch, epoch):
        p = self.params
        return dist_loss(s, t, p.dist_beta, p.dist_gamma, p.temperature)


@dataclass
class DiVEParams(KDParams):
    temperature: float = 3.0
    dive_power: float = 0.5  # the softened teacher is flattened by this power (< 1 flattens)


@CRITERIA.register("dive")
class DiVE(Criterion):
    """DiVE: KL to a power-flattened softened teacher (He et al. 2021)."""

    uses_epoch = False

    Params = DiVEParams

    def forward(self, s, t, batch, epoch):
        return dive_loss(s, t, self.params.temperature, self.params.dive_power)


@dataclass
class HardParams:
    SIGNED: ClassVar[frozenset[str]] = frozenset({"drw_epoch"})  # may be negative (see base.check_signs)

    drw_epoch: int = -1  # from this epoch on, each sample is weighted by the effective-number weight of y_t (-1 = never)
    drw_beta: float = 0.9999  # effective-number beta of those weights

    def validate(self, prefix: str) -> None:
        if not 0 < self.drw_beta < 1:
            raise ConfigError(f"config key '{prefix}.drw_beta' must be in (0, 1), got {self.drw_beta}")


@CRITERIA.register("hard")
class Hard(Criterion):
    """Hard distillation: CE on the teacher's argmax labels y_t (DeiT), re-weighted from
    `drw_epoch` by the effective-number weight of y_t (DeiT-LT's DRW on the DIST head)."""

    Params = HardParams

    def __init__(self, params, info):
        super().__init__(params, info)
        self.register_buffer("class_weights", class_balanced_weights(info.class_counts, params.drw_beta), persistent=False)

    def epoch_key(self, epoch: int) -> Hashable:
        return 0 <= self.params.drw_epoch <= epoch

    def forward(self, s, t, batch, epoch):
        weight = self.class_weights if self.epoch_key(epoch) else None
        return F.cross_entropy(s.float(), t.argmax(1), weight=weight)
