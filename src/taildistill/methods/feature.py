"""The feature-based baselines of LTKD's tables: ReviewKD and CAT-KD.

- ReviewKD (Chen et al., CVPR 2021): the student's features, deepest first, pass through
  attention-based fusion (ABF) modules that fuse each level with the residual of the level below
  it and map it to the teacher's channels; the hierarchical context loss compares each result
  with the teacher's feature of the same level. L = L_sup + w(epoch) * sum_l HCL(Y_l, T_l), with
  w ramping linearly to `review_weight` over `warmup_epochs`. Both models' features are the stage
  outputs every model here exposes (after the stage's last activation), and `pooled` the embedding.
- CAT-KD (Guo et al., CVPR 2023): the classifier applied at every position of the last feature
  map gives class activation maps; the student's are pulled towards the teacher's after pooling
  to a small resolution and normalising. L = L_sup + cat_weight * L_CAT.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..losses.feature import cat_loss, class_activation_maps, hcl_loss
from ..typed import pick
from .base import Batch, Method, MethodOutput, SupervisedLoss, SupervisedParams, linear_ramp


def _as_map(f: torch.Tensor) -> torch.Tensor:
    """(B, D) pooled features as (B, D, 1, 1) maps; (B, D, H, W) unchanged."""
    return f[:, :, None, None] if f.dim() == 2 else f


@torch.no_grad()
def probe_features(model: nn.Module, input_shape, names: list[str], role: str) -> list[tuple[int, ...]]:
    """Shapes (D, H, W) of the named features of `model` on one input of `input_shape`."""
    was = model.training
    model.eval()
    try:
        feats = model(torch.zeros(2, *input_shape))["features"]
    finally:
        model.train(was)
    missing = [n for n in names if n not in feats]
    if missing:
        raise ConfigError(f"the {role} has no feature(s) {missing}; it exposes {sorted(feats)}")
    return [tuple(_as_map(feats[n]).shape[1:]) for n in names]


class ABF(nn.Module):
    """Attention-based fusion (ReviewKD Sec. 3.2): reduce the student feature to `mid` channels;
    when a residual from the deeper level is given, resize it to this level and blend the two
    with two per-position attention maps; resize the fused map to the teacher's size (nearest, as
    ReviewKD's code) and map it to the teacher's channels with a 3x3 convolution.
    forward(x (B, C_in, H, W), residual (B, mid, h, w) or None, out_size (H', W'))
    -> (out (B, C_out, H', W'), residual (B, mid, H', W'))."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        self.out = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
        for conv in (self.reduce[0], self.out[0]):  # ReviewKD's initialisation of the two convolutions
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                out_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        if self.attention is not None and residual is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            a = self.attention(torch.cat([x, residual], dim=1))
            x = x * a[:, :1] + residual * a[:, 1:]
        if out_size is not None and tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.out(x), x


@dataclass
class ReviewKDParams(SupervisedParams):
    # the student's and the teacher's features, shallow to deep; `pooled` is the (B, D) embedding
    student_features: list[str] = field(default_factory=lambda: ["stage1", "stage2", "stage3", "pooled"])
    teacher_features: list[str] = field(default_factory=lambda: ["stage1", "stage2", "stage3", "pooled"])
    # channels of the ABF modules; 0: min(512, the student's deepest reviewed feature's channels),
    # ReviewKD's (and the mdistiller benchmark's) rule
    mid_channels: int = 0
    review_weight: float = 1.0  # weight of the hierarchical context loss (ReviewKD's CIFAR script: 5 for most pairs)
    warmup_epochs: int = 20  # the review loss weight ramps up linearly over these epochs
    levels: list[int] = field(default_factory=lambda: [4, 2, 1])  # HCL pyramid pooling sizes

    def validate(self, prefix: str) -> None:
        if self.mid_channels < 0:
            raise ConfigError(f"config key '{prefix}.mid_channels' must be >= 1, or 0 for ReviewKD's rule, "
                              f"got {self.mid_channels}")
        if not self.levels or min(self.levels) < 1:
            raise ConfigError(f"config key '{prefix}.levels' must be pooling sizes >= 1, got {self.levels}")


