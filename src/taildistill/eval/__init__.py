"""Evaluation: inference over a split, metrics from logits, the papers' analyses, calibration."""
from .metrics import classification_metrics, confusion_matrix, expected_calibration_error, summary
from .predict import eval_batches, evaluate_split, head_names, predict_split

__all__ = ["classification_metrics", "confusion_matrix", "expected_calibration_error", "summary",
           "eval_batches", "evaluate_split", "head_names", "predict_split"]
