"""LT-SpikingFormer (heterogeneous CNN -> SNN distillation).

L = L_ce + lambda_glo L_glo + lambda_loc L_loc   (Eq. 16), with
- L_glo = mean_n KL(y^t_n || y^s_n)   (Eq. 10; T^2-scaled softmax(z/T), T = 1 by default),
- L_loc = L_t + 1/L sum_l L_s^l      (Eq. 14), norm-guided local distillation:
  p(x_n) = mean teacher feature of x_n's class over the training set (Eq. 11),
  b_n = ||Theta(p(x_n))|| + Delta_Theta (the benchmark norm),
  L_t = mean_n | b_n - ||Theta(T(x_n))|| |       (Eq. 12)
  L_s^l = mean_n | b_n - ||Phi_l(F^l(x_n))|| |   (Eq. 13), b_n held fixed for the student terms,
  with Theta, Phi_l linear maps into a shared latent space and F^l the student's exit points.
Use with the effective-number sampler (data.sampler: effective_number) and mixup/cutmix.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..typed import pick
from .base import Batch, Method, MethodOutput, SupervisedLoss, SupervisedParams
from .criteria import KD, KDParams


@dataclass
class LTSFParams(KDParams, SupervisedParams):
    temperature: float = 1.0  # of the global logit KL (Eq. 10)
    lambda_glo: float = 0.5  # weight of L_glo (Eq. 16)
    lambda_loc: float = 0.05  # weight of L_loc (Eq. 16)
    latent_dim: int = 128  # width of the shared latent space of Theta and Phi_l
    delta_theta: float = 1.0  # Delta_Theta of Eq. 12-13 (the paper gives no value)
    teacher_feature: str = "pooled"  # the teacher feature T(x) that Theta maps
    student_exits: list[str] = field(default_factory=lambda: ["exit1", "exit2", "exit3"])  # the exit points F^l

    def validate(self, prefix: str) -> None:
        if self.latent_dim < 1:  # (0 trained, with an empty latent space, without a word)
            raise ConfigError(f"config key '{prefix}.latent_dim' must be >= 1, got {self.latent_dim}")


def norm_guided_loss(benchmark: torch.Tensor, mapped: torch.Tensor) -> torch.Tensor:
    """mean_n | b_n - ||mapped_n|| |  (LT-SpikingFormer Eq. 12-13). benchmark (B,), mapped (B, D)."""
    return (benchmark - mapped.float().norm(dim=1)).abs().mean()


class LTSpikingFormer(Method):
    """LT-SpikingFormer: CE + logit KL + norm-guided local distillation into a spiking transformer (Eq. 10-16)."""

    Params = LTSFParams
    needs_teacher = True

    def __init__(self, params, student, teacher, info):
        super().__init__(params, student, teacher, info)
        self.sup = SupervisedLoss(pick(SupervisedParams, params), info.class_counts, student)
        self.glo = KD(pick(KDParams, params), info)
        t_dim = getattr(teacher, "feature_dim", None)
        s_dim = getattr(student, "feature_dim", None)
        if t_dim is None or s_dim is None:
            raise ConfigError("ltsf needs models that report `feature_dim`")
        self.theta = nn.Linear(t_dim, params.latent_dim, bias=False)
        self.phi = nn.ModuleDict({e: nn.Linear(s_dim, params.latent_dim, bias=False) for e in params.student_exits})
        self.register_buffer("class_means", torch.zeros(info.num_classes, t_dim))

    @torch.no_grad()
    def prepare(self, teacher_on) -> None:
        """Teacher class-mean features over the training set (Eq. 11)."""
        feats, labels = teacher_on("train", f"features/{self.params.teacher_feature}")
        sums = torch.zeros_like(self.class_means).index_add_(0, labels, feats.float())
        counts = torch.bincount(labels, minlength=self.class_means.shape[0]).clamp_min(1)
        self.class_means.copy_(sums / counts[:, None])

    def graph_key(self, epoch: int):
        return self.sup.epoch_key(epoch), self.glo.epoch_key(epoch)

    def loss_terms(self, batch: Batch, epoch: int) -> MethodOutput:
        p = self.params
        out = self.student_outputs(batch["x"])
        missing = [e for e in p.student_exits if e not in out["features"]]
        if missing:
            raise ConfigError(f"student has no feature(s) {missing}; ltsf expects a spiking transformer's exit points "
                              "(three equal segments: a depth that is a multiple of 3)")
        t_out = self.teacher_outputs(batch["x"])
        benchmark = self.theta(self.class_means[batch["y"]]).norm(dim=1) + p.delta_theta
        l_t = norm_guided_loss(benchmark, self.theta(t_out["features"][p.teacher_feature].float()))
        target = benchmark.detach()
        l_s = sum(norm_guided_loss(target, self.phi[e](out["features"][e].float())) for e in p.student_exits)
        terms = {
            "sup": p.sup_weight * self.sup(out["logits"], batch, epoch),
            "glo": p.lambda_glo * self.glo(out["logits"], t_out["logits"], batch, epoch),
            "loc": p.lambda_loc * (l_t + l_s / len(p.student_exits)),
        }
        return MethodOutput(terms, out["logits"])
