"""Padding-free batches: the sequences of a batch laid end to end in one row, with position ids that
start again at 0 for each sequence, so no compute or memory goes to padding and no sequence sees
another.

transformers (5.x, `masking_utils.create_causal_mask`) reads such a row as packed sequences when
`position_ids` restart and there is neither an `attention_mask` nor a key/value cache:
- sdpa and eager attention get a block-diagonal causal mask built from the position ids (a
  materialised (1, 1, T, T) mask for the whole row; correct, and still T^2 attention work);
- flash_attention_2/3 run their variable-length kernel on the sequences (`cu_seqlens` from the
  position ids): no mask and no cross-sequence work;
- flex_attention gets a block mask that skips the blocks between sequences.
Two conditions make the separation silent when they fail, so they are enforced here: the batch
has no `attention_mask`, and the forward runs with `use_cache=False` (the model's config says
`use_cache: true`, and a Llama then makes an empty cache even in training, which turns the
packed-sequence detection off: every token would attend to every earlier sequence of the row).

SFT (`FlatteningCollator`): each row's first label is -100, so the last token of one sequence is
not trained to predict the first token of the next; the output layer runs only on the labelled
positions (`logits_to_keep` + `shift_labels`, as `AnswerLogitsCollator` does for padded rows), so
the loss and its token count are those of the padded batch. The shared-prefix path
(answer_forward.py) is not combined with it: a batch is either flattened or prefix-shared.

Pretrain (`data/corpus.py: pack_documents(separate=True)`): the blocks keep their fixed length and
carry position ids that restart at every document start inside a block, and the first token of
each such document is not a target: documents packed into one block no longer attend to each other.

`training.padding_free: auto` turns it on where training runs on a CUDA GPU (the sequences of a
step become one large row: the GPU gets fewer, larger kernels and no padding). On a CPU `auto`
keeps the padded, length-sorted batches and the shared prefix, which were measured there; `true`
asks for it on any device.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

import torch

from tuneforge.errors import TuneforgeError

POSITIONS = "position_ids"
IGNORE = -100

# transformers' attention implementations that separate packed sequences given by position ids
SEPARATING_ATTENTION = frozenset(
    {"sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"}
)
TASKS = ("sft", "pretrain")  # classification pools one position per row; preference is TRL's


def wanted(recipe, device: torch.device) -> bool:
    """Whether this run trains on padding-free batches (`training.padding_free`, `auto` resolved).

    `true` for a task without them is a recipe error; `auto` is on for sft and pretrain on a CUDA
    GPU."""
    requested = recipe.training.padding_free
    if requested is True and recipe.task not in TASKS:
        raise TuneforgeError(
            f"training.padding_free: true applies to the sft and pretrain tasks, not {recipe.task}",
            hint="remove training.padding_free (auto) or set it to false",
        )
    if requested == "auto":
        return recipe.task in TASKS and device.type == "cuda"
    return bool(requested) and recipe.task in TASKS


def supported(model) -> bool:
    """Whether the (PEFT-unwrapped) model separates packed sequences by their position ids: its
    forward takes `position_ids` and its attention implementation is one that reads them."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if POSITIONS not in inspect.signature(type(base).forward).parameters:
        return False
    return getattr(base.config, "_attn_implementation", None) in SEPARATING_ATTENTION


def choose_attention(model, device: torch.device) -> str | None:
    """On CUDA, flash attention's variable-length kernel where the `flash_attn` package is
    installed (no mask, no work between sequences); otherwise the model's own implementation
    (sdpa builds the block-diagonal mask). Returns the implementation set, or None. Callers ask
    only where the run's base is stored in bf16: flash attention refuses fp32 inputs, and the
    scoring after training runs without autocast."""
    if device.type != "cuda" or importlib.util.find_spec("flash_attn") is None:
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        base.set_attn_implementation("flash_attention_2")
    except (ImportError, ValueError):  # an unsupported GPU or model: keep sdpa
        return None
    return "flash_attention_2"


def without_cache(inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` of a padding-free batch with `use_cache=False` (see the module docstring); other
    batches unchanged."""
    if POSITIONS in inputs and "attention_mask" not in inputs:
        return {**inputs, "use_cache": False}
    return inputs


class FlatteningCollator:
    """SFT rows (input_ids + labels) as one padding-free row; with `answer_logits`, the output
    layer only where a label follows (`logits_to_keep`, `shift_labels`)."""

    def __init__(self, answer_logits: bool = True):
        self.answer_logits = answer_logits

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for f in features:
            n = len(f["input_ids"])
            ids.extend(f["input_ids"])
            labels.append(IGNORE)  # not predicted from the previous sequence's last token
            labels.extend(list(f["labels"])[1:n])
            positions.extend(range(n))
        batch = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            POSITIONS: torch.tensor([positions], dtype=torch.long),
        }
        if self.answer_logits:
            targets = batch["labels"][:, 1:]
            keep = (targets[0] != IGNORE).nonzero().squeeze(-1)
            batch["logits_to_keep"] = keep
            batch["shift_labels"] = targets[:, keep].contiguous()
        return batch


def document_positions(block: list[int]) -> list[int]:
    """Position ids for one packed block, given each token's position within its own document
    (`block`): 0 at the block's start (a block cannot see the one before it) and at every
    document start inside the block."""
    shift, out = block[0] if block else 0, []
    for p in block:
        if p == 0:
            shift = 0
        out.append(p - shift)
    return out
