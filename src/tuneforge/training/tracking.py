"""Experiment tracking through the Trainer's own integrations (TensorBoard, MLflow).

Nothing is logged by hand: the recipe's `training.report_to` goes to `TrainingArguments.report_to`
and transformers' TensorBoardCallback / MLflowCallback do the logging. This module only checks the
packages are there (a clear message instead of a RuntimeError deep in the Trainer) and puts the
TensorBoard event files inside the run directory, so they move with it when it is renamed.

MLflow is configured the way MLflow always is: MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, ...
(see transformers' MLflowCallback). The run name in both trackers is the tuneforge run id.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers.integrations import TensorBoardCallback

from tuneforge.errors import TuneforgeError
from tuneforge.training import progress_log

# tracker -> (modules that provide it, pip package)
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "mlflow": (("mlflow",), "mlflow"),
}
TENSORBOARD_DIR = "tensorboard"


def check_available(report_to: list[str]) -> None:
    """Fail before any compute is spent if a chosen tracker's package is missing."""
    for name in report_to:
        modules, package = TRACKERS[name]
        if not any(importlib.util.find_spec(m) is not None for m in modules):
            raise TuneforgeError(
                f"training.report_to: '{name}' is chosen but the {package} package is not installed",
                hint=f"pip install {package} (or remove '{name}' from training.report_to)",
            )


def report_to_argument(report_to: list[str]) -> list[str] | str:
    """The `TrainingArguments.report_to` value: the list, or "none" (never transformers' "all")."""
    return list(report_to) or "none"


def place_logs(trainer, run_path: Path) -> None:
    """Where the Trainer's logs go: TensorBoard events to <run>/tensorboard/ (unless
    TENSORBOARD_LOGGING_DIR says otherwise), the console's lines through tuneforge's progress
    display (`progress_log.take_over`: a bar on a terminal, plain lines in a pipe, rank 0 only).

    The TensorBoard callback's default is under `output_dir`, the checkpoints folder, which is
    deleted when the run finishes.
    """
    progress_log.take_over(trainer)
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(run_path / TENSORBOARD_DIR)
