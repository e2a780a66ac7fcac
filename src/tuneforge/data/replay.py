"""Replay: mix some of the parent run's training examples into a continued run's training data.

Training only on new data pulls a model away from what it learned before (catastrophic
forgetting); seeing a share of the old examples again limits that. `replay: 0.2` adds 20% of the
new training set's size, drawn (seeded) from the parent's training rows. Parent rows identical to
a new validation or test example are left out of the draw: they would leak into the evaluation.

The mixed rows are put in one shape the new recipe reads (its own column names; sft: chat
messages), so every task tokenises them through its usual `tokenize`.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any

from tuneforge.config import Recipe
from tuneforge.data.chat import ChatFields, conversation
from tuneforge.data.loading import Splits
from tuneforge.errors import TuneforgeError


def replay_count(fraction: float, n_new: int, n_available: int) -> int:
    """Rows to replay: `fraction` of the new training rows (half rounds up), at least one when
    replay is on, at most what the parent has."""
    if fraction <= 0 or n_available <= 0:
        return 0
    wanted = max(1, math.floor(fraction * n_new + 0.5))
    return min(wanted, n_available)


def sample_rows(rows: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """A seeded sample of `n` rows, kept in file order (same seed and rows, same sample)."""
    picked = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in picked]


def records(
    task: str, rows: list[dict[str, Any]], info: dict[str, Any], recipe: Recipe
) -> list[dict]:
    """Rows (read with the columns described by `info`) in the columns of `recipe`'s mixed file."""
    data = recipe.data
    if task == "classification":
        text, label = info["text_field"], info["label_field"]
        return [{data.text_field: r[text], data.label_field: r[label]} for r in rows]
    if task == "pretrain":
        return [{data.text_field: r["text"]} for r in rows]
    if task == "sft":
        fields = ChatFields.from_info(info["chat"])
        return [{"messages": conversation(r, fields, f"line {r.get('_line')}")} for r in rows]
    raise TuneforgeError(f"replay is not available for task {task}")


def _key(task: str, record: dict[str, Any], recipe: Recipe) -> str:
    """What makes two examples the same input (the label does not: same text = leakage)."""
    if task == "sft":
        return json.dumps(record["messages"], sort_keys=True)
    return " ".join(str(record[recipe.data.text_field]).split()).lower()


@dataclass
class Replay:
    fraction: float
    new_rows: int  # the new training set before replay
    available: int  # the parent's training rows
    left_out: int  # parent rows equal to a new validation/test example (not drawn)
    rows: list[dict[str, Any]]  # the replayed rows, in the new recipe's columns

    def summary(self, parent: str, source: str) -> dict[str, Any]:
        return {
            "fraction": self.fraction,
            "rows": len(self.rows),
            "new_train_rows": self.new_rows,
            "parent_train_rows": self.available,
            "left_out_as_leakage": self.left_out,
            "from_run": parent,
            "from_file": source,
        }


def draw(
    task: str,
    recipe: Recipe,
    new: Splits,
    new_info: dict[str, Any],
    parent_rows: list[dict[str, Any]],
    parent_info: dict[str, Any],
) -> Replay:
    """The seeded replay sample for a new training set, leaking rows excluded."""
    held_out = {
        _key(task, r, recipe)
        for rows in (new.validation, new.test or [])
        for r in records(task, rows, new_info, recipe)
    }
    candidates = [
        r
        for r in records(task, parent_rows, parent_info, recipe)
        if _key(task, r, recipe) not in held_out
    ]
    n = replay_count(recipe.replay, len(new.train), len(candidates))
    return Replay(
        fraction=recipe.replay,
        new_rows=len(new.train),
        available=len(parent_rows),
        left_out=len(parent_rows) - len(candidates),
        rows=sample_rows(candidates, n, recipe.training.seed),
    )


def mixed(
    task: str, recipe: Recipe, new: Splits, new_info: dict[str, Any], replay: Replay
) -> tuple[Recipe, Splits]:
    """The new splits plus the replayed rows, all in one shape, and the recipe that reads them.

    Rows are in the new recipe's columns (sft: chat messages for every split); the replayed rows
    come after the run's own training rows. Nothing is written or read again: the task tokenises
    these rows as they are.
    """
    splits = {}
    for split, rows in new.items():
        out = records(task, rows, new_info, recipe) + (replay.rows if split == "train" else [])
        splits[split] = [{**r, "_line": i + 1} for i, r in enumerate(out)]
    sources = {**new.sources, "train": f"{new.sources['train']} (+ replay)"}
    update: dict[str, Any] = {"data": recipe.data.model_copy(update={"validation_split": None})}
    if task == "sft":
        update["data"] = update["data"].model_copy(update={"messages_field": "messages"})
        update["sft"] = recipe.sft.model_copy(update={"format": "messages"})
    mixed_splits = Splits(splits["train"], splits["validation"], splits.get("test"), sources)
    return recipe.model_copy(update=update), mixed_splits
