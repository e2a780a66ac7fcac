"""Metrics on generated text: exact match, first-line match, ROUGE-L, chrF and BLEU.

rouge-score and sacrebleu compute locally; `evaluate.load` is avoided because it fetches metric
code from a hub and fails offline. `first_line_exact_match` serves answers whose first line is the
decision ("Category: phishing") and the rest free-text reasoning: the decision is scored exactly,
the reasoning by overlap metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import sacrebleu

GENERATION_METRICS = ("exact_match", "first_line_exact_match", "rouge_l", "chrf", "bleu")


def normalise(text: str) -> str:
    """Whitespace runs as one space (how exact matches compare)."""
    return " ".join(text.split())


def first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return normalise(lines[0]) if lines else ""


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus metrics; exact matches ignore whitespace runs. ROUGE-L in 0-1, chrF/BLEU in 0-100."""
    from rouge_score import rouge_scorer  # deferred: CLI start of generate/serve (nltk)

    if not predictions:
        return {}
    n = len(predictions)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = sum(
        scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)
    )
    return {
        "exact_match": sum(
            normalise(p) == normalise(r) for p, r in zip(predictions, references, strict=True)
        )
        / n,
        "first_line_exact_match": sum(
            first_line(p) == first_line(r) for p, r in zip(predictions, references, strict=True)
        )
        / n,
        "rouge_l": rouge / n,
        "chrf": float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score),
        "bleu": float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score),
    }


def perplexity(loss: float) -> float:
    """exp(mean token loss); inf instead of an overflow for a diverged model."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
