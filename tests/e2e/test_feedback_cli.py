"""`tuneforge feedback stats/export` as a user runs them on a served run's log, and the exported
file training a preference run (KTO on thumbs up/down rows, DPO on pairs) on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_user_error, run_cli

from tuneforge.deploy.feedback import FeedbackLog, ModelRef, default_log_path

SYSTEM = {"role": "system", "content": "Answer briefly."}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a busy 2-core machine."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def serve_and_rate(log_path: Path, questions: range) -> None:
    """What a served run's users leave: per question a liked short answer and a disliked long
    one, every other long one edited instead of rated."""
    log = FeedbackLog(log_path, ModelRef("assistant-20270101-000000", "assistant@1"))
    for i in questions:
        prompt = [SYSTEM, {"role": "user", "content": f"question {i}?"}]
        log.record_completion(f"chatcmpl-{i}a", prompt, f"short answer {i}.")
        log.record_completion(f"chatcmpl-{i}b", prompt, f"a long rambling answer to {i} and more.")
        log.record_feedback({"completion_id": f"chatcmpl-{i}a", "rating": "up"})
        if i % 2:
            log.record_feedback({"completion_id": f"chatcmpl-{i}b", "rating": "down"})
        else:
            log.record_feedback({"completion_id": f"chatcmpl-{i}b", "preferred": f"answer {i}."})


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("feedback")
    run = tmp / "runs" / "assistant-20270101-000000"
    run.mkdir(parents=True)
    serve_and_rate(default_log_path(run), range(8))
    held_out = tmp / "held-out" / "feedback.jsonl"  # another server's log: --log
    serve_and_rate(held_out, range(100, 104))
    return {"tmp": tmp, "run": run, "held_out": held_out}


COUNTS = {
    "completions": 16,
    "feedback": 16,
    "rated_up": 8,
    "rated_down": 4,
    "edited": 4,
    "prompts": 8,
    "kto_rows": 20,  # 16 answers + 4 preferred ones
    "pairs": 12,  # odd questions: short > long; even: edit > long, short > long
    "pairs_capped": 0,
    "skipped_lines": 0,
    "skipped_unknown": 0,
    "skipped_unusable": 0,
}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_stats_for_people_and_for_scripts(served):
    proc = run_cli("feedback", "stats", served["run"])
    assert proc.returncode == 0, proc.stderr
    assert "rated up" in proc.stdout and "│    20 │" in proc.stdout  # kto rows
    proc = run_cli("feedback", "stats", served["run"], "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "run": str(served["run"]),
        "log": str(default_log_path(served["run"])),
        "counts": COUNTS,
    }


@pytest.mark.parametrize("kind", ["kto", "pairs"])
def test_export_writes_the_file_and_prints_counts(served, kind):
    output = served["tmp"] / f"out-{kind}" / "prefs.jsonl"  # its folder is created
    proc = run_cli("feedback", "export", served["run"], "--output", output, "--kind", kind)
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(output)
    assert len(rows) == (20 if kind == "kto" else 12)
    assert "rows written" in proc.stdout and f"│    {len(rows)} │" in proc.stdout
    assert [p.name for p in output.parent.iterdir()] == [output.name]  # no temporary file left
    expected = (
        {"prompt", "completion", "label"} if kind == "kto" else {"prompt", "chosen", "rejected"}
    )
    assert all(set(r) == expected for r in rows)
    assert rows[0]["prompt"] == [SYSTEM, {"role": "user", "content": "question 0?"}]


def test_export_json(served):
    output = served["tmp"] / "json" / "prefs.jsonl"
    proc = run_cli("feedback", "export", served["run"], "-o", output, "--kind", "pairs", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report == {
        "run": str(served["run"]),
        "log": str(default_log_path(served["run"])),
        "output": str(output),
        "kind": "pairs",
        "counts": {**COUNTS, "rows": 12},
    }
    assert len(read_jsonl(output)) == 12


def test_a_torn_line_is_counted_not_fatal(served, tmp_path):
    log = tmp_path / "torn.jsonl"
    log.write_bytes(default_log_path(served["run"]).read_bytes() + b'{"type": "feedb')
    proc = run_cli("feedback", "stats", served["run"], "--log", log, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["counts"] == {**COUNTS, "skipped_lines": 1}


def test_bad_input_one_clear_message(served, tmp_path):
    out = tmp_path / "prefs.jsonl"
    assert_user_error(
        run_cli("feedback", "export", tmp_path / "nope", "-o", out), "run directory not found"
    )
    assert_user_error(
        run_cli("feedback", "export", tmp_path, "-o", out),
        f"no feedback log at {tmp_path / 'feedback' / 'feedback.jsonl'}",
        "--log",
    )
    assert_user_error(
        run_cli("feedback", "export", served["run"], "-o", out, "--kind", "pair"),
        "unknown export kind 'pair' (did you mean 'pairs'?)",
    )
    assert_user_error(run_cli("feedback", "export", served["run"], "-o", tmp_path), "is a folder")
    log = default_log_path(served["run"])
    before = log.read_bytes()
    assert_user_error(
        run_cli("feedback", "export", served["run"], "-o", log), "is the feedback log itself"
    )
    assert log.read_bytes() == before
    only_ups = tmp_path / "ups.jsonl"
    log = FeedbackLog(only_ups, ModelRef("r"))
    log.record_completion("c1", [{"role": "user", "content": "hi"}], "hello")
    log.record_feedback({"completion_id": "c1", "rating": "up"})
    assert_user_error(
        run_cli(
            "feedback", "export", served["run"], "-o", out, "--kind", "pairs", "--log", only_ups
        ),
        "no pairs rows to export (1 completions, 1 feedback records)",
        "pairs need an up and a down answer to the same prompt",
    )
    assert not out.exists()


@pytest.mark.parametrize(("kind", "algorithm"), [("kto", "kto"), ("pairs", "dpo")])
def test_the_export_trains_a_preference_run(served, tiny_model, kind, algorithm):
    """The closing of the loop: the exported file is exactly what the preference task reads."""
    tmp = served["tmp"] / f"train-{kind}"
    train, validation = tmp / "train.jsonl", tmp / "validation.jsonl"
    args = ["--kind", kind, "--json"]
    assert run_cli("feedback", "export", served["run"], "-o", train, *args).returncode == 0
    held_out = ["--log", served["held_out"]]
    assert (
        run_cli("feedback", "export", served["run"], "-o", validation, *args, *held_out).returncode
        == 0
    )
    recipe = tmp / "recipe.yaml"
    recipe.write_text(
        f"""
name: from-feedback-{kind}
base_model: {tiny_model}
task: preference
data: {{train: {train}, validation: {validation}}}
preference: {{algorithm: {algorithm}, generation_examples: 1, kl_examples: 0, max_new_tokens: 4}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{epochs: 1, batch_size: 4, learning_rate: 1.0e-2, logging_steps: 1, max_length: 64}}
output_dir: {tmp / "runs"}
"""
    )
    proc = run_cli("train", recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert "preference_accuracy" in json.dumps(metrics)
