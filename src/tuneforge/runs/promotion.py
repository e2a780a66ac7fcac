"""Promotion gate: a model version reaches a stage only if it is not worse than the current one.

Both versions are compared on the same evaluation set — a `--data` file scored now, or a split
whose data file has the same content hash in both runs — on the run's selection metric, within
a stated tolerance. `--force` overrides a refusal and the override is recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.errors import CheckFailed, TuneforgeError
from tuneforge.evaluation.metrics import LOWER_IS_BETTER
from tuneforge.runs import registry
from tuneforge.runs.provenance import sha256_path


def promote(
    name: str,
    version: int,
    stage: str = "production",
    *,
    data: Path | None = None,
    tolerance: float = 0.0,
    force: bool = False,
    db: Path | None = None,
) -> dict[str, Any]:
    candidate = registry.model_version(name, version, db)
    try:
        current = registry.model_version(name, stage, db)
    except TuneforgeError:
        current = None
    detail: dict[str, Any] = {"stage": stage, "tolerance": tolerance}
    if current is None or current["version"] == candidate["version"]:
        registry.set_stage(
            name,
            candidate["version"],
            stage,
            forced=False,
            detail={**detail, "compared_with": None},
            db=db,
        )
        return {**detail, "promoted": True, "compared_with": None}

    cand_run = registry.get_run(candidate["run_id"], db)
    cur_run = registry.get_run(current["run_id"], db)
    metric = json.loads(Path(cand_run.path, "metrics.json").read_text())["selection_metric"]
    cand_value, cur_value, where = compare(cand_run, cur_run, metric, data)
    lower = metric in LOWER_IS_BETTER
    worse = cand_value > cur_value + tolerance if lower else cand_value < cur_value - tolerance
    detail.update(
        metric=metric,
        candidate=cand_value,
        current=cur_value,
        evaluation_set=where,
        compared_with=f"{name}@{current['version']}",
        worse=worse,
    )
    if worse and not force:
        sign = ">" if lower else "<"
        raise CheckFailed(
            f"promotion refused: {name}@{version} has {metric} {cand_value:.4f} {sign} "
            f"{name}@{current['version']} ({stage}) {cur_value:.4f} beyond tolerance {tolerance:g} on {where}",
            hint="improve the model, raise --tolerance, or --force (the override is recorded)",
        )
    registry.set_stage(name, candidate["version"], stage, forced=worse, detail=detail, db=db)
    return {**detail, "promoted": True, "forced": worse}


def compare(cand, cur, metric: str, data: Path | None) -> tuple[float, float, str]:
    if data is not None:
        from tuneforge.runs.run import Run  # deferred: CLI start (a run loads models, torch)

        values = [Run.load(r.path).evaluate(data)["tuned"][metric] for r in (cand, cur)]
        return values[0], values[1], f"{data} (sha256 {sha256_path(data)[:12]})"
    started = _scored_as_start(cand, cur, metric)
    if started is not None:
        return started
    cand_data, cur_data = cand.json("data") or {}, cur.json("data") or {}
    cand_metrics = json.loads(Path(cand.path, "metrics.json").read_text())["tuned"]
    cur_metrics = json.loads(Path(cur.path, "metrics.json").read_text())["tuned"]
    for split in ("test", "validation"):
        a, b = cand_data.get(split, {}), cur_data.get(split, {})
        if (
            a.get("sha256")
            and a.get("sha256") == b.get("sha256")
            and split in cand_metrics
            and split in cur_metrics
        ):
            return (
                cand_metrics[split][metric],
                cur_metrics[split][metric],
                f"{split} ({a['path']}, sha256 {a['sha256'][:12]})",
            )
    raise TuneforgeError(
        "promotion: the two versions were not evaluated on the same data (no test/validation file with equal content)",
        hint="pass --data FILE to score both versions on the same labelled file now",
    )


def _scored_as_start(cand, cur, metric: str) -> tuple[float, float, str] | None:
    """A candidate that continued the holder scored the holder's own weights on its splits before
    training (metrics.json `start`): the two are compared on the same examples by the same
    measure, also across tasks (an sft holder, a preference candidate)."""
    run_record = Path(cand.path, "run.json")
    parent = json.loads(run_record.read_text()).get("parent") if run_record.is_file() else None
    if not parent or parent.get("run_id") != cur.id:
        return None
    metrics = json.loads(Path(cand.path, "metrics.json").read_text())
    data = cand.json("data") or {}
    for split in ("test", "validation"):
        start = metrics.get("start", {}).get(split, {})
        tuned = metrics["tuned"].get(split, {})
        if start.get(metric) is not None and tuned.get(metric) is not None:
            where = data.get(split, {})
            return (
                tuned[metric],
                start[metric],
                f"{split} ({where.get('path', split)}; the holder {cur.id} scored as this run's "
                "starting point)",
            )
    return None
