"""Command line: parses arguments and calls library functions, nothing more.

One module per group of commands, registered here in the order `tuneforge --help` lists them:
train.py (train, plan, demo), deploy.py (predict, generate, chat, export, serve), verify.py
(verify), evaluate.py (eval, report), ui.py (ui: the web dashboard), and the sub-command groups
data.py, models.py, runs.py; common.py holds the options and helpers they share. A command imports the library modules that load torch (or
pydantic, matplotlib, filelock) inside itself, so `tuneforge --help` starts fast.

Exit codes (README, "Exit codes"): 0 ok; 1 a check that ran and said no (CheckFailed: a data
check with errors, a refused promotion, a plan that does not fit); 2 a user error (TuneforgeError,
and a usage error Typer reports); 130 interrupted; 70 a bug, with its traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer
from rich.markup import escape

from tuneforge.cli import deploy, evaluate, train, ui, verify
from tuneforge.cli.data import data_app
from tuneforge.cli.feedback import feedback_app
from tuneforge.cli.models import models_app
from tuneforge.cli.runs import runs_app
from tuneforge.errors import TuneforgeError
from tuneforge.progress import console

BUG = 70  # sysexits' EX_SOFTWARE: neither a failed check (1) nor a user error (2)
INTERRUPTED = 130

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune pretrained LLMs on your own data and measure the gain over the base model.",
)


@app.callback()
def options(
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bars and spinners on or off (sets TUNEFORGE_PROGRESS=1/0). "
            "Default: on when stderr is a terminal; in a pipe or CI log, one line per phase.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Fine-tune pretrained LLMs on your own data and measure the gain over the base model."""
    if progress is not None:  # an environment variable, so launched training processes see it
        os.environ["TUNEFORGE_PROGRESS"] = "1" if progress else "0"


app.command()(train.train)
app.command()(train.plan)
app.command()(deploy.predict)
app.command("eval")(evaluate.eval_)
app.command()(deploy.generate)
app.command()(deploy.chat)
app.command()(deploy.export)
app.command()(deploy.serve)
app.command()(verify.verify)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(runs_app, name="runs")
app.add_typer(feedback_app, name="feedback")
app.command()(train.demo)
app.command()(evaluate.report)
app.command()(ui.ui)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(standalone_mode=True)
    except TuneforgeError as e:
        # escaped: a message quotes user input, and "[x]" in it is not rich markup
        console.print(
            f"[bold red]error:[/bold red] {escape(e.message)}", markup=True, highlight=False
        )
        if e.hint:
            console.print(f"  [dim]hint:[/dim] {escape(e.hint)}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(INTERRUPTED)
    except Exception:  # noqa: BLE001 - a bug: its traceback, and an exit code of its own
        traceback.print_exc()
        sys.exit(BUG)


__all__ = ["app", "main"]
