"""The feedback log (appends under concurrency and after a kill, validation) and its export to
preference data (exact rows on a hand-made log, in the format the preference task reads)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tuneforge.data.preference import (
    PAIRWISE,
    UNPAIRED,
    Feedback,
    Pair,
    PreferenceFields,
    parse_row,
)
from tuneforge.deploy.feedback import (
    CompletionNotFound,
    FeedbackError,
    FeedbackLog,
    FeedbackTooLong,
    ModelRef,
    default_log_path,
    read_log,
)
from tuneforge.deploy.feedback_export import export_feedback, feedback_stats, write_rows
from tuneforge.deploy.limits import FeedbackLimits
from tuneforge.errors import TuneforgeError

MODEL = ModelRef("assistant-20270101-000000", "assistant@3")
USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def log(tmp_path) -> FeedbackLog:
    return FeedbackLog(default_log_path(tmp_path / "run"), MODEL)


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


# --------------------------------------------------------------------------------------------------
# Appends


def test_records_have_the_documented_shape(log):
    completion = log.record_completion("chatcmpl-1", USER, "Paris.")
    assert log.path == log.path.parent.parent / "feedback" / "feedback.jsonl"
    feedback = log.record_feedback({"completion_id": "chatcmpl-1", "rating": "up", "comment": "ok"})
    on_disk = [json.loads(line) for line in lines(log.path)[:-1]]
    assert on_disk == [completion, feedback]
    assert completion["type"] == "completion" and completion["id"] == "chatcmpl-1"
    assert completion["model"] == {"run": MODEL.run, "version": "assistant@3"}
    assert completion["prompt"] == USER and completion["completion"] == "Paris."
    assert completion["time"].endswith("+00:00")
    assert {k: feedback[k] for k in ("type", "completion_id", "rating", "comment")} == {
        "type": "feedback",
        "completion_id": "chatcmpl-1",
        "rating": "up",
        "comment": "ok",
    }
    assert feedback["id"].startswith("fb-") and feedback["model"] == completion["model"]
    assert "preferred" not in feedback


WRITER = """
import sys, time
from pathlib import Path
from tuneforge.deploy.feedback import FeedbackLog, ModelRef
log = FeedbackLog(Path(sys.argv[1]), ModelRef("r"))
who, n, go = sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
(go.parent / who).touch()  # ready
while not go.exists():
    time.sleep(0.001)
for i in range(n):
    log.record_completion(f"{who}-{i}", [{"role": "user", "content": who}], who[-1] * size(i))
