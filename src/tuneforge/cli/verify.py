"""`tuneforge verify`: the run's held-out rows through its exports and a live server, compared."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tuneforge.cli.common import AllowPickle, DeviceOption, load_run, opt_in_to_pickle
from tuneforge.cli.output import Column, JsonOption, emit_json, fitted_table
from tuneforge.errors import CheckFailed
from tuneforge.progress import console, out

CHECK_COLUMNS = (
    Column("check", narrowest=12),
    Column("run", keep=2, justify="right"),
    Column("target", justify="right"),
    Column("limit", keep=3),
    Column("ok"),
    Column("note", keep=1, narrowest=12),
)


def verify(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    export: Annotated[
        list[Path] | None,
        typer.Option(
            "--export",
            "-e",
            help="A merged or GGUF export folder of this run (or the .gguf file in one); repeatable.",
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server", help="A live `tuneforge serve` of this run, e.g. http://127.0.0.1:8000."
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="TUNEFORGE_API_KEY", help="The server's API key."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", "-d", help="Rows to score (default: the run's test split, else validation)."
        ),
    ] = None,
    rows: Annotated[
        int | None,
        typer.Option(
            "--rows",
            min=1,
            help="Score the first N rows.",
            show_default="all rows (classification), 32 (generative runs)",
        ),
    ] = None,
    as_json: JsonOption = False,
    allow_pickle: AllowPickle = False,
    device: DeviceOption = None,
) -> None:
    """Check exports and a live server against the run on the same held-out rows (exit 1 on drift)."""
    from tuneforge.deploy.verify import failures, verify_run  # deferred: CLI start (torch)

    opt_in_to_pickle(run, allow_pickle)
    result = verify_run(
        load_run(run, device), export or [], server=server, api_key=api_key, data=data, rows=rows
    )
    if as_json:
        emit_json(result)
    else:
        print_result(result)
    console.print(f"Saved to {Path(result['run']) / 'verify.json'}", soft_wrap=True)
    if not result["passed"]:
        failed = list(failures(result))
        raise CheckFailed(
            f"verify: {len(failed)} check(s) beyond tolerance: " + "; ".join(failed),
            hint="see the table (or --json) for each target's figures; re-export, or serve the run again",
        )


def print_result(result: dict[str, Any]) -> None:
    data = result["data"]
    out.print(
        f"{result['run_name']} ({result['task']}): {data['rows']} of {data['available']} rows of "
        f"{data['split']} ({data['source']})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    ref = ", ".join(f"{k} {_cell(v)}" for k, v in result["reference"]["metrics"].items())
    out.print(f"The run itself: {ref}", markup=False, highlight=False, soft_wrap=True)
    for target in result["targets"]:
        rows = [
            (
                c["check"],
                _cell(c["run"]),
                _cell(c["target"]),
                c["limit"],
                "[green]ok[/green]" if c["passed"] else "[bold red]FAIL[/bold red]",
                c["note"],
            )
            for c in target["checks"]
        ]
        verdict = "passed" if target["passed"] else "FAILED"
        title = f"{target['kind']} {target['target']} (tolerance: {target['tolerance']['name']}): {verdict}"
        out.print(fitted_table(title, CHECK_COLUMNS, rows))


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
