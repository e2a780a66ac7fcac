"""`tuneforge models`: base models available offline; named fine-tuned model versions."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from tuneforge.cli.common import RegistryOption
from tuneforge.cli.output import Column, JsonOption, emit_json, fitted_table
from tuneforge.progress import out

models_app = typer.Typer(help="Base models available offline; named fine-tuned model versions.")

BASE_COLUMNS = (
    Column("name", kind="id"),
    Column("kind", keep=1, narrowest=8),  # "embedded": rich folds at spaces first
    # Short words that never wrap ("id"), so the table leaves a column out rather than cut one.
    Column("architecture", kind="id", keep=4),
    Column("chat template", kind="id", keep=5),
    Column("GGUF export", kind="id", keep=3),
    Column("ready", keep=2, narrowest=8),  # "converts"
    Column("location", narrowest=16),
)
REGISTERED_COLUMNS = (
    Column("model", kind="id"),  # name@version, as the commands take it
    Column("stage", keep=1, narrowest=10),
    Column("run", kind="id"),
)


@models_app.callback(invoke_without_command=True)
def models(
    ctx: typer.Context, registry: RegistryOption = None, as_json: JsonOption = False
) -> None:
    """List the base models available on this machine without a network (and registered models)."""
    if ctx.invoked_subcommand is None:
        models_list(registry, as_json)


@models_app.command("list")
def models_list(registry: RegistryOption = None, as_json: JsonOption = False) -> None:
    """Base models available offline, then registered fine-tuned model versions."""
    from tuneforge.models import list_local_models as local_models  # deferred: CLI start (filelock)
    from tuneforge.runs import registry as reg  # deferred: CLI start (psutil)

    local = [{**asdict(m), "gguf_export": gguf_export(m.architecture)} for m in local_models()]
    registered = reg.list_models(registry)
    if as_json:
        emit_json(
            {
                "base_models": local,
                "registry": str(reg.registry_path(registry)),
                "registered": [_version(m) for m in registered],
            }
        )
        return
    rows = [
        (
            m["name"],
            m["kind"],
            m["architecture"] or "?",
            _yes_no(m["chat_template"]),
            _yes_no(m["gguf_export"]),
            "yes" if m["ready"] else "converts on first use",
            m["location"],
        )
        for m in local
    ]
    out.print(fitted_table("Local base models", BASE_COLUMNS, rows))
    if registered:
        rows = [(f"{m['name']}@{m['version']}", m["stage"], m["run_id"]) for m in registered]
        title = f"Registered models ({reg.registry_path(registry)})"
        out.print(fitted_table(title, REGISTERED_COLUMNS, rows))


def gguf_export(architecture: str | None) -> bool | None:
    """Whether `tuneforge export --format gguf` writes this architecture (None: unknown).

    Decided by the exporter's own list, read now: the families it supports grow with it."""
    if architecture is None:
        return None
    from tuneforge.deploy.gguf import SUPPORTED_ARCHITECTURES  # deferred: CLI start (gguf, numpy)

    return architecture in SUPPORTED_ARCHITECTURES


def _yes_no(value: bool | None) -> str:
    return "?" if value is None else "yes" if value else "no"


def _version(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("name", "version", "stage", "run_id", "registered")}


@models_app.command("register")
def models_register(
    name: Annotated[str, typer.Argument(help="Model name.")],
    run: Annotated[str, typer.Argument(help="Run id or directory.")],
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register a finished run as the next version of a named model."""
    from tuneforge.runs import registry as reg  # deferred: CLI start (psutil)

    version = reg.register_model(name, run, registry)
    run_id = reg.get_run(run, registry).id
    if as_json:
        emit_json({"name": name, "version": version, "run_id": run_id})
        return
    out.print(f"Registered {name}@{version} ← {run_id}", markup=False, highlight=False)


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
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Require a passing `tuneforge verify` of the version's run (its verify.json; "
            "--force does not override it).",
        ),
    ] = False,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move a version to a stage; refused (exit 1) if worse than the stage's current holder."""
    from tuneforge.runs.promotion import promote  # deferred: CLI start (psutil)

    result = promote(
        name,
        version,
        stage,
        data=data,
        tolerance=tolerance,
        force=force,
        db=registry,
        verify=verify,
    )
    if as_json:
        emit_json({"name": name, "version": version, "forced": False, **result})
        return
    if result.get("compared_with"):
        out.print(
            f"{name}@{version} → {stage}: {result['metric']} {result['candidate']:.4f} vs "
            f"{result['compared_with']} {result['current']:.4f} on {result['evaluation_set']}"
            + (" [bold red](forced: worse, recorded)[/bold red]" if result.get("forced") else "")
        )
    else:
        out.print(f"{name}@{version} → {stage} (no previous {stage} version)")
