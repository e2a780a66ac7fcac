"""Output for scripts and for people: `--json` documents on stdout; tables that never cut an id.

A script reads stdout; everything else (progress, notes, errors) goes to stderr
(`tuneforge.progress.console`). With `--json` a command writes exactly one JSON document, or one
JSON object per line where its output is a stream of records (`predict`); README's "Output for
scripts" lists each shape. A table for people keeps every identifier whole: an id column never
wraps; at a narrow width the table drops its outer frame, then leaves out the least important
columns (the caption says which); only an id wider than the terminal itself folds onto a second
line. Nothing ends in "…": paths and names fold onto further lines.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tuneforge.progress import out

JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON document on stdout (README: Output for scripts)."),
]

Kind = Literal["id", "fold"]
PADDING = 2  # a cell's one space either side
NARROWEST = 6  # what a folding column needs at least to stay legible


@dataclass(frozen=True)
class Column:
    """A table column. `id`: never wraps (run ids, versions); `fold`: wraps anywhere, whole.

    `keep` orders what goes first when the table is too wide: the lowest `keep` is left out
    first; `keep=None` is never left out. `narrowest`: the width a folding column keeps at least
    (below it, the column is left out instead).
    """

    header: str
    kind: Kind = "fold"
    keep: int | None = None
    justify: Literal["left", "right"] = "left"
    narrowest: int = NARROWEST


def emit_json(payload: Any) -> None:
    """One JSON document on stdout: plain text, no colour, no line wrapping."""
    sys.stdout.write(json.dumps(payload, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def emit_json_lines(records: Iterable[Any]) -> None:
    """A stream of records: one JSON object per line on stdout, each written as it comes."""
    for record in records:
        emit_json(record)


def fitted_table(
    title: str,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str | Text]],
    console: Console = out,
) -> Table:
    """A table as wide as the console allows: without its outer frame, then with the least
    important columns left out, before an identifier is folded (and never cut)."""
    shown = list(range(len(columns)))
    while not any(_fits(columns, rows, shown, framed, console.width) for framed in (True, False)):
        droppable = [i for i in shown if columns[i].keep is not None]
        if not droppable:
            break
        shown.remove(min(droppable, key=lambda i: (columns[i].keep, -i)))
    framed = _fits(columns, rows, shown, True, console.width)
    ids_fit = framed or _fits(columns, rows, shown, False, console.width)
    framed = framed or not ids_fit
    hidden = [c.header for i, c in enumerate(columns) if i not in shown]
    caption = f"left out at this width: {', '.join(hidden)} (see --json)" if hidden else None
    table = Table(title=title, caption=caption, show_edge=framed, pad_edge=framed)
    for i in shown:
        c = columns[i]
        table.add_column(
            c.header,
            justify=c.justify,
            overflow="fold",
            no_wrap=c.kind == "id" and ids_fit,
            min_width=c.narrowest if c.kind == "fold" else None,
        )
    for row in rows:
        table.add_row(*(row[i] for i in shown))
    return table


def _fits(
    columns: Sequence[Column],
    rows: Sequence[Sequence[str | Text]],
    shown: list[int],
    framed: bool,
    width: int,
) -> bool:
    """Whether the shown columns fit with every id whole and every other column folded narrow."""
    rules = len(shown) + 1 if framed else len(shown) - 1
    total = rules - (0 if framed else PADDING)  # no frame: no outer rules, no outer padding
    for i in shown:
        cells = [_width(row[i]) for row in rows]
        widest = max([cell_len(columns[i].header) if columns[i].kind == "id" else 0, *cells, 1])
        least = widest if columns[i].kind == "id" else min(widest, columns[i].narrowest)
        total += PADDING + least
    return total <= width


def _width(cell: str | Text) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(Text.from_markup(cell).plain)
