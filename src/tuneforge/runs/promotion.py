"""Promotion gate: a model version reaches a stage only if it is not worse than the current one.

Both versions are compared on the same evaluation set — a `--data` file scored now, the holder's
weights scored as a continued candidate's starting point, or a split whose data file has the same
content hash in both runs — on the run's selection metric. Where both have per-example outcomes
(runs keep them in outcomes.json) the comparison is paired, with a bootstrap interval on the
difference (evaluation/intervals.py), and the verdict is one of three:

- significantly better (the interval excludes zero on the better side): promoted;
- significantly worse: refused, whatever the tolerance;
- no significant difference: promoted when the candidate's figure is not worse than the
  holder's by more than the tolerance (default 0: not worse at all), refused otherwise.

Without per-example outcomes (runs older than them) the bare figures are compared with the
tolerance. `--force` overrides a refusal and the override is recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import CheckFailed, TuneforgeError
from tuneforge.evaluation import intervals, outcomes
from tuneforge.evaluation.intervals import verdict
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
    verify: bool = False,
) -> dict[str, Any]:
    candidate = registry.model_version(name, version, db)
    verified = None
    if verify:  # before anything is compared or recorded; --force does not override it
        verified = require_verified(registry.get_run(candidate["run_id"], db).path, name, version)
    try:
        current = registry.model_version(name, stage, db)
    except TuneforgeError:
        current = None
    detail: dict[str, Any] = {"stage": stage, "tolerance": tolerance}
    if verified is not None:
        detail["verify"] = verified
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
    found = compare(cand_run, cur_run, metric, data)
    cand_value, cur_value, where = found.candidate, found.current, found.where
    worse, why = judge(metric, cand_value, cur_value, tolerance, found.interval)
    detail.update(
        metric=metric,
        candidate=cand_value,
        current=cur_value,
        evaluation_set=where,
        compared_with=f"{name}@{current['version']}",
        worse=worse,
        verdict=why,
        **({"interval": found.interval} if found.interval is not None else {}),
    )
    if worse and not force:
        raise CheckFailed(
            f"promotion refused: {name}@{version} has {metric} {cand_value:.4f} against "
            f"{name}@{current['version']} ({stage}) {cur_value:.4f} on {where}: {why}",
            hint="improve the model, raise --tolerance (for a difference that is not "
            "significant), or --force (the override is recorded)",
        )
    registry.set_stage(name, candidate["version"], stage, forced=worse, detail=detail, db=db)
    return {**detail, "promoted": True, "forced": worse}


@dataclass(frozen=True)
class Compared:
    """Both versions' figures on one evaluation set, and the difference's paired comparison
    (evaluation/intervals.py; None without per-example outcomes for both)."""

    candidate: float
    current: float
    where: str
    interval: dict[str, Any] | None = None


def judge(
    metric: str,
    candidate: float,
    current: float,
    tolerance: float,
    interval: dict[str, Any] | None,
) -> tuple[bool, str]:
    """(refused?, the verdict in words): the three verdicts of the module's rule."""
    lower = metric in LOWER_IS_BETTER
    beyond = candidate > current + tolerance if lower else candidate < current - tolerance
    if interval is None:
        words = "worse beyond" if beyond else "within"
        return beyond, f"{words} tolerance {tolerance:g} (bare figures: no per-example outcomes)"
    said = verdict(metric, interval, ("holder", "candidate"))
    if interval["better"] == "reference":
        return True, said
    if interval["better"] == "candidate":
        return False, said
    rule = "worse than the holder beyond" if beyond else "within"
    return beyond, f"{said}; {rule} tolerance {tolerance:g}"


