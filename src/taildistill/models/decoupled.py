"""Decoupled classifiers (Kang et al. 2020, "Decoupling Representation and Classifier for
Long-Tailed Recognition", [35] in BKD's tables): a network trained in a first stage (plain CE with
instance-balanced sampling) keeps its representation, and only the classifier is re-balanced.

``decoupled`` wraps the stage-1 network (``network`` / ``network_kwargs``, weights from
``checkpoint``: a run's ``checkpoints/last.safetensors``, loaded strictly) with its parameters
frozen, and one of four classifiers on its pooled features f (B, D):

- ``crt`` (classifier re-training): a new linear classifier W f + b, trained (with class-aware
  sampling, ``data.sampler: class_aware``);
- ``lws`` (learnable weight scaling): the stage-1 classifier kept, a per-class scale s (init 1)
  trained: logits = s * (W f + b), the reference code's TauNormClassifier, bias included;
- ``tau_norm``: nothing trained; logits = f @ (W_i / ||W_i||^tau)^T, without the bias, as the
  reference code's tau_norm.py; ``tau`` a number, or ``val``: the best of 0, 0.1, ..., 2 on the
  validation split by mean per-class accuracy (that script prints both for every tau on the split
  it is given; choosing on the validation split is ours);
- ``ncm`` (nearest class mean): nothing trained; features centred by the training-set mean and
  L2-normalised, class centroids the means of those, logits the negative squared Euclidean
  distance (the reference code's default KNN classifier, ``cl2n`` features and ``l2`` distance); a
  class without training images is never predicted, as there.

``tau_norm`` needs the network's classifier: the one ``nn.Linear`` from ``feature_dim`` to the
class count whose output is the network's logits (a ResNet's ``fc``). The engine fits NCM centroids
on the training split before training and chooses tau on the validation split (``set_class_means``,
``select_on_validation``).

While crt / lws train, the frozen network stays in training mode when ``bn_stats`` (default), so its
BatchNorm statistics follow the class-aware batches as in the reference code (which calls
``model.train()`` on the fixed feature model); ``bn_stats: false`` keeps the stage-1 statistics.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from . import MODELS
from .common import load_state_strict, read_weight_file

CLASSIFIERS = ("crt", "lws", "tau_norm", "ncm")
TAU_GRID = tuple(i / 10 for i in range(21))  # 0, 0.1, ..., 2.0: the reference tau_norm.py's np.linspace(0, 2, 21)


def stage1_classifier(network: nn.Module, dim: int, num_classes: int) -> str:
    """The name of the network's linear classifier over its pooled features: its one
    nn.Linear(dim, num_classes)."""
    found = [name for name, m in network.named_modules() if isinstance(m, nn.Linear)
             and m.out_features == num_classes and m.in_features == dim]
    if len(found) != 1:
        raise ConfigError(f"classifier tau_norm needs the network's linear classifier over its pooled features; "
                          f"{type(network).__name__} has {len(found)} nn.Linear layers to {num_classes} classes "
                          "(a cosine or two-token head has none or several): use crt, lws or ncm")
    return found[0]


def tau_normalized(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """W_i / ||W_i||^tau per class row: (C, D) -> (C, D)."""
    return weight / weight.norm(dim=1, keepdim=True).pow(tau)


def mean_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean over the classes present of each class's top-1 accuracy."""
    correct = (logits.argmax(1) == labels).float()
    hits = torch.zeros(num_classes).index_add_(0, labels, correct)
    seen = torch.bincount(labels, minlength=num_classes).float()
    return float((hits[seen > 0] / seen[seen > 0]).mean())