""".replace("size(i)", "(1 + i * 7919 % 60000)")


def size(i: int) -> int:
    return 1 + i * 7919 % 60000


def test_concurrent_appends_from_threads_and_processes_never_interleave(tmp_path):
    """Lines up to 60 kB (far past a pipe's atomic write size) from 8 threads and 2 processes:
    every line whole, every record there once."""
    path, go = tmp_path / "feedback.jsonl", tmp_path / "go"
    per_writer = 20
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"proc{p}", str(per_writer), str(go)]
        )
        for p in range(2)
    ]
    log = FeedbackLog(path, ModelRef("r"))
    start = threading.Barrier(9)

    def write(who: str) -> None:
        start.wait()
        for i in range(per_writer):
            log.record_completion(
                f"{who}-{i}", [{"role": "user", "content": who}], who[-1] * size(i)
            )

    threads = [threading.Thread(target=write, args=(f"thread{t}",)) for t in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"proc{p}").exists() for p in range(2)):  # started and polling
        assert time.monotonic() < deadline
        time.sleep(0.01)
    go.touch()
    start.wait()
    for t in threads:
        t.join()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]

    raw = lines(path)
    assert raw[-1] == b""  # ends with a newline
    records = [json.loads(line) for line in raw[:-1]]  # every line parses
    writers = [f"thread{t}" for t in range(8)] + ["proc0", "proc1"]
    assert sorted(r["id"] for r in records) == sorted(
        f"{w}-{i}" for w in writers for i in range(per_writer)
    )
    for r in records:
        who = r["prompt"][0]["content"]
        assert r["id"].startswith(who) and set(r["completion"]) == {who[-1]}
    contents = read_log(path)
    assert (len(contents.records), contents.skipped_lines) == (10 * per_writer, 0)
    # this process's index sees the other processes' completions too
    assert log.find_completion("proc1-3")["completion"] == "1" * size(3)


def test_a_torn_last_line_is_skipped_and_the_next_append_starts_a_new_line(log):
    log.record_completion("chatcmpl-1", USER, "Paris.")
    whole = json.dumps(
        {"type": "completion", "id": "chatcmpl-2", "prompt": USER, "completion": "x"}
    )
    with log.path.open("ab") as f:  # a writer killed half-way through its line
        f.write(whole[: len(whole) // 2].encode())

    contents = read_log(log.path)
    assert ([r["id"] for r in contents.records], contents.skipped_lines) == (["chatcmpl-1"], 1)

    reopened = FeedbackLog(log.path, MODEL)  # a restarted server
    assert reopened.find_completion("chatcmpl-1")["completion"] == "Paris."
    assert reopened.find_completion("chatcmpl-2") is None
    reopened.record_completion("chatcmpl-3", USER, "Paris, France.")
    reopened.record_feedback({"completion_id": "chatcmpl-3", "rating": "down"})

    raw = lines(log.path)
    assert raw[1] == whole[: len(whole) // 2].encode()  # the fragment, ended by the next writer
    assert json.loads(raw[2])["id"] == "chatcmpl-3" and raw[-1] == b""
    contents = read_log(log.path)
    assert [r.get("id") for r in contents.records][:2] == ["chatcmpl-1", "chatcmpl-3"]
    assert (len(contents.records), contents.skipped_lines) == (3, 1)
    assert feedback_stats(log.path)["skipped_lines"] == 1


def test_a_completion_logged_by_another_worker_is_found(log):
    other = FeedbackLog(log.path, MODEL)
    assert log.find_completion("chatcmpl-9") is None
    other.record_completion("chatcmpl-9", USER, "Paris.")
    log.record_feedback({"completion_id": "chatcmpl-9", "rating": "up"})
    assert log.find_completion("chatcmpl-9")["completion"] == "Paris."


# --------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("body", "error", "fragment", "param"),
    [
        ({"completion_id": "chatcmpl-nope", "rating": "up"}, CompletionNotFound, "no completion with id 'chatcmpl-nope'", "completion_id"),
        ({"completion_id": "chatcmpl-1"}, FeedbackError, "needs a `rating`", "rating"),
        ({"completion_id": "chatcmpl-1", "rating": "", "preferred": None}, FeedbackError, "rating must be 'up' or 'down', got ''", "rating"),
        ({"completion_id": "chatcmpl-1", "rating": "meh"}, FeedbackError, "got 'meh'", "rating"),
        ({"completion_id": "chatcmpl-1", "rating": 1}, FeedbackError, "got 1", "rating"),
        ({"completion_id": "chatcmpl-1", "preferred": "  "}, FeedbackError, "`preferred` must be a non-empty string", "preferred"),
        ({"completion_id": "chatcmpl-1", "preferred": " Paris. "}, FeedbackError, "`preferred` is the same as the completion", "preferred"),
        ({"completion_id": "chatcmpl-1", "rating": "up", "comment": "x" * 2001}, FeedbackTooLong, "`comment` is 2,001 characters; at most 2,000", "comment"),
        ({"completion_id": "chatcmpl-1", "preferred": "y" * 32_001}, FeedbackTooLong, "at most 32,000", "preferred"),
        ({"completion_id": "c" * 129, "rating": "up"}, FeedbackTooLong, "`completion_id` is 129", "completion_id"),
        ({"completion_id": "chatcmpl-1", "rating": "up", "stars": 5}, FeedbackError, "unknown field(s) ['stars']", "stars"),
        ({"rating": "up"}, FeedbackError, "needs the `completion_id`", "completion_id"),
        ({"prompt": "hi", "rating": "up"}, FeedbackError, "needs the `completion_id`", "completion_id"),
        ({"completion_id": "chatcmpl-1", "prompt": "hi", "completion": "yo", "rating": "up"}, FeedbackError, "not both", "completion_id"),
        ({"prompt": [{"role": "robot", "content": "hi"}], "completion": "yo", "rating": "up"}, FeedbackError, "unknown role 'robot'", "prompt"),
        ({"prompt": "p" * 64_001, "completion": "yo", "rating": "up"}, FeedbackTooLong, "`prompt` is 64,001 characters", "prompt"),
        ({"prompt": [{"role": "user", "content": "a"}] * 257, "completion": "yo", "rating": "up"}, FeedbackTooLong, "257 messages", "prompt"),
        ({"prompt": "hi", "completion": "", "rating": "up"}, FeedbackError, "`completion` must be a non-empty string", "completion"),
    ],
)  # fmt: skip
def test_bad_feedback_is_refused_with_a_clear_message_and_nothing_written(
    log, body, error, fragment, param
):
    log.record_completion("chatcmpl-1", USER, "Paris.")
    before = log.path.read_bytes()
    with pytest.raises(error) as caught:
        log.record_feedback(body)
    assert type(caught.value) is error and isinstance(caught.value, TuneforgeError)
    assert fragment in caught.value.message
    assert caught.value.param == param
    assert caught.value.http_status == (404 if error is CompletionNotFound else 400)
    assert log.path.read_bytes() == before


def test_feedback_as_text_is_normalised_to_messages(log):
    record = log.record_feedback({"prompt": "hi", "completion": "go away", "rating": "down"})
    assert record["prompt"] == [{"role": "user", "content": "hi"}]
    assert "completion_id" not in record and record["completion"] == "go away"


def test_text_that_is_not_valid_unicode_is_logged_escaped(log):
    """A lone surrogate (JSON `"\\ud800"` from a client) must not fail the request."""
    log.record_completion("chatcmpl-1", USER, "Paris \ud800")
    log.record_feedback({"completion_id": "chatcmpl-1", "preferred": "Paris é"})
    raw = log.path.read_bytes()
    assert b"\\ud800" in raw and "Paris é".encode() in raw
    assert log.find_completion("chatcmpl-1")["completion"] == "Paris \ud800"
    assert read_log(log.path).skipped_lines == 0
    write_rows(log.path.parent / "kto.jsonl", export_feedback(log.path, "kto")[0])
    exported = [
        json.loads(line) for line in (log.path.parent / "kto.jsonl").read_text().splitlines()
    ]
    assert [r["completion"] for r in exported] == ["Paris \ud800", "Paris é"]


def test_limits_are_configurable(tmp_path):
    log = FeedbackLog(tmp_path / "f.jsonl", MODEL, FeedbackLimits(max_comment_chars=3))
    with pytest.raises(FeedbackTooLong):
        log.record_feedback({"prompt": "hi", "completion": "yo", "rating": "up", "comment": "long"})


# --------------------------------------------------------------------------------------------------
# Export

P1 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
P2 = [{"role": "user", "content": "2+2?"}]
P3 = [{"role": "user", "content": "Hi"}]
VERBOSE = "It is Paris, which is a city in France, which is a country."


def completion(cid: str, prompt: list, text: str) -> dict:
    return {"type": "completion", "id": cid, "time": "t", "model": {"run": "r", "version": None},
            "prompt": prompt, "completion": text}  # fmt: skip


def feedback(**fields) -> dict:
    return {
        "type": "feedback",
        "id": "fb",
        "time": "t",
        "model": {"run": "r", "version": None},
        **fields,
    }


@pytest.fixture
def hand_made_log(tmp_path) -> Path:
    records = [
        completion("c1", P1, "Paris."),
        completion("c2", P1, VERBOSE),
        completion("c3", P1, "Lyon."),
        completion("c4", P2, "5"),
        completion("c5", P1, "Paris!"),  # never rated: not exported
        feedback(completion_id="c1", rating="up"),
        feedback(completion_id="c2", rating="down", comment="too long"),
        feedback(completion_id="c3", rating="up"),
        feedback(completion_id="c4", preferred="4"),
        feedback(prompt=P3, completion="Go away.", rating="down"),
        feedback(completion_id="chatcmpl-unknown", rating="up"),
        feedback(completion_id="c3", rating="down"),  # later feedback overrides the earlier up
        completion("c6", [*P2, {"role": "assistant", "content": "4"}], "Sure?"),
        feedback(completion_id="c6", rating="up"),  # a chat ending in an answer: not trainable
    ]
    path = tmp_path / "feedback.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"type": "feedback", "compl'
    path.write_text(text)
    return path


COUNTS = {
    "completions": 6,
    "feedback": 8,
    "rated_up": 1,
    "rated_down": 3,
    "edited": 1,
    "prompts": 3,
    "kto_rows": 6,
    "pairs": 3,
    "pairs_capped": 0,
    "skipped_lines": 1,
    "skipped_unknown": 1,
    "skipped_unusable": 1,
}


def test_kto_export_one_row_per_judged_answer(hand_made_log):
    rows, counts = export_feedback(hand_made_log, "kto")
    assert rows == [
        {"prompt": P1, "completion": "Paris.", "label": True},
        {"prompt": P1, "completion": VERBOSE, "label": False},
        {"prompt": P2, "completion": "5", "label": False},  # the edited original
        {"prompt": P2, "completion": "4", "label": True},  # the preferred answer
        {"prompt": P3, "completion": "Go away.", "label": False},
        {"prompt": P1, "completion": "Lyon.", "label": False},  # up, then down
    ]
    assert counts == {**COUNTS, "rows": 6}
    fields = PreferenceFields(format=UNPAIRED)
    parsed = [parse_row(r, fields, f"row {i}") for i, r in enumerate(rows)]
    assert all(isinstance(p, Feedback) for p in parsed)
    assert [p.desirable for p in parsed] == [r["label"] for r in rows]


def test_pairs_export_up_against_down_and_edits(hand_made_log):
    rows, counts = export_feedback(hand_made_log, "pairs")
    assert rows == [
        {"prompt": P1, "chosen": "Paris.", "rejected": VERBOSE},
        {"prompt": P1, "chosen": "Paris.", "rejected": "Lyon."},
        {"prompt": P2, "chosen": "4", "rejected": "5"},  # once, though an edit and up x down
    ]
    assert counts == {**COUNTS, "rows": 3}
    fields = PreferenceFields(format=PAIRWISE)
    assert all(isinstance(parse_row(r, fields, "row"), Pair) for r in rows)
    assert feedback_stats(hand_made_log) == COUNTS


def test_pairs_are_capped_per_prompt_spread_over_the_answers(tmp_path):
    ups, downs = ["u0", "u1", "u2"], ["d0", "d1", "d2"]
    records = [completion(a, P2, a) for a in ups + downs]
    records += [feedback(completion_id=a, rating="up" if a in ups else "down") for a in ups + downs]
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows, counts = export_feedback(path, "pairs")
    assert [(r["chosen"], r["rejected"]) for r in rows] == [
        ("u0", "d0"), ("u0", "d1"), ("u1", "d0"), ("u0", "d2"),
    ]  # fmt: skip
    assert (counts["pairs"], counts["pairs_capped"]) == (4, 5)
    rows, counts = export_feedback(path, "pairs", max_pairs_per_prompt=100)
    assert len(rows) == 9


def test_an_edit_then_a_rating_keeps_the_edit(tmp_path):
    path = tmp_path / "f.jsonl"
    log = FeedbackLog(path, MODEL)
    log.record_completion("c1", USER, "Lyon.")
    log.record_feedback({"completion_id": "c1", "preferred": "Paris."})
    log.record_feedback({"completion_id": "c1", "rating": "down"})
    rows, counts = export_feedback(path, "pairs")
    assert rows == [{"prompt": USER, "chosen": "Paris.", "rejected": "Lyon."}]
    assert (counts["feedback"], counts["rated_down"], counts["edited"]) == (2, 1, 1)


def test_export_errors(tmp_path, hand_made_log):
    with pytest.raises(TuneforgeError, match="unknown export kind 'pair' \\(did you mean 'pairs'"):
        export_feedback(hand_made_log, "pair")
    with pytest.raises(TuneforgeError, match="no feedback log at"):
        export_feedback(tmp_path / "missing.jsonl", "kto")
