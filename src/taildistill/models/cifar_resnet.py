"""CIFAR ResNets: the long-tail papers' ResNet-32 (He et al. option A shortcuts), BBN's variant of
it (bbn_resnet32) and the distillation-benchmark family resnet8x4 / resnet32x4 (1x1-conv
shortcuts, 4x widths)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from . import MODELS
from .common import pooled_head, run_stages


class CosineLinear(nn.Module):
    """Cosine-normalised classifier (LDAM's head): logits = s * normalise(x) @ normalise(W)^T.

    The head applies its scale s itself (30, LDAM's; a buffer that temperature calibration
    rescales), so its logits are calibrated scores like any other head's: a teacher's softmax is as
    confident as its training made it, whichever head it has, and every method reads them alike.
    The LDAM loss then applies its margins in the same units (s * m), never the scale a second time."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0):
        super().__init__()
        if not scale > 0:  # 0 makes every class equally likely, a negative scale ranks them backwards
            raise ConfigError(f"cosine_scale must be positive, got {scale}")
        self.weight = nn.Parameter(torch.empty(num_classes, in_features).uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5))
        self.register_buffer("logit_scale", torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * (F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t())


class CausalNormHead(nn.Module):
    """TDE's de-confounded classifier (Tang et al. 2020, "Long-Tailed Classification by Keeping the
    Good and Removing the Bad Momentum Causal Effect", [34] in BKD's tables). The features x (B, D)
    and each class weight w_i are split into K heads of D / K; with x^k / ||x^k|| the unit head
    feature and w_i^k / (||w_i^k|| + gamma) the class weight normalised with the norm-offset gamma,

        training (de-confound):  z_i = tau / K * sum_k <x^k / ||x^k||, w_i^k / (||w_i^k|| + gamma)>,
        evaluation (TDE):        z_i = tau / K * sum_k <x^k / ||x^k|| - alpha cos(x^k, d^k) d^k,
                                                       w_i^k / (||w_i^k|| + gamma)>,

    d^k the unit direction of the moving average of the training features (momentum `momentum`,
    updated by every training-mode forward, a buffer saved with the weights): the evaluation logits
    remove the head-biased part of each feature's prediction, alpha x its projection on that
    direction (the counterfactual "momentum" effect). alpha 0 predicts with the training logits.
    The class weights start uniform in +-1/sqrt(D), as TDE's code initialises them (gamma is
    measured against their norms)."""

    def __init__(self, in_features: int, num_classes: int, heads: int = 2, tau: float = 16.0, gamma: float = 0.03125,
                 alpha: float = 1.5, momentum: float = 0.9):
        super().__init__()
        if heads < 1 or in_features % heads:
            raise ConfigError(f"causal_head.heads must divide the feature width {in_features}, got {heads}")
        if not tau > 0 or gamma < 0 or alpha < 0 or not 0 <= momentum < 1:
            raise ConfigError(f"causal head needs tau > 0, gamma >= 0, alpha >= 0 and momentum in [0, 1); got "
                              f"tau {tau}, gamma {gamma}, alpha {alpha}, momentum {momentum}")
        self.heads, self.tau, self.gamma, self.alpha, self.momentum = heads, tau, gamma, alpha, momentum
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features).uniform_(-bound, bound))
        self.register_buffer("feature_mean", torch.zeros(in_features))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, -1))  # (..., D) -> (..., K, D / K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # float32 as TDE's: tau 16 magnifies bf16's rounding
            return self._logits(x.float())

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():  # (a biased-to-zero start only scales the direction: what TDE uses)
                self.feature_mean.mul_(self.momentum).add_(x.mean(0), alpha=1 - self.momentum)
        w = self._split(self.weight.float())  # (C, K, D/K)
        w = w / (w.norm(dim=-1, keepdim=True) + self.gamma)
        xk = F.normalize(self._split(x), dim=-1)  # (B, K, D/K)
        if not self.training and self.alpha > 0:
            d = F.normalize(self._split(self.feature_mean), dim=-1)  # (K, D/K)
            cos = (xk * d).sum(-1, keepdim=True)  # (B, K, 1)
            xk = xk - self.alpha * cos * d
        return torch.einsum("bkd,ckd->bc", xk, w) * (self.tau / self.heads)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        self.pad = 0
        self.stride = stride
        if stride != 1 or cin != cout:
            if shortcut == "A":  # parameter-free: subsample and zero-pad channels
                self.shortcut = None  # type: ignore[assignment]
                self.pad = cout - cin
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is None:
            sc = x[:, :, :: self.stride, :: self.stride]
            sc = F.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        else:
            sc = self.shortcut(x)
        return F.relu(out + sc)


