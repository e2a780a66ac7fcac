"""report.md: what a reader needs to trust a run — base vs tuned, the history, the data.

Figures are referenced as `figures/*.png` (written by :mod:`tuneforge.report.figures`);
report.html is rendered from this same text with the figures embedded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.evaluation.intervals import format_p, signed, verdict
from tuneforge.evaluation.metrics import (
    HEADLINE_METRICS,
    LOWER_IS_BETTER,
    error_reduction,
    relative_drop,
)
from tuneforge.evaluation.text_metrics import GENERATION_METRICS

RATES = {
    "accuracy",
    "macro_f1",
    "exact_match",
    "first_line_exact_match",
    "preference_accuracy",
    "reward_accuracy",
}  # shown with error reduction
TRAINING_COLUMNS = ("perplexity", *(m for m in HEADLINE_METRICS if m not in LOWER_IS_BETTER))
COUNT_KEYS = (
    "examples",
    "truncated",
    "dropped",
    "tokens",
    "trained_tokens",
    "documents",
    "skipped_empty",
    "blocks",
    "dropped_tail_tokens",
)


def summary_rows(
    base: dict[str, Any], tuned: dict[str, Any], comparison: dict[str, Any] | None = None
) -> list[tuple[str, ...]]:
    """(metric, base, tuned, change) rows for one split, shared by the report and the CLI; with
    the split's `comparison` (evaluation/intervals.py), each row also has the change's interval
    and whether it is significant. Generation metrics name how many answers they scored."""
    rows = []
    for m in HEADLINE_METRICS:
        if tuned.get(m) is None:
            continue
        b = base.get(m)
        t = tuned[m]
        row = (
            _metric_name(m, tuned),
            "—" if b is None else _num(m, b),
            _num(m, t),
            "" if b is None else _change(m, b, t),
        )
        if comparison is not None:
            row += interval_cells(m, comparison.get(m))
        rows.append(row)
    return rows


def _metric_name(metric: str, tuned: dict[str, Any]) -> str:
    if metric in GENERATION_METRICS and tuned.get("generated") is not None:
        n = tuned["generated"]
        return f"{metric} ({n} answer{'' if n == 1 else 's'})"
    return metric


def interval_cells(metric: str, comparison: dict[str, Any] | None) -> tuple[str, str]:
    """(the change's interval, 'gain' / 'loss' / 'n.s.' with McNemar's p where it applies)."""
    if comparison is None:
        return "", ""
    low, high = comparison["interval"]
    cell = f"{signed(low, metric)} to {signed(high, metric)}"
    word = {"candidate": "gain", "reference": "loss", None: "n.s."}[comparison["better"]]
    test = comparison.get("test")
    if test is not None:
        word += f" ({format_p(test['p_value'])})"
    return cell, word


def significance_line(split: str, metric: str, comparison: dict[str, Any] | None) -> str | None:
    """One sentence: is the selection metric's change on this split significant?"""
    if comparison is None or metric not in comparison:
        return None
    return f"{metric} on {split}: {verdict(metric, comparison[metric])}"


def _num(metric: str, value: float) -> str:
    return f"{value:.2f}" if metric in ("perplexity", "chrf", "bleu") else f"{value:.4f}"


def _change(metric: str, b: float, t: float) -> str:
    if metric == "loss":
        return f"{t - b:+.4f}"
    if metric == "perplexity":
        drop = relative_drop(b, t)
        return "" if drop is None else f"{t - b:+.2f} ({-drop:+.1f}%)"
    if metric in ("chrf", "bleu"):
        return f"{t - b:+.2f}"
    if metric not in RATES:
        return f"{t - b:+.4f}"
    red = error_reduction(b, t)
    if red is None:
        return f"{t - b:+.3f}"
    return f"{t - b:+.3f} (error −{red:.1f}%)" if red >= 0 else f"{t - b:+.3f} (error +{-red:.1f}%)"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def render_report(
    run_path: Path, title: str | None = None, figures: dict[str, str] | None = None
) -> str:
    """The report text; `figures` maps figure name -> relative path of its PNG."""
    figures = figures or {}
    meta = json.loads((run_path / "run.json").read_text())
    metrics = json.loads((run_path / "metrics.json").read_text())
    sections = [
        _header(title or run_path.name, meta, metrics),
        _comparison_section(meta, metrics, figures),
        _calibration_section(metrics, figures),
        _forgetting_section(metrics, meta),
        _samples_section(metrics),
        _training_section(metrics, figures),
        _data_section(meta, figures),
        _data_check_section(run_path),
        _bias_section(run_path, figures),
        _memorization_section(run_path),
        _recipe_section(run_path),
        _timings_section(meta),
        _environment_section(meta),
    ]
    return "\n".join(line for section in sections for line in section)


