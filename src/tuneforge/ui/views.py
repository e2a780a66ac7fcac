"""Registry rows and run folders turned into what the pages show (plain dicts of plain values:
the templates escape every string)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from tuneforge.report.markdown import summary_rows
from tuneforge.runs import registry
from tuneforge.runs.registry import RunRecord
from tuneforge.runs.summary import headline, metric_pairs, recipe_differences
from tuneforge.ui import live

STATUSES = ("running", "finished", "failed", "interrupted")
TASKS = ("classification", "sft", "pretrain", "preference")


def run_row(record: RunRecord) -> dict[str, Any]:
    """One line of the runs table."""
    row = record.row
    created, finished = row.get("created"), row.get("finished")
    end = finished or (time.time() if record.status == "running" else None)
    found = None
    if record.status == "running":
        lines, _ = live.read_lines(live.working_folder(record.path))
        found = live.progress(lines)
    return {
        "id": record.id,
        "name": row.get("name") or "",
        "task": row.get("task") or "",
        "method": row.get("method") or "",
        "base_model": row.get("base_model") or "",
        "status": record.status,
        "headline": headline(record.json("metrics")),
        "created": created,
        "duration": (end - created) if (created and end) else None,
        "progress": found.to_dict() if found else None,
        "error": row.get("error"),
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_detail(record: RunRecord, db: Path | None) -> dict[str, Any]:
    """Everything the run page shows besides the live curves."""
    folder = live.working_folder(record.path)
    metrics = _read_json(folder / "metrics.json") or record.json("metrics") or {}
    status = _read_json(folder / "status.json") or {}
    recipe_text = (folder / "recipe.yaml").read_text() if (folder / "recipe.yaml").is_file() else ""
    if not recipe_text and record.json("recipe"):
        recipe_text = yaml.safe_dump(record.json("recipe"), sort_keys=False)
    chain = registry.lineage_chain(record.id, db)
    return {
        **run_row(record),
        "path": record.path,
        "folder": str(folder),
        "finished": (folder / "run.json").is_file() and record.status == "finished",
        "resumable": record.status in ("interrupted", "failed")
        and folder.name.endswith(".incomplete"),
        "status_file": status,
        "selection_metric": metrics.get("selection_metric"),
        "comparisons": comparisons(metrics),
        "evaluations": evaluation_rows(
            metrics.get("evaluations") or _read_json(folder / "evaluations.json") or []
        ),
        "confusion": confusion_matrices(metrics),
        "samples": samples(metrics),
        "overfitting": metrics.get("overfitting"),
        "forgetting": metrics.get("forgetting"),
        "best": metrics.get("best"),
        "data_check": (_read_json(folder / "data_check.json") or {}).get("findings", []),
        "bias": _read_json(folder / "bias.json"),
        "lineage": [
            {"id": r.id, "status": r.status, "base_model": r.row.get("base_model")} for r in chain
        ],
        "root_model": chain[-1].row.get("base_model") if chain else None,
        "replay": (record.json("recipe") or {}).get("replay"),
        "recipe": recipe_text,
        "report": (folder / "report.html").is_file(),
    }


def comparisons(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Base vs tuned per split: the report's rows (change with the error reduction, interval)."""
    out = []
    for split, tuned in (metrics.get("tuned") or {}).items():
        base = (metrics.get("base") or {}).get(split, {})
        comparison = (metrics.get("comparison") or {}).get(split)
        rows = summary_rows(base, tuned, comparison)
        header = ["metric", "base model", "fine-tuned", "change"]
        if comparison is not None:
            header += ["95% CI of change", "verdict"]
        out.append({"split": split, "n": tuned.get("n"), "header": header, "rows": rows})
    return out


def evaluation_rows(evaluations: list[dict[str, Any]]) -> dict[str, Any]:
    keys: list[str] = []
    for e in evaluations:
        for k, v in e.items():
            if (
                k not in keys
                and k != "details"
                and isinstance(v, (int, float))
                and not k.endswith(("runtime", "per_second"))
            ):
                keys.append(k)
    return {"columns": keys, "rows": [[e.get(k) for k in keys] for e in evaluations]}


def confusion_matrices(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for split, tuned in (metrics.get("tuned") or {}).items():
        if isinstance(tuned, dict) and tuned.get("confusion_matrix") and tuned.get("labels"):
            out.append(
                {"split": split, "labels": tuned["labels"], "matrix": tuned["confusion_matrix"]}
            )
    return out


def samples(metrics: dict[str, Any], n: int = 5) -> list[dict[str, str]]:
    """Generation samples (sft, preference): the prompt, the data's answer, the base model's and
    the fine-tuned model's (greedy), as the report shows them."""
    found = []
    for split, tuned in (metrics.get("tuned") or {}).items():
        base = ((metrics.get("base") or {}).get(split) or {}).get("samples") or []
        for i, sample in enumerate((tuned.get("samples") or [])[:n]):
            shown = {"split": split}
            for key in ("prompt", "reference", "chosen", "rejected", "completion"):
                if key in sample:
                    shown[key] = str(sample[key])
            if i < len(base):
                shown["base model"] = str(base[i].get("prediction") or "(empty)")
            shown["fine-tuned"] = str(sample.get("prediction") or "(empty)")
            found.append(shown)
    return found


def compare_runs(records: list[RunRecord]) -> dict[str, Any]:
    """Recipes diffed across every run (fields where any differs) and tuned metrics side by side."""
    recipes = [r.json("recipe") or {} for r in records]
    metrics = [r.json("metrics") or {} for r in records]
    fields: dict[str, list[Any]] = {}
    for other in recipes[1:]:
        for d in recipe_differences(recipes[0], other):
            fields.setdefault(d["field"], [None] * len(records))
    flat = [{d["field"]: d["a"] for d in recipe_differences(r, {})} for r in recipes]
    diff_rows = [[field, *[f.get(field) for f in flat]] for field in sorted(fields)]
    names: dict[tuple[str, str], list[Any]] = {}
    for i, m in enumerate(metrics):
        for pair in metric_pairs(m, {}):
            if isinstance(pair["a"], (int, float)):
                names.setdefault((pair["split"], pair["metric"]), [None] * len(records))[i] = pair[
                    "a"
                ]
    metric_rows = [[f"{s}/{m}", *values] for (s, m), values in sorted(names.items())]
    selection = next((m["selection_metric"] for m in metrics if m.get("selection_metric")), None)
    return {
        "ids": [r.id for r in records],
        "recipe_rows": diff_rows,
        "metric_rows": metric_rows,
        "curves": ["train_loss", "loss", *([selection] if selection not in (None, "loss") else [])],
    }
