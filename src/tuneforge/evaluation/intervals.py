"""How sure a comparison is: paired bootstrap intervals and paired tests between two models
scored on the same examples.

Each headline metric is a function of per-example statistics summed over the examples (accuracy:
correct answers and a count; macro-F1: the confusion-matrix cells; loss: summed token losses and
token counts; chrF/BLEU: sacrebleu's own sufficient statistics, as its significance module uses
them). A resample of the examples is a resample of those rows, for both models at once (paired),
so the interval is on the difference itself, not on two separate figures. The resampling and the
interval (BCa) are scipy's `stats.bootstrap`; the paired test for 0/1 outcomes is McNemar's
exact test, a binomial test on the discordant pairs (`stats.binomtest`).

A difference is *significant* when its interval excludes zero; for 0/1 metrics McNemar's p-value
is shown beside it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

from tuneforge.evaluation.metrics import LOWER_IS_BETTER
from tuneforge.evaluation.text_metrics import first_line, normalise

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Settings:
    """How intervals are computed (the recipe's `evaluation` section, or `eval`'s options)."""

    resamples: int = DEFAULT_RESAMPLES
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = 0

    @classmethod
    def of(cls, section) -> Settings:
        """From a recipe's `evaluation` section."""
        return cls(section.resamples, section.confidence, section.seed)


@dataclass(frozen=True)
class Measure:
    """A metric as a function of per-example statistics: `stats(outcomes)` gives one row of k
    numbers per example (None where the outcomes lack what it needs), `value(sums)` the metric
    from their sum over examples (vectorised over leading axes). `binary`: the metric is the
    share of examples whose first statistic is 1 (McNemar applies)."""

    name: str
    stats: Callable[[dict[str, Any]], np.ndarray | None]
    value: Callable[[np.ndarray], np.ndarray]
    binary: bool = False


def _mean(column: str | Callable[[dict[str, Any]], list[float]]):
    def stats(outcomes: dict[str, Any]) -> np.ndarray | None:
        values = column(outcomes) if callable(column) else outcomes.get(column)
        if values is None:
            return None
        values = np.asarray(values, dtype=float)
        return np.stack([values, np.ones_like(values)], axis=-1)

    return stats


