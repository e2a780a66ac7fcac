"""Generation stops at the end-of-turn token; generation metrics on hand-made answers."""

import pytest
import torch

from tuneforge.data.chat import encode_chat, encode_prompt, end_of_turn, stop_token_ids
from tuneforge.evaluation.text_metrics import first_line, generation_metrics
from tuneforge.generation import Sampling, generate
from tuneforge.models import load_causal_lm


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waiting, up to 40x faster on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


CHAT = [
    {"role": "user", "content": "the quick brown fox"},
    {"role": "assistant", "content": "lazy dog"},
]


@pytest.fixture(scope="module")
def taught_model(tiny_model, tiny_tokenizer):
    """The tiny model, overfitted on one chat with the sft label mask (a few hundred ms)."""
    torch.manual_seed(0)
    model = load_causal_lm(tiny_model)
    enc = encode_chat(tiny_tokenizer, CHAT, max_length=128, eot=end_of_turn(tiny_tokenizer))
    ids, labels = torch.tensor([enc.input_ids]), torch.tensor([enc.labels])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    model.train()
    for _ in range(60):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.05
    return model.eval()


def test_generation_stops_at_the_end_of_turn_token(taught_model, tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = encode_prompt(tok, CHAT[:1])
    stops = stop_token_ids(tok, end_of_turn(tok))
    [out] = generate(taught_model, tok, [prompt], stops, Sampling(max_new_tokens=40))
    assert out.text == "lazy dog"
    assert out.stopped and out.n_tokens == len(
        tok("lazy dog", add_special_tokens=False)["input_ids"]
    )


def test_batched_left_padded_generation_matches_one_by_one(taught_model, tiny_tokenizer):
    tok = tiny_tokenizer
    stops = stop_token_ids(tok, end_of_turn(tok))
    prompts = [
        encode_prompt(tok, CHAT[:1]),
        encode_prompt(tok, [{"role": "user", "content": "a dull, boring mess of a film"}]),
    ]
    alone = [
        generate(taught_model, tok, [p], stops, Sampling(max_new_tokens=12))[0].text
        for p in prompts
    ]
    together = [
        g.text for g in generate(taught_model, tok, prompts, stops, Sampling(max_new_tokens=12))
    ]
    assert together == alone


def test_generation_without_a_stop_runs_to_max_new_tokens(tiny_model, tiny_tokenizer):
    model = load_causal_lm(tiny_model).eval()
    [out] = generate(model, tiny_tokenizer, [[5, 6, 7]], [10_000], Sampling(max_new_tokens=5))
    assert not out.stopped and out.n_tokens == 5


def test_generation_metrics_on_hand_made_answers():
    refs = ["Category: malware\nReason: a macro ran.", "Category: benign\nReason: scheduled scan."]
    preds = [
        "Category: malware\nReason: a macro ran.",
        "Category: phishing\nReason: scheduled scan.",
    ]
    m = generation_metrics(preds, refs)
    assert m["exact_match"] == 0.5
    assert m["first_line_exact_match"] == 0.5
    assert 0.5 < m["rouge_l"] < 1.0
    assert 0 < m["chrf"] < 100 and 0 < m["bleu"] < 100
    perfect = generation_metrics(refs, refs)
    assert perfect["exact_match"] == perfect["first_line_exact_match"] == perfect["rouge_l"] == 1.0
    assert perfect["chrf"] == pytest.approx(100.0) and perfect["bleu"] == pytest.approx(100.0)
    # Whitespace runs do not count; the first non-empty line is the decision.
    assert (
        generation_metrics(["  Category:  malware \n"], ["Category: malware"])["exact_match"] == 1.0
    )
    assert first_line("\n\nCategory: x\nmore") == "Category: x"
