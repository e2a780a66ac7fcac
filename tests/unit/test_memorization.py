"""The memorisation audit's arithmetic on hand-made numbers, how examples and canaries are cut
into prompt and continuation tokens, and how canaries are planted (and kept out of held-out data)."""

from __future__ import annotations

import math
import random
import re

import pytest

from tuneforge.config import validate_recipe
from tuneforge.data.canaries import MARK, Canary, make_canaries, plant, random_secret
from tuneforge.data.chat import ChatFields, render
from tuneforge.data.loading import Splits
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.memorization import (
    ChatView,
    Options,
    TextView,
    _secret_sample,
    exposure,
    membership_auc,
    side_summary,
    similarity,
    verbatim,
    warnings,
)
from tuneforge.tasks import get_task
from tuneforge.tasks.base import Prepared


def test_verbatim_is_an_exact_match_of_the_continuation_tokens():
    assert verbatim([1, 2, 3, 9], [1, 2, 3])  # tokens past the continuation do not count
    assert not verbatim([1, 2, 4], [1, 2, 3])
    assert not verbatim([1, 2], [1, 2, 3])  # stopped early


def test_near_verbatim_similarity_is_difflibs_ratio():
    assert similarity([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    # 2 * matches / total: one substitution in ten tokens -> 2 * 9 / 20
    assert similarity(list(range(10)), [*range(9), 99]) == pytest.approx(0.9)
    assert similarity([], [1]) == 0.0


def test_membership_auc_on_hand_made_losses():
    assert membership_auc([0.1, 0.2], [1.0, 2.0]) == 1.0  # train always lower: perfect signal
    assert membership_auc([1.0, 2.0], [0.1, 0.2]) == 0.0
    # pairs (train, held-out) with the train loss lower: (1,1.5), (1,3), (2,3) of 4 -> 0.75
    assert membership_auc([1.0, 2.0], [1.5, 3.0]) == pytest.approx(0.75)
    assert membership_auc([1.0, 1.0], [1.0, 1.0]) == 0.5  # ties: no signal
    assert membership_auc([1.0], []) is None


def test_exposure_is_log2_candidates_minus_log2_rank():
    rank, bits = exposure(-1.0, [-2.0, -3.0, -0.5])  # one candidate more likely: rank 2 of 4
    assert rank == 2 and bits == pytest.approx(math.log2(4) - 1)
    rank, bits = exposure(-0.1, [-5.0] * 1023)  # the most likely of 1024: all 10 bits
    assert rank == 1 and bits == pytest.approx(10.0)
    rank, bits = exposure(-9.0, [-1.0] * 7)  # the least likely of 8: nothing
    assert rank == 8 and bits == 0.0
    assert exposure(-1.0, [-1.0, -2.0])[0] == 1  # a tie counts for the secret


def _side(verbatim_rate: float, n: int = 20) -> dict:
    hits = round(verbatim_rate * n)
    rows = [
        {"verbatim": i < hits, "near_verbatim": i < hits, "similarity": 1.0, "loss": 1.0}
        for i in range(n)
    ]
    return side_summary(rows)


def test_the_warning_rule():
    assert side_summary([])["verbatim"] is None
    s = _side(0.5)
    assert s["n"] == 20 and s["verbatim"] == 0.5 and s["loss"] == 1.0
    found = warnings({"train": _side(0.5), "held_out": _side(0.1), "auc": 0.5, "canaries": []})
    assert len(found) == 1 and "50% vs 10%" in found[0]
    # twice as often, but fewer than 5 points more: no warning
    assert not warnings({"train": _side(0.08, 25), "held_out": _side(0.04, 25), "auc": 0.5})
    # far more points, but not twice: no warning
    assert not warnings({"train": _side(0.6), "held_out": _side(0.4), "auc": 0.5})
    assert "AUC 0.75" in warnings({"train": _side(0), "held_out": _side(0), "auc": 0.75})[0]
    small = {"train": _side(0, n=5), "held_out": _side(0, n=5), "auc": 0.9}
    assert not warnings(small)  # too few examples for the AUC to mean much
    leaked = [{"reproduced": True}, {"reproduced": False}]
    assert "1 of 2 canaries" in warnings({**small, "canaries": leaked})[0]


def test_options_refuse_bad_values_before_any_loading():
    for bad in ({"samples": 0}, {"suffix_tokens": 0}, {"candidates": 0}, {"prefix_tokens": -1}):
        with pytest.raises(TuneforgeError, match="memorization audit"):
            Options(**bad)


def test_canaries_have_the_fixed_format_and_are_seeded():
    first, again = make_canaries(3, 7), make_canaries(3, 7)
    assert first == again and first != make_canaries(3, 8)
    assert len({c.account for c in first}) == 3
    for c in first:
        assert re.fullmatch(r"The access code for account \d{4} is \d{4}-\d{4}-\d{4}\.", c.text)
        assert c.text.startswith(c.prefix) and c.secret in c.text
    assert re.fullmatch(r"\d{4}-\d{4}-\d{4}", random_secret(random.Random(0)))


def _recipe(task: str, fmt_rows: list[dict], **memorization):
    return validate_recipe(
        {
            "name": "t",
            "task": task,
            "data": {"train": "train.jsonl", "validation": "validation.jsonl"},
            "memorization": memorization,
        }
    )


def test_canaries_go_into_training_rows_only_in_the_datas_own_format():
    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "_line": i + 1} for i in range(5)]
    held = [{"prompt": "vq", "completion": "va", "_line": 1}]
    splits = Splits(rows, held, None, {"train": "train.jsonl", "validation": "v.jsonl"})
    recipe = _recipe("sft", rows, canaries=2, repeats=3, seed=1)
    planted = plant(get_task("sft"), recipe, splits)
    train = planted.splits.train
    assert len(train) == 5 + 2 * 3 and planted.splits.validation == held
    assert MARK not in train[0]  # the first row, whose columns name the format, is the user's
    canary_rows = [r for r in train if MARK in r]
    assert {r["completion"] for r in canary_rows} == {c.text for c in planted.canaries}
    assert all(set(r) == {"prompt", "completion", "_line", MARK} for r in canary_rows)
    assert plant(get_task("sft"), _recipe("sft", rows), splits) is None  # canaries: 0


