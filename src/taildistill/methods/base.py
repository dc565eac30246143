"""The method contract: one self-contained unit per training objective.

A method is built from (params, student, teacher or None, DataInfo), where `params` is an
instance of the method's own ``Params`` dataclass (validated once, when the config is loaded:
an unknown key is an error naming the valid ones). The engine

1. asks :meth:`Method.batch_request` which extra inputs to build (ACCKD's balanced mixed batch),
2. always calls :meth:`Method.prepare` before the first epoch (statistics over whole splits that
   need the teacher: CCKD's priors, LT-SpikingFormer's class means),
3. calls the method on each :class:`Batch` and gets a :class:`MethodOutput`: the named loss terms
   (summed, logged and back-propagated by the engine) and the student's logits.

A method never touches optimizers, devices, logging or files. Its trainable parameters are the
student's plus any modules it owns (projectors, fusion modules); the teacher is frozen and kept
outside the module tree, so it is neither optimised, nor checkpointed, nor synchronised by DDP.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Hashable, Literal, Protocol, TypedDict

import torch
import torch.nn as nn

from ..config import AugmentConfig
from ..errors import ConfigError
from ..models.common import prediction_scales
from ..losses import (
    balanced_softmax_loss, class_balanced_weights, cross_entropy, focal_loss, lade_loss, ldam_loss, ldam_margins,
    logit_adjusted_loss, vs_loss, vs_scales,
)
from ..typed import from_dict

SupLoss = Literal["ce", "focal", "cb", "cb_focal", "ldam", "la", "bsce", "vs", "lade"]
SplitName = Literal["train", "val", "balanced_train"]


class Batch(TypedDict, total=False):
    """One training batch, as the engine's inputs build it (all tensors on the training device)."""

    x: torch.Tensor  # (B, C, H, W) normalised float images (channels_last on CUDA) or (B, L) token ids
    y: torch.Tensor  # (B,) int64 labels
    y_soft: torch.Tensor  # (B, C) mixed one-hot targets, present when mixup/cutmix fired on this batch
    mix_lam: torch.Tensor  # () float32: the exact mixing coefficient of x with x[mix_perm] (on the CPU; a
    # captured step's static copy is on the device)
    mix_perm: torch.Tensor  # (B,) the partner of each sample in the mix
    x_mix: torch.Tensor  # (B, C, H, W) ACCKD: a class-balanced sample mixed into x (lambda >= 0.5)
    y_a: torch.Tensor  # (B,) ACCKD: labels of the class-balanced sample
    y_b: torch.Tensor  # (B,) ACCKD: labels of x
    x_key: torch.Tensor  # (B, C, H, W) a second view of x's images (BatchRequest.second_view): PaCo's key
    # view, DeiT-LT's teacher view


@dataclass(frozen=True)
class BatchRequest:
    """Extra inputs a method asks the engine to build for every batch."""

    balanced_mix: bool = False  # x_mix / y_a / y_b: a class-balanced batch mixed into x (ACCKD, CCKD Alg. 1)
    balanced_mix_alpha: float = 0.5  # Beta(a, a) of that mix's lambda (folded to >= 0.5)
    second_view: AugmentConfig | None = None  # x_key: the same images through this pipeline too (PaCo, DeiT-LT)


