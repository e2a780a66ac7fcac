"""Checkpoints survive a kill during a save and a full disk; resume continues from the last good one.

Runs in-process through `tuneforge.train` on the tiny model so a kill can be placed exactly inside
the Trainer's checkpoint writing, and free space can be faked with monkeypatch.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import sentiment_rows, write_csv
from safetensors.torch import load_file

from tuneforge import train
from tuneforge.training.checkpointing import NotEnoughDiskSpace


def _recipe(tmp: Path, tiny_model: Path, out: Path) -> Path:
    train_csv = write_csv(tmp / "train.csv", sentiment_rows(32))
    val = write_csv(tmp / "val.csv", sentiment_rows(8, offset=100))
    recipe = tmp / f"r-{out.name}.yaml"
    recipe.write_text(
        f"name: durable\nbase_model: {tiny_model}\ntask: classification\n"
        f"data: {{train: {train_csv}, validation: {val}}}\nlora: {{r: 4, alpha: 8, dropout: 0.1}}\n"
        "training: {max_steps: 8, batch_size: 4, learning_rate: 1.0e-2, save_steps: 2, logging_steps: 1}\n"
        f"baseline: {{enabled: false}}\noutput_dir: {out}\n"
    )
    return recipe


def _partial(out: Path) -> Path:
    [partial] = [p for p in out.iterdir() if p.name.endswith(".incomplete")]
    return partial


def _assert_same_run(run, reference) -> None:
    a, b = reference.metrics, run.metrics
    assert (
        [e["step"] for e in b["evaluations"]]
        == [e["step"] for e in a["evaluations"]]
        == [
            2,
            4,
            6,
            8,
        ]
    )
    for ea, eb in zip(a["evaluations"], b["evaluations"], strict=True):
        assert eb["loss"] == pytest.approx(ea["loss"], abs=1e-5)
    wa = load_file(reference.path / "adapter" / "adapter_model.safetensors")
    wb = load_file(run.path / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert (wa[key] - wb[key]).abs().max() < 1e-5, key


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("durable-ref")
    return train(_recipe(tmp, tiny_model, tmp / "ref"))


def test_kill_during_a_save_keeps_the_last_good_checkpoint(
    tmp_path, tiny_model, reference, monkeypatch
):
    """Killed after the weights and optimiser of checkpoint-6 are written, before its RNG state
    and trainer state: checkpoint-6 never appears, checkpoint-4 is intact, resume matches."""
    import transformers

    original = transformers.Trainer._save_rng_state

    def killed_at_step_6(self, output_dir):
        if self.state.global_step == 6:
            raise KeyboardInterrupt("killed while saving")
        return original(self, output_dir)

    monkeypatch.setattr(transformers.Trainer, "_save_rng_state", killed_at_step_6)
    out = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        train(_recipe(tmp_path, tiny_model, out))
    monkeypatch.undo()

    partial = _partial(out)
    checkpoints = partial / "checkpoints"
    assert json.loads((partial / "status.json").read_text())["status"] == "interrupted"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        ".tmp-checkpoint-6",
        "checkpoint-2",
        "checkpoint-4",
    ]
    half = checkpoints / ".tmp-checkpoint-6" / "checkpoint-6"
    assert (half / "adapter_model.safetensors").is_file() and (half / "optimizer.pt").is_file()
    assert not (half / "trainer_state.json").exists()
    state = json.loads((checkpoints / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert load_file(checkpoints / "checkpoint-4" / "adapter_model.safetensors")  # loadable

    # What a writer without temporary names would leave: a newer checkpoint folder without its
    # trainer state. Resume must skip it as well as the temporary folder.
    fake = checkpoints / "checkpoint-7"
    fake.mkdir()
    (fake / "adapter_model.safetensors").write_bytes(b"\x00" * 100)

    run = train(resume=partial)
    _assert_same_run(run, reference)
    assert not (run.path / "checkpoints").exists()


def _fake_disk(monkeypatch, root: Path, free_after) -> None:
    """shutil.disk_usage reports `free_after(root)` bytes free for paths under `root`."""
    real = shutil.disk_usage

    def disk_usage(path):
        usage = real(path)
        if Path(path).resolve().is_relative_to(root.resolve()):
            free = free_after(root)
            if free is not None:
                return usage._replace(free=free)
        return usage

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)


def test_full_disk_before_training_is_a_clear_error(tmp_path, tiny_model, monkeypatch):
    out = tmp_path / "runs"
    _fake_disk(monkeypatch, out, lambda root: 1000)
    with pytest.raises(NotEnoughDiskSpace) as e:
        train(_recipe(tmp_path, tiny_model, out))
    partial = _partial(out)
    message = e.value.message
    assert message.startswith(
        "not enough disk space for training (one checkpoint and the final model)"
    )
    assert f"1,000 bytes) free at {partial}" in message
    needed = int(
        re.search(r"needs about [\d.]+ MB \(([\d,]+) bytes\)", message)[1].replace(",", "")
    )
    assert needed > 32 * 2**20  # weights + optimiser state + the margin for tokenizer files
    assert f"tuneforge train --resume {partial}" in e.value.hint
    status = json.loads((partial / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == message
    assert list((partial / "checkpoints").glob("*")) == []  # the Trainer made the folder, no more


def test_full_disk_mid_run_keeps_the_last_checkpoint_and_resume_finishes(
    tmp_path, tiny_model, reference, monkeypatch
):
    out = tmp_path / "runs"

    def free_after(root: Path):  # the disk fills up once checkpoint-4 is on it
        return 5000 if list(root.glob(".*.incomplete/checkpoints/checkpoint-4")) else None

    _fake_disk(monkeypatch, out, free_after)
    with pytest.raises(NotEnoughDiskSpace) as e:
        train(_recipe(tmp_path, tiny_model, out))
    partial = _partial(out)
    checkpoints = partial / "checkpoints"
    assert e.value.message.startswith("not enough disk space for checkpoint-6: needs about ")
    assert f"(5,000 bytes) free at {checkpoints}" in e.value.message
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert (
        json.loads((checkpoints / "checkpoint-4" / "trainer_state.json").read_text())["global_step"]
        == 4
    )
    status = json.loads((partial / "status.json").read_text())
    assert status["status"] == "failed" and "checkpoint-6" in status["error"]
    monkeypatch.undo()

    run = train(resume=partial)
    _assert_same_run(run, reference)
