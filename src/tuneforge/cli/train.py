"""Training: train (or resume) a recipe, plan one before training, the demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tuneforge.cli.common import AllowPickle, SetOption, print_comparison
from tuneforge.cli.output import JsonOption, emit_json
from tuneforge.demo import run_demo
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation import forgetting
from tuneforge.progress import console, out


def train(
    recipe: Annotated[Path | None, typer.Argument(help="Recipe YAML file.")] = None,
    set_: SetOption = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue an interrupted run from its last checkpoint."),
    ] = None,
    allow_pickle: AllowPickle = False,
) -> None:
    """Fine-tune a base model as the recipe describes; prints base vs fine-tuned at the end."""
    from tuneforge.training.entry import train as run_training  # deferred: CLI start (torch)

    if (recipe is None) == (resume is None):
        raise TuneforgeError("train: give a recipe file, or --resume RUN (one of them)")
    overrides = [*(set_ or []), *(["allow_pickle=true"] if allow_pickle else [])]
    finished = run_training(recipe, overrides, resume=resume)
    if finished is not None:  # None on ranks other than 0 of a distributed run: rank 0 reports
        print_summary(finished)


def plan(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: SetOption = None,
    auto_batch_size: Annotated[
        bool,
        typer.Option(
            "--auto-batch-size",
            help="Pick the largest batch size that fits the budget (by the estimate).",
        ),
    ] = False,
    memory_budget: Annotated[
        float | None,
        typer.Option(
            "--memory-budget", min=0.01, help="Memory budget in GB (default: available RAM)."
        ),
    ] = None,
    steps: Annotated[
        int, typer.Option("--steps", min=1, max=50, help="Training steps timed (after 1 warm-up).")
    ] = 3,
    as_json: JsonOption = False,
) -> None:
    """Before training: parameters, data size, estimated peak memory, measured time per epoch, fit.

    Exit code 1 when the estimate does not fit the memory budget (the message lists changes)."""
    from tuneforge.planning import describe  # deferred: CLI start (torch)
    from tuneforge.planning import plan as make_plan  # deferred: CLI start (torch)

    result = make_plan(
        recipe,
        set_ or [],
        auto_batch_size=auto_batch_size,
        memory_budget_gb=memory_budget,
        steps=steps,
    )
    if as_json:
        emit_json(result.to_dict())
        return
    for line in describe(result):
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def demo(
    set_: SetOption = None,
) -> None:
    """Fine-tune the embedded model on movie-review sentiment and show base vs fine-tuned."""
    print_summary(run_demo(set_ or []).path)


def print_summary(run_dir: Path) -> None:
    """Base vs fine-tuned for every split, the forgetting check of a continued run, the report.

    Read from the run's files, not through :class:`tuneforge.runs.run.Run`: a `train` that
    launched its training processes never imports the model code (`training/entry.py`)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split, tuned in metrics["tuned"].items():
        print_comparison(
            f"{run_dir.name}: {split}",
            metrics.get("base", {}).get(split, {}),
            tuned,
            metrics.get("comparison", {}).get(split),
            metrics.get("selection_metric"),
            split,
        )
    if metrics.get("forgetting"):  # continued runs: the parent's validation set before and after
        out.print(forgetting.describe(metrics["forgetting"]), highlight=False)
    console.print(
        f"Report: {run_dir / 'report.html'} (and report.md)", soft_wrap=True
    )  # one line: paths
