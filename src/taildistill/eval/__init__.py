"""Evaluation: metrics from logits and the evaluation of runs and checkpoints."""
from .metrics import classification_metrics, confusion_matrix, expected_calibration_error, summary

__all__ = ["classification_metrics", "confusion_matrix", "expected_calibration_error", "summary"]
