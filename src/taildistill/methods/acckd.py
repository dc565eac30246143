"""ACCKD (CCKD Sec. 3.3-3.4, Alg. 1): CCKD on the training batch and on a class-balanced
synthetic batch, a teacher-weighted pair loss on the synthetic batch, and cosine feature
imitation through a linear projector.

L = L_sup + L_sup_mix + a1 (L_cckd + L_cckd_mix) + a2 (L_fi + L_fi_mix)   (Eq. 16-17)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..errors import ConfigError
from ..losses import cosine_imitation_loss, pair_supervised_loss
from ..typed import pick
from .base import Batch, BatchRequest, Method, MethodOutput, SupervisedLoss, SupervisedParams, SupLoss
from .criteria import CCKD, CCKDParams


@dataclass
class ACCKDParams(CCKDParams, SupervisedParams):
    sup_loss: SupLoss = "la"  # CCKD Eq. 8: the logit-adjustment loss
    temperature: float = 2.0
    alpha1: float = 1.0  # weight of both CCKD terms (Eq. 17)
    alpha2: float = 2.0  # weight of both feature-imitation terms (0 disables the projector)
    mix_alpha: float = 0.5  # Beta(a, a) of the balanced synthetic batch's lambda (folded to >= 0.5)
    feature: str = "pooled"  # which named feature both models expose for imitation


class ACCKD(Method):
    """ACCKD: CCKD + balanced mixup/cutmix synthetic batch + cosine feature imitation (CCKD Eq. 12-17)."""

    Params = ACCKDParams
    needs_teacher = True

    def __init__(self, params, student, teacher, info):
        super().__init__(params, student, teacher, info)
        self.sup = SupervisedLoss(pick(SupervisedParams, params), info.class_counts, student)
        self.cckd = CCKD(pick(CCKDParams, params), info)
        self.projector: nn.Module | None = None
        if params.alpha2 > 0:
            s_dim = getattr(student, "feature_dim", None)
            t_dim = getattr(teacher, "feature_dim", None)
            if s_dim is None or t_dim is None:
                raise ConfigError("acckd feature imitation needs models with `feature_dim`; set method.alpha2=0")
            self.projector = nn.Linear(s_dim, t_dim)
        inv = 1.0 / self.sup.class_counts
        self.register_buffer("fi_class_weights", inv / inv.mean(), persistent=False)

    def batch_request(self) -> BatchRequest:
        return BatchRequest(balanced_mix=True, balanced_mix_alpha=self.params.mix_alpha)

    def prepare(self, teacher_on) -> None:
        self.cckd.prepare(teacher_on)

    def graph_key(self, epoch: int):
        return self.sup.epoch_key(epoch), self.cckd.epoch_key(epoch)

    def loss_terms(self, batch: Batch, epoch: int) -> MethodOutput:
        p = self.params
        f = p.feature
        out = self.student_outputs(batch["x"])
        t_out = self.teacher_outputs(batch["x"])
        out_mix = self.student_outputs(batch["x_mix"])
        t_mix = self.teacher_outputs(batch["x_mix"])
        log_prior = self.sup.class_prior.log()
        terms = {
            "sup": p.sup_weight * self.sup(out["logits"], batch, epoch),
            "sup_mix": p.sup_weight * pair_supervised_loss(out_mix["logits"], t_mix["logits"], batch["y_a"], batch["y_b"], log_prior),
            "cckd": p.alpha1 * self.cckd(out["logits"], t_out["logits"], batch, epoch),
            "cckd_mix": p.alpha1 * self.cckd(out_mix["logits"], t_mix["logits"], batch, epoch),
        }
        if self.projector is not None:
            w = self.fi_class_weights[batch["y"]]  # Eq. 15's 1/|D_y|, normalised to mean 1 over classes
            terms["fi"] = p.alpha2 * cosine_imitation_loss(self.projector(out["features"][f].float()), t_out["features"][f], w)
            terms["fi_mix"] = p.alpha2 * cosine_imitation_loss(self.projector(out_mix["features"][f].float()), t_mix["features"][f])
        return MethodOutput(terms, out["logits"])
