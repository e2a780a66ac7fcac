"""Loss and perplexity of causal LMs, and the Trainer callbacks that add them to every evaluation.

The loss here is the mean over all trained tokens (token-weighted), so base and tuned models are
compared on exactly the same tokens. The Trainer's own `eval_loss` averages per-batch means (and,
under DDP, counts the rows accelerate repeats to even out the last batch); so during training the
Trainer gathers each row's summed loss and token count instead (:func:`row_loss_predictions`) and
:func:`token_weighted_loss` replaces its `eval_loss` with the same token-weighted mean the final
scoring computes, which early stopping, the best checkpoint and the curves then read.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorForSeq2Seq, TrainerCallback

from tuneforge import answer_forward
from tuneforge.evaluation.outcomes import EXAMPLES
from tuneforge.evaluation.text_metrics import perplexity
from tuneforge.progress import track


def padding_collator(tokenizer):
    """Pads input_ids with the pad token and labels with -100, to each batch's longest example."""
    tokenizer.padding_side = "right"
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)


class AnswerLogitsCollator:
    """Pads like `padding_collator`, and asks the model for logits only where a label follows.

    The output layer turns every position into a vocabulary-sized row (49k floats per token for
    SmolLM2), and with the loss on assistant answers most rows are thrown away. The batch gets
    `logits_to_keep` (the positions whose next token is labelled in any row) and `shift_labels`,
    which transformers' causal-LM loss and the Trainer's token count both accept, so the loss is
    the same, computed with a fraction of the output layer's time and memory. Where rows' answers
    sit at different positions, the batch also says which (row, position) pairs are labelled, and
    `shift_labels` lists only their targets; with `share_prefix`, it says how many leading tokens
    all its rows share. Run the model on such a batch through `answer_forward.model_inputs`.
    """

    def __init__(self, tokenizer, share_prefix: bool = False):
        self.pad = padding_collator(tokenizer)
        self.share_prefix = share_prefix

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.pad(features)
        targets = batch["labels"][:, 1:]
        keep = (targets != -100).any(dim=0).nonzero().squeeze(-1)
        batch["logits_to_keep"] = keep
        kept = targets[:, keep]
        labelled = kept != -100
        if labelled.all():
            batch["shift_labels"] = kept.contiguous()
        else:
            batch["shift_labels"] = kept[labelled].unsqueeze(0)
            batch[answer_forward.ROWS] = labelled
        if self.share_prefix:
            prefix = answer_forward.shared_prefix_length(batch["input_ids"], keep)
            if prefix:
                batch[answer_forward.KEY] = torch.tensor(prefix)
        return batch


def accepts_logits_to_keep(model) -> bool:
    """Whether the (PEFT-unwrapped) model's forward takes `logits_to_keep` (all recent HF LMs)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(type(base).forward).parameters


@torch.no_grad()
def lm_loss(
    model, collate, features: list[dict[str, list[int]]], batch_size: int, description: str
) -> dict[str, Any]:
    """Token-weighted mean loss and perplexity over `features` (input_ids + labels), and each
    feature's summed token loss and token count (`examples`, in the order of `features`)."""
    if not features:
        return {"loss": None, "perplexity": None, "tokens": 0}
    was_training = model.training
    model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    sums, counts = [0.0] * len(features), [0] * len(features)
    device = next(model.parameters()).device
    try:
        for idx in batches if len(batches) <= 1 else track(batches, description):
            batch = collate([{k: features[i][k] for k in ("input_ids", "labels")} for i in idx])
            batch = {k: v.to(device) for k, v in batch.items()}
            with answer_forward.model_inputs(model, batch) as inputs:
                logits = model(**inputs).logits
            row_sums, row_counts = row_losses(logits, batch)
            for i, total, n in zip(idx, row_sums.tolist(), row_counts.tolist(), strict=True):
                sums[i], counts[i] = total, n
    finally:
        model.train(was_training)
    count = sum(counts)
    loss = sum(sums) / count if count else None
    return {
        "loss": loss,
        "perplexity": None if loss is None else perplexity(loss),
        "tokens": count,
        EXAMPLES: {"loss_sum": sums, "tokens": counts},
    }


def row_losses(logits: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's summed next-token loss and labelled-token count, from the logits a batch made
    by `padding_collator` or `AnswerLogitsCollator` gave (the same terms the model's loss has)."""
    if "shift_labels" in batch:
        targets = batch["shift_labels"]
    else:
        targets, logits = batch["labels"][:, 1:], logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none"
    ).view(targets.shape)
    labelled = targets != -100
    rows = batch.get(answer_forward.ROWS)
    if rows is None:  # one row of targets per row of the batch
        return (nll * labelled).sum(-1), labelled.sum(-1)
    # the labelled (row, position) pairs, flattened in row-major order into one row
    row_of = rows.nonzero()[:, 0]
    n_rows = rows.shape[0]
    sums = torch.zeros(n_rows, device=nll.device).index_add_(0, row_of, nll[0])
    return sums, torch.bincount(row_of, minlength=n_rows)


def row_loss_predictions(logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """(rows x 2): each row's summed loss and token count, on the logits' device, as the
    Trainer's evaluation gathers predictions across processes (repeated rows dropped)."""
    sums, counts = row_losses(logits, batch)
    return torch.stack([sums, counts.to(sums.dtype)], dim=-1)


def token_weighted_loss(eval_pred) -> dict[str, float]:
    """`compute_metrics` on :func:`row_loss_predictions`: the mean loss over every token."""
    predictions = np.asarray(eval_pred.predictions, dtype=np.float64)
    tokens = predictions[:, 1].sum()
    return {"loss": float(predictions[:, 0].sum() / tokens)} if tokens else {}


class PerplexityCallback(TrainerCallback):
    """Adds eval_perplexity = exp(eval_loss) before early stopping and checkpointing read it."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics is not None and "eval_loss" in metrics:
            metrics["eval_perplexity"] = perplexity(metrics["eval_loss"])


class GenerationCallback(TrainerCallback):
    """Generates answers at every evaluation, adds their metrics and writes samples/step-N.jsonl.

    `measure(model)` returns (metrics, samples). The metrics are added to the evaluation's dict in
    place, which is how a callback can feed early stopping and best-checkpoint selection (both read
    that dict after `on_evaluate`).
    """

    def __init__(
        self, measure: Callable[[Any], tuple[dict[str, float], list[dict]]], samples_dir: Path
    ):
        self.measure = measure
        self.samples_dir = samples_dir

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if metrics is None or model is None:
            return
        scores, samples = self.measure(model)
        metrics.update({f"eval_{k}": v for k, v in scores.items()})
        if state.is_world_process_zero:  # one writer under torchrun
            write_samples(self.samples_dir / f"step-{state.global_step}.jsonl", samples)


def write_samples(path: Path, samples: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")
