"""SFT rendering and masking: the loss sees exactly the assistant answers and their end-of-turn."""

import json

import pytest

from tuneforge.data.chat import (
    ChatFields,
    conversation,
    encode_chat,
    encode_prompt,
    end_of_turn,
    render,
    stop_token_ids,
    trained_segments,
)
from tuneforge.errors import TuneforgeError
from tuneforge.testing import build_tiny_tokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waiting, up to 40x faster on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


CHAT = [
    {"role": "system", "content": "Triage alerts."},
    {"role": "user", "content": "failed login from 203.0.113.7"},
    {"role": "assistant", "content": "Category: phishing"},
    {"role": "user", "content": "and the malware?"},
    {"role": "assistant", "content": "Category: malware\nReason: the dog"},
]


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_label_mask_token_by_token_on_a_multi_turn_chat(tiny_tokenizer):
    tok = tiny_tokenizer
    # The ChatML rendering, cut where the loss starts and stops; each piece tokenised alone.
    pieces = [
        (
            "<|im_start|>system\nTriage alerts.<|im_end|>\n"
            "<|im_start|>user\nfailed login from 203.0.113.7"
            "<|im_end|>\n<|im_start|>assistant\n",
            False,
        ),
        ("Category: phishing<|im_end|>", True),
        ("\n<|im_start|>user\nand the malware?<|im_end|>\n<|im_start|>assistant\n", False),
        ("Category: malware\nReason: the dog<|im_end|>", True),
        ("\n", False),
    ]
    assert render(tok, CHAT) == "".join(p for p, _ in pieces)
    expected_ids, expected_labels = [], []
    for text, trained in pieces:
        ids = _ids(tok, text)
        expected_ids += ids
        expected_labels += ids if trained else [-100] * len(ids)

    enc = encode_chat(tok, CHAT, max_length=512, eot=end_of_turn(tok))
    assert enc.status == "ok"
    assert enc.input_ids == expected_ids
    assert enc.labels == expected_labels


def test_each_assistant_turn_ends_with_the_end_of_turn_token(tiny_tokenizer):
    tok = tiny_tokenizer
    eot = end_of_turn(tok)
    assert eot == "<|im_end|>" == tok.eos_token
    enc = encode_chat(tok, CHAT, max_length=512, eot=eot)
    runs, current = [], []
    for i, label in enumerate(enc.labels):
        if label != -100:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    assert len(runs) == 2  # one run per assistant turn
    for run in runs:
        assert enc.input_ids[run[-1]] == tok.eos_token_id
        assert enc.labels[run[-1] + 1] == -100
    segments = [text for text, trained in trained_segments(tok, enc) if trained]
    assert segments == [
        "Category: phishing<|im_end|>",
        "Category: malware\nReason: the dog<|im_end|>",
    ]


def test_generation_prompt_is_the_training_prefix(tiny_tokenizer):
    """What generation continues is exactly the context before the first trained token."""
    tok = tiny_tokenizer
    enc = encode_chat(tok, CHAT[:3], max_length=512, eot=end_of_turn(tok))
    first = next(i for i, label in enumerate(enc.labels) if label != -100)
    assert encode_prompt(tok, CHAT[:2]) == enc.input_ids[:first]
    assert stop_token_ids(tok, end_of_turn(tok)) == [tok.eos_token_id]


def test_train_on_all_labels_every_token(tiny_tokenizer):
    enc = encode_chat(tiny_tokenizer, CHAT, max_length=512, train_on="all", eot="<|im_end|>")
    assert enc.labels == enc.input_ids


def test_overlong_chats_are_truncated_or_dropped(tiny_tokenizer):
    tok = tiny_tokenizer
    full = encode_chat(tok, CHAT, max_length=512, eot="<|im_end|>")
    n = len(full.input_ids)
    cut = encode_chat(tok, CHAT, max_length=n - 3, eot="<|im_end|>")
    assert cut.status == "truncated" and cut.n_tokens == n
    assert cut.input_ids == full.input_ids[: n - 3] and cut.labels == full.labels[: n - 3]
    assert (
        encode_chat(tok, CHAT, max_length=n - 3, overlong="drop", eot="<|im_end|>").status
        == "dropped"
    )
    # Cut before the first answer: nothing left to learn, so dropped even when truncating.
    first = next(i for i, label in enumerate(full.labels) if label != -100)
    assert encode_chat(tok, CHAT, max_length=first, eot="<|im_end|>").status == "dropped"


def test_model_without_chat_template_gets_a_fallback_that_teaches_eos():
    tok = build_tiny_tokenizer(chat_template=False)
    eot = end_of_turn(tok)
    assert eot == tok.eos_token
    enc = encode_chat(tok, CHAT[:3], max_length=512, eot=eot)
    trained = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != -100]
    assert tok.decode(trained) == "Category: phishing" + tok.eos_token


