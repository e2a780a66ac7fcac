"""Zero-shot scoring: the label score is the exact total log-probability of its tokens."""

import numpy as np
import pytest
import torch

from tuneforge.evaluation.zero_shot import build_prompt, softmax, zero_shot_scores
from tuneforge.models import load_causal_lm


@pytest.fixture(scope="module")
def lm(tiny_model):
    return load_causal_lm(tiny_model).eval()


def _reference(lm, tokenizer, prompt, word):
    """Log p(word | prompt) by a plain forward over the whole sequence, no padding tricks."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(word, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=torch.tensor([p + c])).logits[0], -1)
    return sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(c))


def test_scores_match_a_plain_forward_pass(lm, tiny_tokenizer):
    texts = ["great film", "a much longer and rather boring review of a film"]
    words = ["positive", "negative"]
    scores = zero_shot_scores(lm, tiny_tokenizer, texts, words, "Label: {labels}.", batch_size=3)
    for t, text in enumerate(texts):
        prompt, chat = build_prompt(tiny_tokenizer, "Label: positive, negative.", text)
        assert chat
        for k, word in enumerate(words):
            forms = {word, word.capitalize()}
            expected = max(_reference(lm, tiny_tokenizer, prompt, f) for f in forms)
            assert scores[t, k] == pytest.approx(expected, abs=1e-4)


def test_plain_prompt_without_chat_template(lm, tiny_model):
    from tuneforge.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    tok.chat_template = None
    prompt, chat = build_prompt(tok, "Classify.", "some text")
    assert not chat and prompt.endswith("Answer:")
    scores = zero_shot_scores(lm, tok, ["some text"], ["yes", "no"], "Classify.")
    assert scores[0, 0] == pytest.approx(
        max(_reference(lm, tok, prompt, f) for f in (" yes", " Yes")), abs=1e-4
    )


def test_softmax_rows_sum_to_one():
    p = softmax(np.array([[0.0, 0.0], [-1.0, -3.0]]))
    assert np.allclose(p.sum(1), 1)
    assert p[0, 0] == pytest.approx(0.5)


TEXTS = [
    "great film",
    "a much longer and rather boring review of a film that goes on",
    "ok",
    "the acting was superb, the plot thin",
    "",
]


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma3", "phi3"])
def test_shared_prefix_gives_the_scores_of_whole_prompts(tmp_path, family):
    """The instruction's tokens computed once and continued from (sliding-window caches of
    Mistral and Gemma 3 included: their windows of 8 are shorter than the shared prefix) score
    every text as whole prompts do, in batches of mixed lengths."""
    from tuneforge.evaluation import zero_shot
    from tuneforge.models import load_tokenizer
    from tuneforge.testing import build_tiny_model

    path = build_tiny_model(tmp_path / family, family, layers=6 if family == "gemma3" else 2)
    lm, tok = load_causal_lm(path).eval(), load_tokenizer(path)
    words = ["positive", "negative", "mixed feelings"]  # a multi-token label too
    instruction = "Is the sentiment of this movie review {labels}? Answer with one of them."
    prompts = [
        tok(build_prompt(tok, instruction.replace("{labels}", ", ".join(words)), t)[0])
        for t in TEXTS
    ]
    shared = zero_shot.shared_length([tuple(p["input_ids"]) for p in prompts], 1)
    assert shared > 8  # the template's opening and the instruction
    assert zero_shot.can_share_prefix(lm)  # so the cached path runs below

    whole = zero_shot_scores(lm, tok, TEXTS, words, instruction, batch_size=3, share_prefix=False)
    cached = zero_shot_scores(lm, tok, TEXTS, words, instruction, batch_size=3)
    assert np.isfinite(cached).all()
    np.testing.assert_allclose(cached, whole, atol=1e-4)


def test_shared_length_leaves_every_sequence_its_read_positions():
    from tuneforge.evaluation.zero_shot import shared_length

    common = tuple(range(20))
    assert shared_length([common + (1, 2), common + (3,)], keep=2) == 19  # shortest 21 - 2
    assert shared_length([common + (1,), common + (2,)], keep=1) == 20
    assert shared_length([(1, 2, 3, 4), (1, 2, 3, 5)], keep=1) == 0  # too few to be worth it
    assert shared_length([(9,) + common, common], keep=1) == 0
