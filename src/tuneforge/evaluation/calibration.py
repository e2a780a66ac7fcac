"""Calibration of a classifier: can its probabilities be taken at their word?

A model is calibrated when, of the answers it gives with confidence 0.8, 80% are right. The
measure is the *expected calibration error* (ECE) of the top label: the predictions are put in
`N_BINS` (15) equal-width bins of their top probability (confidence), bin b covering
(b/15, (b+1)/15] (a confidence of exactly 0 falls in the first), and

    ECE = sum over bins of (examples in the bin / all examples) * |accuracy - mean confidence|,

with the *maximum calibration error* (MCE) the largest |accuracy - mean confidence| of a bin that
holds examples. Both lie in [0, 1]; lower is better; 0 is perfect. The bins themselves are the
reliability diagram. (scikit-learn's `calibration_curve` is binary-only, so the binning is numpy.)

*Temperature scaling* (Guo et al., 2017) divides the log-probabilities (the logits up to a
constant per example) by one number T > 0 before the softmax: T > 1 softens over-confident
probabilities, T < 1 sharpens timid ones, and the order of the labels, so every prediction, is
unchanged. T is fitted on the validation split by minimising the negative log-likelihood
(`scipy.optimize.minimize_scalar`, bounded); on the validation split the scaled figures are
therefore optimistic, the test split is the honest measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.evaluation.outcomes import EXAMPLES
from tuneforge.files import write_json

N_BINS = 15
FILE = "calibration.json"
TEMPERATURE_BOUNDS = (0.05, 20.0)  # beyond these a fit is degenerate (all right or all wrong)
FLOOR = 1e-12  # a probability of 0 is taken as this before its logarithm (as the loss does)


def reliability(
    probabilities: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    n_bins: int = N_BINS,
) -> dict[str, Any]:
    """ECE, MCE and the reliability bins (only those holding examples: their confidence range,
    count, mean confidence and accuracy) of top-label predictions."""
    probs = np.asarray(probabilities, dtype=float)
    labels = np.asarray(labels, dtype=int)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError("probabilities must be (examples, labels), one row per label")
    confidence = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left": bin b holds edges[b] < c <= edges[b + 1]; c == 0 goes to bin 0
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    right_sum = np.bincount(index, weights=correct, minlength=n_bins)
    bins, ece, mce = [], 0.0, 0.0
    for b in np.flatnonzero(counts):
        n = int(counts[b])
        mean_conf, accuracy = conf_sum[b] / n, right_sum[b] / n
        gap = abs(accuracy - mean_conf)
        ece += n / len(labels) * gap
        mce = max(mce, gap)
        bins.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": n,
                "confidence": float(mean_conf),
                "accuracy": float(accuracy),
            }
        )
    return {"ece": float(ece), "mce": float(mce), "n_bins": n_bins, "bins": bins}


def figures(
    probabilities: np.ndarray, labels: Sequence[int] | np.ndarray, n_bins: int = N_BINS
) -> dict[str, Any]:
    """What a split's metrics carry: `ece`, `mce` and the bins under `reliability`."""
    result = reliability(probabilities, labels, n_bins)
    return {
        "ece": result["ece"],
        "mce": result["mce"],
        "reliability": {"n_bins": n_bins, "bins": result["bins"]},
    }


def scale(probabilities: Sequence[Sequence[float]] | np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T), row by row: the probabilities after temperature scaling."""
    from scipy.special import softmax  # deferred: CLI start (scipy)

    if not temperature > 0:
        raise ValueError(f"the temperature must be positive, not {temperature}")
    log_p = np.log(np.clip(np.asarray(probabilities, dtype=float), FLOOR, 1.0))
    return softmax(log_p / temperature, axis=-1)


def nll(
    probabilities: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    temperature: float = 1.0,
) -> float:
    """Mean negative log-likelihood of the true labels after scaling by `temperature`."""
    from scipy.special import log_softmax  # deferred: CLI start (scipy)

    log_p = np.log(np.clip(np.asarray(probabilities, dtype=float), FLOOR, 1.0))
    labels = np.asarray(labels, dtype=int)
    picked = log_softmax(log_p / temperature, axis=-1)[np.arange(len(labels)), labels]
    return float(-picked.mean())


def fit_temperature(
    probabilities: Sequence[Sequence[float]] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> float:
    """The T in `TEMPERATURE_BOUNDS` that minimises the NLL of the true labels."""
    from scipy.optimize import minimize_scalar  # deferred: CLI start (scipy)

    probs, labels = np.asarray(probabilities, dtype=float), np.asarray(labels, dtype=int)
    if len(labels) == 0:
        raise ValueError("no examples to fit a temperature on")
    result = minimize_scalar(
        lambda t: nll(probs, labels, t),
        bounds=TEMPERATURE_BOUNDS,
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(result.x)


def scaled_figures(
    probabilities: np.ndarray, labels: Sequence[int] | np.ndarray, temperature: float
) -> dict[str, Any]:
    """A split's figures after temperature scaling: `ece_scaled`, `mce_scaled`, `loss_scaled`
    (NLL), the bins under `reliability_scaled`, and the `temperature` itself."""
    result = reliability(scale(probabilities, temperature), labels)
    return {
        "temperature": temperature,
        "ece_scaled": result["ece"],
        "mce_scaled": result["mce"],
        "loss_scaled": nll(probabilities, labels, temperature),
        "reliability_scaled": {"n_bins": result["n_bins"], "bins": result["bins"]},
    }


def add_scaled(split_metrics: dict[str, Any], temperature: float) -> dict[str, Any]:
    """`scaled_figures` added to a split's metrics, from its per-example outcomes (`examples`:
    labels and probabilities); metrics without them are left as they are."""
    examples = split_metrics.get(EXAMPLES) or {}
    if not examples.get("probabilities"):
        return split_metrics
    split_metrics.update(
        scaled_figures(np.asarray(examples["probabilities"]), examples["label"], temperature)
    )
    return split_metrics


def calibrate_run(
    run_path: Path, tuned: dict[str, dict[str, Any]], info: dict[str, Any], method: str
) -> dict[str, Any] | None:
    """After training, with `method` "temperature": T fitted on the validation split's tuned
    probabilities (its per-example outcomes), the scaled figures added to every tuned split, T put
    in `info` (run.json: predict, `eval` and the server apply it), the record written to
    calibration.json and returned (for metrics.json). None when `method` is "none" or the
    validation split has no probabilities (not a classification run)."""
    validation = (tuned.get("validation") or {}).get(EXAMPLES) or {}
    if method != "temperature" or not validation.get("probabilities"):
        return None
    temperature = fit_temperature(validation["probabilities"], validation["label"])
    splits = {}
    for split, metrics in tuned.items():
        examples = metrics.get(EXAMPLES) or {}
        if not examples.get("probabilities"):
            continue
        probs, labels = np.asarray(examples["probabilities"]), examples["label"]
        add_scaled(metrics, temperature)
        splits[split] = {
            "n": len(labels),
            "ece_before": reliability(probs, labels)["ece"],
            "ece_after": metrics["ece_scaled"],
            "nll_before": nll(probs, labels),
            "nll_after": metrics["loss_scaled"],
            "fitted_here": split == "validation",
        }
    record = {
        "method": "temperature",
        "temperature": temperature,
        "fitted_on": "validation",
        "n_bins": N_BINS,
        "splits": splits,
    }
    info["temperature"] = temperature
    write_json(Path(run_path) / FILE, record)
    return record
