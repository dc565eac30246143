"""PaCo (parametric contrastive learning; Cui et al., ICCV 2021): the objective of DeiT-LT's
contrastive teachers ("PaCo + SAM": PaCo trained with the SAM optimizer, DeiT-LT Sec. 4 and A.2;
with `optim.sam_rho`).

The network (the student, e.g. a ResNet-32) gives pooled features h and classifier logits s; a
projection MLP (Linear-BN-ReLU-Linear, MoCo v2's head) maps h to an L2-normalised embedding q. A
momentum copy of network and projection (the key encoder) embeds a second augmented view of the
same images (the batch's `x_key`, from `key_augment`); a queue keeps the last `queue_size` keys
with their labels. The loss (:func:`taildistill.losses.paco_loss`) contrasts each query against the
class centres (the classifier, logit-adjusted) and the batch's queries and keys and the queue. The
trained network is used as every classifier is: its logits (the teacher DeiT-LT distils from).

Recipe values are PaCo's CIFAR-100-LT code (its paper gives CIFAR only as results): ResNet-32 with
a 64-d feature, a 32-d embedding, 1024 keys, momentum 0.999, T = 0.05, alpha 0.01 (at ratios 100, 50 and
10 alike), beta = gamma = 1; see configs/cifar10_lt/paco_sam_teacher.yaml for the schedule and the
two views. Where ours differs from that code, on purpose: queue slots not yet filled are left out
of the contrast (the code starts from random keys with random labels, replaced within the first
1024 / B steps), and a run is one process (the code's shuffled-BN key encoder needs DDP).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..losses import paco_loss
from ..typed import from_dict
from .base import Batch, BatchRequest, Method, MethodOutput, view_config


@dataclass
class PaCoParams:
    alpha: float = 0.01  # weight of each contrastive positive (PaCo's CIFAR-100-LT scripts, every ratio)
    beta: float = 1.0  # weight of the class centre
    gamma: float = 1.0  # weight of the contrastive samples in the softmax's denominator
    temperature: float = 0.05  # of the embedding similarities (the code's moco-t)
    queue_size: int = 1024  # keys kept (moco-k)
    embed_dim: int = 32  # the projection's output (moco-dim)
    momentum: float = 0.999  # of the key encoder (moco-m)
    feature: str = "pooled"  # the network's feature the projection reads
    key_augment: dict[str, Any] = field(default_factory=dict)  # the key view's augment: config keys (MoCo v2's, at CIFAR size)

    def validate(self, prefix: str) -> None:
        for key in ("alpha", "beta", "gamma"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key '{prefix}.{key}' must be >= 0, got {getattr(self, key)}")
        if not self.beta > 0:  # every anchor keeps its class centre as a positive
            raise ConfigError(f"config key '{prefix}.beta' must be > 0, got {self.beta}")
        if not self.temperature > 0:
            raise ConfigError(f"config key '{prefix}.temperature' must be > 0, got {self.temperature}")
        for key in ("queue_size", "embed_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{prefix}.{key}' must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"config key '{prefix}.momentum' must be in [0, 1), got {self.momentum}")


class PaCo(Method):
    """PaCo: parametric contrastive loss over class centres, a momentum key encoder and a queue."""

    Params = PaCoParams
    single_process = True

    @classmethod
    def parse_params(cls, raw: dict) -> PaCoParams:
        params = from_dict(PaCoParams, raw, "method")
        view_config(params.key_augment, "method.key_augment")  # (validated now, when the config is loaded)
        return params

    def __init__(self, params, student, teacher, info):
        super().__init__(params, student, teacher, info)
        dim = getattr(student, "feature_dim", None)
        if dim is None:
            raise ConfigError(f"paco needs a model with `feature_dim` and a '{params.feature}' feature, "
                              f"got {type(student).__name__}")
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                                       nn.Linear(dim, params.embed_dim))
        # the key encoder: a momentum copy, trained by after_step only (no gradient, not in the optimizer)
        self.key_student = copy.deepcopy(student)
        self.key_projector = copy.deepcopy(self.projector)
        for p in [*self.key_student.parameters(), *self.key_projector.parameters()]:
            p.requires_grad_(False)
        K = params.queue_size
        self.register_buffer("queue", torch.zeros(K, params.embed_dim))
        self.register_buffer("queue_labels", torch.zeros(K, dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros(K, dtype=torch.bool))
        self.register_buffer("queue_next", torch.zeros((), dtype=torch.long))  # (a device tensor: no host read)
        counts = torch.as_tensor(info.class_counts, dtype=torch.float32)
        self.register_buffer("class_prior", counts / counts.sum(), persistent=False)
        self._keys: tuple[torch.Tensor, torch.Tensor] | None = None  # this step's keys, queued by after_step

    def batch_request(self) -> BatchRequest:
        return BatchRequest(second_view=view_config(self.params.key_augment, "method.key_augment"))

    def refuses_mixing(self) -> str:
        return "the contrast needs each query's own label"

    def graph_key(self, epoch: int):
        return "paco"  # no epoch switch

    def _embed(self, student: nn.Module, projector: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        out = self.student_outputs(x) if student is self.student else student(x)
        return F.normalize(projector(out["features"][self.params.feature].float()).float(), dim=1), out

    def loss_terms(self, batch: Batch, epoch: int) -> MethodOutput:
        p = self.params
        if "x_key" not in batch:
            raise ConfigError("paco needs the batch's key view (x_key): train it through the engine, which builds "
                              "it from method.key_augment")
        q, out = self._embed(self.student, self.projector, batch["x"])
        with torch.no_grad():
            k, _ = self._embed(self.key_student, self.key_projector, batch["x_key"])
        y = batch["y"]
        # (a second SAM pass computes the same keys: the key encoder moves only in after_step)
        self._keys = (k.detach(), y)
        features = torch.cat([q, k, self.queue.detach()])
        labels = torch.cat([y, y, self.queue_labels])
        valid = torch.cat([torch.ones(2 * len(y), dtype=torch.bool, device=y.device), self.queue_filled])
        loss = paco_loss(out["logits"], features, labels, y, self.class_prior, p.temperature, p.alpha, p.beta, p.gamma,
                         valid)
        return MethodOutput({"paco": loss}, out["logits"])

    @torch.no_grad()
    def after_step(self) -> None:
        """Queue this step's keys (oldest slots first), then move the key encoder toward the
        network just updated: theta_k <- m theta_k + (1 - m) theta_q (MoCo; PaCo's code does this
        at the start of the next step, before its keys, which is the same)."""
        if self._keys is not None:
            K = self.queue.shape[0]
            k, y = (t[-K:] for t in self._keys)  # (a batch larger than the queue: its last K keys, each slot once)
            slots = (self.queue_next + torch.arange(len(y), device=y.device)) % K
            self.queue.index_copy_(0, slots, k.to(self.queue.dtype))
            self.queue_labels.index_copy_(0, slots, y)
            self.queue_filled.index_fill_(0, slots, True)
            self.queue_next.copy_((self.queue_next + len(y)) % K)
            self._keys = None
        m = self.params.momentum
        for online, key in ((self.student, self.key_student), (self.projector, self.key_projector)):
            torch._foreach_lerp_(list(key.parameters()), [p.detach() for p in online.parameters()], 1 - m)