def test_hiding_the_canaries_leaves_the_users_rows_for_the_data_check():
    rows = [{"text": f"document {i}", "_line": i + 1} for i in range(4)]
    splits = Splits(rows, [{"text": "held", "_line": 1}], None, {"train": "d.jsonl"})
    planted = plant(get_task("pretrain"), _recipe("pretrain", rows, canaries=1, repeats=2), splits)
    lengths = {"train": [10 + i for i in range(6)], "validation": [3]}
    own = [i for i, r in enumerate(planted.splits.train) if MARK not in r]
    prepared = Prepared(planted.splits, None, None, {}, lengths)
    planted.hide(prepared)
    assert prepared.splits.train == rows
    assert prepared.lengths["train"] == [10 + i for i in own]
    assert prepared.info["canaries"] == {
        "count": 1,
        "repeats": 2,
        "rows": 2,
        "file": "canaries.json",
    }
    assert planted.record()["canaries"][0]["secret"] == planted.canaries[0].secret


def test_tasks_that_cannot_hold_canaries_or_be_audited_refuse():
    splits = Splits([{"text": "a", "label": "x"}], [], None, {})
    with pytest.raises(TuneforgeError, match="not classification data"):
        plant(get_task("classification"), _recipe("classification", [], canaries=1), splits)
    with pytest.raises(TuneforgeError, match="for sft and pretrain runs; this is a classification"):
        get_task("classification").memorization_view(None, {}, None)
    with pytest.raises(TuneforgeError, match="this is a preference run"):
        get_task("preference").memorization_view(None, {}, None)


def test_an_sft_example_is_cut_after_the_chat_and_p_answer_tokens(tiny_tokenizer):
    fields = ChatFields(format="prompt_completion", system_prompt="Be brief.")
    view = ChatView(tiny_tokenizer, fields, [tiny_tokenizer.eos_token_id])
    row = {"prompt": "the quick brown fox", "completion": "The lazy dog 0123456789.", "_line": 3}
    whole = view.sample(row, "train.jsonl", 0, 100)
    assert whole.where == "train.jsonl line 3"
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "the quick brown fox"},
    ]
    assert tiny_tokenizer.decode(whole.prompt_ids) == render(
        tiny_tokenizer, chat, add_generation_prompt=True
    )
    assert tiny_tokenizer.decode(whole.target_ids) == "The lazy dog 0123456789."
    cut = view.sample(row, "train.jsonl", 2, 3)
    assert cut.prompt_ids == whole.prompt_ids + whole.target_ids[:2]
    assert cut.target_ids == whole.target_ids[2:5]
    assert view.sample(row, "train.jsonl", len(whole.target_ids), 3) is None  # nothing left


def test_a_document_is_cut_after_p_tokens(tiny_tokenizer):
    view = TextView(tiny_tokenizer)
    text = "The quick brown fox jumps over the lazy dog 0123456789."
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    s = view.sample({"text": text, "_line": 2, "_source": "docs/a.txt"}, "docs", 4, 5)
    assert (s.prompt_ids, s.target_ids, s.where) == (ids[:4], ids[4:9], "docs/a.txt line 2")
    assert view.sample({"text": "fox", "_line": 1}, "d.jsonl", 32, 5) is None


def test_a_canary_secret_is_scored_after_its_prompt(tiny_tokenizer):
    canary = Canary("4821", "7391-0284-5517")
    view = ChatView(tiny_tokenizer, ChatFields(format="messages"), [0])
    prompt = view.canary_prompt(canary)
    assert prompt.endswith("<|im_start|>assistant\nThe access code for account 4821 is")
    sample = _secret_sample(tiny_tokenizer, prompt, canary.secret)
    assert tiny_tokenizer.decode(sample.prompt_ids) == prompt
    assert tiny_tokenizer.decode(sample.target_ids) == " 7391-0284-5517"
    assert TextView(tiny_tokenizer).canary_prompt(canary) == canary.prefix