def compare(cand, cur, metric: str, data: Path | None) -> Compared:
    if data is not None:
        from tuneforge.runs.run import Run  # deferred: CLI start (a run loads models, torch)

        scored = [Run.load(r.path).evaluate(data) for r in (cand, cur)]
        where = f"{data} (sha256 {sha256_path(data)[:12]})"
        mine, theirs = (s["outcomes"].get("tuned") for s in scored)
        return Compared(
            scored[0]["tuned"][metric],
            scored[1]["tuned"][metric],
            where,
            _paired(theirs, mine, metric),
        )
    started = _scored_as_start(cand, cur, metric)
    if started is not None:
        return started
    cand_data, cur_data = cand.json("data") or {}, cur.json("data") or {}
    cand_metrics = json.loads(Path(cand.path, "metrics.json").read_text())["tuned"]
    cur_metrics = json.loads(Path(cur.path, "metrics.json").read_text())["tuned"]
    cand_outcomes = outcomes.load(Path(cand.path)).get("tuned", {})
    cur_outcomes = outcomes.load(Path(cur.path)).get("tuned", {})
    for split in ("test", "validation"):
        a, b = cand_data.get(split, {}), cur_data.get(split, {})
        if (
            a.get("sha256")
            and a.get("sha256") == b.get("sha256")
            and split in cand_metrics
            and split in cur_metrics
        ):
            return Compared(
                cand_metrics[split][metric],
                cur_metrics[split][metric],
                f"{split} ({a['path']}, sha256 {a['sha256'][:12]})",
                _paired(cur_outcomes.get(split), cand_outcomes.get(split), metric),
            )
    raise TuneforgeError(
        "promotion: the two versions were not evaluated on the same data (no test/validation file with equal content)",
        hint="pass --data FILE to score both versions on the same labelled file now",
    )


def _paired(current: dict | None, candidate: dict | None, metric: str) -> dict[str, Any] | None:
    if not current or not candidate:
        return None
    return intervals.compare(current, candidate).get(metric)


def _scored_as_start(cand, cur, metric: str) -> Compared | None:
    """A candidate that continued the holder scored the holder's own weights on its splits before
    training (metrics.json `start`): the two are compared on the same examples by the same
    measure, also across tasks (an sft holder, a preference candidate)."""
    run_record = Path(cand.path, "run.json")
    parent = json.loads(run_record.read_text()).get("parent") if run_record.is_file() else None
    if not parent or parent.get("run_id") != cur.id:
        return None
    metrics = json.loads(Path(cand.path, "metrics.json").read_text())
    kept = outcomes.load(Path(cand.path))
    data = cand.json("data") or {}
    for split in ("test", "validation"):
        start = metrics.get("start", {}).get(split, {})
        tuned = metrics["tuned"].get(split, {})
        if start.get(metric) is not None and tuned.get(metric) is not None:
            where = data.get(split, {})
            return Compared(
                tuned[metric],
                start[metric],
                f"{split} ({where.get('path', split)}; the holder {cur.id} scored as this run's "
                "starting point)",
                _paired(kept.get("start", {}).get(split), kept.get("tuned", {}).get(split), metric),
            )
    return None


VERIFY_FILE = "verify.json"  # written by `tuneforge verify` (deploy/verify.py) in the run


def require_verified(run_path: str | Path, name: str, version: int) -> dict[str, Any]:
    """`promote --verify`: the candidate's run holds a passing `tuneforge verify` (verify.json),
    and no export it verified has been replaced since (its export.json hash). Verify is not run
    here: which exports and which server to check is the user's call. Returns the record's gist."""
    path = Path(run_path) / VERIFY_FILE
    what = f"promotion refused: {name}@{version} ({Path(run_path).name})"
    fix = f"tuneforge verify {run_path} --export PATH [--server URL]"
    if not path.is_file():
        raise CheckFailed(f"{what} has never been verified (no {VERIFY_FILE})", hint=f"run {fix}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        targets = record["targets"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckFailed(f"{what}: {path} is not a verify record", hint=f"run {fix}") from None
    if not record.get("passed") or not targets:
        failed = [t.get("target") for t in targets if not t.get("passed")]
        raise CheckFailed(
            f"{what}: its last verify ({record.get('created')}) failed for {', '.join(map(str, failed))}",
            hint=f"fix the export or server and run {fix} again",
        )
    for target in targets:
        identity = target.get("identity") or {}
        folder, digest = identity.get("path"), identity.get("export_json_sha256")
        record_file = Path(folder) / "export.json" if folder else None
        replaced = (
            digest is not None
            and record_file is not None
            and record_file.is_file()
            and sha256_path(record_file) != digest
        )
        if replaced:
            raise CheckFailed(
                f"{what}: the export {folder} was replaced after it was verified",
                hint=f"run {fix} again",
            )
    return {
        "verified": record.get("created"),
        "targets": [t.get("target") for t in targets],
        "data": record.get("data", {}).get("source"),
    }
