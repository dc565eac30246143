"""Distillation losses: pure functions of tensors, documented with the papers' equations.

Conventions: logits are (B, C); every KL-based term is multiplied by T^2 (Hinton et al.) and
averaged over the batch; each function returns a scalar tensor. The teacher side is treated as
a constant target (callers pass teacher logits computed without gradient).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .classification import one_hot_rows


def kl_rows(p_target: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, with 0 log 0 = 0. p (B, K) probabilities, log_q (B, K). Returns (B,)."""
    return (torch.xlogy(p_target, p_target) - p_target * log_q).sum(-1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD: T^2 * mean_b KL(softmax(t/T) || softmax(s/T))."""
    T = temperature
    p_t = F.softmax(teacher_logits.float() / T, dim=1)
    return T * T * kl_rows(p_t, F.log_softmax(student_logits.float() / T, dim=1)).mean()


def bkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, class_weights: torch.Tensor,
             temperature: float = 2.0) -> torch.Tensor:
    """Balanced KD (BKD Eq. 8 without its CE term): q = normalise(w * softmax(t/T)) per sample,
    then T^2 * mean_b KL(q || softmax(s/T)). `class_weights` (C,), e.g. effective-number weights."""
    T = temperature
    q = F.softmax(teacher_logits.float() / T, dim=1) * class_weights.to(teacher_logits.device)[None, :]
    q = q / q.sum(1, keepdim=True)
    return T * T * kl_rows(q, F.log_softmax(student_logits.float() / T, dim=1)).mean()


def weighted_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                     class_weights: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Weighted KD (WKD): each sample's KD term weighted by its label's class weight
    (e.g. inverse frequency, normalised to sum to C): T^2 * mean_b w_{y_b} KL_b."""
    T = temperature
    p_t = F.softmax(teacher_logits.float() / T, dim=1)
    per = kl_rows(p_t, F.log_softmax(student_logits.float() / T, dim=1))
    return T * T * (class_weights.to(per.device)[target] * per).mean()


def _group_logsumexp(z: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """log sum_{i in G} exp(z_i) for every group. z (B, C), groups (C,) -> (B, G)."""
    idx = groups[None, :].expand_as(z)
    m = torch.full((z.shape[0], num_groups), -torch.inf, device=z.device, dtype=z.dtype)
    m = m.scatter_reduce(1, idx, z, reduce="amax", include_self=True).detach()
    s = torch.zeros_like(m).scatter_add(1, idx, torch.exp(z - m.gather(1, idx)))
    return m + torch.log(s)


def ltkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, class_groups: torch.Tensor,
              alpha: float = 1.0, beta: float = 1.0, temperature: float = 1.0, *,
              rebalance: bool = True, teacher_weighted_within: bool = False,
              num_groups: int | None = None) -> torch.Tensor:
    """Long-tailed KD (LTKD Eq. 9-14).

    With p = softmax(z/T) and group probabilities P_G = sum_{i in G} p_i (Eq. 3):
    batch totals S_G = sum_b P^T_{b,G}; scales s_G = mean_G(S) / S_G (Eq. 9-10); rebalanced
    teacher groups P^_{b,G} = s_G P^T_{b,G} / sum_G' s_G' P^T_{b,G'} (Eq. 11);
    cross = KL(P^_b || P^S_b); within = sum_G KL(p~^T_{b,G} || p~^S_{b,G}) with p~_G the softmax
    restricted to G (Eq. 4, 13). Returns T^2 * mean_b(alpha * cross + beta * within) (Eq. 14).

    `class_groups` (C,) holds group ids; ids that no class uses are ignored. Callers that know
    their ids are exactly 0..num_groups-1 pass `num_groups`, which skips the compaction (a
    data-dependent `unique` that would make the host wait for the device every step). With
    ``rebalance=False, teacher_weighted_within=True`` (each within term weighted by P^T_G instead
    of beta) and alpha = 1 this is exactly KD (Eq. 8).
    """
    T = temperature
    if num_groups is None:
        groups = torch.unique(class_groups.to(student_logits.device), return_inverse=True)[1]
        G = int(groups.max()) + 1
    else:
        groups, G = class_groups.to(student_logits.device), num_groups
    zs, zt = student_logits.float() / T, teacher_logits.float() / T
    lse_s, lse_t = _group_logsumexp(zs, groups, G), _group_logsumexp(zt, groups, G)
    log_PS = lse_s - torch.logsumexp(zs, dim=1, keepdim=True)  # (B, G) log group probabilities
    log_PT = lse_t - torch.logsumexp(zt, dim=1, keepdim=True)
    PT = log_PT.exp()
    if rebalance:
        # Eq. 9-11 in log space: log s_G = log mean_G(S) - log S_G; a group with no teacher mass
        # in the whole batch (S_G = 0 after underflow) keeps zero mass (its scale is irrelevant)
        log_S = torch.logsumexp(log_PT, dim=0)  # (G,)
        log_mean = torch.logsumexp(log_S, dim=0) - math.log(G)
        shift = torch.where(torch.isfinite(log_S), log_mean - log_S, torch.zeros_like(log_S))
        PT_hat = torch.softmax(log_PT + shift[None, :], dim=1)
    else:
        PT_hat = PT
    cross = kl_rows(PT_hat, log_PS)
    # within-group distributions in log space: log p~_i = z_i - lse_G(z)
    log_ws = zs - lse_s.gather(1, groups[None, :].expand_as(zs))
    log_wt = zt - lse_t.gather(1, groups[None, :].expand_as(zt))
    wt = log_wt.exp()
    per_class = wt * (log_wt - log_ws)  # (B, C)
    within_g = torch.zeros_like(PT).scatter_add(1, groups[None, :].expand_as(per_class), per_class)
    if teacher_weighted_within:
        within = (PT * within_g).sum(1)
        loss = alpha * cross + within
    else:
        loss = alpha * cross + beta * within_g.sum(1)
    return T * T * loss.mean()


def cckd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_prior: torch.Tensor,
              train_prior: torch.Tensor, test_prior: torch.Tensor | None = None,
              temperature: float = 2.0) -> torch.Tensor:
    """Class-conditional KD (CCKD Eq. 3-8):
    q = softmax((t - log p^t(y)) / T) is the teacher's debiased p(x|y) direction; the student
    side r = softmax((s + log p_tr(y) - log p_te(y)) / T). Returns T^2 * mean_b KL(q || r).
    `test_prior` None means uniform. Priors are (C,) probability vectors."""
    T = temperature
    dev = student_logits.device
    zt = teacher_logits.float() - torch.log(teacher_prior.to(dev).float())[None, :]
    zs = student_logits.float() + torch.log(train_prior.to(dev).float())[None, :]
    if test_prior is not None:
        zs = zs - torch.log(test_prior.to(dev).float())[None, :]
    q = F.softmax(zt / T, dim=1)
    return T * T * kl_rows(q, F.log_softmax(zs / T, dim=1)).mean()


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> torch.Tensor:
    """Decoupled KD (Zhao et al. 2022): alpha * TCKD + beta * NCKD, each T^2-scaled, batch mean.
    TCKD = KL([p_t, 1-p_t] teacher || student) on the target class; NCKD = KL between the
    distributions over the non-target classes."""
    T = temperature
    zs, zt = student_logits.float() / T, teacher_logits.float() / T
    gt = one_hot_rows(target, zs.shape[1], torch.bool)
    ps, pt = F.softmax(zs, dim=1), F.softmax(zt, dim=1)
    # the target class's probabilities by gather: a boolean-mask index (ps[gt]) has a data-dependent
    # size, which costs a device sync per step and cannot be captured in a CUDA graph
    ps_y, pt_y = ps.gather(1, target[:, None]).squeeze(1), pt.gather(1, target[:, None]).squeeze(1)
    bs = torch.stack([ps_y, 1 - ps_y], dim=1).clamp_min(1e-12)
    bt = torch.stack([pt_y, 1 - pt_y], dim=1)
    tckd = kl_rows(bt, torch.log(bs))
    masked_s = F.log_softmax(zs.masked_fill(gt, -torch.inf), dim=1).masked_fill(gt, 0.0)
    masked_t = F.softmax(zt.masked_fill(gt, -torch.inf), dim=1)
    nckd = kl_rows(masked_t, masked_s)
    return T * T * (alpha * tckd + beta * nckd).mean()


