"""RIDE (Wang et al., ICLR 2021) and distillation inside it (BKD Sec. 5.8, Table 8: RIDE-BKD).

RIDE trains a multi-expert network (model ``ride_resnet32``): every expert gets its own
supervised loss (LDAM with deferred re-weighting in RIDE's CIFAR recipe) and a distribution-aware
diversity term that pushes it away from the experts' mean,

    L = sum_e [ L_sup(z_e, y) - lambda * Tbar^2 KL(softmax(zbar/T) || softmax(z_e/T)) ],

with T a number, or per class once deferred re-weighting is on (head classes at a higher
temperature; see :func:`ride_diversity_temperatures`). lambda = 0.2 is RIDE's CIFAR value (its
code's `additional_diversity_factor: -0.2`; here the weight is positive and the term subtracted).

``ride_distill`` adds a distillation criterion, the teacher being a trained (multi-expert)
network's prediction: BKD "deploys BKD in" RIDE's framework (Sec. 5.8) without saying how; by
default we apply it as RIDE applies its individual loss, to each expert, with the teacher's
prediction (its experts' mean) as the target of each. RIDE's own distillation (from a 6-expert
RIDE teacher) distils the experts' mean instead: `kd_target: mean`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..errors import ConfigError
from ..losses import ride_diversity_loss, ride_diversity_temperatures
from ..typed import from_dict, pick
from .base import Batch, Method, MethodOutput, SupervisedLoss, SupervisedParams, SupLoss
from .criteria import build_chosen_criterion, parse_chosen_criterion


@dataclass
class RIDEParams(SupervisedParams):
    sup_loss: SupLoss = "ldam"  # each expert's own loss: LDAM (RIDE's CIFAR recipe; drw_epoch adds DRW)
    diversity_weight: float = 0.2  # lambda: the diversity KL is subtracted with this weight (RIDE: 0.2; at 0
    # RIDE's code applies the supervised loss to the experts' mean instead, ours stays per expert)
    diversity_temperature: float = 1.0  # T0 of the diversity KL (RIDE's base_diversity_temperature)
    diversity_reweight: float = 0.05  # f of the per-class temperatures used once DRW is on (RIDE's reweight_factor)

    def validate(self, prefix: str) -> None:  # (the supervised fields: SupervisedParams.validate, run by from_dict)
        if not self.diversity_temperature > 0:
            raise ConfigError(f"config key '{prefix}.diversity_temperature' must be > 0, got {self.diversity_temperature}")
        if not 0 <= self.diversity_reweight < 1:  # at f >= 1 the rarest classes' temperature reaches 0
            raise ConfigError(f"config key '{prefix}.diversity_reweight' must be in [0, 1), got {self.diversity_reweight}")


class RIDE(Method):
    """RIDE: each expert's supervised loss minus the weighted diversity KL to the experts' mean."""

    Params = RIDEParams

    def __init__(self, params, student, teacher, info):
        super().__init__(params, student, teacher, info)
        if not getattr(student, "num_experts", 0):  # refused when built, not at the first step
            raise ConfigError("RIDE needs a multi-expert student (model.name: ride_resnet20 / ride_resnet32), "
                              f"got {type(student).__name__}")
        self.sup = SupervisedLoss(pick(SupervisedParams, params), info.class_counts, student)
        self.register_buffer("diversity_temperatures", ride_diversity_temperatures(
            info.class_counts, params.diversity_temperature, params.diversity_reweight), persistent=False)

    def reweighted(self, epoch: int) -> bool:
        """Whether deferred re-weighting is on (RIDE switches the per-class temperatures with it)."""
        return 0 <= self.params.drw_epoch <= epoch

    def graph_key(self, epoch: int):
        return self.sup.epoch_key(epoch), self.reweighted(epoch)

    def expert_outputs(self, batch: Batch) -> tuple[dict, torch.Tensor]:
        """The student's outputs and its experts' logits (B, E, C)."""
        out = self.student_outputs(batch["x"])
        return out, out["expert_logits"]

    def ride_terms(self, expert_logits, batch: Batch, epoch: int) -> dict:
        p = self.params
        sup = sum(self.sup(expert_logits[:, e], batch, epoch) for e in range(expert_logits.shape[1]))
        temperature = self.diversity_temperatures if self.reweighted(epoch) else p.diversity_temperature
        return {"sup": p.sup_weight * sup, "diversity": -p.diversity_weight * ride_diversity_loss(expert_logits, temperature)}

    def loss_terms(self, batch: Batch, epoch: int) -> MethodOutput:
        out, expert_logits = self.expert_outputs(batch)
        return MethodOutput(self.ride_terms(expert_logits, batch, epoch), out["logits"])


@dataclass
class RIDEDistillParams(RIDEParams):
    kd_weight: float = 1.0  # weight of the distillation term (summed over experts)
    kd_criterion: str = "bkd"  # any registered criterion; bkd = RIDE-BKD (BKD Table 8)
    kd: Any = field(default_factory=dict)  # that criterion's parameters, e.g. {temperature: 2.0}
    kd_target: Literal["experts", "mean"] = "experts"  # what is distilled: every expert (our RIDE-BKD), or
    # the experts' mean prediction (RIDE's own distillation from a larger RIDE teacher)


class RIDEDistill(RIDE):
    """RIDE + a distillation criterion on every expert toward the teacher's prediction (RIDE-BKD)."""

    Params = RIDEDistillParams
    needs_teacher = True

    @classmethod
    def parse_params(cls, raw: dict) -> RIDEDistillParams:
        return parse_chosen_criterion(from_dict(RIDEDistillParams, raw, "method"), "kd_criterion", "kd")

    def __init__(self, params, student, teacher, info):
        super().__init__(params, student, teacher, info)
        self.criterion = build_chosen_criterion(params, "kd_criterion", "kd", info)

    def prepare(self, teacher_on) -> None:
        self.criterion.prepare(teacher_on)

    def graph_key(self, epoch: int):
        return super().graph_key(epoch), self.criterion.epoch_key(epoch)

    def loss_terms(self, batch: Batch, epoch: int) -> MethodOutput:
        out, expert_logits = self.expert_outputs(batch)
        t = self.teacher_outputs(batch["x"])["logits"]
        terms = self.ride_terms(expert_logits, batch, epoch)
        p = self.params
        students = [out["logits"]] if p.kd_target == "mean" else expert_logits.unbind(1)
        terms[p.kd_criterion] = p.kd_weight * sum(self.criterion(s, t, batch, epoch) for s in students)
        return MethodOutput(terms, out["logits"])
