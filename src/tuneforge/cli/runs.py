"""`tuneforge runs`: the run registry (list, show, compare, rm)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from tuneforge.cli.common import RegistryOption
from tuneforge.progress import out

runs_app = typer.Typer(
    no_args_is_help=True, help="The run registry: list, show, compare, remove runs."
)


@runs_app.command("list")
def runs_list(registry: RegistryOption = None) -> None:
    """Every recorded run with its status and headline metric."""
    from tuneforge.runs import registry as reg  # deferred: CLI start (psutil)

    table = Table(title=f"Runs ({reg.registry_path(registry)})")
    for col in ("run", "task", "method", "base model", "status", "metric (base → tuned)"):
        table.add_column(col)
    for r in reg.list_runs(registry):
        m = r.json("metrics") or {}
        headline = ""
        if m:
            metric = m["selection_metric"]
            split = "test" if "test" in m["tuned"] else "validation"
            base = m.get("base", {}).get(split, {}).get(metric)
            tuned = m["tuned"].get(split, {}).get(metric)
            headline = (
                f"{split} {metric}: "
                + (f"{base:.4f} → " if base is not None else "")
                + (f"{tuned:.4f}" if tuned is not None else "")
            )
        table.add_row(
            r.id,
            r.row["task"] or "",
            r.row["method"] or "",
            r.row["base_model"] or "",
            r.status,
            headline,
        )
    out.print(table)


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="Run id (or prefix) or directory.")],
    registry: RegistryOption = None,
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
    out.print_json(json.dumps(info, default=str))


@runs_app.command("compare")
def runs_compare(
    run_a: Annotated[str, typer.Argument(help="First run.")],
    run_b: Annotated[str, typer.Argument(help="Second run.")],
    registry: RegistryOption = None,
) -> None:
    """Recipes diffed and metrics side by side."""
    from tuneforge.runs import registry as reg  # deferred: CLI start (psutil)

    a, b = reg.get_run(run_a, registry), reg.get_run(run_b, registry)
    table = Table(title="Recipe differences")
    for col in ("field", a.id, b.id):
        table.add_column(col)
    flat_a, flat_b = _flatten(a.json("recipe") or {}), _flatten(b.json("recipe") or {})
    for key in sorted(set(flat_a) | set(flat_b)):
        if flat_a.get(key) != flat_b.get(key):
            table.add_row(key, str(flat_a.get(key)), str(flat_b.get(key)))
    out.print(table)
    table = Table(title="Metrics (tuned)")
    for col in ("split/metric", a.id, b.id):
        table.add_column(col)
    ma, mb = (r.json("metrics") or {} for r in (a, b))
    for split in sorted(set(ma.get("tuned", {})) | set(mb.get("tuned", {}))):
        names = sorted(
            set(ma.get("tuned", {}).get(split, {})) | set(mb.get("tuned", {}).get(split, {}))
        )
        for name in names:
            va, vb = (
                ma.get("tuned", {}).get(split, {}).get(name),
                mb.get("tuned", {}).get(split, {}).get(name),
            )
            table.add_row(
                f"{split}/{name}",
                "" if va is None else f"{va:.4f}",
                "" if vb is None else f"{vb:.4f}",
            )
    out.print(table)


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


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat
