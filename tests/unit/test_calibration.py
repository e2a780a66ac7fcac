"""Calibration arithmetic on hand-made probabilities: ECE, MCE, the reliability bins, and
temperature scaling (fit, NLL, unchanged predictions)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from tuneforge.evaluation import calibration
from tuneforge.evaluation.outcomes import EXAMPLES


def test_ece_mce_and_bins_by_hand():
    # 10 bins of width 0.1. Top-label confidences and whether the top label is right:
    #   0.95 right, 0.95 right, 0.95 wrong, 0.95 right  -> bin (0.9, 1.0]: acc 0.75, conf 0.95
    #   0.65 right, 0.65 wrong                          -> bin (0.6, 0.7]: acc 0.5,  conf 0.65
    #   0.55 right, 0.55 right, 0.55 right, 0.55 wrong  -> bin (0.5, 0.6]: acc 0.75, conf 0.55
    probs = [[0.95, 0.05]] * 4 + [[0.35, 0.65]] * 2 + [[0.55, 0.45]] * 4
    labels = [0, 0, 1, 0] + [1, 0] + [0, 0, 0, 1]
    result = calibration.reliability(probs, labels, n_bins=10)
    # ECE = 4/10 * |0.75 - 0.95| + 2/10 * |0.5 - 0.65| + 4/10 * |0.75 - 0.55| = 0.08 + 0.03 + 0.08
    assert result["ece"] == pytest.approx(0.19)
    assert result["mce"] == pytest.approx(0.2)
    assert result["n_bins"] == 10
    bins = [
        (b["lower"], b["upper"], b["count"], b["confidence"], b["accuracy"]) for b in result["bins"]
    ]
    assert bins == [
        pytest.approx((0.5, 0.6, 4, 0.55, 0.75)),
        pytest.approx((0.6, 0.7, 2, 0.65, 0.5)),
        pytest.approx((0.9, 1.0, 4, 0.95, 0.75)),
    ]


def test_default_is_fifteen_bins_and_a_confidence_on_an_edge_goes_to_the_lower_bin():
    # confidences 1/3 (edge of the 15-bin grid: 5/15) and 1.0; three labels
    probs = [[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]]
    result = calibration.reliability(probs, [0, 0])
    assert result["n_bins"] == calibration.N_BINS == 15
    assert [(b["lower"], b["upper"]) for b in result["bins"]] == [
        pytest.approx((4 / 15, 5 / 15)),
        pytest.approx((14 / 15, 1.0)),
    ]
    # both right: |1 - 1/3| for half the examples, |1 - 1| for the other
    assert result["ece"] == pytest.approx(0.5 * (2 / 3))
    assert result["mce"] == pytest.approx(2 / 3)


def test_perfectly_calibrated_and_fully_confident_right_answers_have_zero_error():
    probs = [[0.8, 0.2]] * 5
    labels = [0, 0, 0, 0, 1]  # 80% right at confidence 0.8
    assert calibration.reliability(probs, labels)["ece"] == pytest.approx(0.0)
    assert calibration.reliability([[1.0, 0.0], [0.0, 1.0]], [0, 1])["ece"] == 0.0


def test_figures_for_a_split_hold_ece_mce_and_the_bins():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    out = calibration.figures(probs, [0, 0])
    assert set(out) == {"ece", "mce", "reliability"}
    assert out["reliability"]["n_bins"] == 15
    assert sum(b["count"] for b in out["reliability"]["bins"]) == 2
    # 0.9 right, 0.8 wrong: (|1 - 0.9| + |0 - 0.8|) / 2
    assert out["ece"] == pytest.approx(0.45)
    json.dumps(out)  # JSON-ready


def _synthetic(temperature: float, n: int = 4000, k: int = 4, seed: int = 0):
    """Labels drawn from softmax(z / T): the calibrated model is z / T, so the model that reports
    softmax(z) is miscalibrated by exactly T."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, k))
    true = softmax(logits / temperature, axis=-1)
    labels = np.array([rng.choice(k, p=p) for p in true])
    return softmax(logits, axis=-1), labels


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_fit_recovers_a_known_temperature_and_lowers_the_nll(temperature):
    probs, labels = _synthetic(temperature)
    fitted = calibration.fit_temperature(probs, labels)
    assert fitted == pytest.approx(temperature, rel=0.1)
    assert calibration.nll(probs, labels, fitted) < calibration.nll(probs, labels) - 0.01
    scaled = calibration.scale(probs, fitted)
    assert (
        calibration.reliability(scaled, labels)["ece"]
        < calibration.reliability(probs, labels)["ece"]
    )


def test_scaling_is_softmax_of_log_probabilities_over_t_and_keeps_the_argmax():
    probs = softmax(np.random.default_rng(1).normal(size=(50, 3)) * 2, axis=-1)
    scaled = calibration.scale(probs, 1.7)
    np.testing.assert_allclose(scaled, softmax(np.log(probs) / 1.7, axis=-1))
    np.testing.assert_allclose(scaled.sum(-1), 1.0)
    assert (scaled.argmax(-1) == probs.argmax(-1)).all()
    assert not np.allclose(scaled, probs)
    np.testing.assert_allclose(calibration.scale(probs, 1.0), probs)
    labels = np.zeros(50, dtype=int)
    expected = -log_softmax(np.log(probs) / 1.7, axis=-1)[:, 0].mean()
    assert calibration.nll(probs, labels, 1.7) == pytest.approx(expected)
    with pytest.raises(ValueError):
        calibration.scale(probs, 0.0)


def test_calibrate_run_fits_on_validation_and_records_every_split(tmp_path):
    val_probs, val_labels = _synthetic(2.0, n=600, seed=2)
    test_probs, test_labels = _synthetic(2.0, n=400, seed=3)

    def split(probs, labels):
        return {
            "ece": 0.0,
            EXAMPLES: {"label": labels.tolist(), "probabilities": probs.round(6).tolist()},
        }

    tuned = {"validation": split(val_probs, val_labels), "test": split(test_probs, test_labels)}
    info: dict = {"labels": ["a", "b", "c", "d"]}
    assert calibration.calibrate_run(tmp_path, tuned, info, "none") is None
    assert not (tmp_path / calibration.FILE).exists() and "temperature" not in info

    record = calibration.calibrate_run(tmp_path, tuned, info, "temperature")
    assert record == json.loads((tmp_path / calibration.FILE).read_text())
    assert record["temperature"] == pytest.approx(2.0, rel=0.15) == info["temperature"]
    assert record["fitted_on"] == "validation" and record["n_bins"] == 15
    assert record["splits"]["validation"]["fitted_here"] is True
    test = record["splits"]["test"]
    assert test["fitted_here"] is False and test["n"] == 400
    assert test["ece_after"] < test["ece_before"] and test["nll_after"] < test["nll_before"]
    for metrics in tuned.values():
        assert metrics["temperature"] == record["temperature"]
        assert {"ece_scaled", "mce_scaled", "loss_scaled", "reliability_scaled"} <= set(metrics)
    assert tuned["test"]["ece_scaled"] == test["ece_after"]


def test_calibrate_run_skips_runs_without_probabilities(tmp_path):
    tuned = {"validation": {"loss": 1.0, EXAMPLES: {"loss_sum": [1.0], "tokens": [3]}}}
    assert calibration.calibrate_run(tmp_path, tuned, {}, "temperature") is None
