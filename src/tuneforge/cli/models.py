"""`tuneforge models`: base models available offline; named fine-tuned model versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tuneforge.cli.common import RegistryOption
from tuneforge.progress import out

models_app = typer.Typer(help="Base models available offline; named fine-tuned model versions.")


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, registry: RegistryOption = None) -> None:
    """List the base models available on this machine without a network (and registered models)."""
    if ctx.invoked_subcommand is None:
        models_list(registry)


@models_app.command("list")
def models_list(registry: RegistryOption = None) -> None:
    """Base models available offline, then registered fine-tuned model versions."""
    from tuneforge.models import list_local_models  # deferred: CLI start (filelock)
    from tuneforge.runs import registry as reg  # deferred: CLI start (psutil)

    table = Table(title="Local base models")
    for col in ("name", "kind", "location", "ready"):
        table.add_column(col)
    for m in list_local_models():
        table.add_row(m.name, m.kind, m.location, "yes" if m.ready else "converts on first use")
    out.print(table)
    registered = reg.list_models(registry)
    if registered:
        table = Table(title=f"Registered models ({reg.registry_path(registry)})")
        for col in ("name", "version", "stage", "run"):
            table.add_column(col)
        for m in registered:
            table.add_row(m["name"], str(m["version"]), m["stage"], m["run_id"])
        out.print(table)


@models_app.command("register")
def models_register(
    name: Annotated[str, typer.Argument(help="Model name.")],
    run: Annotated[str, typer.Argument(help="Run id or directory.")],
    registry: RegistryOption = None,
) -> None:
    """Register a finished run as the next version of a named model."""
    from tuneforge.runs import registry as reg  # deferred: CLI start (psutil)

    version = reg.register_model(name, run, registry)
    out.print(f"Registered {name}@{version} ← {reg.get_run(run, registry).id}")


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to promote.")],
    stage: Annotated[str, typer.Option("--stage", help="Target stage.")] = "production",
    data: Annotated[
        Path | None, typer.Option("--data", help="Score both versions on this labelled file.")
    ] = None,
    tolerance: Annotated[
        float, typer.Option("--tolerance", min=0.0, help="Allowed metric drop.")
    ] = 0.0,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if worse (recorded).")
    ] = False,
    registry: RegistryOption = None,
) -> None:
    """Move a version to a stage; refused if it is worse than the current holder of that stage."""
    from tuneforge.runs.promotion import promote  # deferred: CLI start (psutil)

    result = promote(name, version, stage, data=data, tolerance=tolerance, force=force, db=registry)
    if result.get("compared_with"):
        out.print(
            f"{name}@{version} → {stage}: {result['metric']} {result['candidate']:.4f} vs "
            f"{result['compared_with']} {result['current']:.4f} on {result['evaluation_set']}"
            + (" [bold red](forced: worse, recorded)[/bold red]" if result.get("forced") else "")
        )
    else:
        out.print(f"{name}@{version} → {stage} (no previous {stage} version)")
