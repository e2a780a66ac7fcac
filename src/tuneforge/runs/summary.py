"""What a run's registry entry says in brief, and how two runs differ: the headline metric, the
recipe fields that differ, the tuned metrics side by side. Plain data, for `tuneforge runs` and the
dashboard alike."""

from __future__ import annotations

from typing import Any


def headline(metrics: dict | None) -> dict[str, Any] | None:
    """The run's selection metric on its test split (else validation), base and tuned."""
    if not metrics:
        return None
    metric = metrics["selection_metric"]
    split = "test" if "test" in metrics["tuned"] else "validation"
    return {
        "split": split,
        "metric": metric,
        "base": metrics.get("base", {}).get(split, {}).get(metric),
        "tuned": metrics["tuned"].get(split, {}).get(metric),
    }


def recipe_differences(a: dict, b: dict) -> list[dict[str, Any]]:
    """The recipe fields (dotted names) whose values differ: [{field, a, b}]; absent is None."""
    flat_a, flat_b = flatten(a), flatten(b)
    return [
        {"field": key, "a": flat_a.get(key), "b": flat_b.get(key)}
        for key in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(key) != flat_b.get(key)
    ]


def metric_pairs(a: dict, b: dict) -> list[dict[str, Any]]:
    """Every tuned split/metric of either run: [{split, metric, a, b}]; missing is None."""
    tuned_a, tuned_b = a.get("tuned", {}), b.get("tuned", {})
    pairs = []
    for split in sorted(set(tuned_a) | set(tuned_b)):
        in_a, in_b = tuned_a.get(split, {}), tuned_b.get(split, {})
        for name in sorted(set(in_a) | set(in_b)):
            pairs.append({"split": split, "metric": name, "a": in_a.get(name), "b": in_b.get(name)})
    return pairs


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat
