"""Command line: parses arguments and calls library functions, nothing more.

One module per group of commands, registered here in the order `tuneforge --help` lists them:
train.py (train, plan, demo), deploy.py (predict, generate, chat, export, serve), evaluate.py
(eval, report), and the sub-command groups data.py, models.py, runs.py; common.py holds the
options and helpers they share. A command imports the library modules that load torch (or
pydantic, matplotlib, filelock) inside itself, so `tuneforge --help` starts fast.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from tuneforge.cli import deploy, evaluate, train
from tuneforge.cli.data import data_app
from tuneforge.cli.models import models_app
from tuneforge.cli.runs import runs_app
from tuneforge.errors import TuneforgeError
from tuneforge.progress import console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune pretrained LLMs on your own data and measure the gain over the base model.",
)

app.command()(train.train)
app.command()(train.plan)
app.command()(deploy.predict)
app.command("eval")(evaluate.eval_)
app.command()(deploy.generate)
app.command()(deploy.chat)
app.command()(deploy.export)
app.command()(deploy.serve)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(runs_app, name="runs")
app.command()(train.demo)
app.command()(evaluate.report)


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
        sys.exit(130)


__all__ = ["app", "main"]