class ReviewKD(Method):
    """ReviewKD: supervised + hierarchical context loss on student features fused deepest-first by ABF modules."""

    Params = ReviewKDParams
    needs_teacher = True

    def __init__(self, params, student, teacher, info):
        super().__init__(params, student, teacher, info)
        self.sup = SupervisedLoss(pick(SupervisedParams, params), info.class_counts, student)
        if len(params.student_features) != len(params.teacher_features) or not params.student_features:
            raise ConfigError("reviewkd: method.student_features and method.teacher_features must name the same number (>= 1) of features")
        s_shapes = probe_features(student, info.input_shape, params.student_features, "student")
        t_shapes = probe_features(teacher, info.input_shape, params.teacher_features, "teacher")
        self.teacher_sizes = [s[1:] for s in t_shapes]
        n = len(s_shapes)
        mid = params.mid_channels or min(512, s_shapes[-1][0])
        self.abfs = nn.ModuleList(ABF(s[0], mid, t[0], fuse=i < n - 1)
                                  for i, (s, t) in enumerate(zip(s_shapes, t_shapes)))

    def review(self, student_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The student's features mapped level by level, deepest first, to the teacher's shapes."""
        outs: list[torch.Tensor] = [None] * len(student_feats)  # type: ignore[list-item]
        residual = None
        for i in reversed(range(len(student_feats))):
            outs[i], residual = self.abfs[i](_as_map(student_feats[i]), residual, self.teacher_sizes[i])
        return outs

    def graph_key(self, epoch: int):
        return self.sup.epoch_key(epoch), linear_ramp(epoch, self.params.warmup_epochs)

    def loss_terms(self, batch: Batch, epoch: int) -> MethodOutput:
        p = self.params
        out = self.student_outputs(batch["x"])
        t_feats = self.teacher_outputs(batch["x"])["features"]
        ramp = linear_ramp(epoch, p.warmup_epochs)
        mapped = self.review([out["features"][f] for f in p.student_features])
        target = [_as_map(t_feats[f]) for f in p.teacher_features]
        return MethodOutput({"sup": p.sup_weight * self.sup(out["logits"], batch, epoch),
                             "review": p.review_weight * ramp * hcl_loss(mapped, target, tuple(p.levels))}, out["logits"])


def linear_head(model: nn.Module, role: str) -> nn.Linear:
    """The model's linear classifier (`fc`, or a wrapped network's `fc`)."""
    head = getattr(model, "fc", None)
    if head is None and isinstance(getattr(model, "net", None), nn.Module):
        head = getattr(model.net, "fc", None)
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"catkd needs a {role} whose classifier is a linear layer on a pooled feature map "
                          f"(found {type(head).__name__ if head is not None else 'none'})")
    return head


@dataclass
class CATKDParams(SupervisedParams):
    cat_weight: float = 400.0  # weight of the CAM transfer loss
    cam_resolution: int = 2  # CAMs are average-pooled to this size before transfer
    normalize: bool = True  # unit-norm each class's pooled map
    feature: str = "pre_pool"  # the last feature map, before global pooling

    def validate(self, prefix: str) -> None:
        if self.cam_resolution < 1:  # (0 failed only in the first backward pass)
            raise ConfigError(f"config key '{prefix}.cam_resolution' must be >= 1, got {self.cam_resolution}")


class CATKD(Method):
    """CAT-KD: supervised + transfer of pooled class activation maps, optionally normalised per class
    (`normalize`; each pair's setting is in its config)."""

    Params = CATKDParams
    needs_teacher = True

    def __init__(self, params, student, teacher, info):
        super().__init__(params, student, teacher, info)
        self.sup = SupervisedLoss(pick(SupervisedParams, params), info.class_counts, student)
        linear_head(student, "student")
        linear_head(teacher, "teacher")
        for model, role in ((student, "student"), (teacher, "teacher")):
            shape = probe_features(model, info.input_shape, [params.feature], role)[0]
            if shape[1:] == (1, 1) and params.cam_resolution > 1:
                raise ConfigError(f"catkd: the {role}'s '{params.feature}' is not a spatial map")
            if params.cam_resolution > min(shape[1:]):  # adaptive pooling would upsample: nothing is pooled
                raise ConfigError(f"config key 'method.cam_resolution' ({params.cam_resolution}) is larger than the "
                                  f"{role}'s '{params.feature}' map ({shape[1]}x{shape[2]}); use at most {min(shape[1:])}")

    def graph_key(self, epoch: int):
        return self.sup.epoch_key(epoch)

    def loss_terms(self, batch: Batch, epoch: int) -> MethodOutput:
        p = self.params
        out = self.student_outputs(batch["x"])
        t_out = self.teacher_outputs(batch["x"])
        s_head, t_head = linear_head(self.student, "student"), linear_head(self.teacher, "teacher")
        s_cams = class_activation_maps(out["features"][p.feature], s_head.weight, s_head.bias)
        t_cams = class_activation_maps(t_out["features"][p.feature], t_head.weight, t_head.bias)
        return MethodOutput({"sup": p.sup_weight * self.sup(out["logits"], batch, epoch),
                             "cat": p.cat_weight * cat_loss(s_cams, t_cams, p.cam_resolution, p.normalize)}, out["logits"])
