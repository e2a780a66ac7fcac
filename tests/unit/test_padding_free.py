"""Padding-free batches (padding_free.py): one row, position ids restarting per sequence; the same
loss and gradients as the padded batch, and no sequence sees another."""

from __future__ import annotations

import pytest
import torch

from tuneforge.answer_forward import model_inputs
from tuneforge.config import LoraConfig, validate_recipe
from tuneforge.data.chat import encode_chat
from tuneforge.data.corpus import pack_documents
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.language_model import AnswerLogitsCollator, padding_collator
from tuneforge.methods.lora import apply_lora
from tuneforge.models import load_causal_lm
from tuneforge.padding_free import (
    FlatteningCollator,
    document_positions,
    supported,
    wanted,
    without_cache,
)

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def _features(tokenizer, n: int = 4) -> list[dict]:
    out = []
    for i in range(n):
        chat = [
            {"role": "system", "content": "You sort alerts."},
            {"role": "user", "content": "the quick brown fox " * (i + 1)},
            {"role": "assistant", "content": "lazy dog " * (n - i)},
        ]
        enc = encode_chat(tokenizer, chat, max_length=256, eot="<|im_end|>")
        out.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return out


def _lora_model(path, attention: str):
    torch.manual_seed(0)
    model = load_causal_lm(path)
    model.set_attn_implementation(attention)
    model = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), "CAUSAL_LM")
    with torch.no_grad():  # B at zero would leave every A gradient zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.train()
    return model


def _loss_and_grads(model, batch):
    model.zero_grad()
    with model_inputs(model, batch) as inputs:
        loss = model(**inputs).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_collator_lays_the_rows_end_to_end(tiny_tokenizer):
    features = _features(tiny_tokenizer)
    batch = FlatteningCollator()(features)
    lengths = [len(f["input_ids"]) for f in features]
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert "attention_mask" not in batch
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    positions = batch["position_ids"][0].tolist()
    assert [positions[s] for s in starts] == [0] * len(features)
    assert positions == [p for n in lengths for p in range(n)]
    labels = batch["labels"][0].tolist()
    assert all(labels[s] == -100 for s in starts)  # never a target across a boundary
    labelled = sum(sum(t != -100 for t in f["labels"][1:]) for f in features)
    assert batch["shift_labels"].shape == (1, labelled) == (1, batch["logits_to_keep"].numel())
    assert (batch["shift_labels"] != -100).all()
    plain = FlatteningCollator(answer_logits=False)(features)
    assert "logits_to_keep" not in plain and torch.equal(plain["labels"], batch["labels"])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("answer_logits", [True, False])
def test_same_loss_and_gradients_as_the_padded_batch(
    tiny_model, tiny_tokenizer, attention, answer_logits
):
    model = _lora_model(tiny_model, attention)
    assert supported(model)
    features = _features(tiny_tokenizer)
    loss_a, grads_a = _loss_and_grads(model, padding_collator(tiny_tokenizer)(features))
    loss_b, grads_b = _loss_and_grads(model, FlatteningCollator(answer_logits)(features))
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        assert grads_a[name].abs().max() > 0, name
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6)
    # the sft path it replaces on CUDA (shared prefix, labelled rows): the same loss too
    loss_c, _ = _loss_and_grads(
        model, AnswerLogitsCollator(tiny_tokenizer, share_prefix=True)(features)
    )
    torch.testing.assert_close(loss_b, loss_c, rtol=1e-5, atol=1e-6)


def _row_logits(model, batch, start: int, end: int) -> torch.Tensor:
    with torch.no_grad(), model_inputs(model, batch) as inputs:
        return model(**inputs).logits[0, start:end]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_changing_one_sequence_leaves_the_others_alone(tiny_model, tiny_tokenizer, attention):
    model = load_causal_lm(tiny_model)
    model.set_attn_implementation(attention)
    model.eval()
    features = _features(tiny_tokenizer, n=3)
    changed = [dict(f) for f in features]
    changed[0] = {
        "input_ids": [(t + 7) % 300 for t in features[0]["input_ids"]],
        "labels": features[0]["labels"],
    }
    flat = FlatteningCollator(answer_logits=False)
    start = len(features[0]["input_ids"])
    end = start + len(features[1]["input_ids"])
    before = _row_logits(model, flat(features), start, end)
    after = _row_logits(model, flat(changed), start, end)
    assert torch.equal(before, after)
    # and the second sequence alone, in a batch of its own, gives the same logits
    alone = _row_logits(model, flat(features[1:2]), 0, end - start)
    torch.testing.assert_close(before, alone, rtol=1e-5, atol=1e-5)
    # what the cache condition guards against: with the config's use_cache, transformers builds
    # a cache, skips the packed-sequence mask, and the first sequence leaks into the second
    with torch.no_grad():
        leaky = [model(**flat(f)).logits[0, start:end] for f in (features, changed)]
    assert not torch.allclose(*leaky)