class TwinBlock(nn.Module):
    """Two basic blocks side by side on the same input, their outputs concatenated on channels
    (B, 2 * cout, H, W): BBN's two branches (Zhou et al. 2020) closing its CIFAR ResNet-32."""

    def __init__(self, cin: int, cout: int, shortcut: str):
        super().__init__()
        self.branches = nn.ModuleList([BasicBlock(cin, cout, 1, shortcut), BasicBlock(cin, cout, 1, shortcut)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class CifarResNet(nn.Module):
    """3x3 stem, three stages of `n` basic blocks (strides 1, 2, 2), global pool, linear head.
    `twin_last`: the last block is a :class:`TwinBlock`, so the features are twice the last width.
    `init_fc`: the linear head Kaiming-initialised with the convolutions (LDAM's ResNet-32), else
    torch's default, as BBN's code (its classifier a module of its own, which its initialisation
    never reaches)."""

    def __init__(self, n: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int = 3,
                 shortcut: str = "A", cosine_head: bool = False, cosine_scale: float = 30.0, twin_last: bool = False,
                 causal_head: dict | None = None, init_fc: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for i, w in enumerate(widths[1:]):
            blocks = []
            for j in range(n):
                if twin_last and i == len(widths) - 2 and j == n - 1:
                    blocks.append(TwinBlock(cin, w, shortcut))
                    cin = 2 * w
                    break
                blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, shortcut))
                cin = w
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.feature_dim = cin
        if cosine_head and causal_head is not None:
            raise ConfigError("a model has one head: cosine_head or causal_head, not both")
        if causal_head is not None:  # (not an nn.Linear: it keeps its own initialisation)
            self.fc = CausalNormHead(cin, num_classes, **causal_head)
        else:
            self.fc = CosineLinear(cin, num_classes, cosine_scale) if cosine_head else nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and init_fc):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> dict:
        h = self.stem(x)
        feats = {"stem": h}
        return pooled_head(run_stages(h, self.stages, feats), self.fc, feats)


def _cifar_resnet(depth: int, widths, shortcut: str, twin_last: bool = False, init_fc: bool = True):
    n = (depth - 2) // 6

    def factory(num_classes: int, in_channels: int = 3, image_size: int = 32, cosine_head: bool = False,
                cosine_scale: float = 30.0, causal_head: dict | None = None):
        """`causal_head`: TDE's classifier (:class:`CausalNormHead`), a mapping of its
        parameters (heads, tau, gamma, alpha, momentum; {} for TDE's defaults)."""
        if causal_head is not None and not isinstance(causal_head, dict):
            raise ConfigError(f"causal_head is a mapping of the head's parameters (heads, tau, gamma, alpha, momentum), got {causal_head!r}")
        return CifarResNet(n, widths, num_classes, in_channels, shortcut, cosine_head, cosine_scale, twin_last,
                           causal_head, init_fc)

    return factory


for _depth in (20, 32, 44, 56, 110):
    MODELS.register(f"resnet{_depth}")(_cifar_resnet(_depth, (16, 16, 32, 64), "A"))
# BBN's CIFAR ResNet-32 (Zhou et al. 2020), the network of the CIFAR-LT runs built on its code (LADE's, TDE's):
# ResNet-32 whose last block is two parallel blocks, concatenated into 128-d features; its linear classifier keeps
# torch's default initialisation, as there
MODELS.register("bbn_resnet32")(_cifar_resnet(32, (16, 16, 32, 64), "A", twin_last=True, init_fc=False))
MODELS.register("resnet8x4")(_cifar_resnet(8, (32, 64, 128, 256), "B"))
MODELS.register("resnet32x4")(_cifar_resnet(32, (32, 64, 128, 256), "B"))
