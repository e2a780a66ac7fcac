"""Per-example outcomes of an evaluation: what the intervals and the paired tests resample.

A task's `evaluate` / `evaluate_base` returns its metrics with one more key, `examples`: one list
per measure, one entry per scored example, in the order of the rows (classification: label,
predicted, probabilities, loss; sft and pretrain: each example's summed token loss and token
count, and the generated answers with their references; preference: each pair's outcome). Two
models scored on the same rows can then be compared example by example. The run keeps them in
`outcomes.json` (`{"base"|"tuned"|"start": {split: examples}}`), apart from `metrics.json`, which
stays small.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.files import write_json

EXAMPLES = "examples"
FILE = "outcomes.json"


def split_off(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The metrics without their per-example outcomes, and the outcomes (None if it has none)."""
    metrics = {k: v for k, v in result.items() if k != EXAMPLES}
    return metrics, result.get(EXAMPLES)


def split_all(
    results: dict[str, dict[str, Any]],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """`split_off` for each split of {split: result}: ({split: metrics}, {split: outcomes})."""
    metrics, outcomes = {}, {}
    for split, result in results.items():
        metrics[split], examples = split_off(result)
        if examples is not None:
            outcomes[split] = examples
    return metrics, outcomes


def save(run_path: Path, outcomes: dict[str, dict[str, Any]]) -> None:
    write_json(run_path / FILE, outcomes)


def load(run_path: Path) -> dict[str, dict[str, Any]]:
    """{"base"|"tuned"|"start": {split: examples}}; empty for runs older than outcomes."""
    path = Path(run_path) / FILE
    return json.loads(path.read_text()) if path.is_file() else {}
