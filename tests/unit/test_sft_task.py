"""The sft task's data preparation: formats, column names, over-long counts, recipe checks."""

import csv

import pytest
from conftest import write_jsonl

from tuneforge.config import validate_recipe
from tuneforge.errors import TuneforgeError
from tuneforge.tasks.sft import SftTask


def _recipe(tiny_model, train, validation, **extra):
    raw = {
        "name": "r",
        "task": "sft",
        "base_model": str(tiny_model),
        "data": {"train": str(train), "validation": str(validation)},
    }
    for key, value in extra.items():
        raw.setdefault(key, {}).update(value)
    return validate_recipe(raw)


def test_overlong_examples_are_counted_and_stored(tmp_path, tiny_model, tiny_tokenizer):
    short = {"prompt": "the film", "completion": "great"}
    long_answer = {"prompt": "the film", "completion": "the quick brown fox " * 20}
    long_prompt = {"prompt": "the quick brown fox " * 20, "completion": "great"}
    data = write_jsonl(tmp_path / "d.jsonl", [short, long_answer, long_prompt])
    recipe = _recipe(tiny_model, data, data, training={"max_length": 80})
    prepared = SftTask().prepare(recipe, tiny_tokenizer)
    info = prepared.info
    assert info["chat"]["format"] == "prompt_completion"
    assert info["examples"]["train"] == 3
    assert info["truncated"]["train"] == 1  # the long answer, cut
    assert info["dropped"]["train"] == 1  # the long prompt: no answer token left
    assert len(prepared.train) == 2 and all(len(ids) <= 80 for ids in prepared.train["input_ids"])
    recipe = _recipe(tiny_model, data, data, training={"max_length": 80}, sft={"overlong": "drop"})
    prepared = SftTask().prepare(recipe, tiny_tokenizer)
    assert prepared.info["dropped"]["train"] == 2 and len(prepared.train) == 1


def test_alpaca_csv_with_renamed_columns(tmp_path, tiny_model, tiny_tokenizer):
    path = tmp_path / "d.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["task", "context", "answer"])
        writer.writeheader()
        writer.writerow({"task": "Summarise.", "context": "the film", "answer": "great"})
        writer.writerow({"task": "Classify.", "context": "", "answer": "negative"})
    recipe = _recipe(
        tiny_model,
        path,
        path,
        data={"instruction_field": "task", "input_field": "context", "output_field": "answer"},
    )
    prepared = SftTask().prepare(recipe, tiny_tokenizer)
    assert prepared.info["chat"]["format"] == "alpaca"
    assert len(prepared.train) == 2


def test_unknown_columns_and_missing_fields(tmp_path, tiny_model, tiny_tokenizer):
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(TuneforgeError, match=r"cannot tell the sft data format from the columns"):
        SftTask().prepare(_recipe(tiny_model, data, data), tiny_tokenizer)
    good = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "q", "completion": "a"}])
    bad = write_jsonl(tmp_path / "v.jsonl", [{"prompt": "q", "completion": "a"}, {"prompt": "q"}])
    with pytest.raises(TuneforgeError) as e:
        SftTask().prepare(_recipe(tiny_model, good, bad), tiny_tokenizer)
    assert f"data.validation: {bad} line 2: missing field 'completion'" in str(e.value)


def test_selecting_on_a_generation_metric_needs_generation_examples(
    tmp_path, tiny_model, tiny_tokenizer
):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "completion": "a"}])
    recipe = _recipe(
        tiny_model,
        data,
        data,
        early_stopping={"metric": "rouge_l"},
        sft={"generation_examples": 0},
    )
    with pytest.raises(TuneforgeError, match="needs generated answers"):
        SftTask().prepare(recipe, tiny_tokenizer)


def test_answer_logits_collator_gives_the_full_loss_from_fewer_logits(tiny_model, tiny_tokenizer):
    """Logits only where a label follows: same loss (and token count) as the full output layer."""
    import torch

    from tuneforge.answer_forward import model_inputs
    from tuneforge.data.chat import encode_chat
    from tuneforge.evaluation.language_model import (
        AnswerLogitsCollator,
        accepts_logits_to_keep,
        padding_collator,
    )
    from tuneforge.models import load_causal_lm

    torch.set_num_threads(1)
    chats = [
        [
            {"role": "user", "content": "the quick brown fox " * (i + 1)},
            {"role": "assistant", "content": "lazy dog " * (3 - i)},
        ]
        for i in range(3)
    ]
    features = []
    for chat in chats:
        enc = encode_chat(tiny_tokenizer, chat, max_length=256, eot="<|im_end|>")
        features.append({"input_ids": enc.input_ids, "labels": enc.labels})
    model = load_causal_lm(tiny_model).eval()
    assert accepts_logits_to_keep(model)
    full_batch = padding_collator(tiny_tokenizer)(features)
    sparse_batch = AnswerLogitsCollator(tiny_tokenizer)(features)
    with torch.no_grad():
        full = model(**full_batch)
        with model_inputs(model, sparse_batch) as inputs:
            sparse = model(**inputs)
    labelled = int((full_batch["labels"][:, 1:] != -100).sum())
    assert sparse.logits.shape[:2] == (1, labelled)  # one vocabulary row per labelled position
    assert labelled < full.logits.shape[0] * full.logits.shape[1]
    torch.testing.assert_close(sparse.loss, full.loss)
    n_full = (full_batch["labels"][:, 1:] != -100).sum()
    assert (sparse_batch["shift_labels"] != -100).sum() == n_full
