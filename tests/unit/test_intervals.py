"""Paired bootstrap intervals and McNemar's test (evaluation/intervals.py) against hand-computed
cases and scipy/scikit-learn/sacrebleu on fixed data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu
from scipy import stats
from sklearn.metrics import f1_score

from tuneforge.evaluation import intervals
from tuneforge.evaluation.intervals import Settings, compare, estimate, mcnemar, verdict


def _classified(labels, predicted, k=2):
    return {
        "label": list(labels),
        "predicted": list(predicted),
        "probabilities": [[1.0 / k] * k for _ in labels],
    }


def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs():
    # 8 examples right only after tuning, 2 only before, 10 both right
    reference = np.array([0] * 8 + [1] * 2 + [1] * 10)
    candidate = np.array([1] * 8 + [0] * 2 + [1] * 10)
    test = mcnemar(reference, candidate)
    assert (test["gained"], test["lost"]) == (8, 2)
    # two-sided exact: P(X <= 2) + P(X >= 8) for X ~ Bin(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert test["p_value"] == pytest.approx(112 / 1024)
    assert mcnemar(reference, reference)["p_value"] == 1.0


def test_accuracy_interval_is_scipys_bootstrap_of_the_paired_differences():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 120)
    base = np.where(rng.random(120) < 0.6, labels, 1 - labels)
    tuned = np.where(rng.random(120) < 0.85, labels, 1 - labels)
    result = compare(_classified(labels, base), _classified(labels, tuned), Settings(seed=3))
    acc = result["accuracy"]
    diffs = (tuned == labels).astype(float) - (base == labels).astype(float)
    assert acc["difference"] == pytest.approx(diffs.mean())
    # the same resampled indices (same seed, same n): scipy's BCa interval of the mean difference
    direct = stats.bootstrap((diffs,), np.mean, n_resamples=1000, random_state=3)
    assert acc["interval"] == pytest.approx(list(direct.confidence_interval), abs=1e-9)
    assert acc["reference"] == pytest.approx((base == labels).mean())
    assert acc["test"]["name"] == "McNemar (exact)"


def test_macro_f1_from_confusion_cells_equals_scikit_learn():
    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    predicted[predicted == 2] = 1  # a label never predicted: zero_division=0
    cells = intervals._confusion(_classified(labels, predicted, k=3))
    expected = f1_score(labels, predicted, labels=[0, 1, 2], average="macro", zero_division=0)
    assert float(intervals._macro_f1(cells.sum(axis=0))) == pytest.approx(expected)


def test_chrf_and_bleu_from_sufficient_statistics_equal_sacrebleu():
    outcomes = {
        "prediction": ["the cat sat on the mat", "a dog barked", "hello world", ""],
        "reference": ["the cat sat on a mat", "the dog barked", "hello there world", "x"],
    }
    result = estimate(outcomes, Settings(resamples=200))
    refs = [outcomes["reference"]]
    assert result["chrf"]["value"] == pytest.approx(
        sacrebleu.corpus_chrf(outcomes["prediction"], refs).score
    )
    assert result["bleu"]["value"] == pytest.approx(
        sacrebleu.corpus_bleu(outcomes["prediction"], refs).score
    )
    assert result["exact_match"]["value"] == 0.0
    low, high = result["rouge_l"]["interval"]
    assert low <= result["rouge_l"]["value"] <= high


def test_token_weighted_loss_and_perplexity():
    reference = {"loss_sum": [4.0, 2.0, 6.0], "tokens": [2, 1, 3]}  # 2.0 per token
    candidate = {"loss_sum": [2.0, 1.0, 3.0], "tokens": [2, 1, 3]}  # 1.0 per token
    result = compare(reference, candidate, Settings(resamples=200))
    assert result["loss"]["reference"] == pytest.approx(2.0)
    assert result["loss"]["difference"] == pytest.approx(-1.0)
    assert result["perplexity"]["candidate"] == pytest.approx(math.e)
    # every example lost exactly one nat per token: every resample agrees
    assert result["loss"]["interval"] == pytest.approx([-1.0, -1.0])
    assert result["loss"]["significant"] and result["loss"]["better"] == "candidate"


def test_three_verdicts():
    labels = [1] * 200
    right, wrong = [1] * 200, [0] * 200
    half = [1, 0] * 100
    better = compare(_classified(labels, half), _classified(labels, right))["accuracy"]
    assert better["significant"] and better["better"] == "candidate"
    assert verdict("accuracy", better).startswith("tuned significantly better (+0.500")
    worse = compare(_classified(labels, half), _classified(labels, wrong))["accuracy"]
    assert worse["better"] == "reference"
    assert verdict("accuracy", worse).startswith("tuned significantly worse")
    # one example of 200 differs: no significant difference, and the interval says why
    nearly = half.copy()
    nearly[1] = 1
    same = compare(_classified(labels, half), _classified(labels, nearly))["accuracy"]
    assert not same["significant"] and same["better"] is None
    low, high = same["interval"]
    assert low <= 0 <= high and high > 0
    assert verdict("accuracy", same).startswith("no significant difference (+0.005, 95% CI")
    assert "McNemar p=1.000" in verdict("accuracy", same)


def test_identical_models_collapse_the_interval_and_lengths_must_match():
    outcomes = _classified([0, 1, 1, 0], [0, 1, 0, 0])
    result = compare(outcomes, outcomes)["accuracy"]
    assert result["interval"] == [0.0, 0.0] and not result["significant"]
    assert compare(outcomes, _classified([0, 1], [0, 1])) == {}  # not the same examples


def test_seeded_and_configurable():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 60)
    a = _classified(labels, rng.integers(0, 2, 60))
    b = _classified(labels, labels)
    first = compare(a, b, Settings(resamples=300, seed=5))["accuracy"]["interval"]
    assert compare(a, b, Settings(resamples=300, seed=5))["accuracy"]["interval"] == first
    wide = compare(a, b, Settings(resamples=300, seed=5, confidence=0.99))["accuracy"]
    assert wide["interval"][0] <= first[0] and wide["interval"][1] >= first[1]


def test_sample_size_for_a_detectable_difference():
    # z(0.975) + z(0.8) = 2.8016; sqrt(2 * 0.25 / 100) = 0.0707
    assert intervals.detectable_difference(100) == pytest.approx(0.198, abs=1e-3)
    assert intervals.examples_needed(0.05) == 1570
    assert intervals.detectable_difference(intervals.examples_needed(0.05)) <= 0.05


# --------------------------------------------------------------------------------------------------
# The promotion gate's three verdicts (runs/promotion.py `judge`)


def _gate(holder_predictions, candidate_predictions, tolerance=0.0):
    from tuneforge.runs.promotion import judge

    labels = [1] * len(holder_predictions)
    found = compare(
        _classified(labels, holder_predictions), _classified(labels, candidate_predictions)
    )["accuracy"]
    return judge("accuracy", found["candidate"], found["reference"], tolerance, found)


def test_the_gate_passes_a_significantly_better_candidate_and_refuses_a_worse_one():
    half, right = [1, 0] * 100, [1] * 200
    refused, why = _gate(half, right)
    assert not refused and why.startswith("candidate significantly better")
    refused, why = _gate(right, half, tolerance=0.9)  # worse: the tolerance does not save it
    assert refused and why.startswith("candidate significantly worse") and "95% CI" in why


def test_no_significant_difference_follows_the_tolerance():
    half = [1, 0] * 100
    slightly_worse = half.copy()
    slightly_worse[0] = 0  # one example of 200
    refused, why = _gate(half, slightly_worse)
    assert refused and why.startswith("no significant difference")
    assert "worse than the holder beyond tolerance 0" in why
    refused, why = _gate(half, slightly_worse, tolerance=0.01)
    assert not refused and "within tolerance 0.01" in why


def test_without_outcomes_the_bare_figures_and_the_tolerance_decide():
    from tuneforge.runs.promotion import judge

    assert judge("loss", 0.52, 0.50, 0.0, None) == (
        True,
        "worse beyond tolerance 0 (bare figures: no per-example outcomes)",
    )
    assert judge("loss", 0.52, 0.50, 0.05, None)[0] is False
