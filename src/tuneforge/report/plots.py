"""Report figures (matplotlib, Agg backend): each function returns PNG bytes or None."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def loss_curves(
    log_history: list[dict[str, Any]],
    evaluations: list[dict[str, Any]],
    overfit_step: int | None = None,
) -> bytes | None:
    """Training loss per logged step and validation loss per evaluation."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    val = [(e["step"], e["loss"]) for e in evaluations if e.get("loss") is not None]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss", color="#4C72B0", alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", color="#DD8452")
    if overfit_step is not None:
        ax.axvline(
            overfit_step,
            color="#C44E52",
            linestyle="--",
            label=f"overfitting begins (step {overfit_step})",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def metric_curve(
    evaluations: list[dict[str, Any]], metric: str, best_step: int | None
) -> bytes | None:
    points = [(e["step"], e[metric]) for e in evaluations if e.get(metric) is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(*zip(*points, strict=True), "o-", color="#55A868", label=f"validation {metric}")
    best = [p for p in points if p[0] == best_step]
    if best:
        ax.plot(
            *best[0],
            marker="*",
            markersize=16,
            color="#C44E52",
            linestyle="none",
            label=f"best checkpoint (step {best_step})",
        )
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> bytes:
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * n, 1.0 + 0.9 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max(max(row) for row in matrix) or 1
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(matrix[i][j]),
                ha="center",
                va="center",
                color="white" if matrix[i][j] > top / 2 else "black",
            )
    return _png(fig)


def base_vs_tuned(
    base: dict[str, Any], tuned: dict[str, Any], metrics: Sequence[str]
) -> bytes | None:
    names = [m for m in metrics if m in tuned and m in base and isinstance(tuned[m], (int, float))]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(1.5 + 1.6 * len(names), 3.6))
    x = range(len(names))
    ax.bar(
        [i - 0.2 for i in x],
        [base[m] for m in names],
        width=0.4,
        label="base model",
        color="#8C8C8C",
    )
    ax.bar(
        [i + 0.2 for i in x],
        [tuned[m] for m in names],
        width=0.4,
        label="fine-tuned",
        color="#4C72B0",
    )
    for i, m in enumerate(names):
        ax.text(i - 0.2, base[m], f"{base[m]:.3g}", ha="center", va="bottom", fontsize=8)
        ax.text(i + 0.2, tuned[m], f"{tuned[m]:.3g}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), names)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def length_histogram(lengths: Sequence[int], max_length: int) -> bytes | None:
    if not lengths:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.hist(lengths, bins=min(40, max(5, len(set(lengths)))), color="#4C72B0")
    ax.axvline(max_length, color="#C44E52", linestyle="--", label=f"max_length = {max_length}")
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.legend()
    return _png(fig)


def bias_flip_rates(results: dict[str, dict[str, Any]]) -> bytes | None:
    """`results`: {"base": probe result, "tuned": probe result} (either may be missing)."""
    models = [m for m in ("base", "tuned") if m in results]
    if not models:
        return None
    categories = list(results[models[0]]["categories"])
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(categories), 3.6))
    width = 0.8 / len(models)
    for k, model in enumerate(models):
        rates = [results[model]["categories"][c]["flip_rate"] for c in categories]
        ax.bar(
            [i + k * width - 0.4 + width / 2 for i in range(len(categories))],
            rates,
            width=width,
            label=model,
        )
    ax.set_xticks(range(len(categories)), categories, rotation=20)
    ax.set_ylabel("label flip rate")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def reliability_diagram(curves: dict[str, dict[str, Any] | None], split: str) -> bytes | None:
    """Accuracy against confidence per bin for each model (`curves`: name -> the `reliability`
    figures of a split: bins with lower, upper, count, confidence, accuracy); the diagonal is
    perfect calibration; below it, over-confidence. Beneath: how many predictions each bin holds."""
    curves = {name: r for name, r in curves.items() if r and r.get("bins")}
    if not curves:
        return None
    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=(6.4, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], linestyle=":", color="#333333", label="perfect calibration")
    colours = ["#8C8C8C", "#4C72B0", "#DD8452", "#55A868"]
    n = len(curves)
    for k, (name, r) in enumerate(curves.items()):
        bins, colour = r["bins"], colours[k % len(colours)]
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            "o-",
            color=colour,
            label=name,
        )
        width = (bins[0]["upper"] - bins[0]["lower"]) / (n + 1)
        counts.bar(
            [b["lower"] + (k + 0.5) * width for b in bins],
            [b["count"] for b in bins],
            width=width,
            align="edge",
            color=colour,
        )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability ({split})")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    counts.set_xlabel("confidence (top-label probability)")
    counts.set_ylabel("examples")
    counts.grid(axis="y", alpha=0.3)
    return _png(fig)
