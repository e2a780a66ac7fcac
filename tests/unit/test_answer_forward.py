"""SFT batches without wasted compute (answer_forward.py): the prefix every row shares runs once,
the output layer only on labelled (row, position) pairs; same loss and gradients as full rows and
full logits."""

from __future__ import annotations

import pytest
import torch

from tuneforge.answer_forward import (
    KEY,
    ROWS,
    can_share_prefix,
    continue_after_prefix,
    model_inputs,
    shared_prefix_length,
)
from tuneforge.config import LoraConfig
from tuneforge.data.chat import encode_chat
from tuneforge.evaluation.language_model import AnswerLogitsCollator, lm_loss, padding_collator
from tuneforge.methods.lora import apply_lora
from tuneforge.models import load_causal_lm

SYSTEM = "Security alert: failed login from 203.0.113.7 for user admin; category phishing."


def _features(tokenizer, n: int = 4) -> list[dict]:
    """Chats with one system prompt and user/assistant turns of different lengths."""
    out = []
    for i in range(n):
        chat = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "the quick brown fox " * (i + 1)},
            {"role": "assistant", "content": "lazy dog " * (n - i)},
        ]
        enc = encode_chat(tokenizer, chat, max_length=256, eot="<|im_end|>")
        out.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return out


def test_length_is_the_common_start_before_the_first_kept_logit():
    ids = torch.tensor([[5, 6, 7, 8, 9, 1], [5, 6, 7, 2, 3, 0], [5, 6, 7, 8, 4, 0]])
    assert shared_prefix_length(ids, torch.tensor([4, 5])) == 3  # rows differ at position 3
    assert shared_prefix_length(ids, torch.tensor([2, 3, 4])) == 2  # logits at 2 are read
    assert shared_prefix_length(ids[:1], torch.tensor([4])) == 0  # one row: nothing to share
    assert shared_prefix_length(ids, torch.tensor([], dtype=torch.long)) == 0
    assert shared_prefix_length(torch.tensor([[1, 2], [3, 2]]), torch.tensor([1])) == 0


def test_collator_marks_the_prefix_only_when_asked(tiny_tokenizer):
    features = _features(tiny_tokenizer)
    plain = AnswerLogitsCollator(tiny_tokenizer)(features)
    shared = AnswerLogitsCollator(tiny_tokenizer, share_prefix=True)(features)
    assert KEY not in plain
    prefix = int(shared[KEY])
    system_tokens = len(tiny_tokenizer(SYSTEM)["input_ids"])
    assert system_tokens < prefix < int(shared["logits_to_keep"].min()) + 1
    ids = shared["input_ids"]
    assert (ids[:, :prefix] == ids[:1, :prefix]).all()
    assert not (ids[:, prefix] == ids[0, prefix]).all()  # the first user turns differ there
    one_row = AnswerLogitsCollator(tiny_tokenizer, share_prefix=True)(features[:1])
    assert KEY not in one_row


def _loss_and_grads(model, batch):
    model.zero_grad()
    with model_inputs(model, batch) as inputs:
        loss = model(**inputs).loss
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


def test_collator_lists_only_the_labelled_rows_of_the_output_layer(tiny_tokenizer):
    features = _features(tiny_tokenizer)  # answers of 4, 3, 2, 1 repeats: different positions
    batch = AnswerLogitsCollator(tiny_tokenizer)(features)
    labelled = sum(sum(1 for t in f["labels"][1:] if t != -100) for f in features)
    rows = batch[ROWS]
    assert rows.shape == (len(features), batch["logits_to_keep"].numel())
    assert int(rows.sum()) == labelled < rows.numel()  # the union would hold wasted rows
    assert batch["shift_labels"].shape == (1, labelled)
    assert (batch["shift_labels"] != -100).all()


@pytest.mark.parametrize("share_prefix", [False, True])
def test_same_loss_and_lora_gradients_as_full_rows_and_logits(
    tiny_model, tiny_tokenizer, share_prefix
):
    torch.manual_seed(0)
    model = load_causal_lm(tiny_model)
    model = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), "CAUSAL_LM")
    # B at zero would make every LoRA A gradient zero: give the adapters a non-trivial state
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.train()
    assert can_share_prefix(model)
    features = _features(tiny_tokenizer)
    full = padding_collator(tiny_tokenizer)(features)
    sparse = AnswerLogitsCollator(tiny_tokenizer, share_prefix=share_prefix)(features)
    assert ROWS in sparse and (KEY in sparse) is share_prefix
    loss_a, grads_a = _loss_and_grads(model, full)
    loss_b, grads_b = _loss_and_grads(model, sparse)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        assert grads_a[name].abs().max() > 0, name  # every adapter has a gradient to compare
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6)
    head = model.get_base_model().get_output_embeddings()
    assert not head._forward_pre_hooks  # the labelled-rows hook is gone after the call


def test_scoring_gives_the_same_loss_and_token_count(tiny_model, tiny_tokenizer):
    model = load_causal_lm(tiny_model)
    features = _features(tiny_tokenizer, n=6)
    full = lm_loss(model, padding_collator(tiny_tokenizer), features, 3, "full")
    for collate in (
        AnswerLogitsCollator(tiny_tokenizer),
        AnswerLogitsCollator(tiny_tokenizer, share_prefix=True),
    ):
        sparse = lm_loss(model, collate, features, 3, "sparse")
        assert sparse["tokens"] == full["tokens"] > 0
        assert sparse["loss"] == pytest.approx(full["loss"], rel=1e-5)


def test_no_prefix_key_leaves_the_inputs_alone():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), KEY: torch.tensor(0)}
    out = continue_after_prefix(object(), batch)
    assert set(out) == {"input_ids"} and out["input_ids"] is batch["input_ids"]


@pytest.mark.parametrize(
    ("settings", "shared"),
    [
        ({}, True),
        ({"sft": {"share_prefix": False}}, False),
        ({"training": {"gradient_checkpointing": True}}, False),
        ({"training": {"label_smoothing": 0.1}}, False),  # needs every logit: plain padding
    ],
)
def test_sft_training_shares_the_prefix_unless_the_recipe_rules_it_out(
    tiny_model, tiny_tokenizer, settings, shared
):
    from tuneforge.config import validate_recipe
    from tuneforge.models import ModelSource
    from tuneforge.tasks.sft import SftTask

    raw = {
        "name": "r",
        "task": "sft",
        "base_model": str(tiny_model),
        "data": {"train": "t.jsonl", "validation": "v.jsonl"},
    }
    for key, value in settings.items():
        raw[key] = value
    recipe = validate_recipe(raw)
    task = SftTask()
    model = task.build_model(ModelSource(str(tiny_model), tiny_model, "local"), None, recipe)
    batch = task.collator(tiny_tokenizer)(_features(tiny_tokenizer))
    assert (KEY in batch) is shared
    # scoring (no dropout, no checkpointing) always shares: it is exact
    assert task.loss_collator(model, tiny_tokenizer).share_prefix
