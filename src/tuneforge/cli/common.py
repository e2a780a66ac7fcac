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


def print_comparison(
    title: str,
    base: dict,
    tuned: dict,
    comparison: dict | None = None,
    metric: str | None = None,
    where: str = "",
) -> None:
    """One split's metrics: base model, fine-tuned, change, and with the split's `comparison`
    the change's interval and significance, then one sentence on `metric`'s change `where`."""
    from tuneforge.report.markdown import (  # deferred: CLI start (matplotlib, scipy)
        significance_line,
        summary_rows,
    )

    table = Table(title=f"{title} (n={tuned.get('n')})")
    columns = ["metric", "base model", "fine-tuned", "change"]
    if comparison is not None:
        columns += ["95% CI of change", "verdict"]
        level = next(iter(comparison.values()), {}).get("confidence", 0.95)
        columns[4] = f"{100 * level:g}% CI of change"
    for col in columns:
        table.add_column(col, justify="left" if col in ("metric", "verdict") else "right")
    for row in summary_rows(base, tuned, comparison):
        table.add_row(*row)
    if tuned.get("ece") is not None:  # classification: calibration
        table.caption = "ece: expected calibration error (15 confidence bins), lower is better" + (
            f"; ece_scaled: after temperature scaling (T = {tuned['temperature']:.3f})"
            if tuned.get("temperature")
            else ""
        )
    out.print(table)
    sentence = significance_line(where or title, metric, comparison) if metric else None
    if sentence:
        out.print(sentence, highlight=False, soft_wrap=True)