def _header(title: str, meta: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """The title and what was trained: task, method, base model, parameters, best checkpoint."""
    best = metrics["best"]
    return [
        f"# Run {title}",
        "",
        f"- task: **{meta['task']}**, method: **{meta['method']}**, base model: `{meta['base_model']}`",
        f"- trainable parameters: {meta['parameters']['trainable']:,} of {meta['parameters']['total']:,}",
        f"- best checkpoint: step {best.get('step')} of {best.get('global_steps')}, "
        f"selected on validation `{metrics['selection_metric']}` = {best.get('value')}",
        "",
    ]


def _comparison_section(
    meta: dict[str, Any], metrics: dict[str, Any], figures: dict[str, str]
) -> list[str]:
    """Base model vs fine-tuned on every split: the headline metrics, per class, confusion."""
    lines = [
        "## Base model vs fine-tuned",
        "",
        "The base model is the untouched pretrained LLM scored zero-shot; the fine-tuned model is the "
        "best checkpoint. Error reduction = share of the base model's errors removed.",
        "",
    ]
    if meta["task"] != "classification":
        lines += [
            "Loss is the mean over trained tokens (sft: assistant answers; pretrain: all tokens of the "
            "held-out documents), perplexity = exp(loss); its change is given in percent. Generation "
            "metrics score greedy answers: exact match and first-line exact match (0-1), ROUGE-L F "
            "(0-1), chrF and BLEU (0-100).",
            "",
        ]
    comparisons = metrics.get("comparison", {})
    if comparisons:
        level = next(iter(next(iter(comparisons.values())).values()), {}).get("confidence", 0.95)
        lines += [
            f"Each change carries a {100 * level:g}% interval from a paired bootstrap over the same "
            "examples; a change is significant (gain or loss) when its interval excludes zero. "
            "For 0/1 metrics McNemar's exact test gives p.",
            "",
        ]
    for split, tuned in metrics["tuned"].items():
        lines += _split_tables(
            split,
            metrics.get("base", {}).get(split, {}),
            tuned,
            comparisons.get(split),
            metrics.get("selection_metric"),
        )
    lines += _figure(figures, "base_vs_tuned", "Base model vs fine-tuned")
    lines += _figure(figures, "confusion_matrix", "Confusion matrix (fine-tuned, validation)")
    return lines


def _split_tables(
    split: str,
    base: dict[str, Any],
    tuned: dict[str, Any],
    comparison: dict[str, Any] | None = None,
    metric: str | None = None,
) -> list[str]:
    """One split: metric, base, fine-tuned, change (its interval and significance where the run
    has per-example outcomes); for classification per class and confusion."""
    lines = [f"### {split} (n={tuned.get('n')})", ""]
    header = ["metric", "base", "fine-tuned", "change"]
    if comparison is not None:
        level = next(iter(comparison.values()), {}).get("confidence", 0.95)
        header += [f"{100 * level:g}% CI of change", "verdict"]
    lines += [_table(header, [list(r) for r in summary_rows(base, tuned, comparison)]), ""]
    sentence = significance_line(split, metric, comparison) if metric else None
    if sentence:
        lines += [f"**{sentence}.**", ""]
    if "per_class" not in tuned:
        return lines
    base_per_class = base.get("per_class", {})
    rows = [
        [
            label,
            f"{base_per_class.get(label, {}).get('precision', float('nan')):.3f}",
            f"{base_per_class.get(label, {}).get('recall', float('nan')):.3f}",
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
    return lines


def _calibration_section(metrics: dict[str, Any], figures: dict[str, str]) -> list[str]:
    """Classification: expected calibration error of base and tuned per split, temperature
    scaling's effect when the recipe turned it on, the reliability diagram."""
    tuned = {s: m for s, m in metrics["tuned"].items() if m.get("ece") is not None}
    if not tuned:
        return []
    fitted = metrics.get("calibration")
    lines = [
        "## Calibration",
        "",
        "Whether the probabilities can be taken at their word: of the answers given with "
        "confidence 0.8, 80% should be right. Expected calibration error (ECE): the predictions "
        "in 15 equal-width bins of their top-label probability; per bin, the gap between its "
        "accuracy and its mean confidence, weighted by its share of the examples. MCE: the largest "
        "gap of a bin. 0 is perfect; lower is better.",
        "",
    ]
    header = ["split", "base ECE", "tuned ECE", "base MCE", "tuned MCE"]
    if fitted:
        header[3:3] = ["tuned ECE, temperature-scaled"]
    rows = []
    for split, t in tuned.items():
        b = metrics.get("base", {}).get(split, {})
        row = [split, _fmt(b.get("ece")), _fmt(t["ece"]), _fmt(b.get("mce")), _fmt(t.get("mce"))]
        if fitted:
            scaled = _fmt(t.get("ece_scaled"))
            row[3:3] = [f"{scaled} (fitted here)" if split == fitted["fitted_on"] else scaled]
        rows.append(row)
    lines += [_table(header, rows), ""]
    if fitted:
        on = fitted["splits"].get(fitted["fitted_on"], {})
        lines += [
            f"Temperature scaling (`classification.calibration: temperature`): T = "
            f"{fitted['temperature']:.3f}, fitted on {fitted['fitted_on']} by minimising the "
            f"log-loss ({on.get('nll_before', float('nan')):.4f} -> "
            f"{on.get('nll_after', float('nan')):.4f}); predict, `eval` and the server apply it "
            "(same labels, probabilities divided in log space by T). The figures on "
            f"{fitted['fitted_on']} are measured on the data T was fitted on and flatter it"
            + (
                "; test is the honest measure."
                if "test" in fitted["splits"]
                else "; this run has no test split to confirm them."
            ),
            "",
        ]
    else:
        lines += [
            "Temperature scaling is off (`classification.calibration: temperature` fits one on "
            "validation and applies it in predict and the server).",
            "",
        ]
    lines += _figure(figures, "reliability", "Reliability diagram (accuracy against confidence)")
    return lines


def _forgetting_section(metrics: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Continued runs: the parent's validation set before (the parent version) and after."""
    parent = meta.get("parent")
    f = metrics.get("forgetting")
    if not parent and not f:
        return []
    lines = ["## Continued training and forgetting check", ""]
    if parent:
        version = f" = {parent['model']}" if parent.get("model") else ""
        lines.append(
            f"Continued from run `{parent['run_id']}` (`{parent['spec']}`{version}, "
            f"method {parent['method']})."
        )
        replay = parent.get("replay")
        if replay:
            lines.append(
                f"Replay {replay['fraction']:g}: {replay['rows']} of the parent's "
                f"{replay['parent_train_rows']} training examples (`{replay['from_file']}`) mixed "
                f"into the {replay['new_train_rows']} new ones"
                + (
                    f"; {replay['left_out_as_leakage']} left out as equal to a new validation/test example"
                    if replay["left_out_as_leakage"]
                    else ""
                )
                + "."
            )
        lines.append("")
    if f and f.get("skipped"):
        lines += [f"Forgetting check skipped: {f['skipped']}.", ""]
    elif f:
        verdict = "**worse**" if f["worse"] else "not worse"
        lines += [
            f"The parent's validation set (`{f['data']}`, n={f['n']}) scored with the starting model "
            f"(the parent version, before training) and the new model: `{f['metric']}` "
            f"{f['before']:.4f} -> {f['after']:.4f} ({f['change']:+.4f}, {verdict}).",
            "",
            _table(
                ["metric", "before (parent)", "after (this run)", "change"],
                [list(r) for r in summary_rows(f["before_metrics"], f["after_metrics"])],
            ),
            "",
        ]
    return lines


def _samples_section(metrics: dict[str, Any], n: int = 3) -> list[str]:
    """A few validation answers of the base and the fine-tuned model beside the reference."""
    tuned = metrics["tuned"].get("validation", {}).get("samples")
    if not tuned:
        return []
    base = metrics.get("base", {}).get("validation", {}).get("samples") or []
    lines = ["## Sample generations (validation, greedy)", ""]
    for i, sample in enumerate(tuned[:n]):
        lines += [
            f"**Example {i + 1}.** Prompt:",
            "",
            _quote(sample["prompt"], 400),
            "",
        ]
        lines += _sample_answers(sample)
        if i < len(base):
            lines += ["Base model:", "", _quote(base[i]["prediction"] or "(empty)"), ""]
        lines += ["Fine-tuned:", "", _quote(sample["prediction"] or "(empty)"), ""]
    lines += [
        "All samples of every evaluation: `samples/step-N.jsonl`; final ones in `metrics.json`.",
        "",
    ]
    return lines


def _sample_answers(sample: dict[str, Any]) -> list[str]:
    """The data's answers for a sample: sft's reference, or a preference pair / rated answer."""
    if "chosen" in sample:
        return [
            "Preferred answer (chosen):",
            "",
            _quote(sample["chosen"]),
            "",
            "Rejected answer:",
            "",
            _quote(sample["rejected"]),
            "",
        ]
    if "completion" in sample:
        rating = "thumbs up" if sample.get("desirable") else "thumbs down"
        return [f"Rated answer ({rating}):", "", _quote(sample["completion"]), ""]
    return ["Reference:", "", _quote(sample["reference"]), ""]


def _training_section(metrics: dict[str, Any], figures: dict[str, str]) -> list[str]:
    """Validation during training: overfitting, the loss and metric curves, every evaluation."""
    lines = ["## Validation during training", ""]
    overfit = metrics.get("overfitting")
    if overfit:
        lines += [
            f"**Overfitting detected:** {overfit['message']} (detected at step {overfit['detected_step']}). "
            f"The best checkpoint (step {metrics['best'].get('step')}) is the model kept.",
            "",
        ]
    else:
        lines += [
            "No overfitting detected (validation never worsened while training improved for "
            "consecutive evaluations).",
            "",
        ]
    lines += _figure(figures, "loss", "Training and validation loss")
    lines += _figure(
        figures, "metric", f"Validation {metrics['selection_metric']} (best checkpoint marked)"
    )
    evaluations = metrics["evaluations"]
    columns = [m for m in TRAINING_COLUMNS if any(e.get(m) is not None for e in evaluations)]
    rows = [
        [e["step"], e["epoch"], _fmt(e.get("train_loss")), _fmt(e.get("loss"))]
        + [_fmt(e.get(m)) for m in columns]
        for e in evaluations
    ]
    lines += [_table(["step", "epoch", "train loss", "val loss", *columns], rows), ""]
    return lines


def _data_section(meta: dict[str, Any], figures: dict[str, str]) -> list[str]:
    """The data files, label counts per split (classification) or other counts, token lengths."""
    info = meta.get("info", {})
    lines = ["## Data", ""]
    for split, src in meta.get("data_sources", {}).items():
        lines.append(f"- {split}: `{src}`")
    if "counts" in info:
        labels = info["labels"]
        rows = [
            [split, *[c.get(lab, 0) for lab in labels], sum(c.values())]
            for split, c in info["counts"].items()
        ]
        lines += ["", _table(["split", *labels, "total"], rows)]
    if "truncated" in info and "counts" in info:
        lines += [
            "",
            "Examples truncated to max_length: "
            + ", ".join(f"{k} {v}" for k, v in info["truncated"].items()),
        ]
    counted = [k for k in COUNT_KEYS if isinstance(info.get(k), dict) and "counts" not in info]
    if counted:
        splits = list(dict.fromkeys(split for k in counted for split in info[k]))
        rows = [
            [k.replace("_", " "), *[info[k].get(split, "") for split in splits]] for k in counted
        ]
        lines += ["", _table(["", *splits], rows)]
    lines += _figure(figures, "lengths", "Token lengths of the training examples")
    return lines


def _data_check_section(run_path: Path) -> list[str]:
    path = run_path / "data_check.json"
    if not path.is_file():
        return []
    check = json.loads(path.read_text())
    lines = ["", "## Data check", ""]
    rows = []
    for split, s in check["summary"]["splits"].items():
        tokens = s.get("tokens", {})
        rows.append(
            [
                split,
                s["examples"],
                tokens.get("median", ""),
                tokens.get("max", ""),
                tokens.get("over_max_length", ""),
            ]
        )
    lines += [
        _table(["split", "examples", "median tokens", "max tokens", "over max_length"], rows),
        "",
    ]
    if check["findings"]:
        rows = [
            [
                f["severity"],
                f["check"],
                f["split"] or "",
                f["message"],
                ", ".join(map(str, f["lines"][:10])),
            ]
            for f in check["findings"]
        ]
        lines += [_table(["severity", "check", "split", "finding", "lines"], rows), ""]
    else:
        lines += [
            "No findings: no leakage, duplicates, imbalance, empty or truncated examples.",
            "",
        ]
    return lines


def _bias_section(run_path: Path, figures: dict[str, str]) -> list[str]:
    path = run_path / "bias.json"
    if not path.is_file():
        return []
    bias = json.loads(path.read_text())
    lines = [
        "## Bias probe (counterfactual identity swaps)",
        "",
        f"{bias['tuned']['templates']} neutral templates filled with identity terms per category; identity "
        "should not change the prediction. Flip rate: share of templates whose predicted label changes "
        "across the terms. Max shift: largest mean move of one term's probability from the template average.",
        "",
    ]
    rows = []
    for category, tuned in bias["tuned"]["categories"].items():
        base = bias.get("base", {}).get("categories", {}).get(category, {})
        rows.append(
            [
                category,
                _fmt(base.get("flip_rate")),
                _fmt(tuned["flip_rate"]),
                _fmt(base.get("max_abs_shift")),
                _fmt(tuned["max_abs_shift"]),
            ]
        )
    lines += [
        _table(
            ["category", "base flip rate", "tuned flip rate", "base max shift", "tuned max shift"],
            rows,
        ),
        "",
    ]
    lines += _figure(figures, "bias", "Label flip rate under identity swaps")
    worst = sorted(
        ((c, w) for c, r in bias["tuned"]["categories"].items() for w in r["worst"][:1]),
        key=lambda cw: -cw[1]["spread"],
    )[:5]
    if worst:
        lines += ["Worst templates for the fine-tuned model:", ""]
        lines += [
            _table(
                ["category", "template", "probability spread", "lowest", "highest"],
                [
                    [c, w["template"], f"{w['spread']:.3f}", w["lowest"], w["highest"]]
                    for c, w in worst
                ],
            ),
            "",
        ]
    return lines


def _memorization_section(run_path: Path) -> list[str]:
    """`eval --memorization`: train vs held-out reproduction, loss gap, AUC, canaries."""
    path = run_path / "memorization.json"
    if not path.is_file():
        return []
    audit = json.loads(path.read_text())
    s = audit["settings"]
    lines = [
        "## Memorisation audit",
        "",
        f"{audit['sampled']['train']} training and {audit['sampled']['held_out']} held-out "
        f"examples (seed {s['seed']}), prompted with {s['prefix_tokens']} tokens of the example "
        "(sft: after the chat up to the answer) and decoded greedily for the next "
        f"{s['suffix_tokens']}. Verbatim: every token reproduced; near-verbatim: difflib ratio "
        f">= {s['near_verbatim_ratio']}; loss: mean token loss on the true continuation. AUC: how "
        "well the loss tells training from held-out examples (0.5: not at all).",
        "",
    ]
    rows = []
    for who in ("base", "tuned"):
        m = audit.get(who)
        if m is None:
            continue
        for side in ("train", "held_out"):
            r = m[side]
            rows.append(
                [
                    who,
                    side.replace("_", "-"),
                    _fmt(r["verbatim"]),
                    _fmt(r["near_verbatim"]),
                    _fmt(r["loss"]),
                    _fmt(m["loss_gap"]) if side == "train" else "",
                    _fmt(m["auc"]) if side == "train" else "",
                ]
            )
    header = ["model", "side", "verbatim", "near-verbatim", "loss", "loss gap", "AUC"]
    lines += [_table(header, rows), ""]
    canaries = audit["tuned"].get("canaries", [])
    if canaries:
        base = audit.get("base", {}).get("canaries", [])
        lines += [
            f"Canaries planted in the training data (canaries.json): exposure in bits among "
            f"{s['candidates']} random secrets of the same format (at most "
            f"{canaries[0]['max_exposure']:.2f}).",
            "",
            _table(
                ["account", "secret", "base exposure", "tuned exposure", "tuned reproduces"],
                [
                    [
                        c["account"],
                        c["secret"],
                        _fmt(base[k]["exposure"]) if k < len(base) else "",
                        _fmt(c["exposure"]),
                        "yes" if c["reproduced"] else "no",
                    ]
                    for k, c in enumerate(canaries)
                ],
            ),
            "",
        ]
    for warning in audit.get("warnings", []):
        lines += [f"**Warning:** {warning} ({s['warning_rule']}).", ""]
    return lines


def _recipe_section(run_path: Path) -> list[str]:
    return [
        "## Recipe (as resolved)",
        "",
        "```yaml",
        (run_path / "recipe.yaml").read_text().rstrip(),
        "```",
        "",
    ]


def _timings_section(meta: dict[str, Any]) -> list[str]:
    reused = meta.get("base_scores_reused")
    return [
        "",
        "## Timings (seconds)",
        "",
        _table(["phase", "seconds"], [[k, v] for k, v in meta.get("timings", {}).items()]),
        "",
        *(
            [
                f"The base model's scores were reused from run {reused['run']} "
                f"(scored {reused['created']}): the same base model, evaluation rows, settings "
                "and tuneforge code (`baseline.reuse`).",
                "",
            ]
            if reused
            else []
        ),
    ]


def _environment_section(meta: dict[str, Any]) -> list[str]:
    return [
        "## Environment",
        "",
        _table(["", ""], [[k, v] for k, v in meta.get("environment", {}).items()]),
        "",
    ]


def _figure(figures: dict[str, str], name: str, caption: str) -> list[str]:
    return [f"![{caption}]({figures[name]})", ""] if name in figures else []


def _quote(text: str, limit: int = 600) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines())


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
