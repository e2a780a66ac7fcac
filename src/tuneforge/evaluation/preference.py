"""How well a model's own probabilities agree with human preferences.

The measure works the same on the starting model and the tuned one, so the gain is measured, not
claimed: an answer's score is its length-normalised log-probability (mean log-probability per
answer token, given the prompt), and a model "prefers" the answer it scores higher.

- pairwise: preference accuracy = share of pairs whose chosen answer scores above the rejected
  one; the mean score margin beside it.
- unpaired feedback: the share of (thumbs-up, thumbs-down) pairs of completions in which the
  thumbs-up one scores higher (the ROC AUC of the score, 0.5 = no preference).

Against the reference model (the starting point), the implicit DPO rewards
beta * (log pi(y|x) - log pi_ref(y|x)) give the reward accuracy and margin TRL logs in training,
and a Monte-Carlo estimate of KL(pi || pi_ref) comes from answers the tuned model samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback

from tuneforge.evaluation.language_model import accepts_logits_to_keep
from tuneforge.evaluation.outcomes import EXAMPLES
from tuneforge.progress import track


@dataclass(frozen=True)
class AnswerScore:
    """Sum and count of an answer's token log-probabilities given its prompt."""

    logp: float
    tokens: int

    @property
    def mean(self) -> float:
        return self.logp / self.tokens if self.tokens else float("-inf")


@torch.no_grad()
def answer_logprobs(
    model,
    sequences: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    pad_token_id: int,
    description: str = "Scoring answers",
) -> list[AnswerScore]:
    """Log-probability of each (prompt_ids, answer_ids) answer under `model`, in input order.

    Batches are right-padded and length-sorted; logits are computed only from the first answer
    position on, so long shared prompts cost no output-layer work.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    trimmed = accepts_logits_to_keep(model)
    order = sorted(range(len(sequences)), key=lambda i: -sum(map(len, sequences[i])))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    scores: list[AnswerScore | None] = [None] * len(sequences)
    try:
        for idx in batches if len(batches) <= 1 else track(batches, description):
            rows = [sequences[i][0] + sequences[i][1] for i in idx]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            answer = torch.zeros((len(rows), width), dtype=torch.bool)
            for r, i in enumerate(idx):
                prompt, ans = sequences[i]
                ids[r, : len(rows[r])] = torch.tensor(rows[r])
                mask[r, : len(rows[r])] = 1
                answer[r, len(prompt) : len(rows[r])] = True
            first = int(min(len(sequences[i][0]) for i in idx))  # earliest answer token
            keep = width - max(first - 1, 0)  # logits from the position predicting it
            inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            if trimmed:
                inputs["logits_to_keep"] = keep
            logits = model(**inputs).logits[:, -keep:].float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = ids[:, width - keep + 1 :].to(device)
            picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            where = answer[:, width - keep + 1 :].to(device)
            sums = (picked * where).sum(dim=1).tolist()
            counts = where.sum(dim=1).tolist()
            for r, i in enumerate(idx):
                scores[i] = AnswerScore(sums[r], int(counts[r]))
    finally:
        model.train(was_training)
    return [s for s in scores if s is not None]


def pairwise_metrics(chosen: list[AnswerScore], rejected: list[AnswerScore]) -> dict[str, Any]:
    """Preference accuracy and mean margin of length-normalised log-probabilities."""
    if not chosen:
        return {"preference_accuracy": None, "logp_margin": None, "n_pairs": 0}
    wins = [c.mean > r.mean for c, r in zip(chosen, rejected, strict=True)]
    margins = [c.mean - r.mean for c, r in zip(chosen, rejected, strict=True)]
    return {
        "preference_accuracy": sum(wins) / len(wins),
        "logp_margin": sum(margins) / len(margins),
        "chosen_logp": sum(c.mean for c in chosen) / len(chosen),
        "rejected_logp": sum(r.mean for r in rejected) / len(rejected),
        "n_pairs": len(wins),
        EXAMPLES: {"correct": [float(w) for w in wins], "margin": margins},
    }


def unpaired_metrics(scores: list[AnswerScore], desirable: list[bool]) -> dict[str, Any]:
    """Share of (up, down) completion pairs the model ranks the right way (ROC AUC of the score)."""
    from sklearn.metrics import roc_auc_score  # deferred: CLI start (sklearn)

    ups = sum(desirable)
    if ups == 0 or ups == len(desirable):
        return {
            "preference_accuracy": None,
            "n_desirable": ups,
            "n_undesirable": len(desirable) - ups,
        }
    means = [s.mean for s in scores]
    up = [m for m, d in zip(means, desirable, strict=True) if d]
    down = [m for m, d in zip(means, desirable, strict=True) if not d]
    return {
        "preference_accuracy": float(roc_auc_score(desirable, means)),
        "desirable_logp": sum(up) / len(up),
        "undesirable_logp": sum(down) / len(down),
        "n_desirable": len(up),
        "n_undesirable": len(down),
    }


def reward_metrics(
    policy: tuple[list[AnswerScore], list[AnswerScore]],
    reference: tuple[list[AnswerScore], list[AnswerScore]],
    beta: float,
) -> dict[str, Any]:
    """DPO's implicit rewards against the reference: accuracy and mean margin (as TRL logs them)."""
    (pc, pr), (rc, rr) = policy, reference
    chosen = [beta * (p.logp - r.logp) for p, r in zip(pc, rc, strict=True)]
    rejected = [beta * (p.logp - r.logp) for p, r in zip(pr, rr, strict=True)]
    if not chosen:
        return {}
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {
        "reward_accuracy": sum(m > 0 for m in margins) / len(margins),
        "reward_margin": sum(margins) / len(margins),
        "reward_chosen": sum(chosen) / len(chosen),
        "reward_rejected": sum(rejected) / len(rejected),
    }


def kl_estimate(policy: list[AnswerScore], reference: list[AnswerScore]) -> dict[str, Any]:
    """KL(pi || pi_ref) from answers sampled by pi: mean log-ratio per answer and per token."""
    if not policy:
        return {}
    ratios = [p.logp - r.logp for p, r in zip(policy, reference, strict=True)]
    tokens = sum(p.tokens for p in policy)
    return {
        "kl": sum(ratios) / len(ratios),
        "kl_per_token": sum(ratios) / tokens if tokens else None,
        "kl_samples": len(ratios),
    }


class PreferenceCallback(TrainerCallback):
    """Adds the preference accuracy (and margin) of the model being trained to every evaluation,
    before early stopping and best-checkpoint selection read the evaluation's metrics.

    `measure(model)` returns the metrics of :func:`pairwise_metrics` / :func:`unpaired_metrics`.
    """

    def __init__(self, measure: Callable[[Any], dict[str, Any]]):
        self.measure = measure

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if metrics is None or model is None:
            return
        found = self.measure(model)
        metrics.update(
            {f"eval_{k}": v for k, v in found.items() if isinstance(v, (int, float)) and k != "n"}
        )
