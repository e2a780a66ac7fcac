"""Continued fine-tuning: a run that starts from an earlier fine-tuned version (its parent,
`tuneforge.runs.parents`), not a base model.

The new run starts from the parent's weights on the same task (a classification run also keeps
the parent's label set): a LoRA parent's adapter is loaded trainable and keeps training (PEFT
`is_trainable=True`), or is merged when the new run trains fully; a full/freeze parent's saved
model becomes the new run's base. `replay` mixes some of the parent's training rows back in, and
the parent's validation set is scored before and after (forgetting).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from peft import PeftModel

from tuneforge.config import Recipe
from tuneforge.data.loading import Splits
from tuneforge.data.replay import draw, mixed
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.forgetting import forgetting_summary
from tuneforge.methods import apply_method
from tuneforge.methods.lora import speed_up_adapters
from tuneforge.progress import console
from tuneforge.runs.parents import Parent
from tuneforge.runs.provenance import sha256_path
from tuneforge.tasks import get_task

# --------------------------------------------------------------------------------------------------
# Compatibility and the starting model


def check_task(parent: Parent, task: str) -> None:
    """A run continues one of its own task, or one its task starts from (sft -> preference)."""
    allowed = (task, *get_task(task).starts_from)
    if parent.task not in allowed:
        raise TuneforgeError(
            f"base_model: {parent.spec} is a {parent.task} run ({parent.run_id}); this recipe's "
            f"task is {task}",
            hint=f"continue a {' or '.join(dict.fromkeys(allowed))} run, or set task: {parent.task}",
        )


def check_labels(parent: Parent, info: dict[str, Any], data_file: str) -> None:
    """A classifier's head has one output per label: the label sets must be the same."""
    theirs, ours = parent.info.get("labels"), info.get("labels")
    if theirs is None or ours is None or list(theirs) == list(ours):
        return
    missing, extra = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
    detail = "; ".join(
        part
        for part in (
            f"missing {missing}" if missing else "",
            f"new {extra}" if extra else "",
        )
        if part
    )
    raise TuneforgeError(
        f"base_model: {parent.spec}: the parent run {parent.run_id} was trained on labels "
        f"{list(theirs)}, the new training data {data_file} has labels {list(ours)} ({detail})",
        hint="continued training keeps the classifier's labels: use data with the same label set "
        "(replay adds the parent's examples), or start from a base model to train new labels",
    )


def start_model(parent: Parent, model, recipe: Recipe, peft_task_type: str, device=None):
    """The parent's weights on top of `model` (built from `parent.source`), ready to train on
    `device` (None: the CPU)."""
    if parent.method != "lora":
        return apply_method(
            model, recipe.method, recipe.lora, recipe.freeze, peft_task_type, device
        )
    adapter = parent.path / "adapter"
    keep_training = recipe.method == "lora"
    model = PeftModel.from_pretrained(model, adapter, is_trainable=keep_training)
    if keep_training:
        speed_up_adapters(model, device)
        cfg = model.peft_config["default"]
        if (cfg.r, cfg.lora_alpha) != (recipe.lora.r, recipe.lora.alpha):
            console.print(
                f"[yellow]note[/yellow]: the parent's adapter keeps training with its own shape "
                f"(r={cfg.r}, alpha={cfg.lora_alpha}); the recipe's lora r={recipe.lora.r}, "
                f"alpha={recipe.lora.alpha:g} do not apply to a continued adapter"
            )
        return model
    # full or freeze on top of a LoRA parent: fold the adapter into the weights first
    model = model.merge_and_unload()
    for p in model.parameters():  # PEFT froze the base while the adapter was on it
        p.requires_grad = True
    return apply_method(model, recipe.method, recipe.lora, recipe.freeze, peft_task_type, device)


# --------------------------------------------------------------------------------------------------
# The parent's data (replay, forgetting check)


def parent_data_problems(parent: Parent) -> tuple[dict[str, Path], list[str]]:
    """The parent's train/validation files as found now, and what is wrong with them.

    A file counts as the parent's only when its content hash equals the recorded one: replaying
    or measuring on edited data would silently be about other data.
    """
    found: dict[str, Path] = {}
    problems: list[str] = []
    for split in ("train", "validation"):
        configured = getattr(parent.recipe.data, split)
        record = parent.data.get(split, {})
        if configured is None:  # validation_split: drawn from train, checked with it
            continue
        candidates = [record.get("resolved"), record.get("path"), str(configured)]
        path = next((Path(c) for c in candidates if c and Path(c).exists()), None)
        if path is None:
            problems.append(f"its {split} file {record.get('path') or configured} is gone")
            continue
        if record.get("sha256") and sha256_path(path) != record["sha256"]:
            problems.append(
                f"its {split} file {path} changed since that run (sha256 "
                f"{record['sha256'][:12]} recorded)"
            )
            continue
        found[split] = path.resolve()
    return found, problems


def read_parent_splits(parent: Parent, task, files: dict[str, Path]) -> Splits:
    """The parent's train and validation rows, read and split exactly as the parent did (not
    tokenised: replay draws rows, the forgetting check scores them)."""
    data = parent.recipe.data.model_copy(update={**files, "test": None})
    recipe = parent.recipe.model_copy(update={"data": data})
    try:
        return task.read(recipe, Path("."))
    except TuneforgeError as e:
        raise TuneforgeError(
            f"base_model: {parent.spec}: reading the parent run's data: {e.message}", hint=e.hint
        ) from None


