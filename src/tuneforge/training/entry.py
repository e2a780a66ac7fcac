"""Where a training job starts: the recipe read once, then the job run here or in N processes.

Kept light on purpose (the recipe, the launcher, torch; not transformers, PEFT or the tasks): with
`training.processes: N` this process only waits while N fresh processes each import the training
job (`job.py`) and train. Importing the job here as well cost 4-5 s on this project's 2-core
machine before the first of them could even start (`bench/classification.py`, whole job); the
processes start at once instead, and this one hands back the finished run's folder.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge import devices
from tuneforge.config import Recipe
from tuneforge.training import launch
from tuneforge.training.request import Job


def train(
    recipe: Recipe | str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    resume: Path | None = None,
) -> Path | None:
    """Fine-tune as the recipe says; returns the finished run's folder (None on the ranks other
    than 0 of a distributed run).

    With `resume` (an interrupted run's folder), the run continues from its last checkpoint with
    the recipe it was started with: same data order, optimiser, scheduler and RNG state.
    """
    job = Job.read(recipe, overrides, resume)
    processes = launch.processes(job.recipe)
    if processes > 1:  # training.processes: this process waits, N processes train
        devices.recipe_training_precision(job.recipe)  # a CPU's bf16 measured once: inherited
        return launch.run(processes, run_job, job)
    return run_job(job)


def run_job(job: Job) -> Path | None:
    """The job in this process (one of the launched ones, or the only one)."""
    from tuneforge.training.job import run_job as run  # deferred: transformers, where it trains

    return run(job)
