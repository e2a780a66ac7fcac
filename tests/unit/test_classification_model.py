"""The classifier pools the last real token, whatever the padding side."""

import pytest
import torch

from tuneforge.config import FreezeConfig, LoraConfig
from tuneforge.methods import apply_method, count_parameters
from tuneforge.models import load_sequence_classifier


@pytest.fixture(scope="module")
def classifier(tiny_model, tiny_tokenizer):
    torch.manual_seed(0)
    model = load_sequence_classifier(
        tiny_model, ["neg", "pos", "neutral"], tiny_tokenizer.pad_token_id
    )
    return model.eval()


def _ids(tokenizer, text):
    return tokenizer(text, split_special_tokens=True)["input_ids"]


@torch.no_grad()
def test_right_and_left_padding_pool_the_last_real_token(classifier, tiny_tokenizer):
    short, long = (
        _ids(tiny_tokenizer, "great film"),
        _ids(tiny_tokenizer, "a dull, boring mess of a movie"),
    )
    alone = [classifier(input_ids=torch.tensor([ids])).logits[0] for ids in (short, long)]
    pad = tiny_tokenizer.pad_token_id
    width = len(long)

    right = torch.tensor([short + [pad] * (width - len(short)), long])
    right_mask = (torch.arange(width) < torch.tensor([[len(short)], [width]])).long()
    logits = classifier(input_ids=right, attention_mask=right_mask).logits
    torch.testing.assert_close(logits[0], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[1], alone[1], atol=1e-5, rtol=1e-4)

    left = torch.tensor([[pad] * (width - len(short)) + short, long])
    left_mask = (left != pad).long()
    positions = (left_mask.cumsum(-1) - 1).clamp(min=0)
    logits = classifier(input_ids=left, attention_mask=left_mask, position_ids=positions).logits
    torch.testing.assert_close(logits[0], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[1], alone[1], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_pooled_logit_is_the_score_of_the_last_real_position(classifier, tiny_tokenizer):
    ids = _ids(tiny_tokenizer, "wonderful acting")
    pad = tiny_tokenizer.pad_token_id
    batch = torch.tensor([ids + [pad, pad]])
    hidden = classifier.model(
        input_ids=batch, attention_mask=(batch != pad).long()
    ).last_hidden_state
    expected = classifier.score(hidden[0, len(ids) - 1])
    got = classifier(input_ids=batch, attention_mask=(batch != pad).long()).logits[0]
    torch.testing.assert_close(got, expected)


def test_user_text_never_becomes_the_pad_token(tiny_tokenizer):
    from tuneforge.tasks.classification import encode

    enc = encode(tiny_tokenizer, ["ends with <|im_end|>"], max_length=64)
    assert tiny_tokenizer.pad_token_id not in enc["input_ids"][0]


def test_encode_truncates_and_reports_full_length(tiny_tokenizer):
    from tuneforge.tasks.classification import encode

    enc = encode(tiny_tokenizer, ["one two three four five six seven eight nine ten"], max_length=4)
    assert len(enc["input_ids"][0]) == 4
    assert enc["n_tokens"][0] > 4


def test_lora_trains_adapters_and_the_head_only(tiny_model, tiny_tokenizer):
    model = load_sequence_classifier(tiny_model, ["a", "b"], tiny_tokenizer.pad_token_id)
    model = apply_method(model, "lora", LoraConfig(r=2, alpha=4), FreezeConfig(), "SEQ_CLS")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "score" in n for n in names)
    assert any("score" in n for n in names)
    assert any("lora_" in n and "mlp" in n for n in names)  # all-linear reaches the MLP too


def test_freeze_trains_top_layers_norm_and_head(tiny_model, tiny_tokenizer):
    model = load_sequence_classifier(tiny_model, ["a", "b"], tiny_tokenizer.pad_token_id)
    apply_method(model, "freeze", LoraConfig(), FreezeConfig(trainable_layers=1), "SEQ_CLS")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("model.layers.1.") for n in trainable)
    assert not any(n.startswith("model.layers.0.") for n in trainable)
    assert "score.weight" in trainable and "model.norm.weight" in trainable
    assert "model.embed_tokens.weight" not in trainable
    n_train, n_total = count_parameters(model)
    assert 0 < n_train < n_total


def test_scoring_batches_cap_the_padding():
    from tuneforge.tasks.classification import padding_capped_batches

    # sorted: 5, 6, 7 fit (21 padded for 18 real <= 1.25x); 8 starts a new batch (max 3 per
    # batch); 50 next to 8 would pad 100 for 58 real; 100 next to 50 would pad 200 for 150
    assert padding_capped_batches([5, 100, 6, 7, 8, 50], max_batch=3) == [[0, 2, 3], [4], [5], [1]]
    assert padding_capped_batches([9, 9, 9, 9], max_batch=16) == [[0, 1, 2, 3]]
    assert padding_capped_batches([], max_batch=4) == []
