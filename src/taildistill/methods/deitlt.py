"""DeiT-LT (Rangwani et al. 2024): a ViT student with CLS and DIST tokens.

- CLS head: cross-entropy with label smoothing on the (mixup/cutmix) targets.
- DIST head: out-of-distribution distillation: the teacher sees the student's strongly augmented
  (and mixed) batch, resized to the teacher's resolution, and the DIST head learns the
  teacher's hard labels y_t; from epoch K the DIST loss is re-weighted by the effective-number
  weight of y_t (DRW on the DIST head).
- L = 1/2 L_CE(f^c(x), y) + 1/2 L_DRW(f^d(x), y_t)  (DeiT-LT Sec. 3.1); prediction = mean of heads.

`dist_criterion` other than `hard` swaps the DIST head's loss for any registered logit criterion
(e.g. `ltkd`), so DeiT-LT's OOD distillation combines with another method by a config change.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..errors import ConfigError
from ..losses import cross_entropy
from .logit import CRITERIA, DistillParams, LogitDistill


@dataclass
class DeiTLTParams(DistillParams):
    criterion: str = "kd"  # unused by the CLS head; kept for the shared criterion parameters
    label_smoothing: float = 0.1
    dist_criterion: str = "hard"  # hard (the paper) or any registered criterion (kd, ltkd, bkd, ...)
    dist_drw_epoch: int = 1100  # K: the DIST loss is re-weighted from this epoch (-1 = never)
    teacher_image_size: int = 0  # resize the teacher's view to this size (0 = the student's size)
    cls_weight: float = 0.5
    dist_weight: float = 0.5


class DeiTLT(LogitDistill):
    Params = DeiTLTParams

    def __init__(self, params, student, teacher, info):
        super().__init__(params, student, teacher, info)
        if params.dist_criterion != "hard" and params.dist_criterion not in CRITERIA:
            raise ConfigError(f"method.dist_criterion must be 'hard' or one of {', '.join(CRITERIA.names())}")

    def teacher_view(self, x):
        size = self.params.teacher_image_size
        if size and x.shape[-1] != size:
            return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])
        return x

    def loss_terms(self, batch: dict, epoch: int) -> dict:
        p = self.params
        out = self.student_outputs(batch["x"])
        if "logits_dist" not in out:
            raise ConfigError("deitlt needs a two-head student (model.name: deit_ti_distilled / deit_s_distilled / ...)")
        t = self.teacher_outputs(self.teacher_view(batch["x"]))["logits"]
        target = batch.get("y_soft", batch["y"])
        terms = {"cls": p.cls_weight * cross_entropy(out["logits_cls"], target, p.label_smoothing)}
        if p.dist_criterion == "hard":
            y_t = t.argmax(1)
            weight = self.cb_weights if 0 <= p.dist_drw_epoch <= epoch else None
            terms["dist"] = p.dist_weight * F.cross_entropy(out["logits_dist"].float(), y_t, weight=weight)
        else:
            terms["dist"] = p.dist_weight * CRITERIA.get(p.dist_criterion)(self, out["logits_dist"], t, batch, epoch)
        return {"terms": terms, "logits": out["logits"]}
