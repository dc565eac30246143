"""DeiT-LT (Rangwani et al. 2024): a ViT student with CLS and DIST tokens.

- CLS head: cross-entropy with label smoothing on the (mixup/cutmix) targets.
- DIST head: out-of-distribution distillation: the teacher sees the student's strongly augmented
  (and mixed) batch, resized to the teacher's resolution, and the DIST head learns from it with
  a distillation criterion: `hard` by default (the paper: CE on the teacher's hard labels y_t,
  re-weighted from epoch K by the effective-number weight of y_t, i.e. DRW on the DIST head).
- L = 1/2 L_CE(f^c(x), y) + 1/2 L_DRW(f^d(x), y_t)  (DeiT-LT Sec. 3.1); prediction = mean of heads.

`teacher_augment` (augment config keys) gives the teacher a view of its own instead, the same
images through that pipeline: Table 1's "weak" teacher augmentation (random crop and flip, as the
teacher was trained), the control that shows the gain is the OOD view's. The student's batch is
then unmixed (the teacher's view of mixed images would not exist). For data streamed from image
files (list files) both views start from the loader's random-resized crop, as PaCo's key view.

`dist_criterion` names any registered criterion (kd, ltkd, bkd, cckd, ...) and `dist:` holds that
criterion's own parameters, so DeiT-LT's OOD distillation combines with another method by a
config change; a criterion that needs statistics (CCKD's priors) prepares them on the teacher's view.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F

from ..errors import ConfigError
from ..losses import cross_entropy
from ..typed import from_dict
from .base import Batch, BatchRequest, Method, MethodOutput, view_config
from .criteria import build_chosen_criterion, parse_chosen_criterion


@dataclass
class DeiTLTParams:
    label_smoothing: float = 0.1  # CLS head: CE with label smoothing (DeiT recipe)
    cls_weight: float = 0.5  # L = cls_weight * L_CLS + dist_weight * L_DIST (Sec. 3.1: 1/2 each)
    dist_weight: float = 0.5
    dist_criterion: str = "hard"  # the DIST head's criterion: hard (the paper) or any registered one
    dist: Any = field(default_factory=dict)  # that criterion's parameters, e.g. {drw_epoch: 1100} for hard
    teacher_image_size: int = 0  # resize the teacher's view to this size (0 = the student's size)
    # {} (the paper): the teacher sees the student's strongly augmented batch (OOD distillation);
    # augment keys, e.g. {crop_padding: 4, flip: true}: a view of its own (Table 1's weak teacher augs)
    teacher_augment: dict[str, Any] = field(default_factory=dict)

    def validate(self, prefix: str) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"config key '{prefix}.label_smoothing' must be in [0, 1), got {self.label_smoothing}")


class DeiTLT(Method):
    """DeiT-LT: ViT CLS head on CE + DIST head distilled out of distribution (hard teacher labels, DRW)."""

    Params = DeiTLTParams
    needs_teacher = True

    @classmethod
    def parse_params(cls, raw: dict) -> DeiTLTParams:
        params = parse_chosen_criterion(from_dict(DeiTLTParams, raw, "method"), "dist_criterion", "dist")
        if params.teacher_augment:
            view_config(params.teacher_augment, "method.teacher_augment")  # (validated when the config is loaded)
        return params

    def __init__(self, params, student, teacher, info):
        super().__init__(params, student, teacher, info)
        self.dist_criterion = build_chosen_criterion(params, "dist_criterion", "dist", info)

    def batch_request(self) -> BatchRequest:
        if not self.params.teacher_augment:
            return BatchRequest()
        return BatchRequest(second_view=view_config(self.params.teacher_augment, "method.teacher_augment"))

    def refuses_mixing(self) -> str:
        return "method.teacher_augment shows the teacher unmixed images" if self.params.teacher_augment else ""

    def teacher_view(self, x):
        size = self.params.teacher_image_size
        if size and x.shape[-1] != size:
            return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])
        return x

    def prepare(self, teacher_on) -> None:
        self.dist_criterion.prepare(teacher_on, self.teacher_view)

    def graph_key(self, epoch: int):
        return self.dist_criterion.epoch_key(epoch)  # (the CLS head's CE does not use the epoch)

    def loss_terms(self, batch: Batch, epoch: int) -> MethodOutput:
        p = self.params
        out = self.student_outputs(batch["x"])
        if "logits_dist" not in out:
            raise ConfigError("deitlt needs a two-head student (model.name: deit_ti_distilled / deit_s_distilled / ...)")
        if p.teacher_augment and "x_key" not in batch:
            raise ConfigError("method.teacher_augment needs the batch's teacher view (x_key): train through the "
                              "engine, which builds it")
        seen = batch["x_key"] if p.teacher_augment else batch["x"]  # (the paper: the student's OOD view)
        t = self.teacher_outputs(self.teacher_view(seen))["logits"]
        target = batch.get("y_soft", batch["y"])
        terms = {"cls": p.cls_weight * cross_entropy(out["logits_cls"], target, p.label_smoothing),
                 "dist": p.dist_weight * self.dist_criterion(out["logits_dist"], t, batch, epoch)}
        # Table 1's Tch. Acc.: how often the teacher's label of what it sees is the image's label (on a
        # mixed batch, the larger share's)
        label = target.argmax(1) if target.dim() == 2 else target
        teacher_acc = (t.detach().argmax(1) == label).float().mean() * 100
        return MethodOutput(terms, out["logits"], metrics={"teacher_acc": teacher_acc})
