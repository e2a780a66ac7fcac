"""Forgetting check: did continuing on new data cost what the parent version could do?

The parent's validation set is scored with the starting model (the parent version, before any
new training) and with the new model after training; the change on the selection metric says
how much was forgotten (or gained). Both scores come from this run, on the same rows, with the
parent's evaluation settings, so the comparison is like for like.
"""

from __future__ import annotations

from typing import Any

from tuneforge.evaluation.metrics import LOWER_IS_BETTER
from tuneforge.evaluation.outcomes import EXAMPLES


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def forgetting_summary(
    *,
    parent_run: str,
    parent_model: str | None,
    data: str,
    metric: str,
    before: dict[str, Any],
    after: dict[str, Any],
) -> dict[str, Any]:
    """The record stored in metrics.json under `forgetting`.

    `change` = after - before on `metric`; `worse` says whether that change is a loss of quality
    (a rise for loss/perplexity, a drop for every other metric).
    """
    b, a = before[metric], after[metric]
    change = a - b
    lower_is_better = metric in LOWER_IS_BETTER
    return {
        "parent_run": parent_run,
        "parent_model": parent_model,
        "split": "validation",
        "data": data,
        "n": after.get("n"),
        "metric": metric,
        "before": b,
        "after": a,
        "change": change,
        "relative_change": None if b == 0 else change / abs(b),
        "lower_is_better": lower_is_better,
        "worse": change > 0 if lower_is_better else change < 0,
        "before_metrics": scalars(before),
        "after_metrics": scalars(after),
        **_interval(metric, before, after),
    }


def _interval(metric: str, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The change's paired bootstrap interval over the parent's validation examples (both
    measurements hold their per-example outcomes), and whether it is significant."""
    from tuneforge.evaluation.intervals import compare  # deferred: CLI start (numpy, sacrebleu)

    if EXAMPLES not in before or EXAMPLES not in after:
        return {}
    found = compare(before[EXAMPLES], after[EXAMPLES]).get(metric)
    if found is None:
        return {}
    return {"interval": found["interval"], "significant": found["significant"]}


def describe(forgetting: dict[str, Any]) -> str:
    """One line for the end of `train`."""
    if forgetting.get("skipped"):
        return f"Forgetting check skipped: {forgetting['skipped']}"
    f = forgetting
    verdict = "worse" if f["worse"] else "not worse"
    return (
        f"Forgetting check on the parent's validation set ({f['parent_model'] or f['parent_run']}, "
        f"n={f['n']}): {f['metric']} {f['before']:.4f} before -> {f['after']:.4f} after "
        f"({f['change']:+.4f}, {verdict})"
    )
