"""How an SFT batch runs through the causal LM without computing what the loss never reads.

`AnswerLogitsCollator` (evaluation/language_model.py) marks a batch with two things this module
acts on:

**A prefix every row shares** (`shared_prefix`). Chat data usually starts every example with the
same tokens: the template's opening and one system prompt (26 tokens of ~120 in the alert-triage
recipe). In a causal LM a position sees only the positions before it, so those tokens have the
same hidden states, keys and values in every row. They run once (a batch of one, the decoder
alone), their keys and values are repeated across the batch, and the rest of each row runs on top
of them as a continuation, as in generation. The prefix's gradient is the sum over the rows, which
the repeat's backward computes, so loss and gradients are those of the full rows, for B-1 fewer
copies of the prefix in the forward and the backward. The prefix stops before the first position
the loss predicts from. With LoRA dropout > 0 the prefix's dropout masks are drawn once per batch
instead of once per row (the same distribution per element, but no longer independent across
rows): `sft.share_prefix: false` keeps per-row masks. Not used with gradient checkpointing, which
turns the key/value cache off.

**The labelled rows of the output layer** (`answer_positions`). transformers' `logits_to_keep`
takes one set of positions for all rows, so the union of the rows' answer positions goes through
the vocabulary projection (1.43x the labelled positions on the alert-triage batches). A forward
pre-hook on the output layer keeps only the (row, position) pairs whose next token is labelled,
and `shift_labels` lists their targets in the same order: the same cross-entropy terms, each
computed once.

Everything that runs the model on such a batch (the Trainer's `compute_loss`, `lm_loss`,
`tuneforge plan`'s timed steps) goes through :func:`model_inputs`; so do padding-free batches
(padding_free.py), which it runs without a key/value cache.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from transformers import DynamicCache

from tuneforge import padding_free

if TYPE_CHECKING:
    import torch

KEY = "shared_prefix"  # batch key: length of the prefix shared by every row (0-dim tensor)
ROWS = "answer_positions"  # batch key: (rows x kept positions) bool, which logits the loss reads


def shared_prefix_length(input_ids: torch.Tensor, logits_to_keep: torch.Tensor) -> int:
    """Length of the longest prefix common to every row that holds no position the loss reads.

    `logits_to_keep` are the positions whose logits the loss uses (their next token is labelled);
    the prefix ends at the first of them, so every kept position lies in the rest. Returns 0 when
    sharing saves nothing (one row, no common token).
    """
    rows = input_ids.shape[0]
    if rows < 2 or logits_to_keep.numel() == 0:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0)
    common = int(same.long().cumprod(0).sum())
    return min(common, int(logits_to_keep.min()))


@contextmanager
def model_inputs(model, inputs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`inputs` ready for `model(**inputs)`, with the shared prefix and labelled rows applied.

    `model` is the (PEFT-wrapped, possibly DDP-wrapped) causal LM the caller runs inside the
    block. Batches without the two keys come back unchanged.
    """
    inputs = padding_free.without_cache(continue_after_prefix(model, inputs))
    rows = inputs.pop(ROWS, None)
    if rows is None:
        yield inputs
        return
    head = unwrapped(model).get_output_embeddings()

    def labelled_rows(module, args):
        return (args[0][rows].unsqueeze(0), *args[1:])  # (B, K, H) -> (1, labelled, H)

    handle = head.register_forward_pre_hook(labelled_rows)
    try:
        yield inputs
    finally:
        handle.remove()


def continue_after_prefix(model, inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` with the shared prefix computed: the rest of each row, and the prefix's cache.

    Without a `shared_prefix` key (or a 0 one) the inputs come back unchanged, minus that key.
    """
    inputs = dict(inputs)
    prefix = int(inputs.pop(KEY, 0))
    if prefix == 0:
        return inputs
    base = unwrapped(model)
    name = cache_argument(base)
    ids = inputs["input_ids"]
    cache = DynamicCache(config=base.config)
    # The decoder alone: the prefix needs keys and values, not logits.
    base.get_decoder()(input_ids=ids[:1, :prefix], use_cache=True, **{name: cache})
    cache.batch_repeat_interleave(ids.shape[0])
    inputs["input_ids"] = ids[:, prefix:]
    inputs["labels"] = inputs["labels"][:, prefix:]
    inputs["logits_to_keep"] = inputs["logits_to_keep"] - prefix
    inputs[name] = cache
    inputs["use_cache"] = False  # the cache is an input; no need to return it grown
    return inputs  # attention_mask stays whole: it covers the cached prefix too


def can_share_prefix(model) -> bool:
    """Whether the (PEFT-unwrapped) model runs as a decoder with a key/value cache input."""
    base = unwrapped(model)
    get_decoder = getattr(base, "get_decoder", None)
    if get_decoder is None or get_decoder() is None:
        return False
    return cache_argument(base) is not None


def cache_argument(model) -> str | None:
    """The name the model's forward takes its key/value cache under: `cache` from transformers
    5.24 (where `past_key_values` is a deprecated alias), `past_key_values` before."""
    parameters = inspect.signature(type(unwrapped(model)).forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    return None


def unwrapped(model):
    """The transformers model under DistributedDataParallel and PEFT wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model
