"""Continued fine-tuning: replay arithmetic and sampling, forgetting arithmetic, recipe checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.config import validate_recipe
from tuneforge.data.loading import Splits
from tuneforge.data.replay import draw, records, replay_count, sample_rows
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.forgetting import describe, forgetting_summary


@pytest.mark.parametrize(
    ("fraction", "n_new", "available", "expected"),
    [
        (0.5, 20, 24, 10),
        (0.2, 24, 100, 5),  # 4.8 -> 5
        (0.25, 10, 100, 3),  # 2.5: half rounds up
        (0.01, 10, 100, 1),  # replay on: at least one row
        (1.0, 50, 24, 24),  # never more than the parent has
        (0.0, 10, 10, 0),
        (0.5, 10, 0, 0),
    ],
)
def test_replay_count(fraction, n_new, available, expected):
    assert replay_count(fraction, n_new, available) == expected


def test_sample_rows_is_seeded_and_keeps_file_order():
    rows = [{"i": i} for i in range(50)]
    a, b = sample_rows(rows, 10, seed=3), sample_rows(rows, 10, seed=3)
    assert a == b and len(a) == 10
    picked = [r["i"] for r in a]
    assert picked == sorted(set(picked))
    assert sample_rows(rows, 10, seed=4) != a


def _recipe(**extra):
    return validate_recipe(
        {
            "name": "b",
            "base_model": "model:sentiment@production",
            "task": "classification",
            "data": {"train": "t.csv", "validation": "v.csv", "text_field": "review"},
            **extra,
        }
    )


def test_draw_maps_parent_columns_and_leaves_out_leaking_rows():
    recipe = _recipe(replay=0.5)
    new = Splits(
        train=[{"review": f"new {i}", "label": "pos", "_line": i + 2} for i in range(8)],
        validation=[{"review": "Old  Two", "label": "neg"}],
        test=[{"review": "old three", "label": "pos"}],
    )
    new_info = {"text_field": "review", "label_field": "label"}
    parent_rows = [
        {"text": f"old {w}", "y": "pos"} for w in ("one", "two", "three", "four", "five")
    ]
    parent_info = {"text_field": "text", "label_field": "y"}
    replay = draw("classification", recipe, new, new_info, parent_rows, parent_info)
    # "old two" and "old three" equal a new validation/test text (case and spaces aside)
    assert replay.left_out == 2 and replay.available == 5 and replay.new_rows == 8
    assert len(replay.rows) == 3  # 0.5 x 8 = 4, but only 3 rows may be drawn
    assert {r["review"] for r in replay.rows} == {"old one", "old four", "old five"}
    assert all(r == {"review": r["review"], "label": "pos"} for r in replay.rows)
    summary = replay.summary("a-1", "a_train.csv")
    assert summary["rows"] == 3 and summary["left_out_as_leakage"] == 2


def test_records_turn_sft_rows_into_chats():
    from tuneforge.data.chat import ChatFields

    recipe = validate_recipe(
        {
            "name": "s",
            "base_model": "run:x",
            "task": "sft",
            "data": {"train": "t.jsonl", "validation_split": 0.2},
            "replay": 0.1,
        }
    )
    fields = ChatFields(
        format="prompt_completion",
        system_prompt=None,
        messages="messages",
        prompt="q",
        completion="a",
        instruction="instruction",
        input="input",
        output="output",
    )
    out = records("sft", [{"q": "2+2?", "a": "4", "_line": 1}], {"chat": fields.to_info()}, recipe)
    assert out == [
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    ]


@pytest.mark.parametrize(
    ("metric", "before", "after", "change", "worse"),
    [
        ("macro_f1", 0.9, 0.8, -0.1, True),
        ("macro_f1", 0.8, 0.85, 0.05, False),
        ("loss", 0.5, 0.6, 0.1, True),
        ("loss", 0.5, 0.4, -0.1, False),
        ("perplexity", 10.0, 10.0, 0.0, False),
    ],
)
def test_forgetting_summary(metric, before, after, change, worse):
    f = forgetting_summary(
        parent_run="a-1",
        parent_model="sentiment@1",
        data="a_val.csv",
        metric=metric,
        before={metric: before, "n": 8, "per_class": {}},
        after={metric: after, "n": 8},
    )
    assert f["change"] == pytest.approx(change)
    assert f["relative_change"] == pytest.approx(change / before)
    assert f["worse"] is worse and f["n"] == 8
    assert f["before_metrics"] == {metric: before, "n": 8}  # scalars only
    assert ("not worse" in describe(f)) is (not worse)


def test_forgetting_relative_change_from_zero():
    f = forgetting_summary(
        parent_run="a",
        parent_model=None,
        data="",
        metric="accuracy",
        before={"accuracy": 0.0},
        after={"accuracy": 0.5},
    )
    assert f["relative_change"] is None and f["change"] == 0.5 and not f["worse"]


def test_replay_needs_a_parent_and_a_fraction():
    with pytest.raises(TuneforgeError, match=r"replay: .*'smollm2-135m' is not an earlier run"):
        validate_recipe(
            {"name": "x", "task": "classification", "data": {"train": "t.csv"}, "replay": 0.2}
        )
    with pytest.raises(TuneforgeError, match="replay: Input should be less than or equal to 1"):
        _recipe(replay=1.5)
    assert _recipe(replay=0.2).replay == 0.2 and _recipe().replay == 0.0


def test_label_sets_must_match():
    from tuneforge.runs.parents import Parent
    from tuneforge.training.continuation import check_labels

    parent = Parent(
        spec="model:s@production",
        run_id="a-1",
        path=Path("/runs/a-1"),
        model="s@1",
        task="classification",
        method="lora",
        info={"labels": ["negative", "positive"]},
        recipe=_recipe(),
    )
    check_labels(parent, {"labels": ["negative", "positive"]}, "b.csv")
    with pytest.raises(TuneforgeError) as e:
        check_labels(parent, {"labels": ["negative"]}, "b.csv")
    assert "trained on labels ['negative', 'positive']" in e.value.message
    assert "b.csv has labels ['negative'] (missing ['positive'])" in e.value.message


def test_chain_text():
    from tuneforge.runs.parents import chain_text
    from tuneforge.runs.registry import RunRecord

    chain = [
        RunRecord("c-3", "/r/c-3", "finished", {"base_model": "run:/r/b-2"}),
        RunRecord("b-2", "/r/b-2", "finished", {"base_model": "model:s@production"}),
        RunRecord("a-1", "/r/a-1", "finished", {"base_model": "smollm2-135m"}),
    ]
    assert chain_text(chain) == (
        "c-3 [run:/r/b-2] -> b-2 [model:s@production] -> a-1 -> base model smollm2-135m"
    )
