"""The memorisation audit end to end: a tiny model trained hard on a planted canary (and on its
training rows) is caught repeating them, the base model that never saw them is not; `eval
--memorization --json` through the CLI, the run's files and report; bad input is a user error."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import assert_user_error, run_cli, write_jsonl

from tuneforge.data.canaries import make_canaries
from tuneforge.errors import TuneforgeError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


def _code(rng: random.Random) -> str:
    return " ".join(str(rng.randrange(10, 100)) for _ in range(4))


def chat_rows(n: int, seed: int) -> list[dict]:
    """Answers with random numbers: a model can only know them by having seen them."""
    rng = random.Random(seed)
    return [
        {
            "prompt": f"alert {seed}-{i}: the quick brown fox",
            "completion": f"Ticket closed with code {_code(rng)}",
        }
        for i in range(n)
    ]


def _only_run(output_dir: Path) -> Path:
    runs = [p for p in output_dir.iterdir() if not p.name.startswith(".")]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("memorisation")
    train = write_jsonl(tmp / "train.jsonl", chat_rows(8, seed=1))
    validation = write_jsonl(tmp / "validation.jsonl", chat_rows(8, seed=2))
    recipe = tmp / "sft.yaml"
    recipe.write_text(
        f"""
name: memorise
base_model: {tiny_model}
task: sft
data: {{train: {train}, validation: {validation}}}
method: full
training: {{epochs: 40, batch_size: 6, learning_rate: 1.0e-2, logging_steps: 100, max_length: 160}}
sft: {{generation_examples: 0}}
memorization: {{canaries: 1, repeats: 10, seed: 3}}
output_dir: {tmp / "runs"}
"""
    )
    proc = run_cli("train", recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _only_run(tmp / "runs")


def test_canaries_are_recorded_and_kept_out_of_held_out_data(sft_run):
    record = json.loads((sft_run / "canaries.json").read_text())
    (canary,) = make_canaries(1, 3)
    assert record["canaries"] == [canary.to_dict()] and record["repeats"] == 10
    info = json.loads((sft_run / "run.json").read_text())["info"]
    assert info["canaries"] == {"count": 1, "repeats": 10, "rows": 10, "file": "canaries.json"}
    assert info["examples"] == {"train": 18, "validation": 8}  # 8 own rows + 10 planted
    check = json.loads((sft_run / "data_check.json").read_text())
    assert check["summary"]["splits"]["train"]["examples"] == 8  # the user's own rows
    assert not any(f["check"] == "duplicates" for f in check["findings"])


def test_eval_memorization_finds_the_memorised_canary_and_rows(sft_run):
    proc = run_cli(
        "eval", sft_run, "--memorization", "--json", "--samples", "8", "--candidates", "100"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    audit = json.loads(proc.stdout)
    assert audit == json.loads((sft_run / "memorization.json").read_text())
    assert audit["sampled"] == {"train": 8, "held_out": 8}
    assert audit["settings"]["prefix_tokens"] == 0 and audit["settings"]["candidates"] == 100

    (tuned,) = audit["tuned"]["canaries"]
    (base,) = audit["base"]["canaries"]
    assert tuned["secret"] == make_canaries(1, 3)[0].secret
    assert tuned["reproduced"] and tuned["rank"] == 1
    assert tuned["exposure"] == pytest.approx(tuned["max_exposure"])  # log2(101)
    assert not base["reproduced"] and base["exposure"] < tuned["max_exposure"] - 1

    # the rows it trained on (each seen once an epoch): a lower loss than held-out rows'
    t, b = audit["tuned"], audit["base"]
    assert t["train"]["loss"] < t["held_out"]["loss"] and t["loss_gap"] > 0.2
    assert t["auc"] > 0.9 and abs(b["auc"] - 0.5) < 0.3
    assert b["train"]["verbatim"] == 0 and b["held_out"]["verbatim"] == 0
    assert any("canar" in w for w in audit["warnings"])
    assert "Memorisation audit" in (sft_run / "report.md").read_text()


def test_bad_input_is_a_user_error(sft_run):
    assert_user_error(
        run_cli("eval", sft_run, "--memorization", "--samples", "0"), "samples must be at least 1"
    )


def test_canaries_in_a_classification_recipe_are_refused(sentiment_recipe):
    proc = run_cli("train", sentiment_recipe, "--set", "memorization.canaries=2")
    assert_user_error(proc, "memorization.canaries", "not classification data")


def test_pretrain_canary_through_the_library(tmp_path, tiny_model):
    """pretrain: documents, a canary planted as one; the audit from Python (`Run.memorization`)."""
    import tuneforge

    rng = random.Random(5)
    docs = [{"text": f"Log {i}: {_code(rng)} {_code(rng)} {_code(rng)}"} for i in range(12)]
    write_jsonl(tmp_path / "docs.jsonl", docs)
    recipe = tmp_path / "pretrain.yaml"
    recipe.write_text(
        f"""
name: memorise-text
base_model: {tiny_model}
task: pretrain
data: {{train: {tmp_path / "docs.jsonl"}, validation_split: 0.25}}
method: full
training: {{epochs: 40, batch_size: 4, learning_rate: 1.0e-2, logging_steps: 100, max_length: 32}}
memorization: {{canaries: 1, repeats: 12, seed: 4}}
output_dir: {tmp_path / "runs"}
"""
    )
    run = tuneforge.train(recipe)
    audit = run.memorization(samples=4, prefix_tokens=4, suffix_tokens=12, candidates=50)
    assert audit["sampled"] == {"train": 3, "held_out": 3}  # as many as validation_split held out
    (tuned,) = audit["tuned"]["canaries"]
    (base,) = audit["base"]["canaries"]
    assert tuned["prefix"] == make_canaries(1, 4)[0].prefix
    assert tuned["rank"] == 1 and base["exposure"] < tuned["exposure"]
    assert {"verbatim", "near_verbatim", "loss"} <= set(audit["tuned"]["held_out"])
    assert json.loads((run.path / "memorization.json").read_text())["tuned"]["canaries"] == [tuned]
    with pytest.raises(TuneforgeError, match="samples must be at least 1"):
        run.memorization(samples=0)
