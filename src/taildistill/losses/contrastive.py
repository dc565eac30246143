"""Parametric contrastive learning (PaCo; Cui et al., ICCV 2021), the objective of DeiT-LT's
contrastive "PaCo + SAM" teachers (DeiT-LT Sec. 4, A.2)."""
from __future__ import annotations

import torch

from .classification import one_hot_rows


def paco_loss(logits: torch.Tensor, features: torch.Tensor, feature_labels: torch.Tensor, target: torch.Tensor,
              class_prior: torch.Tensor, temperature: float = 0.05, alpha: float = 0.01, beta: float = 1.0,
              gamma: float = 1.0, feature_valid: torch.Tensor | None = None) -> torch.Tensor:
    """PaCo's loss, averaged over the B anchors (the queries).

    For anchor i, with embedding f_i (the first B rows of `features`) and classifier logits s_i, the
    contrast set is the C learnable class centres (the classifier, whose logits are logit-adjusted:
    s_i + log prior) and every other embedding f_j (the keys, the queue) at temperature T:

        L_i = - sum_{p in P(i)} w_p log [ exp(z_ip) / (sum_c exp(z_ic) + gamma sum_{j != i} exp(z_ij)) ] / sum_p w_p

    with z_ic = s_ic + log prior_c, z_ij = f_i . f_j / T, and positives P(i): the centre of i's class
    (weight beta) and every embedding of i's class other than f_i (weight alpha each).

    logits: (B, C) classifier logits of the queries; features: (N, D) L2-normalised embeddings, rows
    0..B-1 the queries themselves, the rest keys and queue (N >= B); feature_labels: (N,) their
    classes; target: (B,); class_prior: (C,) training class frequencies; feature_valid: (N,) bool,
    False for rows to leave out of the contrast (a queue slot not yet filled). Returns a scalar.
    """
    B, C = logits.shape
    N = features.shape[0]
    sims = (features[:B].float() @ features.float().T) / temperature  # (B, N)
    z = torch.cat([logits.float() + class_prior.clamp_min(1e-9).log(), sims], 1)  # (B, C + N); (an empty class: finite)
    z = z - z.max(1, keepdim=True).values.detach()  # (for numerical stability; cancels out)
    keep = torch.ones(B, N, device=z.device).scatter_(1, torch.arange(B, device=z.device)[:, None], 0.0)  # not itself
    if feature_valid is not None:
        keep = keep * feature_valid[None].to(keep.dtype)
    denominator = torch.cat([torch.ones(B, C, device=z.device), gamma * keep], 1)
    log_prob = z - (z.exp() * denominator).sum(1, keepdim=True).log()
    same = (target[:, None] == feature_labels[None]).to(keep.dtype) * keep
    weights = torch.cat([beta * one_hot_rows(target, C), alpha * same], 1)  # (the class centre, the same class)
    return (-(weights * log_prob).sum(1) / weights.sum(1)).mean()