def view_config(raw: Any, key: str) -> AugmentConfig:
    """The augmentation of a second view of a batch's images (`BatchRequest.second_view`) from a
    method's mapping of augment config keys, validated as `augment:` is. A view is of each image
    alone: mixing (mixup, cutmix) and repeats belong to the main batch and are refused here."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{key}' expects a mapping of augment keys")
    view = from_dict(AugmentConfig, raw, key)  # (validated as it is built)
    if view.mixup_alpha > 0 or view.cutmix_alpha > 0 or view.repeated > 1:
        raise ConfigError(f"{key} is a view of the batch's images: no mixup_alpha, cutmix_alpha or repeated")
    return view


@dataclass
class MethodOutput:
    """What a method returns for one batch."""

    terms: dict[str, torch.Tensor]  # named scalar loss terms, weights applied; the loss is their sum
    logits: torch.Tensor  # (B, C) the student's prediction logits on batch["x"] (training accuracy)
    # named scalars logged per epoch (metrics.jsonl's `metric/<name>`), not part of the loss: e.g.
    # DeiT-LT's teacher accuracy on the images it labels (its Table 1's Tch. Acc.)
    metrics: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


class TeacherOutputs(Protocol):
    """Given by the engine to :meth:`Method.prepare`: the frozen teacher's `key` output ('logits'
    or 'features/<name>') over a whole split, (N, ...) on the training device, with the split's
    labels (N,). `view` (optional) maps each input batch to the teacher's view (a resize)."""

    def __call__(self, split: SplitName, key: str = "logits",
                 view: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class SupervisedParams:
    """The supervised part of an objective (every method has one)."""

    SIGNED: ClassVar[frozenset[str]] = frozenset({"drw_epoch"})  # may be negative (see check_signs)

    sup_loss: SupLoss = "ce"  # the supervised loss; la = logit adjustment, bsce = balanced softmax, cb = class-balanced, vs = vector scaling, lade = LADE
    sup_weight: float = 1.0  # weight of the supervised term
    label_smoothing: float = 0.0  # ce / cb: label smoothing
    drw_epoch: int = -1  # deferred re-weighting: class-balanced weights from this epoch on (-1 = never)
    cb_beta: float = 0.9999  # effective-number beta of the cb / cb_focal / DRW weights
    focal_gamma: float = 1.0  # focal / cb_focal: focusing parameter
    ldam_max_margin: float = 0.5  # ldam: the largest class margin
    ldam_scale: float = 30.0  # ldam: the cosine head's logit scale s (the head applies it; the margins are s * m)
    la_tau: float = 1.0  # la: logit-adjustment strength tau
    vs_gamma: float = 0.3  # vs: multiplicative scales (n_c / n_max)^gamma (Kini et al. 2021; their code's default)
    vs_tau: float = 1.0  # vs: additive adjustment tau log pi_c (their code's default)
    lade_alpha: float = 0.1  # lade: weight of the LADER regularizer (Hong et al. 2021; their CIFAR-100 value)
    lade_lambda: float = 0.1  # lade: LADER's ReMINE penalty lambda (their code's default)

    def validate(self, prefix: str) -> None:
        if not 0 < self.cb_beta < 1:
            raise ConfigError(f"config key '{prefix}.cb_beta' must be in (0, 1), got {self.cb_beta}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"config key '{prefix}.label_smoothing' must be in [0, 1), got {self.label_smoothing}")


def check_signs(params, prefix: str = "method") -> None:
    """Every numeric parameter of a method (weights, temperatures, margins, sizes, epochs; those of
    a nested criterion too) is >= 0: a negative one trains without a word into nonsense (a negative
    weight ascends its loss). A dataclass lists in `SIGNED` the fields a negative value means
    something for (drw_epoch: -1 = never)."""
    signed = frozenset().union(*(vars(k).get("SIGNED", ()) for k in type(params).__mro__))
    for f in dataclasses.fields(params):
        value, key = getattr(params, f.name), f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(value):
            check_signs(value, key)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0 and f.name not in signed:
            raise ConfigError(f"config key '{key}' must be >= 0, got {value}")


class SupervisedLoss(nn.Module):
    """The configured supervised loss on hard labels or, after mixup/cutmix, on soft targets:
    CE (+ label smoothing), focal, class-balanced CE / focal, LDAM, logit adjustment, balanced
    softmax, vector scaling, LADE; deferred re-weighting switches the class-balanced weights on at `drw_epoch`
    (for each of these losses, e.g. VS + DRW, which the VS authors' code offers)."""

    def __init__(self, params: SupervisedParams, class_counts: list[int], student: nn.Module | None = None):
        super().__init__()
        self.params = params
        if params.sup_loss == "ldam" and student is not None:
            check_ldam_head(student, params.ldam_scale)
        counts = torch.tensor(class_counts, dtype=torch.float32)
        self.register_buffer("class_counts", counts, persistent=False)
        self.register_buffer("class_prior", counts / counts.sum(), persistent=False)
        self.register_buffer("cb_weights", class_balanced_weights(class_counts, params.cb_beta), persistent=False)
        self.register_buffer("ldam_margins", ldam_margins(class_counts, params.ldam_max_margin), persistent=False)
        self.register_buffer("vs_scales", vs_scales(class_counts, params.vs_gamma), persistent=False)

    def epoch_key(self, epoch: int) -> Hashable:
        """What of `epoch` this loss depends on: whether the class weights are on."""
        return self.class_weights(epoch) is not None

    def class_weights(self, epoch: int) -> torch.Tensor | None:
        """The class weights in force at `epoch`: always for cb / cb_focal, from drw_epoch with DRW."""
        p = self.params
        if p.sup_loss in ("cb", "cb_focal") or (0 <= p.drw_epoch <= epoch):
            return self.cb_weights
        return None

    def forward(self, logits: torch.Tensor, batch: Batch, epoch: int) -> torch.Tensor:
        p = self.params
        target = batch.get("y_soft", batch["y"])
        weight = self.class_weights(epoch)
        if p.sup_loss in ("ce", "cb"):
            return cross_entropy(logits, target, p.label_smoothing, weight)
        if p.sup_loss in ("focal", "cb_focal"):
            return mixed_hard_labels(lambda y: focal_loss(logits, y, p.focal_gamma, weight), batch)
        if p.sup_loss == "ldam":
            return mixed_hard_labels(lambda y: ldam_loss(logits, y, self.ldam_margins, p.ldam_scale, weight), batch)
        if p.sup_loss == "la":
            return logit_adjusted_loss(logits, target, self.class_prior, p.la_tau, weight)
        if p.sup_loss == "vs":
            return vs_loss(logits, target, self.vs_scales, self.class_prior, p.vs_tau, weight)
        if p.sup_loss == "lade":  # (the class weights of DRW weight its cross-entropy, not its regularizer)
            return lade_loss(logits, target, self.class_prior, p.lade_alpha, p.lade_lambda, weight)
        return balanced_softmax_loss(logits, target, self.class_counts, weight)


def check_ldam_head(student: nn.Module, scale: float) -> None:
    """LDAM needs a cosine head whose scale is the loss's s (its margins are in those units)."""
    scales = [float(s) for s in prediction_scales(student, cosine_heads=True)]  # (a multi-expert network: each expert's)
    if not scales:
        raise ConfigError("sup_loss: ldam needs a cosine head (model.kwargs.cosine_head: true)")
    other = next((s for s in scales if abs(s - scale) > 1e-6), None)
    if other is not None:
        raise ConfigError(f"the cosine head's scale ({other:g}, model.kwargs.cosine_scale) differs from "
                          f"method.ldam_scale ({scale:g}); LDAM's margins are in the head's units: make them equal")


def linear_ramp(epoch: int, epochs: int) -> float:
    """A loss weight's factor that rises linearly to 1 over the first `epochs` epochs (0: always 1)."""
    return min(1.0, (epoch + 1) / epochs) if epochs > 0 else 1.0


def mixed_hard_labels(loss_fn, batch: Batch) -> torch.Tensor:
    """Hard-label losses under mixup/cutmix: lam * L(y) + (1 - lam) * L(y[perm])."""
    if "mix_perm" not in batch:
        return loss_fn(batch["y"])
    lam = batch["mix_lam"]  # a tensor, never read on the host: a captured step gets each batch's value
    return lam * loss_fn(batch["y"]) + (1 - lam) * loss_fn(batch["y"][batch["mix_perm"]])


class Method(nn.Module):
    """Base class. Subclasses set ``Params`` (a dataclass) and implement :meth:`loss_terms`."""

    Params: ClassVar[type] = SupervisedParams
    needs_teacher: ClassVar[bool] = False

    def __init__(self, params, student: nn.Module, teacher: nn.Module | None, info):
        super().__init__()
        if not isinstance(params, self.Params):
            raise TypeError(f"{type(self).__name__} takes {self.Params.__name__}, got {type(params).__name__}")
        if self.needs_teacher and teacher is None:
            raise ConfigError(f"method '{type(self).__name__}' needs a teacher: set teacher.run, teacher.pretrained or teacher.checkpoint")
        self.params = params
        self.student = student
        self._teacher = [teacher] if teacher is not None else []  # a list keeps it out of the module tree
        self.info = info

    # --------------------------------------------------------------------- contract
    @classmethod
    def parse_params(cls, raw: dict):
        """The method's parameters from a config mapping (validated, defaults filled in)."""
        return from_dict(cls.Params, raw, "method")

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else cls.__name__

    def batch_request(self) -> BatchRequest:
        """Extra inputs this method needs in every batch (none by default)."""
        return BatchRequest()

    def prepare(self, teacher_on: TeacherOutputs) -> None:
        """Statistics over whole splits, computed once before the first epoch (no-op by default);
        they are saved with the method's state, so a resumed run does not recompute them."""

    def loss_terms(self, batch: Batch, epoch: int) -> MethodOutput:
        raise NotImplementedError

    def graph_key(self, epoch: int) -> Hashable:
        """What of `epoch` the loss depends on through Python values (a switch, a ramp): two epochs
        with the same key compute the same function of the batch and the weights, so a captured
        step (train.cuda_graph) is replayed across them and a new key captures a new one. The
        default, the epoch itself, is always right (a new capture every epoch); a method whose loss
        uses the epoch only through its parts gives their keys (tested for every method)."""
        return epoch

    def forward(self, batch: Batch, epoch: int) -> MethodOutput:
        """DDP calls this; it is :meth:`loss_terms`."""
        return self.loss_terms(batch, epoch)

    def after_step(self) -> None:
        """State a method updates once per optimizer step, after it (PaCo's momentum key encoder
        and key queue); the training step calls it after the optimizer, inside a captured graph
        too, so it must be device work only (no host reads). No-op by default."""

    # the engine refuses DDP and gradient accumulation for a method whose after_step state would
    # need them handled (a queue gathered over ranks, keys from every micro-batch)
    single_process: ClassVar[bool] = False

    def refuses_mixing(self) -> str:
        """Why this method cannot train on mixed batches (augment.mixup_alpha / cutmix_alpha, which
        the engine then refuses), or "" where it can (the default)."""
        return ""

    # --------------------------------------------------------------------- helpers
    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def teacher_to(self, device, memory_format=None) -> None:
        """Move the frozen teacher (outside the module tree, so `.to` does not reach it)."""
        if self.teacher is not None:
            self.teacher.to(device)
            if memory_format is not None:
                self.teacher.to(memory_format=memory_format)
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def teacher_outputs(self, x: torch.Tensor) -> dict:
        """The frozen teacher's outputs (no graph is built); logit heads in float32."""
        return float_logits(self.teacher(x))

    def student_outputs(self, x: torch.Tensor) -> dict:
        """The student's outputs with every logit head in float32: under bf16 autocast the network
        runs in bf16, but temperatures, softmaxes and KL terms are computed in full precision."""
        return float_logits(self.student(x))


LOGIT_HEADS = ("logits", "logits_cls", "logits_dist", "expert_logits")


def float_logits(out: dict) -> dict:
    for k in LOGIT_HEADS:
        if k in out:
            out[k] = out[k].float()
    return out
