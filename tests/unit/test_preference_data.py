"""Preference data and its measures: formats, rendering split token by token, the arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from tuneforge.data.chat import encode_chat, encode_prompt, end_of_turn
from tuneforge.data.preference import (
    PAIRWISE,
    UNPAIRED,
    Feedback,
    Pair,
    PreferenceFields,
    detect_format,
    encode_answer,
    fit,
    parse_label,
    parse_row,
)
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.preference import (
    AnswerScore,
    answer_logprobs,
    kl_estimate,
    pairwise_metrics,
    reward_metrics,
    unpaired_metrics,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


FIELDS = PreferenceFields(format="auto")
PAIRS = PreferenceFields(format=PAIRWISE)
FEEDBACK = PreferenceFields(format=UNPAIRED)


# ------------------------------------------------------------------ formats


def test_format_is_detected_from_the_columns():
    assert detect_format("auto", ["prompt", "chosen", "rejected"], FIELDS, "f") == PAIRWISE
    assert detect_format("auto", ["chosen", "rejected"], FIELDS, "f") == PAIRWISE  # whole chats
    assert detect_format("auto", ["prompt", "completion", "label"], FIELDS, "f") == UNPAIRED
    with pytest.raises(TuneforgeError, match="cannot tell") as e:
        detect_format("auto", ["prompt", "answer"], FIELDS, "data.train: x.jsonl")
    assert "data.train: x.jsonl" in e.value.message
    with pytest.raises(TuneforgeError, match=r"missing \['rejected'\]"):
        detect_format("pairwise", ["prompt", "chosen"], FIELDS, "f")
    with pytest.raises(TuneforgeError, match=r"missing \['label'\]"):
        detect_format("unpaired", ["prompt", "completion"], FIELDS, "f")


def test_pairs_as_text_as_messages_and_as_whole_chats():
    text = parse_row({"prompt": "Hi?", "chosen": "Short.", "rejected": "Long long."}, PAIRS, "w")
    assert text == Pair([{"role": "user", "content": "Hi?"}], "Short.", "Long long.")
    msgs = parse_row(
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi?"},
            ],
            "chosen": [{"role": "assistant", "content": "Short."}],
            "rejected": '[{"role": "assistant", "content": "Long long."}]',  # a CSV cell
        },
        PAIRS,
        "w",
    )
    assert msgs.prompt[0] == {"role": "system", "content": "Be brief."}
    assert (msgs.chosen, msgs.rejected) == ("Short.", "Long long.")
    user = {"role": "user", "content": "Hi?"}
    whole = parse_row(
        {
            "chosen": [user, {"role": "assistant", "content": "Short."}],
            "rejected": [user, {"role": "assistant", "content": "Long long."}],
        },
        PAIRS,
        "w",
    )
    assert whole == Pair([user], "Short.", "Long long.")


def test_the_system_prompt_goes_first_unless_the_prompt_has_one():
    fields = PreferenceFields(format=PAIRWISE, system_prompt="Policy.")
    pair = parse_row({"prompt": "Hi?", "chosen": "a", "rejected": "b"}, fields, "w")
    assert pair.prompt == [
        {"role": "system", "content": "Policy."},
        {"role": "user", "content": "Hi?"},
    ]


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ({"prompt": "Hi?", "chosen": "Same.", "rejected": " Same. "}, "are the same answer"),
        ({"prompt": "Hi?", "chosen": "", "rejected": "b"}, "field 'chosen' is empty"),
        ({"prompt": "Hi?", "chosen": "a"}, "missing field 'rejected'"),
        (
            {"prompt": "Hi?", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"},
            "expected one assistant message",
        ),
    ],
)
def test_bad_pairs_name_the_row_and_field(row, fragment):
    with pytest.raises(TuneforgeError) as e:
        parse_row(row, PAIRS, "data.train: prefs.jsonl line 7")
    assert fragment in e.value.message and "prefs.jsonl line 7" in e.value.message


@pytest.mark.parametrize(
    ("value", "up"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("up", True),
        ("Thumbs_Down", False),
        ("true", True),
        ("0", False),
        ("👍", True),
        ("👎", False),
    ],
)
def test_feedback_labels_in_the_spellings_products_use(value, up):
    assert parse_label(value, "label", "w") is up


@pytest.mark.parametrize("value", ["maybe", 2, None, 0.5])
def test_an_unknown_label_is_refused(value):
    with pytest.raises(TuneforgeError, match="unknown feedback label") as e:
        parse_row({"prompt": "Hi", "completion": "a", "label": value}, FEEDBACK, "fb.jsonl line 3")
    assert "fb.jsonl line 3" in e.value.message and "thumbs_up" in e.value.hint


def test_feedback_rows():
    row = {"prompt": "Hi?", "completion": "Hello.", "label": "down"}
    assert parse_row(row, FEEDBACK, "w") == Feedback(
        [{"role": "user", "content": "Hi?"}], "Hello.", False
    )


# ------------------------------------------------------------------ tokens


def test_prompt_and_answer_tokens_split_where_the_template_puts_the_answer(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = [{"role": "user", "content": "the quick brown fox"}]
    enc = encode_answer(tok, prompt, "jumps over the lazy dog", end_of_turn(tok))
    # the prompt is exactly what generation continues from ...
    assert enc.prompt_ids == encode_prompt(tok, prompt)
    # ... and the answer is the text through the end-of-turn token, nothing after it
    assert tok.decode(enc.answer_ids) == "jumps over the lazy dog<|im_end|>"
    full = encode_chat(
        tok,
        [*prompt, {"role": "assistant", "content": "jumps over the lazy dog"}],
        max_length=999,
        eot=end_of_turn(tok),
    )
    assert enc.prompt_ids + enc.answer_ids == full.input_ids[: len(enc.prompt_ids + enc.answer_ids)]
    assert [i for i, label in enumerate(full.labels) if label != -100] == list(
        range(len(enc.prompt_ids), len(enc.prompt_ids) + len(enc.answer_ids))
    )


def test_answers_are_cut_to_fit_or_the_example_dropped():
    prompt = [1, 2, 3]
    assert fit(prompt, [[4, 5], [6]], 5, "truncate") == ([[4, 5], [6]], "ok")
    assert fit(prompt, [[4, 5, 6], [7]], 5, "truncate") == ([[4, 5], [7]], "truncated")
    assert fit(prompt, [[4, 5, 6], [7]], 5, "drop") == ([], "dropped")
    assert fit(prompt, [[4]], 3, "truncate") == ([], "dropped")  # no room for one answer token


# ------------------------------------------------------------------ the arithmetic


def test_preference_accuracy_compares_length_normalised_log_probabilities():
    # chosen -6 over 3 tokens (-2/token) beats rejected -3 over 1 token (-3/token): the sums
    # alone would say the opposite
    chosen = [AnswerScore(-6.0, 3), AnswerScore(-4.0, 2), AnswerScore(-1.0, 1)]
    rejected = [AnswerScore(-3.0, 1), AnswerScore(-2.0, 2), AnswerScore(-5.0, 5)]
    m = pairwise_metrics(chosen, rejected)
    assert m["preference_accuracy"] == pytest.approx(1 / 3)
    assert m["logp_margin"] == pytest.approx(((-2 + 3) + (-2 + 1) + (-1 + 1)) / 3)
    assert m["n_pairs"] == 3
    assert pairwise_metrics([], [])["preference_accuracy"] is None


def test_unpaired_accuracy_is_the_share_of_up_down_pairs_ranked_right():
    scores = [
        AnswerScore(-1.0, 1),
        AnswerScore(-3.0, 1),
        AnswerScore(-2.0, 1),
        AnswerScore(-4.0, 2),
    ]
    desirable = [True, True, False, False]  # up: -1, -3; down: -2, -2 per token
    m = unpaired_metrics(scores, desirable)
    # pairs (up, down): (-1,-2) right, (-1,-2) right, (-3,-2) wrong, (-3,-2) wrong
    assert m["preference_accuracy"] == pytest.approx(0.5)
    assert (m["n_desirable"], m["n_undesirable"]) == (2, 2)
    assert unpaired_metrics(scores[:2], [True, True])["preference_accuracy"] is None


def test_rewards_against_the_reference_and_the_kl_estimate():
    policy = (
        [AnswerScore(-2.0, 2), AnswerScore(-1.0, 1)],
        [AnswerScore(-5.0, 2), AnswerScore(-1.0, 1)],
    )
    reference = (
        [AnswerScore(-3.0, 2), AnswerScore(-1.0, 1)],
        [AnswerScore(-4.0, 2), AnswerScore(-0.5, 1)],
    )
    m = reward_metrics(policy, reference, beta=0.5)
    # chosen rewards 0.5*(1), 0.5*(0); rejected 0.5*(-1), 0.5*(-0.5); margins 1.0, 0.25
    assert m["reward_accuracy"] == 1.0
    assert m["reward_margin"] == pytest.approx((1.0 + 0.25) / 2)
    assert m["reward_chosen"] == pytest.approx(0.25)
    kl = kl_estimate(
        [AnswerScore(-2.0, 4), AnswerScore(-1.0, 2)], [AnswerScore(-3.0, 4), AnswerScore(-1.5, 2)]
    )
    assert kl["kl"] == pytest.approx(0.75) and kl["kl_per_token"] == pytest.approx(1.5 / 6)


def test_answer_logprobs_equal_a_direct_computation(tiny_model, tiny_tokenizer):
    """Batched, padded, logits trimmed to the answers: the same numbers as one row at a time."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = tiny_tokenizer
    eot = end_of_turn(tok)
    sequences = []
    for prompt, answer in [
        ("the quick", "brown fox"),
        ("a dull, boring mess; I want my", "money"),
        ("hi", "The film was wonderful, moving and beautifully acted."),
    ]:
        enc = encode_answer(tok, [{"role": "user", "content": prompt}], answer, eot)
        sequences.append((enc.prompt_ids, enc.answer_ids))
    got = answer_logprobs(model, sequences, batch_size=2, pad_token_id=tok.pad_token_id)
    for (prompt, answer), score in zip(sequences, got, strict=True):
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        expected = sum(float(logp[len(prompt) + k - 1, token]) for k, token in enumerate(answer))
        assert score.tokens == len(answer)
        assert math.isclose(score.logp, expected, rel_tol=1e-4, abs_tol=1e-4)