class DecoupledClassifier(nn.Module):
    def __init__(self, network: nn.Module, num_classes: int, classifier: str, tau: float | str, bn_stats: bool):
        super().__init__()
        if classifier not in CLASSIFIERS:
            raise ConfigError(f"decoupled classifier must be one of {', '.join(CLASSIFIERS)}, got '{classifier}'")
        dim = getattr(network, "feature_dim", None)
        if not isinstance(dim, int):
            raise ConfigError(f"the decoupled classifiers need a network that reports its feature_dim; "
                              f"{type(network).__name__} does not")
        if tau != "val" and not (isinstance(tau, (int, float)) and not isinstance(tau, bool) and tau >= 0):
            raise ConfigError(f"decoupled tau must be a number >= 0 or 'val' (chosen on the validation split), got {tau!r}")
        self.network = network
        for p in network.parameters():
            p.requires_grad_(False)
        self.classifier = classifier
        self.num_classes = num_classes
        self.feature_dim = dim
        self.bn_stats = bn_stats
        self.needs_class_means = classifier == "ncm"
        self.selects_on_validation = classifier == "tau_norm" and tau == "val"
        if classifier == "crt":
            self.fc = nn.Linear(dim, num_classes)  # re-initialised, as the reference cls_crt.yaml (stage1_weights: false)
        elif classifier == "lws":
            self.scales = nn.Parameter(torch.ones(num_classes))
        elif classifier == "tau_norm":
            self.classifier_name = stage1_classifier(network, dim, num_classes)
            self.register_buffer("tau", torch.tensor(1.0 if tau == "val" else float(tau)))
        else:
            self.register_buffer("feature_mean", torch.zeros(dim))
            self.register_buffer("centroids", torch.zeros(num_classes, dim))
            self.register_buffer("class_seen", torch.ones(num_classes, dtype=torch.bool))

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.bn_stats:
            self.network.eval()
        return self

    def logits_from_features(self, f: torch.Tensor, network_logits: torch.Tensor | None = None,
                             tau: float | torch.Tensor | None = None) -> torch.Tensor:
        """The classifier on pooled features f (B, D) -> (B, C); lws scales `network_logits`."""
        if self.classifier == "crt":
            return self.fc(f)
        if self.classifier == "lws":
            return network_logits * self.scales
        with torch.autocast(f.device.type, enabled=False):  # in float32, as tau was chosen
            if self.classifier == "tau_norm":
                weight = self.network.get_submodule(self.classifier_name).weight.float()
                return f.float() @ tau_normalized(weight, self.tau if tau is None else tau).t()
            z = F.normalize(f.float() - self.feature_mean, dim=1)
            # a class without training images has no mean: it is never predicted
            return (-torch.cdist(z, self.centroids).pow(2)).masked_fill(~self.class_seen, -1e4)

    def forward(self, x: torch.Tensor) -> dict:
        out = self.network(x)
        f = out["features"]["pooled"]
        feats = {**out["features"], "embedding": f}
        return {"logits": self.logits_from_features(f, out["logits"]), "features": feats}

    @torch.no_grad()
    def set_class_means(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """NCM: the training features' mean and the class means of the centred, normalised features."""
        f = features.float().to(self.centroids.device)
        labels = labels.to(f.device)
        self.feature_mean.copy_(f.mean(0))
        z = F.normalize(f - self.feature_mean, dim=1)
        sums = torch.zeros_like(self.centroids).index_add_(0, labels, z)
        counts = torch.bincount(labels, minlength=self.num_classes)
        self.centroids.copy_(sums / counts.clamp(min=1).unsqueeze(1))
        self.class_seen.copy_(counts > 0)

    @torch.no_grad()
    def select_on_validation(self, features: torch.Tensor, labels: torch.Tensor) -> dict:
        """tau_norm with tau 'val': the grid's tau of the best mean per-class validation accuracy
        (the smallest on a tie), kept in the `tau` buffer. Returns what was chosen."""
        f = features.float().to(self.tau.device)
        scores = [mean_class_accuracy(self.logits_from_features(f, tau=t).cpu(), labels.cpu(), self.num_classes)
                  for t in TAU_GRID]
        best = max(range(len(TAU_GRID)), key=lambda i: (scores[i], -i))
        self.tau.fill_(TAU_GRID[best])
        return {"tau": TAU_GRID[best], "val_mean_class_accuracy": 100.0 * scores[best]}

    def head_record(self) -> dict:
        """What final.json records of the classifier."""
        record = {"classifier": self.classifier}
        if self.classifier == "tau_norm":
            record["tau"] = round(float(self.tau), 6)
            record["tau_chosen_on"] = "val" if self.selects_on_validation else "config"
        return record


@MODELS.register("decoupled")
def decoupled(num_classes: int, in_channels: int = 3, image_size: int = 32, network: str = "",
              network_kwargs: dict | None = None, checkpoint: str = "", classifier: str = "crt",
              tau: float | str = "val", bn_stats: bool = True):
    """Kang et al.'s stage 2 on the stage-1 `network` (a model name, with `network_kwargs`) whose
    weights `checkpoint` holds (a run's checkpoints/last.safetensors; empty when trained weights
    follow, as on a resume)."""
    from . import build_model

    if not network:
        raise ConfigError("model decoupled needs model.kwargs.network: the stage-1 model's name (e.g. resnet32)")
    net = build_model(network, num_classes, in_channels, image_size, kwargs_key="model.kwargs.network_kwargs",
                      **(network_kwargs or {}))
    if checkpoint:
        load_state_strict(net, read_weight_file(checkpoint), f"stage-1 weights {checkpoint} (model '{network}')")
    return DecoupledClassifier(net, num_classes, classifier, tau, bn_stats)
