"""Padding-free batches through the whole job (Trainer, evaluations, final scoring), asked for on
the CPU with `training.padding_free: true`: an sft run trains the same loss curve as the padded
path, and a pretrain run keeps its documents apart; asking for it in classification is exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_user_error, run_cli, sentiment_rows, write_csv, write_jsonl


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def _chats(n: int, offset: int = 0) -> list[dict]:
    return [
        {
            "prompt": f"Summarise alert {i}: " + "the quick brown fox " * (1 + i % 4),
            "completion": "lazy dog " * (1 + i % 3),
        }
        for i in range(offset, offset + n)
    ]


def _losses(run: Path) -> tuple[list[float], list[float]]:
    history = json.loads((run / "metrics.json").read_text())["log_history"]
    return (
        [h["loss"] for h in history if "loss" in h],
        [h["eval_loss"] for h in history if "eval_loss" in h],
    )


def test_sft_padding_free_trains_the_padded_runs_loss_curve(tmp_path, tiny_model):
    import tuneforge

    train = write_jsonl(tmp_path / "train.jsonl", _chats(16))
    validation = write_jsonl(tmp_path / "validation.jsonl", _chats(4, 100))
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(
        f"name: flat\nbase_model: {tiny_model}\ntask: sft\n"
        f"data: {{train: {train}, validation: {validation}}}\n"
        "lora: {r: 4, alpha: 8, dropout: 0.0}\n"
        "training: {max_steps: 6, batch_size: 4, learning_rate: 2.0e-2, logging_steps: 1, "
        "eval_steps: 3, max_length: 128, precision: fp32}\n"
        "sft: {generation_examples: 0}\nbaseline: {enabled: false}\n"
        "data_checks: {leakage: off, duplicates: off}\n"
        f"output_dir: {tmp_path / 'runs'}\n"
    )
    runs = {
        flat: tuneforge.train(recipe, [f"training.padding_free={flat}", f"name=flat-{flat}"])
        for flat in ("false", "true")
    }
    padded, flattened = (_losses(runs[k].path) for k in ("false", "true"))
    assert len(padded[0]) == 6 and len(padded[1]) == 2
    assert flattened[0] == pytest.approx(padded[0], rel=1e-4)  # every step's training loss
    assert flattened[1] == pytest.approx(padded[1], rel=1e-4)  # the evaluations
    tuned = [json.loads((runs[k].path / "metrics.json").read_text())["tuned"] for k in runs]
    assert tuned[1]["validation"]["loss"] == pytest.approx(tuned[0]["validation"]["loss"], rel=1e-4)


def test_pretrain_padding_free_keeps_documents_apart(tmp_path, tiny_model):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"d{i:02d}.txt").write_text("alpha beta gamma delta " * (2 + i % 5))
    recipe = tmp_path / "pretrain.yaml"
    recipe.write_text(
        f"name: apart\nbase_model: {tiny_model}\ntask: pretrain\n"
        f"data: {{train: {docs}, validation_split: 0.25}}\n"
        "lora: {r: 4, alpha: 8}\n"
        "training: {max_steps: 2, batch_size: 2, max_length: 32, padding_free: true}\n"
        "baseline: {enabled: false}\ndata_checks: {leakage: off, duplicates: off}\n"
        f"output_dir: {tmp_path / 'runs'}\n"
    )
    proc = run_cli("train", recipe)
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "runs").iterdir()
    info = json.loads((run / "run.json").read_text())["info"]
    assert info["separate_documents"] is True


def test_padding_free_for_classification_is_a_recipe_error(tmp_path, tiny_model):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(8))
    recipe = tmp_path / "cls.yaml"
    recipe.write_text(
        f"name: c\nbase_model: {tiny_model}\ntask: classification\n"
        f"data: {{train: {train}, validation_split: 0.25}}\n"
        "training: {padding_free: true}\n"
        f"output_dir: {tmp_path / 'runs'}\n"
    )
    assert_user_error(run_cli("train", recipe), "training.padding_free: true", "classification")