# --------------------------------------------------------------------------------------------------
# A continued run's data: replay mixed in, the parent's validation rows kept for the forgetting check


@dataclass
class Continuation:
    """What a continued run needs beyond a normal one; built before any tokenising."""

    parent: Parent
    recipe: Recipe  # the recipe its training rows are read with (replay: the mixed rows' shape)
    splits: Splits  # the rows to tokenise: the run's own, replayed rows after its training rows
    columns: dict[str, Any]  # how the run's own rows are laid out (task.columns)
    parent_validation: list[dict[str, Any]] | None  # None: forgetting check skipped (see `skipped`)
    skipped: str | None = None
    replay: dict[str, Any] | None = None

    def tokenize(self, task, own: Splits, tokenizer):
        """The task's Prepared for training; its splits, `info` columns and the data check's
        token counts are about the run's own rows (`own`), the replayed ones only train."""
        prepared = task.tokenize(self.splits, self.recipe, tokenizer)
        train_file = own.sources.get("train", "")
        if self.replay is None:
            check_labels(self.parent, prepared.info, train_file)
            return prepared
        prepared.info.update(self.columns)  # predict and eval read the user's own columns
        prepared.info["replay"] = self.replay
        prepared.splits = replace(own, sources={**own.sources, "replay": self._replayed()})
        prepared.lengths = {
            split: prepared.lengths[split][: len(rows)] for split, rows in own.items()
        }
        check_labels(self.parent, prepared.info, f"{train_file} (+ replay)")
        return prepared

    def _replayed(self) -> str:
        r = self.replay or {}
        return f"{r.get('rows')} rows of {r.get('from_file')} (run {self.parent.run_id})"

    def measure(self, task, model, tokenizer, when: str) -> dict[str, Any] | None:
        """The model on the parent's validation rows, scored with the parent's settings (and
        its task's measure: an sft parent of a preference run is scored as sft)."""
        if self.parent_validation is None:
            return None
        return get_task(self.parent.task).evaluate(
            model,
            tokenizer,
            self.parent_validation,
            self.parent.info,
            self.parent.recipe,
            f"parent validation ({when})",
        )

    def forgetting(self, metric: str, before, after) -> dict[str, Any]:
        if before is None or after is None:
            return {"parent_run": self.parent.run_id, "skipped": self.skipped}
        if self.parent.task != self.recipe.task:  # measured on the parent's task's own metric
            metric = get_task(self.parent.task).default_metric
        return forgetting_summary(
            parent_run=self.parent.run_id,
            parent_model=self.parent.model,
            data=str(self.parent.data.get("validation", {}).get("path", "")),
            metric=metric,
            before=before,
            after=after,
        )

    def record(self) -> dict[str, Any]:
        """run.json `parent`: which version this run continued, and what it replayed."""
        return {
            "spec": self.parent.spec,
            "run_id": self.parent.run_id,
            "path": str(self.parent.path),
            "model": self.parent.model,
            "method": self.parent.method,
            "replay": self.replay,
        }


def continue_from(parent: Parent, task, recipe: Recipe, splits: Splits) -> Continuation:
    """Check the run's rows against the parent, draw the replay, read the parent's validation rows."""
    columns = task.columns(recipe, splits)
    files, problems = parent_data_problems(parent)
    if problems and recipe.replay:
        raise TuneforgeError(
            f"replay: the training data of the parent run {parent.run_id} cannot be replayed: "
            + "; ".join(problems),
            hint="restore the file(s) as they were when that run trained, or set replay: 0",
        )
    skipped = None
    parent_splits = None
    if problems:
        # The check is a measurement, not a precondition of training: warn and go on.
        skipped = f"the parent run {parent.run_id}'s data: " + "; ".join(problems)
        console.print(f"[yellow]warning[/yellow]: forgetting check skipped: {skipped}")
    else:
        parent_splits = read_parent_splits(parent, get_task(parent.task), files)
    parent_validation = parent_splits.validation if parent_splits is not None else None
    if not recipe.replay:
        return Continuation(parent, recipe, splits, columns, parent_validation, skipped)
    if parent.task != task.name:
        raise TuneforgeError(
            f"replay: the parent run {parent.run_id} is a {parent.task} run; its examples cannot "
            f"be mixed into {task.name} data",
            hint="set replay: 0 (the forgetting check still measures the parent's task)",
        )
    drawn = draw(task.name, recipe, splits, columns, parent_splits.train, parent.info)
    mixed_recipe, mixed_splits = mixed(task.name, recipe, splits, columns, drawn)
    source = parent.data.get("train", {}).get("path") or str(parent.recipe.data.train)
    console.print(
        f"Replay: {len(drawn.rows)} of the parent's {drawn.available} training examples mixed "
        f"into {drawn.new_rows} new ones ({recipe.replay:g} x {drawn.new_rows}"
        + (
            f"; {drawn.left_out} left out: they equal a new validation/test example"
            if drawn.left_out
            else ""
        )
        + ")"
    )
    return Continuation(
        parent,
        mixed_recipe,
        mixed_splits,
        columns,
        parent_validation,
        skipped,
        drawn.summary(parent.run_id, source),
    )
