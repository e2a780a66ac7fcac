"""Classification metrics via scikit-learn, in one JSON-ready dict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# every other metric: higher is better. ECE (classification calibration; `_scaled`: after
# temperature scaling) is never a selection metric (a task's metric_names), so the promotion gate,
# early stopping and `runs list` (the selection metric) never compare it; the tables show it.
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "ece", "ece_scaled"})

# Headline metrics of every task, in the order the report and the model card show them.
HEADLINE_METRICS = (
    "accuracy",
    "macro_f1",
    "exact_match",
    "first_line_exact_match",
    "rouge_l",
    "chrf",
    "bleu",
    "preference_accuracy",
    "logp_margin",
    "reward_accuracy",
    "reward_margin",
    "kl",
    "ece",
    "ece_scaled",
    "loss",
    "perplexity",
)


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import (  # deferred: CLI start (sklearn)
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0
    )
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": list(labels),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def error_reduction(base_score: float, tuned_score: float) -> float | None:
    """Percent of the base model's errors (1 - score) that the tuned model removes."""
    base_error = 1.0 - base_score
    if base_error <= 0:
        return None
    return 100.0 * (base_error - (1.0 - tuned_score)) / base_error


def relative_drop(base: float, tuned: float) -> float | None:
    """Percent decrease from base to tuned (for losses and perplexities)."""
    if base == 0 or not math.isfinite(base) or not math.isfinite(tuned):
        return None
    return 100.0 * (base - tuned) / base