def test_without_cache_only_for_padding_free_batches():
    flat = {"input_ids": torch.ones(1, 3), "position_ids": torch.zeros(1, 3)}
    assert without_cache(flat)["use_cache"] is False
    padded = {**flat, "attention_mask": torch.ones(1, 3)}
    assert "use_cache" not in without_cache(padded)


def _recipe(task: str, **training):
    return validate_recipe(
        {
            "name": "r",
            "task": task,
            "data": {"train": "t.jsonl", "validation": "v.jsonl"},
            "training": training,
        }
    )


@pytest.mark.parametrize(
    ("task", "setting", "device", "on"),
    [
        ("sft", "auto", CUDA, True),
        ("sft", "auto", CPU, False),  # the CPU keeps its measured path
        ("pretrain", "auto", CUDA, True),
        ("classification", "auto", CUDA, False),
        ("sft", True, CPU, True),
        ("sft", False, CUDA, False),
    ],
)
def test_auto_is_on_for_generative_tasks_on_cuda(task, setting, device, on):
    assert wanted(_recipe(task, padding_free=setting), device) is on


def test_asking_for_it_where_it_does_not_apply_is_a_recipe_error():
    with pytest.raises(TuneforgeError, match=r"training\.padding_free: true .* classification"):
        wanted(_recipe("classification", padding_free=True), CPU)


def test_sft_task_flattens_and_stops_sharing_the_prefix(tiny_model, tiny_tokenizer):
    from tuneforge.models import ModelSource
    from tuneforge.tasks.sft import SftTask

    raw = {
        "name": "r",
        "task": "sft",
        "base_model": str(tiny_model),
        "data": {"train": "t.jsonl", "validation": "v.jsonl"},
        "training": {"padding_free": True},
    }
    task = SftTask()
    source = ModelSource(str(tiny_model), tiny_model, "local")
    task.build_model(source, None, validate_recipe(raw))
    batch = task.collator(tiny_tokenizer)(_features(tiny_tokenizer))
    assert "position_ids" in batch and "shared_prefix" not in batch
    assert batch["input_ids"].shape[0] == 1


def test_document_positions_restart_at_block_and_document_starts():
    # a block starting inside a document (places 5, 6, 7), then a document of 3, then another
    assert document_positions([5, 6, 7, 0, 1, 2, 0, 1]) == [0, 1, 2, 0, 1, 2, 0, 1]
    assert document_positions([0, 1, 2]) == [0, 1, 2]


def test_separated_blocks_keep_documents_apart(tiny_model, tiny_tokenizer):
    texts = ["alpha beta gamma delta", "one two three", "red green blue yellow", "x y"]
    block = 8
    plain = pack_documents(tiny_tokenizer, texts, block)
    apart = pack_documents(tiny_tokenizer, texts, block, separate=True)
    assert apart.blocks == plain.blocks and apart.tokens == plain.tokens
    assert apart.dataset["input_ids"] == plain.dataset["input_ids"]
    assert "attention_mask" not in apart.dataset.column_names
    eos = tiny_tokenizer.eos_token_id
    for ids, pos, labels in zip(
        apart.dataset["input_ids"],
        apart.dataset["position_ids"],
        apart.dataset["labels"],
        strict=True,
    ):
        assert pos[0] == 0
        for j in range(1, block):
            starts = ids[j - 1] == eos  # the token after an EOS starts a document
            assert (pos[j] == 0) is starts
            assert (labels[j] == -100) is starts
            if not starts:
                assert labels[j] == ids[j] and pos[j] == pos[j - 1] + 1
    # a model sees each document of a block as if it were alone
    model = load_causal_lm(tiny_model)
    model.eval()
    k = next(i for i, ids in enumerate(apart.dataset["input_ids"]) if eos in ids[:-1])
    row = {c: torch.tensor(apart.dataset[c][k : k + 1]) for c in ("input_ids", "position_ids")}
    cut = row["input_ids"][0].tolist().index(eos) + 1  # a document starts here, inside the block
    with torch.no_grad(), model_inputs(model, row) as inputs:
        packed = model(**inputs).logits[0, cut:]
        alone = model(input_ids=row["input_ids"][:, cut:]).logits[0]
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


def test_flash_attention_only_on_cuda_where_installed(monkeypatch, tiny_model):
    import importlib.util

    from tuneforge.padding_free import choose_attention

    model = load_causal_lm(tiny_model)
    assert choose_attention(model, CPU) is None  # never on a CPU
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a),
    )
    # "installed", but transformers cannot load it here: the model keeps its attention
    assert choose_attention(model, CUDA) is None
    assert model.config._attn_implementation == "sdpa" and supported(model)
    chosen = []
    monkeypatch.setattr(type(model), "set_attn_implementation", lambda self, a: chosen.append(a))
    assert choose_attention(model, CUDA) == "flash_attention_2" == chosen[0]
