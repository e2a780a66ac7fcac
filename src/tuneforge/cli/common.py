"""What the command groups share: the common options, loading a run, the base-vs-tuned table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from tuneforge import safety
from tuneforge.progress import out

if TYPE_CHECKING:
    from tuneforge.runs.run import Run

SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a recipe field: --set training.epochs=1")
]
AllowPickle = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        help="Load pickle weights (*.bin, *.pt, *.pth, *.ckpt) when there are no safetensors; "
        "unpickling can run code: only for files you trust.",
    ),
]
DeviceOption = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="Where the model runs: auto (the CUDA GPU when there is one, else the CPU), cpu, "
        "cuda or cuda:N. Default: the run recipe's `device` (auto).",
    ),
]
RegistryOption = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        help="Registry file (default: $TUNEFORGE_REGISTRY or ~/.cache/tuneforge/registry.sqlite).",
    ),
]


def load_run(run: Path, device: str | None) -> Run:
    from tuneforge.runs.run import Run  # deferred: CLI start (torch)

    return Run.load(run, device=device)


def opt_in_to_pickle(run: Path | None, allowed: bool) -> None:
    """Opt in to pickle weights for this command; a run's own adapter/model folders are checked."""
    safety.allow_pickle(allowed)
    if run is not None and run.is_dir():
        safety.check_run(run)


def print_comparison(title: str, base: dict, tuned: dict) -> None:
    """One split's metrics: base model, fine-tuned, change."""
    from tuneforge.report import summary_rows  # deferred: CLI start (matplotlib)

    table = Table(title=f"{title} (n={tuned.get('n')})")
    for col in ("metric", "base model", "fine-tuned", "change"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for row in summary_rows(base, tuned):
        table.add_row(*row)
    out.print(table)
