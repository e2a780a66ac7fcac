"""Safe loading: pickle-only weights are refused unless --allow-pickle, then load with a warning."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error, run_cli, sentiment_rows, write_csv
from safetensors.torch import load_file

from tuneforge import safety
from tuneforge.errors import TuneforgeError


def _to_pickle(folder: Path, safetensors_name: str, pickle_name: str) -> None:
    """Replace a safetensors weights file by the same tensors saved with torch.save (pickle)."""
    torch.save(load_file(folder / safetensors_name), folder / pickle_name)
    os.remove(folder / safetensors_name)


@pytest.fixture(scope="module")
def pickled(tmp_path_factory):
    """A tiny model with only pytorch_model.bin, and a run trained on it with --allow-pickle."""
    from tuneforge.testing import build_tiny_llama

    tmp = tmp_path_factory.mktemp("pickle")
    model = build_tiny_llama(tmp / "pickle-llama")
    _to_pickle(model, "model.safetensors", "pytorch_model.bin")
    train = write_csv(tmp / "train.csv", sentiment_rows(16))
    val = write_csv(tmp / "val.csv", sentiment_rows(8, offset=100))
    recipe = tmp / "r.yaml"
    recipe.write_text(
        f"name: pickled\nbase_model: {model}\ntask: classification\n"
        f"data: {{train: {train}, validation: {val}}}\nlora: {{r: 4, alpha: 8}}\n"
        "training: {max_steps: 2, batch_size: 8}\n"
        f"baseline: {{enabled: false}}\noutput_dir: {tmp / 'runs'}\n"
    )
    return model, recipe, tmp / "runs"


def test_pickle_base_model_is_refused_then_allowed(pickled):
    model, recipe, runs = pickled
    refused = run_cli("train", recipe)
    assert_user_error(
        refused,
        f"base_model: {model} only has pickle weights (pytorch_model.bin)",
        "safe_serialization=True",
        "--allow-pickle",
    )
    assert not runs.exists()

    allowed = run_cli("train", recipe, "--allow-pickle")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    flat = " ".join(allowed.stderr.split())
    assert f"warning: loading pickle weights from {model} (pytorch_model.bin)" in flat
    [run] = [p for p in runs.iterdir() if not p.name.startswith(".")]
    assert "allow_pickle: true" in (run / "recipe.yaml").read_text()

    # Using the run loads the pickle base again: the opt-in is asked for every command.
    assert_user_error(run_cli("predict", run, "great film"), "only has pickle weights")
    ok = run_cli("predict", run, "great film", "--json", "--allow-pickle")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout)["label"] in {"positive", "negative"}


def test_pickle_adapter_in_a_run_is_refused_then_allowed(pickled, tmp_path):
    _, _, runs = pickled
    [run] = [p for p in runs.iterdir() if not p.name.startswith(".")]
    reference = run_cli("predict", run, "great film", "a dull mess", "--json", "--allow-pickle")
    assert reference.returncode == 0, reference.stderr[-2000:]

    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    _to_pickle(copy / "adapter", "adapter_model.safetensors", "adapter_model.bin")
    for command in (["predict", copy, "great film"], ["eval", copy, "--data", "x.csv"]):
        assert_user_error(
            run_cli(*command),
            f"run adapter: {copy / 'adapter'} only has pickle weights (adapter_model.bin)",
        )
    allowed = run_cli("predict", copy, "great film", "a dull mess", "--json", "--allow-pickle")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "loading pickle weights from" in allowed.stderr
    assert allowed.stdout == reference.stdout  # the same adapter, read from the pickle


def test_resume_refuses_a_pickle_only_checkpoint(tmp_path):
    from tuneforge.training.checkpointing import resume_checkpoint

    good = tmp_path / "checkpoints" / "checkpoint-4"
    good.mkdir(parents=True)
    (good / "trainer_state.json").write_text("{}")
    torch.save({"w": torch.zeros(2)}, good / "adapter_model.bin")
    torch.save({}, good / "optimizer.pt")  # trainer state pickles are not weights
    with pytest.raises(TuneforgeError) as e:
        resume_checkpoint(tmp_path)
    assert e.value.message.startswith(
        f"checkpoint: {good} only has pickle weights (adapter_model.bin)"
    )
    with safety.pickle_scope(True):
        assert resume_checkpoint(tmp_path) == str(good)
    assert not safety.pickle_allowed()  # the scope ended


def test_safetensors_next_to_pickles_is_fine(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert safety.check_weights(tmp_path, "base_model") is False
    assert safety.use_safetensors(tmp_path, "base_model") is True
