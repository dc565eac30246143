"""Losses: pure functions of tensors (no state, no config objects)."""
from .classification import (
    balanced_softmax_loss, class_balanced_weights, cross_entropy, focal_loss,
    inverse_frequency_weights, lade_loss, lader_regularizer, ldam_loss, ldam_margins, logit_adjusted_loss, posthoc_logit_adjustment,
    soft_cross_entropy, vs_loss, vs_scales,
)
from .distill import (
    bkd_loss, cckd_loss, cosine_imitation_loss, dist_loss, dive_loss, dkd_loss, kd_loss, kl_rows,
    ltkd_loss, pair_supervised_loss, ride_diversity_loss, ride_diversity_temperatures, weighted_kd_loss,
)
from .contrastive import paco_loss
from .feature import cat_loss, class_activation_maps, hcl_loss

__all__ = [
    "balanced_softmax_loss", "class_balanced_weights", "cross_entropy", "focal_loss",
    "inverse_frequency_weights", "lade_loss", "lader_regularizer", "ldam_loss", "ldam_margins", "logit_adjusted_loss",
    "posthoc_logit_adjustment", "soft_cross_entropy", "vs_loss", "vs_scales", "bkd_loss", "cckd_loss",
    "cosine_imitation_loss",
    "dist_loss", "dive_loss", "dkd_loss", "kd_loss", "kl_rows", "ltkd_loss", "pair_supervised_loss",
    "ride_diversity_loss", "ride_diversity_temperatures",
    "weighted_kd_loss", "cat_loss", "class_activation_maps", "hcl_loss", "paco_loss",
]
