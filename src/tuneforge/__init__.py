"""tuneforge: fine-tune pretrained LLMs on your own data, measured against the base model."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# transformers (>= 5.2x) swaps layers for "hub kernels" fetched from the Hugging Face Hub at load
# time, on by default on CUDA. tuneforge loads weights from local folders and must work offline; a
# machine whose `kernels` package has another version failed every `from_pretrained` with it on.
# Off unless the user turns it on (USE_HUB_KERNELS=1).
os.environ.setdefault("USE_HUB_KERNELS", "0")

if TYPE_CHECKING:
    from tuneforge.runs.run import Run

# Every `import tuneforge.…` runs this file, the command line's too: the functions below import
# what they call (the job, which only the entry points import; the run; the recipe) themselves.


def train(recipe=None, overrides: list[str] | None = None, *, resume=None) -> Run | None:
    """Run a recipe (a path or a :class:`tuneforge.config.Recipe`); returns the finished run.
    With `resume` (an interrupted run's folder) it continues that run instead."""
    from tuneforge.runs.run import Run  # deferred: CLI start (torch)
    from tuneforge.training.entry import train as _train  # deferred: CLI start (torch)

    finished = _train(recipe, overrides, resume=resume)
    return Run.load(finished) if finished is not None else None  # None: ranks other than 0


def load_run(path, *, device: str | None = None) -> Run:
    """A finished run; `device` (auto, cpu, cuda, cuda:N) overrides where its model runs."""
    from tuneforge.runs.run import Run  # deferred: CLI start (torch)

    return Run.load(path, device=device)


def load_recipe(path, overrides: list[str] | None = None):
    from tuneforge.config import load_recipe as _load  # deferred: CLI start (pydantic)

    return _load(path, overrides)


__all__ = ["__version__", "load_recipe", "load_run", "train"]
