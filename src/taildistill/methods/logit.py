"""Supervised training (teachers, CE-only students) and the logit-distillation methods.

Every logit-distillation method is `sup_weight * supervised(student) + kd_weight *
criterion(student logits, teacher logits)`: the methods differ only in their criterion, whose
parameters (with that method's defaults) are part of the method's own parameter dataclass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..typed import pick
from . import criteria as C
from .base import Batch, Method, MethodOutput, SupervisedLoss, SupervisedParams, SupLoss


class Supervised(Method):
    """Supervised training only (teachers, CE-only students); sup_loss picks CE/focal/CB/LDAM/LA/BSCE/VS/LADE."""

    Params = SupervisedParams

    def __init__(self, params, student, teacher, info):
        super().__init__(params, student, teacher, info)
        self.sup = SupervisedLoss(pick(SupervisedParams, params), info.class_counts, student)

    def graph_key(self, epoch: int):
        return self.sup.epoch_key(epoch)

    def loss_terms(self, batch: Batch, epoch: int) -> MethodOutput:
        out = self.student_outputs(batch["x"])
        return MethodOutput({"sup": self.params.sup_weight * self.sup(out["logits"], batch, epoch)}, out["logits"])


@dataclass
class LogitParams(SupervisedParams):
    kd_weight: float = 1.0  # weight of the distillation term


class LogitDistill(Method):
    """sup_weight * supervised(student) + kd_weight * criterion(student, teacher)."""

    Params: ClassVar[type] = LogitParams
    Criterion: ClassVar[type[C.Criterion]]
    criterion_name: ClassVar[str]
    needs_teacher = True

    def __init__(self, params, student, teacher, info):
        super().__init__(params, student, teacher, info)
        self.sup = SupervisedLoss(pick(SupervisedParams, params), info.class_counts, student)
        self.criterion = self.Criterion(pick(self.Criterion.Params, params), info)

    def prepare(self, teacher_on) -> None:
        self.criterion.prepare(teacher_on)

    def graph_key(self, epoch: int):
        return self.sup.epoch_key(epoch), self.criterion.epoch_key(epoch)

    def loss_terms(self, batch: Batch, epoch: int) -> MethodOutput:
        p = self.params
        out = self.student_outputs(batch["x"])
        t = self.teacher_outputs(batch["x"])["logits"]
        terms = {"sup": p.sup_weight * self.sup(out["logits"], batch, epoch),
                 self.criterion_name: p.kd_weight * self.criterion(out["logits"], t, batch, epoch)}
        return MethodOutput(terms, out["logits"])


# One class per method: its parameters are the supervised ones, kd_weight and its criterion's.
# (Field order: supervised, kd_weight, then the criterion's; a later base's defaults win.)

@dataclass
class KDMethodParams(C.KDParams, LogitParams):
    pass


class KD(LogitDistill):
    """Hinton KD: supervised + T^2 KL(teacher || student)."""

    Params = KDMethodParams
    Criterion = C.KD
    criterion_name = "kd"


@dataclass
class WKDMethodParams(C.WKDParams, LogitParams):
    pass


class WKD(LogitDistill):
    """Weighted KD: KD terms weighted by the label's inverse class frequency."""

    Params = WKDMethodParams
    Criterion = C.WKD
    criterion_name = "wkd"


@dataclass
class BKDMethodParams(C.BKDParams, LogitParams):
    pass


class BKD(LogitDistill):
    """BKD: instance-balanced CE + class-balanced (effective-number) KL (BKD Eq. 8)."""

    Params = BKDMethodParams
    Criterion = C.BKD
    criterion_name = "bkd"


@dataclass
class LTKDMethodParams(C.LTKDParams, LogitParams):
    pass


class LTKD(LogitDistill):
    """LTKD: rebalanced cross-group + equally weighted within-group KL (LTKD Eq. 14)."""

    Params = LTKDMethodParams
    Criterion = C.LTKD
    criterion_name = "ltkd"


@dataclass
class CCKDMethodParams(C.CCKDParams, LogitParams):
    sup_loss: SupLoss = "la"  # CCKD Eq. 8: the logit-adjustment loss


class CCKD(LogitDistill):
    """CCKD: LA loss + class-conditional KD on prior-corrected logits (CCKD Eq. 8)."""

    Params = CCKDMethodParams
    Criterion = C.CCKD
    criterion_name = "cckd"


@dataclass
class DKDMethodParams(C.DKDParams, LogitParams):
    pass


class DKD(LogitDistill):
    """DKD: target-class + non-target-class decoupled KD."""

    Params = DKDMethodParams
    Criterion = C.DKD
    criterion_name = "dkd"


@dataclass
class DISTMethodParams(C.DISTParams, LogitParams):
    pass


class DIST(LogitDistill):
    """DIST: inter- and intra-class Pearson relation distillation."""

    Params = DISTMethodParams
    Criterion = C.DIST
    criterion_name = "dist"


@dataclass
class DiVEMethodParams(C.DiVEParams, LogitParams):
    sup_loss: SupLoss = "bsce"  # DiVE: balanced-softmax CE


class DiVE(LogitDistill):
    """DiVE: balanced-softmax CE + KL to a power-flattened teacher."""

    Params = DiVEMethodParams
    Criterion = C.DiVE
    criterion_name = "dive"
