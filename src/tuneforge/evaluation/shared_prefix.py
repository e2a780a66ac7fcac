"""Compute a prefix that every row of a batch shares once, not once per row.

Chat data usually starts every example with the same tokens: the template's opening and one
system prompt (26 tokens of ~120 in the alert-triage recipe). In a causal LM a position sees only
the positions before it, so those tokens have the same hidden states, keys and values in every
row. Here the prefix runs once (batch of 1), its keys and values are repeated across the batch,
and the rest of each row runs on top of them as a continuation, as in generation. The loss and
its gradients are the same as with the full rows (the prefix's gradient is the sum over the rows,
which the repeat's backward computes), for B-1 fewer copies of the prefix in the forward and the
backward.

The prefix stops before the first position the loss predicts from, so no logit is needed there.
With LoRA dropout > 0 the prefix's dropout masks are drawn once per batch instead of once per row
(the same distribution per element; rows no longer have independent masks on the prefix): set
`sft.share_prefix: false` for per-row masks. Not used with gradient checkpointing, which turns
the key/value cache off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

KEY = "shared_prefix"  # batch key: length of the prefix shared by every row (0-dim tensor)


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


def continue_after_prefix(model, inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` with the shared prefix computed: the rest of each row, and the prefix's cache.

    `model` is the (PEFT-wrapped, possibly DDP-wrapped) causal LM the caller then runs on the
    returned inputs. Without a `shared_prefix` key (or a 0 one) the inputs come back unchanged,
    minus that key.
    """
    inputs = dict(inputs)
    prefix = int(inputs.pop(KEY, 0))
    if prefix == 0:
        return inputs
    from transformers import DynamicCache

    lm = getattr(model, "module", model)  # DistributedDataParallel's wrapped model
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    ids = inputs["input_ids"]
    cache = DynamicCache(config=base.config)
    # The decoder alone: the prefix needs keys and values, not logits.
    base.get_decoder()(input_ids=ids[:1, :prefix], past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(ids.shape[0])
    inputs["input_ids"] = ids[:, prefix:]
    inputs["labels"] = inputs["labels"][:, prefix:]
    inputs["logits_to_keep"] = inputs["logits_to_keep"] - prefix
    inputs["past_key_values"] = cache
    inputs["use_cache"] = False  # the cache is an input; no need to return it grown
    return inputs  # attention_mask stays whole: it covers the cached prefix too


def can_share_prefix(model) -> bool:
    """Whether the (PEFT-unwrapped) model runs as a decoder with a key/value cache input."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder = getattr(base, "get_decoder", None)
    if get_decoder is None or get_decoder() is None:
        return False
    return "past_key_values" in inspect.signature(type(base).forward).parameters
