"""`tuneforge runs`: the run registry (list, show, compare, rm)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tuneforge.cli.common import RegistryOption
from tuneforge.cli.output import Column, JsonOption, emit_json, fitted_table
from tuneforge.progress import out
from tuneforge.runs.summary import headline, metric_pairs, recipe_differences

if TYPE_CHECKING:
    from tuneforge.runs.registry import RunRecord

runs_app = typer.Typer(
    no_args_is_help=True, help="The run registry: list, show, compare, remove runs."
)

LIST_COLUMNS = (
    Column("run", kind="id"),
    Column("task", keep=2, narrowest=14),
    Column("method", keep=1),
    Column("base model", keep=3, narrowest=16),
    Column("status", keep=5, narrowest=8),
    Column("metric (base → tuned)", keep=4, narrowest=16),
)


@runs_app.command("list")
def runs_list(registry: RegistryOption = None, as_json: JsonOption = False) -> None:
    """Every recorded run with its status and headline metric, newest first."""
    from tuneforge.runs import registry as reg  # deferred: CLI start (psutil)

    records = reg.list_runs(registry)
    if as_json:
        emit_json(
            {
                "registry": str(reg.registry_path(registry)),
                "runs": [run_summary(r) for r in records],
            }
        )
        return
    rows = [
        (
            r.id,
            r.row["task"] or "",
            r.row["method"] or "",
            r.row["base_model"] or "",
            r.status,
            _headline_text(headline(r.json("metrics"))),
        )
        for r in records
    ]
    out.print(fitted_table(f"Runs ({reg.registry_path(registry)})", LIST_COLUMNS, rows))


def run_summary(r: RunRecord) -> dict[str, Any]:
    """One run in `runs list --json`."""
    return {
        "id": r.id,
        "name": r.row.get("name"),
        "path": r.path,
        "status": r.status,
        "task": r.row.get("task"),
        "method": r.row.get("method"),
        "base_model": r.row.get("base_model"),
        "parent": r.row.get("parent"),
        "created": r.row.get("created"),
        "finished": r.row.get("finished"),
        "headline": headline(r.json("metrics")),
    }


def _headline_text(h: dict[str, Any] | None) -> str:
    if h is None:
        return ""
    base, tuned = h["base"], h["tuned"]
    return (
        f"{h['split']} {h['metric']}: "
        + (f"{base:.4f} → " if base is not None else "")
        + (f"{tuned:.4f}" if tuned is not None else "")
    )


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="Run id (or prefix) or directory.")],
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """A run's lineage: base weights, data hashes, versions, commit, metrics, parent chain."""
    from tuneforge.runs import registry as reg  # deferred: CLI start (psutil)
    from tuneforge.runs.parents import chain_text  # deferred: CLI start (pydantic)

    chain = reg.lineage_chain(run, registry)
    record = chain[0]
    info = {
        k: record.row[k]
        for k in (
            "id",
            "path",
            "status",
            "task",
            "method",
            "base_model",
            "base_weights_sha256",
            "git_commit",
        )
    }
    info["status"] = record.status
    info["data"] = record.json("data")
    info["versions"] = record.json("versions")
    info["metrics"] = record.json("metrics")
    info["lineage"] = [r.id for r in chain]
    info["parent"] = record.row.get("parent")
    info["chain"] = chain_text(chain)  # run -> parent -> ... -> base model
    if as_json:
        emit_json(info)
        return
    out.print_json(json.dumps(info, default=str))  # indented and coloured for people


@runs_app.command("compare")
def runs_compare(
    run_a: Annotated[str, typer.Argument(help="First run.")],
    run_b: Annotated[str, typer.Argument(help="Second run.")],
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recipes diffed and metrics side by side."""
    from tuneforge.runs import registry as reg  # deferred: CLI start (psutil)

    a, b = reg.get_run(run_a, registry), reg.get_run(run_b, registry)
    differences = recipe_differences(a.json("recipe") or {}, b.json("recipe") or {})
    metrics = metric_pairs(a.json("metrics") or {}, b.json("metrics") or {})
    if as_json:
        emit_json({"a": a.id, "b": b.id, "recipe_differences": differences, "metrics": metrics})
        return
    out.print(f"A  {a.id}\nB  {b.id}", markup=False, highlight=False, soft_wrap=True)
    columns = (Column("field", kind="id"), Column("A"), Column("B"))
    rows = [(d["field"], str(d["a"]), str(d["b"])) for d in differences]
    out.print(fitted_table("Recipe differences", columns, rows))
    columns = (
        Column("split/metric", kind="id"),
        Column("A", justify="right"),
        Column("B", justify="right"),
    )
    rows = [(f"{m['split']}/{m['metric']}", _number(m["a"]), _number(m["b"])) for m in metrics]
    out.print(fitted_table("Metrics (tuned)", columns, rows))


def _number(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@runs_app.command("rm")
def runs_rm(
    run: Annotated[str, typer.Argument(help="Run id or directory.")],
    keep_files: Annotated[
        bool, typer.Option("--keep-files", help="Only forget the run; keep its folder.")
    ] = False,
    registry: RegistryOption = None,
) -> None:
    """Remove a run from the registry and delete its folder (refused if a model version uses it)."""
    from tuneforge.runs import registry as reg  # deferred: CLI start (psutil)

    record = reg.remove_run(run, registry, delete_files=not keep_files)
    out.print(f"Removed {record.id}" + ("" if keep_files else f" and {record.path}"))
