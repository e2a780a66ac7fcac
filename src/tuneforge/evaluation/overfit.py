"""Detect overfitting from the evaluation history: validation worsens while training improves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneforge.evaluation.metrics import LOWER_IS_BETTER


@dataclass(frozen=True)
class OverfitFinding:
    began_step: int  # the last evaluation before the validation side started to worsen
    detected_step: int  # the evaluation at which the streak reached `patience`
    metric: str
    message: str


def detect_overfitting(
    evaluations: list[dict[str, Any]], metric: str = "loss", patience: int = 2
) -> OverfitFinding | None:
    """The first point after which, for `patience` evaluations in a row, the validation `metric`
    got worse while the training loss kept going down.

    `evaluations` are dicts with `step`, `train_loss` and the validation `metric` (as written to
    metrics.json). Lower is better for losses and perplexities, higher for everything else.
    """
    lower_is_better = metric in LOWER_IS_BETTER
    streak = 0
    for k in range(1, len(evaluations)):
        prev, cur = evaluations[k - 1], evaluations[k]
        if None in (
            prev.get(metric),
            cur.get(metric),
            prev.get("train_loss"),
            cur.get("train_loss"),
        ):
            streak = 0
            continue
        worse = cur[metric] > prev[metric] if lower_is_better else cur[metric] < prev[metric]
        train_better = cur["train_loss"] < prev["train_loss"]
        streak = streak + 1 if worse and train_better else 0
        if streak >= patience:
            began = evaluations[k - patience]
            return OverfitFinding(
                began_step=began["step"],
                detected_step=cur["step"],
                metric=metric,
                message=(
                    f"overfitting: validation {metric} worsened for {patience} evaluations in a row "
                    f"after step {began['step']} while the training loss kept falling"
                ),
            )
    return None