def dive_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 3.0,
              power: float = 0.5) -> torch.Tensor:
    """DiVE distillation term (He et al. 2021): the teacher's softened distribution is flattened
    by a power (q ∝ softmax(t/T) ** power, power < 1 flattens) before T^2 * mean_b KL(q || softmax(s/T))."""
    T = temperature
    q = F.softmax(teacher_logits.float() / T, dim=1) ** power
    q = q / q.sum(1, keepdim=True)
    return T * T * kl_rows(q, F.log_softmax(student_logits.float() / T, dim=1)).mean()


def _pearson_distance(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    cos = (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + 1e-8)
    return 1.0 - cos


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0,
              gamma: float = 1.0, temperature: float = 1.0) -> torch.Tensor:
    """DIST (Huang et al. 2022): beta * T^2 * inter-class relation (1 - Pearson between each
    sample's student and teacher distributions, batch mean) + gamma * T^2 * intra-class relation
    (1 - Pearson between each class's columns, class mean)."""
    T = temperature
    ps, pt = F.softmax(student_logits.float() / T, dim=1), F.softmax(teacher_logits.float() / T, dim=1)
    inter = _pearson_distance(ps, pt, dim=1).mean()
    intra = _pearson_distance(ps, pt, dim=0).mean()
    return T * T * (beta * inter + gamma * intra)


