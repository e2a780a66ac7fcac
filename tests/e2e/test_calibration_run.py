"""A classification run with temperature scaling, end to end: T fitted on validation and stored
with the run, ECE of base and tuned in the metrics, predict and eval applying T, the report's
calibration section."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import sentiment_rows, write_csv


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waiting, up to 40x faster on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model, _one_thread):
    from tuneforge import train

    tmp = tmp_path_factory.mktemp("calibration")
    files = {
        "train": write_csv(tmp / "train.csv", sentiment_rows(24)),
        "validation": write_csv(tmp / "validation.csv", sentiment_rows(8, offset=100)),
        "test": write_csv(tmp / "test.csv", sentiment_rows(8, offset=200)),
    }
    recipe = tmp / "recipe.yaml"
    recipe.write_text(
        f"""
name: tiny-calibrated
base_model: {tiny_model}
task: classification
data: {{train: {files["train"]}, validation: {files["validation"]}, test: {files["test"]}}}
method: lora
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{epochs: 2, batch_size: 8, learning_rate: 1.0e-2, logging_steps: 1}}
classification: {{calibration: temperature}}
output_dir: {tmp / "runs"}
registry: {tmp / "registry.sqlite"}
"""
    )
    finished = train(recipe)
    finished.test_file = files["test"]
    return finished


def test_temperature_is_fitted_on_validation_and_stored_with_the_run(run):
    record = json.loads((run.path / "calibration.json").read_text())
    assert record["method"] == "temperature" and record["fitted_on"] == "validation"
    temperature = record["temperature"]
    assert 0.05 <= temperature <= 20.0
    assert run.meta["info"]["temperature"] == temperature  # what predict and the server read
    assert run.metrics["calibration"] == record
    assert set(record["splits"]) == {"validation", "test"}
    assert record["splits"]["validation"]["fitted_here"] is True
    fitted = record["splits"]["validation"]
    assert fitted["nll_after"] <= fitted["nll_before"] + 1e-9  # the fit never worsens its own NLL


def test_metrics_carry_ece_for_base_and_tuned(run):
    metrics = run.metrics
    for who in ("base", "tuned"):
        for split in ("validation", "test"):
            figures = metrics[who][split]
            assert 0.0 <= figures["ece"] <= figures["mce"] <= 1.0
            bins = figures["reliability"]["bins"]
            assert figures["reliability"]["n_bins"] == 15
            assert sum(b["count"] for b in bins) == figures["n"] == 8
    test = metrics["tuned"]["test"]
    assert test["temperature"] == metrics["calibration"]["temperature"]
    assert test["ece_scaled"] == metrics["calibration"]["splits"]["test"]["ece_after"]
    assert "ece_scaled" not in metrics["base"]["test"]  # T is the tuned model's


def test_predict_applies_the_temperature_and_keeps_the_labels(run):
    texts = ["great film, loved it", "dreadful, slow and ugly", "a waste of two hours"]
    temperature = run.meta["info"]["temperature"]
    scaled = run.predict(texts)
    raw = run.task.predict(
        run.model, run.tokenizer, texts, {**run.meta["info"], "temperature": None}, run.recipe
    )
    labels = run.labels
    p_scaled = np.array([[r["probabilities"][lab] for lab in labels] for r in scaled])
    p_raw = np.array([[r["probabilities"][lab] for lab in labels] for r in raw])
    expected = np.exp(np.log(p_raw) / temperature)
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(p_scaled, expected, rtol=1e-5, atol=1e-9)
    assert [r["label"] for r in scaled] == [r["label"] for r in raw]
    assert not np.allclose(p_scaled, p_raw)


def test_eval_reports_ece_before_and_after_scaling(run):
    from tuneforge.report import summary_rows

    result = run.evaluate(run.test_file)
    tuned = result["tuned"]
    assert tuned["temperature"] == run.meta["info"]["temperature"]
    assert 0.0 <= tuned["ece"] <= 1.0 and 0.0 <= tuned["ece_scaled"] <= 1.0
    # the CLI tables (train's summary, eval) show ECE base -> tuned, and after scaling
    metrics = run.metrics
    rows = {r[0]: r for r in summary_rows(metrics["base"]["test"], metrics["tuned"]["test"])}
    assert rows["ece"][1] != "—" and rows["ece"][3]
    assert rows["ece_scaled"][1] == "—"


def test_report_has_the_calibration_section(run):
    report = (run.path / "report.md").read_text()
    assert "## Calibration" in report
    assert "T = " in report and "fitted on validation" in report
    assert "figures/reliability.png" in report
    assert (run.path / "figures" / "reliability.png").is_file()
    html = (run.path / "report.html").read_text()
    assert "Calibration" in html and 'alt="Reliability diagram' in html
    assert "figures/reliability.png" not in html  # embedded, self-contained