def _ratio(sums: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return sums[..., 0] / sums[..., 1]


def _correct(outcomes: dict[str, Any]) -> list[float] | None:
    if "label" not in outcomes or "predicted" not in outcomes:
        return None
    return [float(a == b) for a, b in zip(outcomes["label"], outcomes["predicted"], strict=True)]


def _confusion(outcomes: dict[str, Any]) -> np.ndarray | None:
    """One-hot (true, predicted) cell of the k x k confusion matrix per example."""
    if "label" not in outcomes or "predicted" not in outcomes or "probabilities" not in outcomes:
        return None
    k = len(outcomes["probabilities"][0]) if outcomes["probabilities"] else 0
    cells = np.zeros((len(outcomes["label"]), k * k))
    cells[
        np.arange(len(outcomes["label"])), np.asarray(outcomes["label"]) * k + outcomes["predicted"]
    ] = 1
    return cells


def _macro_f1(sums: np.ndarray) -> np.ndarray:
    """scikit-learn's macro F1 over every label (zero_division=0) from confusion-cell counts."""
    k = math.isqrt(sums.shape[-1])
    cm = sums.reshape(*sums.shape[:-1], k, k)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    denominator = cm.sum(axis=-1) + cm.sum(axis=-2)  # true + predicted = 2tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(denominator > 0, 2 * tp / denominator, 0.0)
    return f1.mean(axis=-1)


def _matches(compare: Callable[[str], str]):
    def column(outcomes: dict[str, Any]) -> list[float] | None:
        if "prediction" not in outcomes or "reference" not in outcomes:
            return None
        pairs = zip(outcomes["prediction"], outcomes["reference"], strict=True)
        return [float(compare(p) == compare(r)) for p, r in pairs]

    return column


def _rouge_l(outcomes: dict[str, Any]) -> list[float] | None:
    if "prediction" not in outcomes or "reference" not in outcomes:
        return None
    from rouge_score import rouge_scorer  # deferred: CLI start (nltk)

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = zip(outcomes["prediction"], outcomes["reference"], strict=True)
    return [scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs]


def _sacrebleu(kind: str) -> tuple[Callable, Callable]:
    """sacrebleu's per-sentence sufficient statistics and its score from their sum."""
    metric = CHRF() if kind == "chrf" else BLEU()

    def stats(outcomes: dict[str, Any]) -> np.ndarray | None:
        if "prediction" not in outcomes or "reference" not in outcomes:
            return None
        refs = [list(outcomes["reference"])]
        return np.asarray(metric._extract_corpus_statistics(list(outcomes["prediction"]), refs))

    def value(sums: np.ndarray) -> np.ndarray:
        flat = sums.reshape(-1, sums.shape[-1])
        scores = [metric._compute_score_from_stats(list(row)).score for row in flat]
        return np.asarray(scores, dtype=float).reshape(sums.shape[:-1])

    return stats, value


def _token_loss(outcomes: dict[str, Any]) -> np.ndarray | None:
    if "loss_sum" not in outcomes or "tokens" not in outcomes:
        return None
    return np.stack(
        [np.asarray(outcomes["loss_sum"], float), np.asarray(outcomes["tokens"], float)], axis=-1
    )


def _perplexity(sums: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.exp(_ratio(sums))


def measures() -> list[Measure]:
    """Every metric intervals are computed for, in the order of HEADLINE_METRICS; a measure
    applies where the outcomes hold its columns, so no task is named here."""
    chrf, bleu = _sacrebleu("chrf"), _sacrebleu("bleu")
    return [
        Measure("accuracy", _mean(_correct), _ratio, binary=True),
        Measure("macro_f1", _confusion, _macro_f1),
        Measure("exact_match", _mean(_matches(normalise)), _ratio, binary=True),
        Measure("first_line_exact_match", _mean(_matches(first_line)), _ratio, binary=True),
        Measure("rouge_l", _mean(_rouge_l), _ratio),
        Measure("chrf", *chrf),
        Measure("bleu", *bleu),
        Measure("preference_accuracy", _mean("correct"), _ratio, binary=True),
        Measure("logp_margin", _mean("margin"), _ratio),
        Measure("loss", lambda o: _mean("loss")(o) if "loss" in o else _token_loss(o), _ratio),
        Measure("perplexity", _token_loss, _perplexity),
    ]


def compare(
    reference: dict[str, Any], candidate: dict[str, Any], settings: Settings = Settings()
) -> dict[str, dict[str, Any]]:
    """Every measure both outcomes support: candidate − reference on the same examples, with a
    paired bootstrap interval, whether it is significant and which is better; McNemar's exact
    test for 0/1 metrics. Outcomes of different lengths are not the same examples: skipped."""
    out: dict[str, dict[str, Any]] = {}
    for measure in measures():
        a, b = measure.stats(reference), measure.stats(candidate)
        if a is None or b is None or len(a) != len(b) or len(a) == 0:
            continue
        out[measure.name] = _compare_one(measure, a, b, settings)
    return out


def compare_splits(
    reference: dict[str, dict[str, Any]],
    candidate: dict[str, dict[str, Any]],
    settings: Settings = Settings(),
) -> dict[str, dict[str, dict[str, Any]]]:
    """`compare` for every split both hold outcomes for: {split: {metric: comparison}}."""
    return {
        split: compare(reference[split], candidate[split], settings)
        for split in candidate
        if split in reference
    }


def _compare_one(measure: Measure, a: np.ndarray, b: np.ndarray, settings: Settings) -> dict:
    ref_value = float(measure.value(a.sum(axis=0)))
    cand_value = float(measure.value(b.sum(axis=0)))
    difference = cand_value - ref_value

    def statistic(idx: np.ndarray) -> np.ndarray:  # idx: (..., n) resampled example indices
        ref, cand = measure.value(a[idx].sum(axis=-2)), measure.value(b[idx].sum(axis=-2))
        return np.stack([cand - ref, ref, cand])

    (low, high), ref_interval, cand_interval = _bootstrap(
        len(a), a.shape[1], statistic, [difference, ref_value, cand_value], settings
    )
    significant = bool(low > 0 or high < 0)
    lower = measure.name in LOWER_IS_BETTER
    better = None
    if significant:
        better = "candidate" if (difference < 0) == lower else "reference"
    comparison: dict[str, Any] = {
        "reference": ref_value,
        "candidate": cand_value,
        "difference": difference,
        "interval": [low, high],
        "reference_interval": ref_interval,
        "candidate_interval": cand_interval,
        "confidence": settings.confidence,
        "n": len(a),
        "resamples": settings.resamples,
        "significant": significant,
        "better": better,
    }
    if measure.binary:
        comparison["test"] = mcnemar(a[:, 0], b[:, 0])
    return comparison


def estimate(outcomes: dict[str, Any], settings: Settings = Settings()) -> dict[str, dict]:
    """One model's metrics with their bootstrap intervals: {metric: {value, interval, n}}."""
    out: dict[str, dict[str, Any]] = {}
    for measure in measures():
        a = measure.stats(outcomes)
        if a is None or len(a) == 0:
            continue
        value = float(measure.value(a.sum(axis=0)))
        statistic = lambda idx, a=a, m=measure: m.value(a[idx].sum(axis=-2))[None]  # noqa: E731
        (interval,) = _bootstrap(len(a), a.shape[1], statistic, [value], settings)
        out[measure.name] = {"value": value, "interval": interval, "n": len(a)}
    return out


def _bootstrap(
    n: int,
    width: int,
    statistic: Callable[[np.ndarray], np.ndarray],
    points: list[float],
    settings: Settings,
) -> list[list[float]]:
    """scipy's bootstrap (BCa; percentile where BCa is undefined) of a statistic of resampled
    example indices that returns one value per point estimate; an interval collapses to its
    point where there is nothing to resample (one example, or every resample equal)."""
    from scipy import stats as scipy_stats  # deferred: CLI start (scipy)

    if n < 2 or not all(math.isfinite(p) for p in points):
        return [[p, p] for p in points]
    intervals = None
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate resamples: handled below
            result = scipy_stats.bootstrap(
                (np.arange(n),),
                lambda idx, axis=-1: statistic(np.moveaxis(idx, axis, -1).astype(int)),
                vectorized=True,
                n_resamples=settings.resamples,
                confidence_level=settings.confidence,
                method=method,
                random_state=settings.seed,
                batch=max(1, 4_000_000 // (n * width)),  # bounded memory: large sets, many labels
            )
        low, high = (np.atleast_1d(x) for x in result.confidence_interval)
        intervals = list(zip(low.tolist(), high.tolist(), strict=True))
        if all(math.isfinite(lo) and math.isfinite(hi) for lo, hi in intervals):
            break
    return [
        [lo, hi] if math.isfinite(lo) and math.isfinite(hi) else [p, p]
        for (lo, hi), p in zip(intervals, points, strict=True)
    ]


def mcnemar(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test on paired 0/1 outcomes: of the examples the two disagree on, is each
    as likely to be the candidate's? (Two-sided binomial test on the discordant pairs.)"""
    from scipy import stats as scipy_stats  # deferred: CLI start (scipy)

    gained = int(((candidate == 1) & (reference == 0)).sum())  # right now, wrong before
    lost = int(((candidate == 0) & (reference == 1)).sum())
    discordant = gained + lost
    p = 1.0 if discordant == 0 else float(scipy_stats.binomtest(gained, discordant, 0.5).pvalue)
    return {"name": "McNemar (exact)", "p_value": p, "gained": gained, "lost": lost}


def detectable_difference(n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest accuracy difference two models scored on `n` examples can show as
    significant with this power, at the worst case (accuracy near 0.5, unpaired normal
    approximation: conservative for a paired comparison)."""
    from scipy import stats as scipy_stats  # deferred: CLI start (scipy)

    if n <= 0:
        return math.inf
    z = scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power)
    return float(z * math.sqrt(2 * 0.25 / n))


def examples_needed(difference: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """Examples needed to detect an accuracy `difference` (inverse of detectable_difference)."""
    from scipy import stats as scipy_stats  # deferred: CLI start (scipy)

    z = scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power)
    return math.ceil(2 * 0.25 * (z / difference) ** 2)


def too_small(n: int, difference: float) -> str | None:
    """A warning when `n` evaluation examples cannot show a `difference` in a 0/1 metric
    (accuracy, exact match, preference accuracy) as significant, saying what size would."""
    detectable = detectable_difference(n)
    if detectable <= difference:
        return None
    return (
        f"{n} examples can only show differences of about {detectable:.2f} in a 0/1 metric "
        f"(accuracy, exact match) as significant (80% power, 95% confidence); "
        f"{examples_needed(difference):,} would show {difference:g} "
        "(evaluation.detectable_difference)"
    )


def verdict(
    metric: str, comparison: dict[str, Any], names: tuple[str, str] = ("base", "tuned")
) -> str:
    """In words: 'a significant gain', 'a significant loss' or 'no significant difference',
    with the interval (and McNemar's p where it applies)."""
    low, high = comparison["interval"]
    level = f"{100 * comparison['confidence']:g}%"
    interval = f"{signed(comparison['difference'], metric)}, {level} CI {signed(low, metric)} to {signed(high, metric)}"
    if comparison["better"] is None:
        words = "no significant difference"
    elif comparison["better"] == "candidate":
        words = f"{names[1]} significantly better"
    else:
        words = f"{names[1]} significantly worse"
    test = comparison.get("test")
    if test is not None:
        interval += f"; McNemar {format_p(test['p_value'])}"
    return f"{words} ({interval}, n={comparison['n']})"


def format_p(p: float) -> str:
    """'p<0.001' or 'p=0.109'."""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def signed(value: float, metric: str) -> str:
    """A change as the tables show it (two decimals for 0-100 scales and perplexity)."""
    digits = 2 if metric in ("chrf", "bleu", "perplexity") else 3
    return f"{value:+.{digits}f}"
