"""`tuneforge feedback`: a served run's feedback log, counted and exported as preference data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tuneforge.cli.output import JsonOption, emit_json
from tuneforge.deploy.feedback import default_log_path
from tuneforge.deploy.feedback_export import export_feedback, feedback_stats, write_rows
from tuneforge.errors import TuneforgeError
from tuneforge.progress import out

feedback_app = typer.Typer(
    no_args_is_help=True,
    help="What users of a served run said: counts, and export as preference data.",
)

RunArgument = Annotated[
    Path, typer.Argument(help="Run directory that was served (its log: <run>/feedback/).")
]
LogOption = Annotated[
    Path | None,
    typer.Option("--log", help="Feedback log to read (default: <run>/feedback/feedback.jsonl)."),
]

LABELS = {
    "completions": "completions logged",
    "feedback": "feedback records",
    "rated_up": "rated up",
    "rated_down": "rated down",
    "edited": "with a preferred answer",
    "prompts": "prompts with feedback",
    "kto_rows": "kto rows",
    "pairs": "pairs",
    "pairs_capped": "pairs over the per-prompt cap",
    "skipped_lines": "skipped: torn or unreadable lines",
    "skipped_unknown": "skipped: feedback on unknown ids",
    "skipped_unusable": "skipped: chats ending in an answer",
    "rows": "rows written",
}


@feedback_app.command("stats")
def feedback_stats_cmd(
    run: RunArgument, log: LogOption = None, as_json: JsonOption = False
) -> None:
    """Count the completions, ratings and edits in a run's feedback log."""
    path = log_path(run, log)
    counts = feedback_stats(path)
    if as_json:
        emit_json({"run": str(run), "log": str(path), "counts": counts})
    else:
        out.print(counts_table(f"feedback in {path}", counts))


@feedback_app.command("export")
def feedback_export_cmd(
    run: RunArgument,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="JSONL file to write (replaced if it exists).")
    ],
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="kto: one row per rated answer (prompt, completion, label), for KTO; "
            "pairs: chosen/rejected answers to the same prompt, for DPO and ORPO.",
        ),
    ] = "kto",
    log: LogOption = None,
    as_json: JsonOption = False,
) -> None:
    """Turn a served run's feedback into data for a `preference` recipe (KTO or pairwise)."""
    path = log_path(run, log)
    rows, counts = export_feedback(path, kind)
    if not rows:
        raise TuneforgeError(
            f"{path}: no {kind} rows to export ({counts['completions']} completions, "
            f"{counts['feedback']} feedback records)",
            hint=_empty_hint(kind, counts),
        )
    write_rows(output, rows, log=path)
    if as_json:
        emit_json(
            {
                "run": str(run),
                "log": str(path),
                "output": str(output),
                "kind": kind,
                "counts": counts,
            }
        )
    else:
        out.print(counts_table(f"{kind} export: {output}", counts))


def log_path(run: Path, log: Path | None) -> Path:
    """The log to read: --log, else the run's own; a missing run folder is named as such."""
    if not run.is_dir():
        raise TuneforgeError(
            f"run directory not found: {run}",
            hint="pass the folder `tuneforge serve` served, e.g. runs/<name>-<timestamp>",
        )
    return log if log is not None else default_log_path(run)


def _empty_hint(kind: str, counts: dict[str, int]) -> str:
    if counts["feedback"] == 0:
        return "no one has rated an answer yet: POST /v1/feedback to the served run"
    if kind == "pairs":
        return (
            "pairs need an up and a down answer to the same prompt, or an edited (preferred) "
            "answer; try --kind kto"
        )
    return "every feedback record refers to a completion the log does not hold"


def counts_table(title: str, counts: dict[str, Any]) -> Table:
    table = Table(title=title)
    table.add_column("")
    table.add_column("count", justify="right")
    for key, value in counts.items():
        table.add_row(LABELS.get(key, key), str(value))
    return table
