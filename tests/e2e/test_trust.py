"""Issue 5 end to end: data check (standalone and in train), the report with plots, the bias probe."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import assert_check_failed, assert_user_error, run_cli, sentiment_rows, write_csv


def _runs(output_dir: Path) -> list[Path]:
    return (
        [p for p in output_dir.iterdir() if not p.name.startswith(".")]
        if output_dir.exists()
        else []
    )


def test_data_check_reports_and_train_refuses_leakage(tmp_path, tiny_model):
    train = write_csv(
        tmp_path / "train.csv", sentiment_rows(20) + [sentiment_rows(1)[0]]
    )  # one duplicate
    leaked = sentiment_rows(6, offset=100) + sentiment_rows(
        2, offset=4
    )  # two train rows in validation
    validation = write_csv(tmp_path / "validation.csv", leaked)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: leak\nbase_model: {tiny_model}\ntask: classification\n"
        f"data: {{train: {train}, validation: {validation}}}\n"
        f"training: {{max_steps: 2, batch_size: 8}}\noutput_dir: {tmp_path / 'runs'}\n"
    )
    check = run_cli("data", "check", recipe)
    assert_check_failed(check, "data check found 1 error(s)", "also appear in train", "lines 8, 9")
    assert "duplicates" in check.stdout and "leakage" in check.stdout  # the full table is shown

    refused = run_cli("train", recipe)
    assert_user_error(refused, "leakage", "--set data_checks.leakage=warning")
    assert _runs(tmp_path / "runs") == []

    allowed = run_cli(
        "train", recipe, "--set", "data_checks.leakage=warning", "--set", "baseline.enabled=false"
    )
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    [run] = _runs(tmp_path / "runs")
    findings = json.loads((run / "data_check.json").read_text())["findings"]
    assert {(f["check"], f["severity"]) for f in findings} >= {
        ("leakage", "warning"),
        ("duplicates", "warning"),
    }
    assert "## Data check" in (run / "report.md").read_text()


def test_data_check_lists_unparseable_rows(tmp_path, tiny_model, sentiment_files):
    bad = tmp_path / "train.jsonl"
    rows = [json.dumps(r) for r in sentiment_rows(10)]
    rows[3] = '{"text": "broken'
    bad.write_text("\n".join(rows) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: p\nbase_model: {tiny_model}\ntask: classification\n"
        f"data: {{train: {bad}, validation: {sentiment_files['validation']}}}\n"
    )
    proc = run_cli("data", "check", recipe)
    assert_check_failed(proc, "could not be parsed", "line 4")


def test_clean_data_check_exits_zero(sentiment_recipe):
    proc = run_cli("data", "check", sentiment_recipe, "--set", "data_checks.small_evaluation=off")
    assert proc.returncode == 0, proc.stderr
    assert "Data summary" in proc.stdout and "no findings" in proc.stdout


def test_data_check_warns_that_a_small_evaluation_set_cannot_show_a_small_gain(sentiment_recipe):
    proc = run_cli("data", "check", sentiment_recipe, "--json")
    assert proc.returncode == 0, proc.stderr  # a warning, not an error
    found = {(f["check"], f["split"]): f for f in json.loads(proc.stdout)["findings"]}
    validation = found[("small_evaluation", "validation")]
    assert validation["severity"] == "warning"
    # 2.80 * sqrt(0.5 / n) for the tiny validation set; 1,570 examples show 0.05
    assert "1,570 would show 0.05" in validation["message"]
    bigger = run_cli(
        "data", "check", sentiment_recipe, "--json", "--set", "evaluation.detectable_difference=0.9"
    )
    assert not [
        f for f in json.loads(bigger.stdout)["findings"] if f["check"] == "small_evaluation"
    ]


@pytest.fixture(scope="module")
def run_with_report(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("trust")
    train = write_csv(tmp / "train.csv", sentiment_rows(24))
    validation = write_csv(tmp / "validation.csv", sentiment_rows(8, offset=100))
    recipe = tmp / "r.yaml"
    recipe.write_text(
        f"name: rep\nbase_model: {tiny_model}\ntask: classification\n"
        f"data: {{train: {train}, validation: {validation}}}\nlora: {{r: 4, alpha: 8}}\n"
        f"training: {{epochs: 2, batch_size: 8, learning_rate: 1.0e-2, logging_steps: 1}}\noutput_dir: {tmp / 'runs'}\n"
    )
    proc = run_cli("train", recipe)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [run] = _runs(tmp / "runs")
    return run


def test_report_has_every_plot_and_table(run_with_report):
    run = run_with_report
    html = (run / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained, readable offline
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    # base-vs-tuned, confusion matrix, loss, metric, token lengths, reliability diagram
    assert len(images) == 6
    for name in ("base_vs_tuned", "confusion_matrix", "loss", "metric", "lengths", "reliability"):
        assert (run / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for heading in (
        "Base model vs fine-tuned",
        "Validation during training",
        "Data check",
        "Recipe (as resolved)",
        "Timings",
        "Environment",
    ):
        assert heading in html, heading
    assert "<table>" in html


def test_every_base_vs_tuned_change_carries_a_paired_interval(run_with_report):
    metrics = json.loads((run_with_report / "metrics.json").read_text())
    kept = json.loads((run_with_report / "outcomes.json").read_text())
    accuracy = metrics["comparison"]["validation"]["accuracy"]
    tuned, base = metrics["tuned"]["validation"], metrics["base"]["validation"]
    assert accuracy["candidate"] == pytest.approx(tuned["accuracy"])
    assert accuracy["reference"] == pytest.approx(base["accuracy"])
    low, high = accuracy["interval"]
    assert low <= accuracy["difference"] <= high and accuracy["n"] == tuned["n"] == 8
    assert accuracy["test"]["name"] == "McNemar (exact)"
    assert {"macro_f1", "loss"} <= set(metrics["comparison"]["validation"])
    assert len(kept["base"]["validation"]["label"]) == 8  # what the bootstrap resampled
    assert "examples" not in tuned  # per-example outcomes stay out of metrics.json
    report = (run_with_report / "report.md").read_text()
    assert "95% CI of change" in report and "| verdict |" in report
    assert f"**{metrics['selection_metric']} on validation: " in report


def test_bias_probe_is_saved_and_added_to_the_report(run_with_report, tmp_path):
    extra = tmp_path / "terms.yaml"
    extra.write_text("categories:\n  region: [northerner, southerner]\n")
    proc = run_cli("eval", run_with_report, "--bias", "--bias-terms", extra, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    probe = json.loads(proc.stdout)
    assert set(probe) == {"base", "tuned"}
    cats = probe["tuned"]["categories"]
    assert {"gender", "religion", "age", "disability", "nationality", "region"} <= set(cats)
    for result in cats.values():
        assert 0.0 <= result["flip_rate"] <= 1.0
    saved = json.loads((run_with_report / "bias.json").read_text())
    assert saved["tuned"]["categories"]["region"]["flip_rate"] == cats["region"]["flip_rate"]
    html = (run_with_report / "report.html").read_text()
    assert "Bias probe" in html and (run_with_report / "figures" / "bias.png").is_file()

    regenerated = run_cli("report", run_with_report)
    assert (
        regenerated.returncode == 0 and "Bias probe" in (run_with_report / "report.md").read_text()
    )
