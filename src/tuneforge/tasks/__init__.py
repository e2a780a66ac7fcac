"""Tasks: each module knows how to format, model, collate and measure one kind of fine-tuning.

Every task has the same shape (see :class:`tuneforge.tasks.base.Task`) so the trainer, the run
directory and the CLI never branch on the task name.
"""

from __future__ import annotations

from tuneforge.errors import TuneforgeError
from tuneforge.tasks.base import Task
from tuneforge.tasks.classification import ClassificationTask
from tuneforge.tasks.preference import PreferenceTask
from tuneforge.tasks.pretrain import PretrainTask
from tuneforge.tasks.sft import SftTask


def get_task(name: str) -> Task:
    if name == "classification":
        return ClassificationTask()
    if name == "sft":
        return SftTask()
    if name == "pretrain":
        return PretrainTask()
    if name == "preference":
        return PreferenceTask()
    raise TuneforgeError(f"task '{name}' is not available")


__all__ = ["Task", "get_task"]
