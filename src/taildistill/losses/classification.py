"""Long-tail classification losses: pure functions of tensors.

Shapes: logits (B, C); target either hard labels (B,) int64 or soft targets (B, C) that sum to 1.
Every loss returns a scalar (mean over the batch, weighted where a class weight is given).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def _as_tensor(x, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32, device=like.device)


def class_balanced_weights(class_counts: Sequence[int] | torch.Tensor, beta: float = 0.9999) -> torch.Tensor:
    """Effective-number class weights (Cui et al. 2019; BKD Eq. 2):
    ``w_c = (1 - beta) / (1 - beta ** n_c)``, rescaled so that ``sum_c w_c = C``. Returns (C,) float32."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (w / w.sum() * len(n)).float()


def inverse_frequency_weights(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``w_c ∝ 1 / n_c`` rescaled to sum to C. Returns (C,) float32."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    w = 1.0 / n
    return (w / w.sum() * len(n)).float()


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """-sum_c t_c log softmax(z)_c, averaged over the batch (weighted by w_c t_c when `weight`)."""
    logp = F.log_softmax(logits.float(), dim=1)
    t = target.float() if weight is None else target.float() * weight[None, :]
    per_sample = -(t * logp).sum(1)
    if weight is None:
        return per_sample.mean()
    return per_sample.sum() / (target.float() * weight[None, :]).sum()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy with optional label smoothing and class weights; hard or soft targets."""
    if target.dim() == 1:
        return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=label_smoothing)
    if label_smoothing:
        target = target * (1 - label_smoothing) + label_smoothing / target.shape[1]
    return soft_cross_entropy(logits, target, weight)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 1.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): -w_y (1 - p_y)^gamma log p_y, mean over the batch
    (weighted mean when `weight`, so CB-focal = focal with class_balanced_weights)."""
    logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
    loss = -((1 - logp.exp()) ** gamma) * logp
    if weight is None:
        return loss.mean()
    w = weight[target]
    return (w * loss).sum() / w.sum()


def one_hot_rows(target: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B,) int64 labels -> (B, C) one-hot rows, by a scatter on the labels' device. F.one_hot
    checks the labels' range with a host read on the CPU, which an emulated graph capture refuses
    (tests/graph_emulator.py); the scatter gives the same rows without one."""
    return torch.zeros(target.shape[0], num_classes, dtype=dtype, device=target.device).scatter_(1, target[:, None], 1)


def ldam_margins(class_counts: Sequence[int], max_margin: float = 0.5) -> torch.Tensor:
    """LDAM margins (Cao et al. 2019): ``m_c ∝ n_c^(-1/4)``, the largest equal to `max_margin`."""
    m = torch.as_tensor(class_counts, dtype=torch.float64) ** -0.25
    return (m * (max_margin / m.max())).float()


def ldam_loss(logits: torch.Tensor, target: torch.Tensor, margins: torch.Tensor, scale: float = 30.0,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """LDAM (Cao et al. 2019): (weighted) CE(s * (cos - m_y 1_y)) = CE(z - s m_y 1_y) with
    z = s * cos the logits of a cosine head of scale `scale` (s), which applies s itself. Margins
    `margins` (C,) are in cosine units, so the true-class logit is lowered by s * m_y."""
    margins = margins.to(logits.device)
    adjusted = logits.float() - one_hot_rows(target, logits.shape[1]) * (scale * margins[target])[:, None]
    return F.cross_entropy(adjusted, target, weight=weight)


def logit_adjusted_loss(logits: torch.Tensor, target: torch.Tensor, class_prior: torch.Tensor,
                        tau: float = 1.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Logit-adjustment loss (Menon et al. 2021): CE(z + tau * log pi_y), class-weighted when
    `weight` (C,) is given (DRW). Hard or soft targets."""
    adjusted = logits.float() + tau * torch.log(_as_tensor(class_prior, logits))[None, :]
    return cross_entropy(adjusted, target, weight=weight)


def vs_scales(class_counts: Sequence[int] | torch.Tensor, gamma: float) -> torch.Tensor:
    """VS loss's multiplicative logit scales (Kini et al. 2021): ``Delta_c = (n_c / n_max)^gamma``,
    1 for the largest class and smaller for rarer ones. Returns (C,) float32."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    return ((n / n.max()) ** gamma).float()


def vs_loss(logits: torch.Tensor, target: torch.Tensor, scales: torch.Tensor, class_prior: torch.Tensor,
            tau: float = 1.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Vector-scaling loss (Kini et al. 2021, Eq. 4): CE(Delta_c z_c + tau log pi_c) with `scales`
    Delta (C,) = :func:`vs_scales` (n_c / n_max)^gamma and pi (C,) the training prior, class-weighted
    when `weight` (C,) is given (DRW). gamma = 0 is logit adjustment, tau = 0 the multiplicative
    (CDT) adjustment alone. Hard or soft targets. (The scales and prior are given, not the counts:
    the loss runs every step, they once.)"""
    adjusted = logits.float() * _as_tensor(scales, logits)[None, :] + tau * torch.log(_as_tensor(class_prior, logits))[None, :]
    return cross_entropy(adjusted, target, weight=weight)


def lader_regularizer(logits: torch.Tensor, target: torch.Tensor, class_prior: torch.Tensor,
                      remine_lambda: float = 0.1) -> torch.Tensor:
    """LADER (Hong et al. 2021, LADE Sec. 4): the logits f (B, C) made the Donsker-Varadhan
    optimum of KL(p(x|y) || p_u(x)), i.e. f_y(x) = log p(x|y) / p_u(x), the log-likelihood ratio
    against the uniform-label marginal, estimated on the batch for every class y:

        DV_y = sum_i t_iy f_y(x_i) / sum_i t_iy  -  log( (1/B) sum_i exp(f_y(x_i)) * p_u(y) / p_s(y) ),
        L = - sum_y p_s(y) * (DV_y - lambda * L2_y),  L2_y = (the log term)^2,

    with p_s = `class_prior` (C,) the training prior, p_u = 1/C, t (B, C) the target rows (one-hot,
    or mixup's soft targets, for which the first term is the target-weighted mean) and lambda
    `remine_lambda` ReMINE's penalty that pins the log term (the estimator's free constant) to 0.
    A class absent from the batch has no first term and keeps its log term. The LADE paper is
    not among the papers this project holds: the estimator follows the authors' published code,
    which produced the numbers BKD Table 1 cites. Returns a scalar."""
    f = logits.float()
    rows = target.float() if target.dim() == 2 else one_hot_rows(target, f.shape[1])
    prior = _as_tensor(class_prior, f)
    in_class = rows.sum(0)  # (C,) the batch's (soft) count of each class
    first = (rows * f).sum(0) / in_class.clamp_min(1e-8)  # 0 for a class absent from the batch
    importance = math.log(1.0 / f.shape[1]) - torch.log(prior)  # log p_u(y) / p_s(y), (C,)
    log_mean = torch.logsumexp(f + importance[None, :], dim=0) - math.log(f.shape[0])  # (C,)
    return -(prior * (first - log_mean - remine_lambda * log_mean ** 2)).sum()


def lade_loss(logits: torch.Tensor, target: torch.Tensor, class_prior: torch.Tensor, alpha: float = 0.1,
              remine_lambda: float = 0.1, weight: torch.Tensor | None = None) -> torch.Tensor:
    """LADE (Hong et al. 2021): LADE-CE, cross-entropy on f + log p_s (the logit-adjusted loss at
    tau 1, :func:`logit_adjusted_loss`; class-weighted when `weight` (C,) is given), plus `alpha`
    x :func:`lader_regularizer`. The raw logits f then predict under a uniform test prior (PC
    softmax with p_t uniform). Hard or soft targets. Returns a scalar."""
    return (logit_adjusted_loss(logits, target, class_prior, 1.0, weight)
            + alpha * lader_regularizer(logits, target, class_prior, remine_lambda))


def posthoc_logit_adjustment(logits: torch.Tensor, class_prior: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Post-hoc logit adjustment (Menon et al. 2021): z - tau * log pi. Returns (B, C)."""
    return logits - tau * torch.log(_as_tensor(class_prior, logits))[None, :]


def balanced_softmax_loss(logits: torch.Tensor, target: torch.Tensor, class_counts: Sequence[int] | torch.Tensor,
                          weight: torch.Tensor | None = None) -> torch.Tensor:
    """Balanced softmax (Ren et al. 2020): CE(z + log n_c), class-weighted when `weight` (C,) is
    given (DRW). Hard or soft targets."""
    log_n = torch.log(_as_tensor(class_counts, logits))
    return cross_entropy(logits.float() + log_n[None, :], target, weight=weight)