def test_a_fresh_adapters_reference_copy_is_dropped_a_trained_ones_kept(tiny_model):
    """TRL's frozen "ref" copy of a zero (fresh) adapter is the adapter-off model: dropped; a
    continued adapter's copy is the model being continued: kept."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.tasks.preference import drop_identical_reference

    def with_reference(trained: bool):
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(tiny_model),
            LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"),
        )
        if trained:
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.data.fill_(0.01)
        model.add_adapter("ref", model.peft_config["default"])
        return model

    fresh = with_reference(trained=False)
    drop_identical_reference(fresh)
    assert list(fresh.peft_config) == ["default"]
    continued = with_reference(trained=True)
    drop_identical_reference(continued)
    assert sorted(continued.peft_config) == ["default", "ref"]


def test_data_check_on_feedback_holds_out_whole_prompts(tmp_path, tiny_model, tiny_tokenizer):
    """Several answers to one prompt are neither duplicates nor, with a validation_split, leakage;
    a held-out prompt that is also in train is; thumbs up/down balance is counted."""
    import json as _json

    from tuneforge.config import load_recipe
    from tuneforge.data.recipe_check import check_recipe_data
    from tuneforge.tasks import get_task

    rows = []
    for i in range(20):
        rows.append({"prompt": f"question {i}", "completion": f"good {i}", "label": True})
        rows.append({"prompt": f"question {i}", "completion": f"bad {i}", "label": False})
    rows += [{"prompt": f"extra {i}", "completion": f"bad x{i}", "label": False} for i in range(50)]
    train = tmp_path / "fb.jsonl"
    train.write_text("".join(_json.dumps(r) + "\n" for r in rows))
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(
        f"name: fb\nbase_model: {tiny_model}\ntask: preference\n"
        f"data: {{train: {train}, validation_split: 0.25}}\npreference: {{algorithm: kto}}\n"
    )
    recipe = load_recipe(recipe_path)
    task = get_task("preference")
    splits = task.read(recipe, tmp_path)
    prompts = {r["prompt"] for r in splits.train}
    assert not prompts & {r["prompt"] for r in splits.validation}  # whole prompts held out
    report = check_recipe_data(recipe, tiny_tokenizer, task, tmp_path)
    checks = {(f.check, f.split) for f in report.findings}
    assert not {c for c in checks if c[0] in ("duplicates", "leakage")}, report.findings
    assert ("imbalance", "train") in checks  # 20 up against 70 down (ratio > 3)

    validation = tmp_path / "val.jsonl"
    validation.write_text(_json.dumps(rows[0] | {"completion": "other"}) + "\n")
    recipe = load_recipe(
        recipe_path, [f"data.validation={validation}", "data.validation_split=null"]
    )
    report = check_recipe_data(recipe, tiny_tokenizer, task, tmp_path)
    leak = [f for f in report.findings if f.check == "leakage"]
    assert leak and leak[0].severity == "error"
