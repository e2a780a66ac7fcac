"""The shape every task shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tuneforge.config import Recipe
from tuneforge.data.loading import Splits
from tuneforge.models import ModelSource


@dataclass
class Prepared:
    """Tokenised datasets plus what the run must remember about them (label maps, counts)."""

    splits: Splits
    train: Any  # datasets.Dataset
    validation: Any
    info: dict[str, Any] = field(default_factory=dict)  # stored in the run (run.json)


class Task(Protocol):
    name: str
    peft_task_type: str  # peft.TaskType name
    default_metric: str  # used to select the best checkpoint
    metric_names: tuple[str, ...]  # metrics a recipe may select on ("loss" always included)

    def prepare(self, recipe: Recipe, tokenizer) -> Prepared:
        """Read, validate and tokenise the data; errors name the file and line."""

    def build_model(self, source: ModelSource, prepared: Prepared, recipe: Recipe):
        """The base model with the task's head, before the method (LoRA, freeze) is applied."""

    def collator(self, tokenizer):
        """Pads each batch to its own longest example."""

    def trainer_metrics(self, prepared: Prepared, history: list[dict[str, Any]]):
        """A `compute_metrics` for the Trainer; full results are appended to `history`."""

    def evaluate_base(
        self, source: ModelSource, tokenizer, rows: list[dict], info: dict, recipe: Recipe, split: str
    ) -> dict[str, Any]:
        """Score the untouched base model the same way the tuned one is scored."""

    def evaluate(self, model, tokenizer, rows: list[dict], info: dict, recipe: Recipe, split: str) -> dict[str, Any]:
        """Score a tuned model on labelled rows."""

    def load_tuned(self, run_dir: Path, source: ModelSource, info: dict, method: str):
        """Rebuild the tuned model from a run directory."""

    def predict(self, model, tokenizer, texts: list[str], info: dict, recipe: Recipe) -> list[dict[str, Any]]:
        """Predictions for raw inputs, one dict per input."""