def cosine_imitation_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
                          sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Feature imitation (CCKD Eq. 15): mean_b w_b (1 - cos(g^t(x_b), g^s(x_b))). Features (B, D)
    (the student's already projected to the teacher's width). `sample_weights` (B,) None = 1."""
    per = 1.0 - F.cosine_similarity(student_features.float(), teacher_features.float(), dim=1)
    if sample_weights is not None:
        per = per * sample_weights
    return per.mean()


def pair_supervised_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         y_a: torch.Tensor, y_b: torch.Tensor, log_train_prior: torch.Tensor | None = None) -> torch.Tensor:
    """ACCKD's supervised loss on a mixed sample (CCKD Eq. 13-14): the teacher's two-class
    softmax over (y_a, y_b) weighs -log p^s_tr(y_a) and -log p^s_tr(y_b). When
    `log_train_prior` is given the student's training-distribution probability is formed by
    adding it to the logits (the logit-adjusted view, as for L_sup). Batch mean."""
    zt = teacher_logits.float()
    pair = torch.stack([zt.gather(1, y_a[:, None]).squeeze(1), zt.gather(1, y_b[:, None]).squeeze(1)], 1)
    w = F.softmax(pair, dim=1)
    same = y_a == y_b
    # (1, 0) for a sample mixed with its own class, built on the device (a host tensor would be a copy per step)
    w = torch.where(same[:, None], one_hot_rows(torch.zeros_like(y_a), 2, w.dtype), w)
    zs = student_logits.float()
    if log_train_prior is not None:
        zs = zs + log_train_prior.to(zs.device)[None, :]
    logp = F.log_softmax(zs, dim=1)
    return -(w[:, 0] * logp.gather(1, y_a[:, None]).squeeze(1) + w[:, 1] * logp.gather(1, y_b[:, None]).squeeze(1)).mean()


def ride_diversity_temperatures(class_counts, base_temperature: float = 1.0, reweight_factor: float = 0.05) -> torch.Tensor:
    """RIDE's distribution-aware diversity temperatures (Wang et al. 2021), used once deferred
    re-weighting is on: T_c = T0 * w_c / max_k w_k with w_c = C * p_c * f + 1 - f, p_c the training
    prior and f the re-weighting factor, so head classes are compared at higher temperatures.
    `class_counts` (C,). Returns (C,) float32."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    w = counts.numel() * counts / counts.sum() * reweight_factor + 1 - reweight_factor
    return (base_temperature * w / w.max()).float()


def ride_diversity_loss(expert_logits: torch.Tensor, temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """RIDE's diversity term (Wang et al. 2021), summed over experts: sum_e Tbar^2 * mean_b
    KL(softmax(zbar/T) || softmax(z_e/T)), zbar the experts' mean logits as a constant target
    (computed without gradient, as in RIDE). `temperature` is a number or per-class (C,) tensor
    (then Tbar is its mean). The RIDE objective *subtracts* it, weighted, to push the experts
    apart. expert_logits (B, E, C)."""
    z = expert_logits.float()
    per_class = isinstance(temperature, torch.Tensor)
    T = temperature.to(z.device).view(1, 1, -1) if per_class else temperature
    t_mean = temperature.float().mean() if per_class else temperature
    with torch.no_grad():
        p_mean = F.softmax(z.mean(1, keepdim=True) / T, dim=2)  # (B, 1, C)
    # every expert at once (the target broadcast over E): one kernel per op, not one per expert
    return t_mean * t_mean * kl_rows(p_mean, F.log_softmax(z / T, dim=2)).mean(0).sum()
