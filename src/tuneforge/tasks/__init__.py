"""Tasks: each module knows how to format, model, collate and measure one kind of fine-tuning.

Every task has the same shape (see :class:`tuneforge.tasks.base.Task`) so the trainer, the run
directory and the CLI never branch on the task name.
"""

from __future__ import annotations

from tuneforge.errors import TuneforgeError
from tuneforge.tasks.base import Task


def get_task(name: str) -> Task:
    if name == "classification":
        from tuneforge.tasks.classification import ClassificationTask

        return ClassificationTask()
    if name == "sft":
        from tuneforge.tasks.sft import SftTask

        return SftTask()
    if name == "pretrain":
        from tuneforge.tasks.pretrain import PretrainTask

        return PretrainTask()
    raise TuneforgeError(f"task '{name}' is not available")


__all__ = ["Task", "get_task"]
