"""The Method interface: one small class per training objective.

A method is built from (params, student, teacher or None, DataInfo). ``forward(batch, epoch)``
returns a dict of named loss terms; the engine sums them, logs each and steps the optimizer. A
method never touches optimizers, devices, logging or files. Its trainable parameters are the
student's plus any modules it owns (projectors); the teacher is frozen and kept outside the
module tree so it is neither optimised, nor checkpointed, nor synchronised by DDP.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..losses import (
    balanced_softmax_loss, class_balanced_weights, cross_entropy, focal_loss, ldam_loss, ldam_margins,
    logit_adjusted_loss,
)

SUPERVISED_LOSSES = ("ce", "focal", "cb", "cb_focal", "ldam", "la", "bsce")


@dataclass
class SupervisedParams:
    """The supervised part every method shares."""

    sup_loss: str = "ce"  # ce | focal | cb | cb_focal | ldam | la | bsce
    sup_weight: float = 1.0
    label_smoothing: float = 0.0
    drw_epoch: int = -1  # deferred re-weighting: class-balanced weights from this epoch (-1 = never)
    cb_beta: float = 0.9999  # effective-number beta for cb / cb_focal / DRW weights
    focal_gamma: float = 1.0
    ldam_max_margin: float = 0.5
    ldam_scale: float = 30.0
    la_tau: float = 1.0


class Method(nn.Module):
    """Base class. Subclasses set `Params` (a dataclass) and implement `loss_terms`."""

    Params: type = SupervisedParams
    needs_teacher: bool = False
    # extra batch views the engine must build: "balanced_mix" (ACCKD), "teacher_view" (DeiT-LT)
    batch_views: tuple[str, ...] = ()

    def __init__(self, params, student: nn.Module, teacher: nn.Module | None, info):
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ConfigError(f"method '{type(self).__name__}' needs a teacher: set teacher.run or teacher.checkpoint")
        if params.sup_loss not in SUPERVISED_LOSSES:
            raise ConfigError(f"method.sup_loss must be one of {', '.join(SUPERVISED_LOSSES)}, got '{params.sup_loss}'")
        self.params = params
        self.student = student
        self._teacher = [teacher] if teacher is not None else []
        self.info = info
        counts = torch.tensor(info.class_counts, dtype=torch.float32)
        self.register_buffer("class_counts", counts, persistent=False)
        self.register_buffer("class_prior", counts / counts.sum(), persistent=False)
        self.register_buffer("cb_weights", class_balanced_weights(info.class_counts, params.cb_beta), persistent=False)
        self.register_buffer("ldam_margins", ldam_margins(info.class_counts, params.ldam_max_margin), persistent=False)
        self.epoch = 0

    # --------------------------------------------------------------------- helpers
    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def teacher_to(self, device, memory_format=None) -> None:
        if self.teacher is not None:
            self.teacher.to(device)
            if memory_format is not None:
                self.teacher.to(memory_format=memory_format)
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def teacher_outputs(self, x: torch.Tensor) -> dict:
        """The frozen teacher's outputs (no graph is built); logits are float32."""
        return _float_logits(self.teacher(x))

    def student_outputs(self, x: torch.Tensor) -> dict:
        """The student's outputs with every logit head in float32: under bf16 autocast the network
        runs in bf16, but temperatures, softmaxes and KL terms are computed in full precision."""
        return _float_logits(self.student(x))

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def predict(self, x: torch.Tensor) -> dict:
        return self.student(x)

    def supervised_loss(self, logits: torch.Tensor, batch: dict, epoch: int) -> torch.Tensor:
        """The configured supervised loss on hard labels or, after mixup/cutmix, soft targets."""
        p = self.params
        target = batch.get("y_soft", batch["y"])
        weight = None
        if p.sup_loss in ("cb", "cb_focal") or (0 <= p.drw_epoch <= epoch):
            weight = self.cb_weights
        if p.sup_loss in ("ce", "cb"):
            return cross_entropy(logits, target, p.label_smoothing, weight)
        if p.sup_loss in ("focal", "cb_focal"):
            return _mixed(lambda y: focal_loss(logits, y, p.focal_gamma, weight), batch)
        if p.sup_loss == "ldam":
            return _mixed(lambda y: ldam_loss(logits, y, self.ldam_margins, p.ldam_scale, weight), batch)
        if p.sup_loss == "la":
            return logit_adjusted_loss(logits, target, self.class_prior, p.la_tau)
        return balanced_softmax_loss(logits, target, self.class_counts)

    # --------------------------------------------------------------------- interface
    def loss_terms(self, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: dict, epoch: int) -> dict:
        """Returns {"terms": loss terms, "logits": student logits on batch["x"]} (DDP calls this)."""
        return self.loss_terms(batch, epoch)


LOGIT_HEADS = ("logits", "logits_cls", "logits_dist")


def _float_logits(out: dict) -> dict:
    for k in LOGIT_HEADS:
        if k in out:
            out[k] = out[k].float()
    return out


def _mixed(loss_fn, batch: dict) -> torch.Tensor:
    """Hard-label losses under mixup/cutmix: lam * L(y) + (1 - lam) * L(y[perm])."""
    if "mix_perm" not in batch:
        return loss_fn(batch["y"])
    lam = float(batch["mix_lam"])
    return lam * loss_fn(batch["y"]) + (1 - lam) * loss_fn(batch["y"][batch["mix_perm"]])
