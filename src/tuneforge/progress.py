"""Progress display: one rich console for the whole package, on stderr."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
out = Console(highlight=False)  # results for the user go to stdout


def quiet() -> bool:
    return os.environ.get("TUNEFORGE_QUIET", "0") == "1"


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner with elapsed time for work without a known length (model loading)."""
    if quiet() or not sys.stderr.isatty():
        console.print(f"[dim]…[/dim] {message}")
        yield
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as p:
        p.add_task(message, total=None)
        yield
    console.print(f"[green]✓[/green] {message}")


def track(items: Iterable, description: str, total: int | None = None) -> Iterator:
    """A bar with count, elapsed time and ETA."""
    if quiet():
        yield from items
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as p:
        task = p.add_task(description, total=total if total is not None else len(items))  # type: ignore[arg-type]
        for item in items:
            yield item
            p.advance(task)
