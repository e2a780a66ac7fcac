"""Write the report's figures (PNG) for a run directory from its JSON files."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.report import plots


def write_figures(run_path: Path) -> dict[str, str]:
    """Figure name -> path relative to the run directory, for every figure the run has data for."""
    metrics = json.loads((run_path / "metrics.json").read_text())
    folder = run_path / "figures"
    folder.mkdir(exist_ok=True)
    evaluations = metrics.get("evaluations", [])
    overfit = metrics.get("overfitting") or {}
    images: dict[str, bytes | None] = {
        "loss": plots.loss_curves(
            metrics.get("log_history", []), evaluations, overfit.get("began_step")
        ),
        "metric": plots.metric_curve(
            evaluations, metrics["selection_metric"], metrics["best"].get("step")
        ),
    }
    split = "test" if "test" in metrics.get("tuned", {}) else "validation"
    tuned = metrics.get("tuned", {}).get(split, {})
    base = metrics.get("base", {}).get(split, {})
    if base:
        images["base_vs_tuned"] = plots.base_vs_tuned(
            base,
            tuned,
            [
                "accuracy",
                "macro_f1",
                "exact_match",
                "first_line_exact_match",
                "rouge_l",
                "perplexity",
            ],
        )
    validation = metrics.get("tuned", {}).get("validation", {})
    if "confusion_matrix" in validation:
        images["confusion_matrix"] = plots.confusion_matrix(
            validation["confusion_matrix"], validation["labels"]
        )
    if tuned.get("reliability"):  # classification: calibration on the split the report leads with
        images["reliability"] = plots.reliability_diagram(
            {
                "base model": base.get("reliability"),
                "fine-tuned": tuned["reliability"],
                "fine-tuned, temperature-scaled": tuned.get("reliability_scaled"),
            },
            split,
        )
    check = run_path / "data_check.json"
    if check.is_file():
        train = json.loads(check.read_text())["summary"]["splits"].get("train", {})
        if train.get("lengths"):
            images["lengths"] = plots.length_histogram(
                train["lengths"], train["tokens"]["max_length"]
            )
    bias = run_path / "bias.json"
    if bias.is_file():
        images["bias"] = plots.bias_flip_rates(json.loads(bias.read_text()))
    written = {}
    for name, png in images.items():
        if png:
            (folder / f"{name}.png").write_bytes(png)
            written[name] = f"figures/{name}.png"
    return written
