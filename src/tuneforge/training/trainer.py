"""The transformers Trainer as a tuneforge run uses it: arguments from the recipe, length-sorted
batches with exact resume, atomic checkpoints, and the callbacks that keep every evaluation, stop
on a non-finite loss and mark where overfitting began."""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from tuneforge import devices
from tuneforge.answer_forward import model_inputs
from tuneforge.config import Recipe, TrainingConfig
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.language_model import row_loss_predictions, token_weighted_loss
from tuneforge.evaluation.metrics import LOWER_IS_BETTER
from tuneforge.evaluation.overfit import detect_overfitting
from tuneforge.files import write_json
from tuneforge.progress import console
from tuneforge.runs.directory import INCOMPLETE
from tuneforge.training import launch, tracking
from tuneforge.training.checkpointing import AtomicCheckpoints
from tuneforge.training.live_progress import LiveProgress
from tuneforge.training.samplers import SortedBatchesSampler, eval_order


class TrainingDiverged(TuneforgeError):
    """The loss became NaN or infinite; the run folder (with its last good checkpoint) is kept."""


class FineTuningTrainer(AtomicCheckpoints, Trainer):
    """The Trainer with length-sorted batches (:class:`SortedBatchesSampler` for training,
    :func:`eval_order` for evaluation), checkpoints published atomically, sft batches run
    through `answer_forward.model_inputs`, and with `row_loss_eval` (set where compute_metrics is
    `token_weighted_loss`) evaluations that gather each row's token loss and count."""

    row_loss_eval = False
    length_jitter = TrainingConfig.model_fields["length_jitter"].default  # set by build_trainer

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            # One sorted group per global step: with several processes, accelerate hands
            # consecutive per-process batches to ranks 0, 1, ..., so they all get rows of
            # about the same length and none waits for another at the gradient all-reduce
            # (per-process groups in a random order: one rank's short batch idled while the
            # other's long one ran).
            group = sampler.batch_size * self.args.world_size
            self._sorted = SortedBatchesSampler(sampler.lengths, group, seed, self.length_jitter)
            return self._sorted
        return sampler

    def _run_epoch(self, *args, **kwargs):
        # The epoch's order is set here, not left to the data loader's `set_epoch`: resumed
        # mid-epoch under DDP, accelerate's batch-skipping wrapper did not pass it on, so the
        # rest of the resumed epoch came in epoch 0's order (a different run than the
        # uninterrupted one).
        sorted_sampler = getattr(self, "_sorted", None)
        if sorted_sampler is not None:
            bound = inspect.signature(super()._run_epoch).bind(*args, **kwargs)
            sorted_sampler.set_epoch(bound.arguments["epoch"])
        return super()._run_epoch(*args, **kwargs)

    def compute_loss(self, model, inputs, *args, **kwargs):
        # sft batches: shared prefix once, output layer on labelled rows (answer_forward.py)
        with model_inputs(model, inputs) as inputs:
            return super().compute_loss(model, inputs, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if not self.row_loss_eval:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        # Causal LMs: each row's summed token loss and token count in place of the logits (the
        # Trainer gathers them across processes, repeats dropped; token_weighted_loss sums them).
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, dict(inputs), return_outputs=True)
        rows = row_loss_predictions(outputs["logits"], inputs)
        return loss.detach(), rows, rows[:, 1]

    def _get_eval_sampler(self, eval_dataset):
        sampler = super()._get_eval_sampler(eval_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            # The Trainer's grouping sorts only within random mega-batches of at most a
            # quarter of the set: 100 reviews in batches of 16 made mega-batches of one
            # batch, i.e. random batches (47% padding on the sentiment data). Evaluation
            # sees every row once, in any order: sort them all.
            return eval_order(sampler.lengths, self.args.eval_batch_size)
        return sampler


def with_atomic_checkpoints(trainer_class: type[Trainer]) -> type[Trainer]:
    """`trainer_class` publishing its checkpoints atomically, like :class:`FineTuningTrainer`."""
    return type(trainer_class.__name__, (AtomicCheckpoints, trainer_class), {})


class RecordEvaluations(TrainerCallback):
    """Keeps every evaluation (with full per-class details) for metrics.json, in a file that
    survives a kill (reloaded on resume), and marks where overfitting began (at most once)."""

    def __init__(self, history_file: Path, metric: str, patience: int) -> None:
        self.history_file = history_file
        self.metric, self.patience = metric, patience
        self.evaluations: list[dict[str, Any]] = (
            json.loads(history_file.read_text()) if history_file.is_file() else []
        )
        self.details: list[dict[str, Any]] = []  # the task's compute_metrics appends to it
        self.overfitting: dict[str, Any] | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        train_losses = [h["loss"] for h in state.log_history if "loss" in h]
        entry = {
            "step": state.global_step,
            "epoch": round(state.epoch or 0.0, 3),
            "train_loss": train_losses[-1] if train_losses else None,
            **{k.removeprefix("eval_"): v for k, v in (metrics or {}).items()},
        }
        if self.details:
            entry["details"] = self.details[-1]
        self.evaluations[:] = [e for e in self.evaluations if e["step"] < entry["step"]] + [entry]
        if state.is_world_process_zero:
            write_json(self.history_file, self.evaluations)
        if self.overfitting is None:
            found = detect_overfitting(self.evaluations, self.metric, patience=self.patience)
            if found is not None:
                self.overfitting = asdict(found)
                console.print(f"[yellow]warning:[/yellow] {found.message}")


class StopOnNonFiniteLoss(TrainerCallback):
    """A NaN/inf loss ends training at once; later checkpoints would only hold garbage."""

    def __init__(self) -> None:
        self.diverged: dict[str, Any] = {}  # step and loss, once it happened

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.diverged.update(step=state.global_step, loss=loss)
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False


def training_arguments(
    recipe: Recipe,
    run_path: Path,
    metric: str,
    arguments: type[TrainingArguments] = TrainingArguments,
    **extra: Any,
) -> TrainingArguments:
    """The Trainer's arguments, from the recipe (the run id names the run in trackers);
    `arguments` may be a subclass (TRL's configs) taking the `extra` fields too."""
    tc = recipe.training
    device = devices.resolve(recipe.device)
    precision = devices.precision(tc.precision, device, recipe.method)
    strategy = "steps" if tc.eval_steps or tc.save_steps else "epoch"
    eval_steps = tc.eval_steps or tc.save_steps
    if tc.save_steps and tc.save_steps % eval_steps:
        eval_steps = tc.save_steps  # the best checkpoint must be among the saved ones
    values: dict[str, Any] = dict(  # noqa: C408 - the Trainer's own argument names
        output_dir=str(run_path / "checkpoints"),
        num_train_epochs=tc.epochs,
        max_steps=tc.max_steps or -1,
        learning_rate=tc.learning_rate,
        per_device_train_batch_size=launch.per_process_batch(tc.batch_size),
        per_device_eval_batch_size=tc.eval_batch_size or tc.batch_size,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        weight_decay=tc.weight_decay,
        label_smoothing_factor=tc.label_smoothing,
        warmup_steps=tc.warmup_ratio,
        lr_scheduler_type=tc.lr_scheduler,
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=eval_steps,
        save_steps=tc.save_steps or eval_steps,
        logging_steps=tc.logging_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model=metric,
        greater_is_better=metric not in LOWER_IS_BETTER,
        seed=tc.seed,
        data_seed=tc.seed,
        train_sampling_strategy="group_by_length" if tc.group_by_length else "random",
        report_to=tracking.report_to_argument(tc.report_to),
        run_name=run_path.name.removeprefix(".").removesuffix(INCOMPLETE),  # the run id
        use_cpu=device.type == "cpu",
        activation_checkpointing=False,  # enabled on the model by build_model (LoRA needs more)
        bf16=precision == "bf16",
        torch_compile=tc.compile,
        fp16=precision == "fp16",
        ddp_find_unused_parameters=False,  # every trainable parameter gets a gradient each step
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,  # tuneforge's own display instead: training/progress_log.py
        logging_nan_inf_filter=False,  # a NaN loss must be seen (StopOnNonFiniteLoss), not averaged away
    )
    return arguments(**{**values, **extra})


def build_trainer(
    recipe: Recipe, task, prepared, model, tokenizer, run_path: Path, metric: str
) -> FineTuningTrainer:
    """The Trainer for this run; `trainer.record` and `trainer.guard` hold what its callbacks
    saw (evaluations, overfitting; a diverged loss)."""
    record = RecordEvaluations(
        run_path / "evaluations.json", metric, recipe.early_stopping.patience or 2
    )
    guard = StopOnNonFiniteLoss()
    # The task's callbacks come first: they may add metrics that the others read.
    callbacks: list = [
        *task.trainer_callbacks(prepared, tokenizer, recipe, run_path),
        record,
        guard,
        LiveProgress(run_path),  # progress.jsonl: what the dashboard's live curves read
    ]
    if recipe.early_stopping.patience:
        callbacks.append(
            EarlyStoppingCallback(
                early_stopping_patience=recipe.early_stopping.patience,
                early_stopping_threshold=recipe.early_stopping.threshold,
            )
        )
    own = task.trainer_type(recipe, model)
    if own is None:
        trainer = FineTuningTrainer(
            model=model,
            args=training_arguments(recipe, run_path, metric),
            train_dataset=prepared.train,
            eval_dataset=prepared.validation,
            data_collator=task.collator(tokenizer),
            processing_class=tokenizer,
            compute_metrics=task.trainer_metrics(prepared, record.details),
            callbacks=callbacks,
        )
    else:  # the task's own Trainer (TRL's preference trainers), with the same checkpoints
        trainer_class, arguments, extra = own
        reference = task.reference_model(model, recipe)
        trainer = with_atomic_checkpoints(trainer_class)(
            model=model,
            args=training_arguments(recipe, run_path, metric, arguments, **extra),
            train_dataset=prepared.train,
            eval_dataset=prepared.validation,
            processing_class=tokenizer,
            callbacks=callbacks,
            **({"ref_model": reference} if reference is not None else {}),
        )
    if task.peft_task_type == "SEQ_CLS":
        # One label per example: the loss is a per-example mean, and PEFT's classification
        # wrapper drops `num_items_in_batch`. Left True, the Trainer would believe the loss was
        # normalised by the (wrongly counted: labels[..., 1:]) global item count and multiply it by
        # the number of processes (DDP) and not divide by gradient accumulation.
        trainer.model_accepts_loss_kwargs = False
    if isinstance(trainer, FineTuningTrainer):
        # the predictions token_weighted_loss reads (the causal tasks' trainer_metrics)
        trainer.row_loss_eval = trainer.compute_metrics is token_weighted_loss
        trainer.length_jitter = recipe.training.length_jitter
    trainer.record, trainer.guard = record, guard
    trainer.resume_hint = run_path
    tracking.place_logs(trainer, run_path)
    return trainer
