"""The shape every task shares.

The trainer, the run and the CLI talk to a task only through the methods of :class:`Task`, which
every task subclasses, so they never branch on the task name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge import devices
from tuneforge.architectures import check_architecture
from tuneforge.config import Recipe
from tuneforge.data.check import Example
from tuneforge.data.loading import Splits, lenient_splits
from tuneforge.data.readers import require_column, row_where
from tuneforge.errors import TuneforgeError
from tuneforge.models import ModelSource, load_causal_lm
from tuneforge.precision import ready_for_inference


@dataclass
class Prepared:
    """Tokenised datasets plus what the run must remember about them (label maps, counts)."""

    splits: Splits
    train: Any  # datasets.Dataset
    validation: Any
    info: dict[str, Any] = field(default_factory=dict)  # stored in the run (run.json)
    # Tokens of each row of a split as the model gets them (before any cut), in the order of
    # `splits`, for the splits tokenised here: the data check's token figures, not re-counted.
    lengths: dict[str, list[int]] = field(default_factory=dict)


def base_language_model(source: ModelSource, recipe: Recipe, precision: str = "fp32"):
    """The untouched base causal LM on the recipe's device (the base model's scoring), in
    `precision` (bf16: on a CPU, beside a tuned model that runs in bf16)."""
    model = load_causal_lm(source.path, trust_remote_code=recipe.trust_remote_code)
    return ready_for_inference(model, devices.resolve(recipe.device), precision)


@dataclass
class Preview:
    """One example as the model will see it: (text, style) pieces, style trained|context|special."""

    title: str
    pieces: list[tuple[str, str]]
    note: str = ""


class Task:
    """What every task implements, and the defaults a task may keep.

    Each task writes the methods that raise NotImplementedError here (`prepare` ... `predict`);
    the rest have defaults that a task overrides where they apply to it. The trainer, the run,
    the data check and the CLI call these methods and never branch on the task's name.
    """

    name: str = "task"
    peft_task_type: str  # peft.TaskType name
    default_metric: str  # used to select the best checkpoint
    metric_names: tuple[str, ...]  # metrics a recipe may select on ("loss" always included)
    truncates: bool = True  # examples over training.max_length are cut (data check: truncation)
    # tasks whose runs this task's runs may continue (`base_model: run:<id>`); default: its own
    starts_from: tuple[str, ...] = ()
    # A bf16 run of this task is used in bf16 for inference on a CPU with native bf16 (else
    # fp32). Not for generating tasks: greedy answers must match the fp32 exports, and in bf16
    # only 7 of 16 support answers were identical for a 1.16x faster generation (issue 22).
    infers_in_bf16: bool = False
    # The transformers model class the task builds on (tuneforge.architectures.HEADS).
    head: str = "causal_lm"

    def check_base_model(self, source: ModelSource, recipe: Recipe) -> None:
        """Refuse, before any data is read, a base model whose family lacks this task's head."""
        check_architecture(
            source.path, self.head, self.name, trust_remote_code=recipe.trust_remote_code
        )

    def read(self, recipe: Recipe, recipe_dir: Path = Path(".")) -> Splits:
        """Read and validate the recipe's data files (once per run); errors name file and line."""
        raise NotImplementedError

    def columns(self, recipe: Recipe, splits: Splits) -> dict[str, Any]:
        """How these rows are laid out (text/label columns, chat fields): the part of the run's
        `info` that reading rows back (replay, eval, predict) needs."""
        raise NotImplementedError

    def tokenize(self, splits: Splits, recipe: Recipe, tokenizer) -> Prepared:
        """The rows `read` returned as the model's datasets, plus the run's `info`."""
        raise NotImplementedError

    def build_model(self, source: ModelSource, prepared: Prepared, recipe: Recipe, tokenizer=None):
        """The base model with the task's head, before the method (LoRA, freeze) is applied."""
        raise NotImplementedError

    def collator(self, tokenizer):
        """Batches examples for the Trainer (padding each batch to its own longest example)."""
        raise NotImplementedError

    def trainer_metrics(self, prepared: Prepared, history: list[dict[str, Any]]):
        """A `compute_metrics` for the Trainer, or None to gather no logits (loss only)."""
        raise NotImplementedError

    def evaluate_base(
        self,
        source: ModelSource,
        tokenizer,
        splits: dict[str, list[dict]],
        info: dict,
        recipe: Recipe,
    ) -> dict[str, dict[str, Any]]:
        """Score the untouched base model the same way the tuned one is scored, on each split
        ({split name: rows} -> {split name: metrics}); the model is loaded once for them all."""
        raise NotImplementedError

    def evaluate(
        self, model, tokenizer, rows: list[dict], info: dict, recipe: Recipe, split: str
    ) -> dict[str, Any]:
        """Score a tuned model on labelled rows."""
        raise NotImplementedError

    def generating(self, recipe: Recipe, n: int) -> Recipe:
        """The recipe with the generation metrics computed from greedy answers to the first `n`
        rows (`eval` answers every row unless capped); a task without them keeps the recipe."""
        return recipe

    def read_eval_rows(self, path: Path, info: dict) -> list[dict]:
        """Rows of a file for `eval --data`, checked like training data."""
        raise NotImplementedError

    def load_tuned(
        self, run_dir: Path, source: ModelSource, info: dict, method: str, tokenizer, recipe: Recipe
    ):
        """Rebuild the tuned model from a run directory."""
        raise NotImplementedError

    def predict(
        self, model, tokenizer, inputs: list, info: dict, recipe: Recipe
    ) -> list[dict[str, Any]]:
        """Predictions for raw inputs, one dict per input."""
        raise NotImplementedError

    # ---------------------------------------------------------------- defaults

    def prepare(self, recipe: Recipe, tokenizer, recipe_dir: Path = Path(".")) -> Prepared:
        """Read, validate and tokenise the data: :meth:`read`, then :meth:`tokenize`."""
        return self.tokenize(self.read(recipe, recipe_dir), recipe, tokenizer)

    def token_lengths(
        self, rows: list[dict], examples: list, recipe: Recipe, tokenizer
    ) -> list[int]:
        """Tokens of each row for `data check` where no :class:`Prepared` counted them: by
        default the checked text (:meth:`check_examples`) without special tokens."""
        texts = [e.text for e in examples]
        if not texts:
            return []
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def trainer_type(self, recipe: Recipe, model) -> tuple[type, type, dict[str, Any]] | None:
        """A Trainer of the task's own (e.g. TRL's), its arguments class and the extra arguments
        for it; None: tuneforge's Trainer (the default)."""
        return None

    def reference_model(self, model, recipe: Recipe):
        """The frozen reference model a task's own trainer compares against (or None)."""
        return None

    def planning_view(self, prepared: Prepared) -> tuple[Prepared, int]:
        """The training data as sequences the model runs (`input_ids`, `labels`) for `plan`, and
        how many sequences one example runs as; by default the prepared data itself, one each."""
        return prepared, 1

    def reference_passes(self, recipe: Recipe) -> int:
        """Forward passes without gradients a training step adds per sequence (`plan` times them)."""
        return 0

    def trainer_callbacks(
        self, prepared: Prepared, tokenizer, recipe: Recipe, run_path: Path
    ) -> list:
        """Extra TrainerCallbacks (e.g. metrics the Trainer's eval loop cannot compute)."""
        return []

    def inputs_from_rows(self, rows: list[dict], path: Path, info: dict) -> list:
        """The inputs `predict --input` passes to `predict`: by default the text column."""
        text_field = info.get("text_field", "text")
        require_column(rows, text_field, path, "--input")
        for row in rows:
            if not isinstance(row[text_field], str) or not row[text_field].strip():
                raise TuneforgeError(
                    f"--input: {row_where(path, row)}: empty text in column '{text_field}'"
                )
        return [r[text_field] for r in rows]

    def bias_probe(
        self, model, source, tokenizer, info: dict, recipe: Recipe, extra_terms: Path | None = None
    ):
        raise TuneforgeError(f"the bias probe is for classification runs, not {self.name}")

    def canary_row(self, canary, columns: dict[str, Any]) -> dict:
        """A training row holding one canary (recipe `memorization.canaries`), in the data's own
        columns (`columns`: what :meth:`columns` returned)."""
        raise TuneforgeError(
            f"memorization.canaries: canaries are planted into sft and pretrain data, not "
            f"{self.name} data",
            hint="set memorization.canaries: 0",
        )

    def memorization_view(self, tokenizer, info: dict, recipe: Recipe):
        """How the memorisation audit prompts this task's model (evaluation/memorization.py)."""
        raise TuneforgeError(
            f"the memorisation audit is for sft and pretrain runs; this is a {self.name} run",
            hint="audit a run that generates text (task: sft or pretrain)",
        )

    def check_splits(
        self, recipe: Recipe, recipe_dir: Path
    ) -> tuple[dict[str, list], dict[str, list]]:
        """Rows per split for `data check`, broken rows skipped and recorded (split -> lines)."""
        return lenient_splits(recipe, recipe_dir)

    def check_examples(self, rows: list[dict], recipe: Recipe, split: str) -> list:
        """What `data check` inspects for each row: by default the text column, or the whole row.

        Returns :class:`tuneforge.data.check.Example` objects (text, line, label, n_tokens=None;
        token counts are filled in by the caller).
        """
        field = recipe.data.text_field
        out = []
        for row in rows:
            value = row.get(field)
            if not isinstance(value, str):
                value = json.dumps(
                    {k: v for k, v in row.items() if k != "_line"}, sort_keys=True, default=str
                )
            out.append(Example(value, row.get("_line", 0)))
        return out

    def generate(
        self, model, tokenizer, prompts: list, info: dict, recipe: Recipe, sampling
    ) -> list:
        raise TuneforgeError(
            f"a {self.name} run does not generate text", hint="use an sft or pretrain run"
        )

    def chat(self, model, tokenizer, messages: list[dict], info: dict, recipe: Recipe, sampling):
        raise TuneforgeError(f"a {self.name} run cannot chat", hint="use an sft run")

    def preview(self, recipe: Recipe, tokenizer, recipe_dir: Path, n: int) -> list[Preview]:
        raise TuneforgeError(f"data preview is not available for task {self.name}")
