"""A recipe's data check: read its data leniently, run the checks on it, report and refuse.

Runs on its own and at the start of every `train`; findings go to the terminal, to
`data_check.json` in the run directory and to the report.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rich.table import Table

from tuneforge.config import Recipe
from tuneforge.data.check import CheckReport, run_checks
from tuneforge.errors import TuneforgeError
from tuneforge.progress import console, status


def check_recipe_data(
    recipe: Recipe, tokenizer, task, recipe_dir: Path = Path("."), prepared=None
) -> CheckReport:
    """All findings for the recipe's data.

    In `train`, `prepared` (the task's :class:`~tuneforge.tasks.base.Prepared`) holds the rows the
    run read and the token counts it made: the check runs on those, nothing is read or tokenised
    again. On its own (`tuneforge data check`) the files are read leniently, so every broken row is
    listed instead of the first stopping the read.
    """
    if prepared is not None:
        splits, parse_errors = dict(prepared.splits.items()), prepared.splits.skipped
        counted = prepared.lengths
    else:
        splits, parse_errors = task.check_splits(recipe, recipe_dir)
        counted = {}
    examples = {}
    for split, rows in splits.items():
        found = task.check_examples(rows, recipe, split)
        lengths = counted.get(split)
        if lengths is None:
            lengths = task.token_lengths(rows, found, recipe, tokenizer)
        examples[split] = [replace(e, n_tokens=n) for e, n in zip(found, lengths, strict=True)]
    cfg = recipe.data_checks
    return run_checks(
        examples,
        max_length=recipe.training.max_length,
        severity=cfg.severities(),
        parse_errors=parse_errors,
        imbalance_ratio=cfg.imbalance_ratio,
        short_chars=cfg.short_chars,
        truncates=task.truncates,
        detectable_difference=recipe.evaluation.detectable_difference,
    )


def refuse_on_errors(report: CheckReport, error: type[TuneforgeError] = TuneforgeError) -> None:
    """Raise `error` listing the error findings: a user error in `train` (exit 2), a failed
    check in `data check` (CheckFailed, exit 1)."""
    errors = report.errors
    if not errors:
        return
    lines = [
        f"{f.split or 'data'}: {f.message}" + (f" (lines {_lines(f.lines)})" if f.lines else "")
        for f in errors
    ]
    checks = sorted({f.check for f in errors})
    raise error(
        "data check found " + f"{len(errors)} error(s):\n  " + "\n  ".join(lines),
        hint="fix the data, or downgrade the check in the recipe, e.g. "
        + ", ".join(f"--set data_checks.{c}=warning" for c in checks),
    )


def _lines(lines: list[int]) -> str:
    shown = ", ".join(str(n) for n in lines[:10])
    return shown + (", …" if len(lines) > 10 else "")


def findings_table(report: CheckReport) -> Table:
    table = Table(title="Data check")
    for col in ("severity", "check", "split", "finding", "lines"):
        table.add_column(col, overflow="fold")
    colour = {"error": "red", "warning": "yellow", "info": "cyan"}
    for f in report.findings:
        table.add_row(
            f"[{colour.get(f.severity, 'white')}]{f.severity}[/]",
            f.check,
            f.split or "",
            f.message,
            _lines(f.lines),
        )
    if not report.findings:
        table.add_row("[green]ok[/]", "", "", "no findings", "")
    return table


def summary_table(report: CheckReport) -> Table:
    table = Table(title="Data summary")
    for col in ("split", "examples", "labels", "tokens (min/median/p95/max)", "over max_length"):
        table.add_column(col, overflow="fold")
    for split, s in report.summary["splits"].items():
        tokens = s.get("tokens", {})
        table.add_row(
            split,
            str(s["examples"]),
            ", ".join(f"{k}: {v}" for k, v in s.get("labels", {}).items()),
            "/".join(str(tokens.get(k, "")) for k in ("min", "median", "p95", "max"))
            if tokens
            else "",
            str(tokens.get("over_max_length", "")),
        )
    return table


def check_data(recipe: Recipe, tokenizer, task, recipe_dir: Path, prepared=None):
    """`data check` before any compute is spent; refuses to train on an error finding."""
    with status("Checking data"):
        report = check_recipe_data(recipe, tokenizer, task, recipe_dir, prepared)
    if report.findings:
        console.print(findings_table(report))
    refuse_on_errors(report)
    return report
