"""The Trainer's progress as tuneforge shows it, by rank 0 alone.

transformers' own display is a tqdm bar whose carriage-return updates fill a CI log, with every
log dictionary printed to stdout (``{'loss': '0.7222', ...}``), the place for results. It is
turned off (``disable_tqdm=True`` in `trainer.training_arguments`, the printer that then takes its
place replaced by :class:`ProgressLog` in :func:`take_over`), and ProgressLog shows instead, through
:class:`tuneforge.progress.Meter`: a bar on a terminal; in a pipe, a line such as
``training … epoch 1/2 step 25/50 loss 0.41 (37 s)`` at most every 30 seconds and one at the end.
Each evaluation is one line with its metrics, wherever the output goes.
"""

from __future__ import annotations

import math
from typing import Any

from rich.markup import escape
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from tuneforge.progress import Meter, say

# Evaluation keys that are about the evaluation's speed, not the model.
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch")


class ProgressLog(TrainerCallback):
    """Training steps (with epoch and the last logged loss) and evaluations, on rank 0."""

    def __init__(self) -> None:
        self.meter: Meter | None = None
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.meter = Meter("training", state.max_steps)
            self.meter.start()
            if state.global_step:  # resumed
                self.meter.update(state.global_step, where(state, self.loss))

    def on_step_end(self, args, state, control, **kwargs):
        if self.meter is not None:
            self.meter.update(state.global_step, where(state, self.loss))

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, (int, float)):
            self.loss = float(loss)
            if self.meter is not None:
                self.meter.update(state.global_step, where(state, self.loss))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero:
            say(escape(evaluation_line(state, metrics or {})))

    def on_train_end(self, args, state, control, **kwargs):
        if self.meter is not None:
            self.meter.update(state.global_step, where(state, self.loss))
            self.meter.close()
            self.meter = None


def where(state, loss: float | None) -> str:
    """``epoch 1/2 step 25/50 loss 0.41``: how far training is, and its last logged loss."""
    epochs = max(1, math.ceil(state.num_train_epochs or 1))
    epoch = min(epochs, max(1, math.ceil((state.epoch or 0.0) - 1e-9)))
    text = f"epoch {epoch}/{epochs} step {state.global_step}/{state.max_steps}"
    return text if loss is None else f"{text} loss {loss:.4g}"


def evaluation_line(state, metrics: dict[str, Any]) -> str:
    """``evaluation at step 3 (epoch 1): loss 0.6391 accuracy 0.625 macro_f1 0.5636 (0.0 s)``"""
    shown = {
        name.removeprefix("eval_"): value
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    runtime = shown.pop("runtime", None)
    values = " ".join(
        f"{name} {value:.4g}" for name, value in shown.items() if name not in _NOT_METRICS
    )
    epoch = f" (epoch {state.epoch:.3g})" if state.epoch is not None else ""
    took = f" ({runtime:.1f} s)" if runtime is not None else ""
    return f"evaluation at step {state.global_step}{epoch}: {values}{took}"


def take_over(trainer) -> None:
    """The Trainer's own display (tqdm bar or printed log dictionaries) replaced by
    :class:`ProgressLog`."""
    for kind in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(kind)
    trainer.add_callback(ProgressLog())