def test_template_without_end_of_turn_token_gets_eos_appended():
    tok = build_tiny_tokenizer(chat_template=False)
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    assert end_of_turn(tok) is None
    enc = encode_chat(tok, CHAT[1:3], max_length=512, eot=None)
    trained = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != -100]
    assert tok.decode(trained) == "Category: phishing" + tok.eos_token


# ------------------------------------------------------------------ rows to chats

FIELDS = ChatFields(format="messages")


def test_prompt_completion_and_alpaca_rows_become_chats():
    pc = ChatFields(format="prompt_completion", system_prompt="Be brief.")
    assert conversation({"prompt": "Q", "completion": "A"}, pc, "x") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]
    alpaca = ChatFields(format="alpaca")
    row = {"instruction": "Summarise.", "input": "Long text.", "output": "Short."}
    assert conversation(row, alpaca, "x") == [
        {"role": "user", "content": "Summarise.\n\nLong text."},
        {"role": "assistant", "content": "Short."},
    ]
    assert conversation({**row, "input": ""}, alpaca, "x")[0]["content"] == "Summarise."


def test_messages_as_json_text_from_a_csv_cell():
    cell = json.dumps(CHAT[1:3])
    assert conversation({"messages": cell}, FIELDS, "x") == CHAT[1:3]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([{"role": "bot", "content": "hi"}], "message 1: unknown role 'bot'"),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}],
            "message 2 (assistant): empty content",
        ),
        ([{"role": "user", "content": "hi"}], "no assistant message"),
        ("just a string", "must be a list of"),
        ([], "must be a list of"),
        (["hi", "there"], 'message 1: expected {"role": ..., "content": ...}'),
        ([{"role": "user"}], "message 1: expected"),
    ],
)
def test_bad_chats_name_the_place_and_the_problem(value, message):
    with pytest.raises(TuneforgeError) as e:
        conversation({"messages": value}, FIELDS, "data.train: f.jsonl line 7")
    text = str(e.value)
    assert text.startswith("data.train: f.jsonl line 7: field 'messages'")
    assert message in text


def test_missing_and_empty_prompt_fields():
    pc = ChatFields(format="prompt_completion")
    with pytest.raises(TuneforgeError, match="line 3: missing field 'completion'"):
        conversation({"prompt": "Q"}, pc, "line 3")
    with pytest.raises(TuneforgeError, match="line 3: field 'prompt' is empty"):
        conversation({"prompt": " ", "completion": "A"}, pc, "line 3")
    with pytest.raises(TuneforgeError, match="field 'prompt' is not text"):
        conversation({"prompt": 5, "completion": "A"}, pc, "line 3")


@pytest.mark.slow
def test_real_embedded_model_template_masks_answers_and_im_end():
    from tuneforge.models import load_tokenizer, resolve_base_model

    tok = load_tokenizer(resolve_base_model("smollm2-135m").path)
    eot = end_of_turn(tok)
    assert eot == "<|im_end|>"
    text = render(tok, CHAT)
    assert text.startswith("<|im_start|>system\nTriage alerts.<|im_end|>\n<|im_start|>user\n")
    enc = encode_chat(tok, CHAT, max_length=512, eot=eot)
    segments = [t for t, trained in trained_segments(tok, enc) if trained]
    assert segments == [
        "Category: phishing<|im_end|>",
        "Category: malware\nReason: the dog<|im_end|>",
    ]
    # Without a system message SmolLM2's template inserts its default one, consistently.
    enc2 = encode_chat(tok, CHAT[1:3], max_length=512, eot=eot)
    assert [t for t, trained in trained_segments(tok, enc2) if trained] == [
        "Category: phishing<|im_end|>"
    ]
    first = next(i for i, lab in enumerate(enc2.labels) if lab != -100)
    assert encode_prompt(tok, CHAT[1:2]) == enc2.input_ids[:first]


def test_a_template_that_refuses_a_chat_names_the_row(tmp_path, tiny_model):
    from tuneforge.config import validate_recipe
    from tuneforge.tasks.sft import SftTask

    tok = build_tiny_tokenizer()
    tok.chat_template = (  # Mistral v0.1's rule: user and assistant turns alternate
        "{% for m in messages %}{% if loop.index0 > 0 and messages[loop.index0 - 1]['role'] "
        "== m['role'] %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    data = tmp_path / "chats.jsonl"
    twice = [CHAT[1], CHAT[3], CHAT[2]]  # two user turns in a row
    data.write_text(
        json.dumps({"messages": CHAT[1:3]}) + "\n" + json.dumps({"messages": twice}) + "\n"
    )
    recipe = validate_recipe(
        {
            "name": "r",
            "task": "sft",
            "base_model": str(tiny_model),
            "data": {"train": str(data), "validation": str(data)},
        }
    )
    with pytest.raises(TuneforgeError) as e:
        SftTask().prepare(recipe, tok)
    assert f"data.train: {data} line 2: the model's chat template refused this chat" in str(e.value)
    assert "Conversation roles must alternate" in str(e.value)
