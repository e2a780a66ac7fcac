"""report.md: what a reader needs to trust a run — base vs tuned, the history, the data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.evaluation.metrics import error_reduction
from tuneforge.rundir import write_text

SUMMARY_METRICS = ("accuracy", "macro_f1", "loss")


def summary_rows(base: dict[str, Any], tuned: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, base, tuned, change) rows for one split; shared by the report and the CLI."""
    rows = []
    for m in SUMMARY_METRICS:
        if m not in tuned:
            continue
        b = base.get(m)
        t = tuned[m]
        if m == "loss":
            change = "" if b is None else f"{t - b:+.4f}"
        else:
            red = None if b is None else error_reduction(b, t)
            change = "" if red is None else f"{t - b:+.3f} (error −{red:.1f}%)" if red >= 0 else f"{t - b:+.3f} (error +{-red:.1f}%)"
        rows.append((m, "—" if b is None else f"{b:.4f}", f"{t:.4f}", change))
    return rows


def _table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def render_report(run_path: Path, title: str | None = None) -> str:
    meta = json.loads((run_path / "run.json").read_text())
    metrics = json.loads((run_path / "metrics.json").read_text())
    info = meta.get("info", {})
    lines = [f"# Run {title or run_path.name}", ""]
    lines += [
        f"- task: **{meta['task']}**, method: **{meta['method']}**, base model: `{meta['base_model']}`",
        f"- trainable parameters: {meta['parameters']['trainable']:,} of {meta['parameters']['total']:,}",
        f"- best checkpoint: step {metrics['best'].get('step')} of {metrics['best'].get('global_steps')}, "
        f"selected on validation `{metrics['selection_metric']}` = {metrics['best'].get('value')}",
        "",
        "## Base model vs fine-tuned",
        "",
        "The base model is the untouched pretrained LLM scored zero-shot; the fine-tuned model is the "
        "best checkpoint. Error reduction = share of the base model's errors removed.",
        "",
    ]
    for split, tuned in metrics["tuned"].items():
        base = metrics.get("base", {}).get(split, {})
        lines += [f"### {split} (n={tuned.get('n')})", ""]
        lines += [_table(["metric", "base", "fine-tuned", "change"], [list(r) for r in summary_rows(base, tuned)]), ""]
        if "per_class" in tuned:
            rows = [
                [
                    label,
                    f"{base.get('per_class', {}).get(label, {}).get('precision', float('nan')):.3f}",
                    f"{base.get('per_class', {}).get(label, {}).get('recall', float('nan')):.3f}",
                    f"{pc['precision']:.3f}",
                    f"{pc['recall']:.3f}",
                    pc["support"],
                ]
                for label, pc in tuned["per_class"].items()
            ]
            lines += [_table(["class", "base P", "base R", "tuned P", "tuned R", "support"], rows), ""]
            labels = tuned["labels"]
            cm = [[labels[i], *row] for i, row in enumerate(tuned["confusion_matrix"])]
            lines += ["Confusion matrix of the fine-tuned model (rows: true, columns: predicted):", ""]
            lines += [_table(["true \\ predicted", *labels], cm), ""]

    lines += ["## Validation during training", ""]
    rows = []
    for e in metrics["evaluations"]:
        rows.append(
            [e["step"], e["epoch"], _fmt(e.get("train_loss")), _fmt(e.get("loss"))]
            + [_fmt(e.get(m)) for m in ("accuracy", "macro_f1") if any(m in x for x in metrics["evaluations"])]
        )
    header = ["step", "epoch", "train loss", "val loss"] + [
        m for m in ("accuracy", "macro_f1") if any(m in x for x in metrics["evaluations"])
    ]
    lines += [_table(header, rows), ""]

    lines += ["## Data", ""]
    for split, src in meta.get("data_sources", {}).items():
        lines.append(f"- {split}: `{src}`")
    if "counts" in info:
        labels = info["labels"]
        rows = [[split, *[c.get(lab, 0) for lab in labels], sum(c.values())] for split, c in info["counts"].items()]
        lines += ["", _table(["split", *labels, "total"], rows)]
    if "truncated" in info:
        lines += ["", "Examples truncated to max_length: " + ", ".join(f"{k} {v}" for k, v in info["truncated"].items())]
    lines += ["", "## Timings (seconds)", ""]
    lines += [_table(["phase", "seconds"], [[k, v] for k, v in meta.get("timings", {}).items()]), ""]
    lines += ["## Environment", ""]
    lines += [_table(["", ""], [[k, v] for k, v in meta.get("environment", {}).items()]), ""]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(run_path: Path, title: str | None = None) -> Path:
    path = run_path / "report.md"
    write_text(path, render_report(run_path, title))
    return path
