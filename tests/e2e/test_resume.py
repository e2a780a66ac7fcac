"""Exact resume: a run killed with SIGKILL mid-epoch and resumed ends like an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_user_error, run_cli, sentiment_rows, write_csv
from safetensors.torch import load_file

from tuneforge.runs.directory import process_alive


def _recipe(tmp: Path, tiny_model: Path, out: Path, processes: int = 1) -> Path:
    train = write_csv(tmp / "train.csv", sentiment_rows(64))
    val = write_csv(tmp / "val.csv", sentiment_rows(8, offset=100))
    recipe = tmp / f"r-{out.name}.yaml"
    recipe.write_text(
        f"name: resume\nbase_model: {tiny_model}\ntask: classification\n"
        f"data: {{train: {train}, validation: {val}}}\nlora: {{r: 4, alpha: 8, dropout: 0.1}}\n"
        "training: {epochs: 3, batch_size: 4, learning_rate: 1.0e-2, save_steps: 6, logging_steps: 2, "
        f"processes: {processes}}}\n"
        f"baseline: {{enabled: false}}\noutput_dir: {out}\n"
    )
    return recipe


def _finished(out: Path) -> Path:
    [run] = [p for p in out.iterdir() if not p.name.startswith(".")]
    return run


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-processes"])
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_model, processes):
    """With `training.processes: 2` the SIGKILL hits the launching parent: the training processes
    must end too (not train on, orphaned), and the resumed run matches a two-process reference."""
    reference = run_cli("train", _recipe(tmp_path, tiny_model, tmp_path / "ref", processes))
    assert reference.returncode == 0, reference.stderr[-2000:]
    ref = _finished(tmp_path / "ref")

    out = tmp_path / "killed"
    recipe = _recipe(tmp_path, tiny_model, out, processes)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", "train", str(recipe)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    deadline = time.time() + 240
    partial = None
    while time.time() < deadline and proc.poll() is None:
        found = list(out.glob(".resume-*.incomplete/checkpoints/checkpoint-18/trainer_state.json"))
        if found:  # mid-epoch 2 (16 steps per epoch), with a complete checkpoint on disk
            partial = found[0].parents[2]
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    if partial is None:
        pytest.skip("the run finished before it could be killed (machine too fast for this probe)")
    _wait_until_stopped(partial)
    assert not [p for p in out.iterdir() if not p.name.startswith(".")], (
        "a killed run must not look finished"
    )

    resumed = run_cli("train", "--resume", partial)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = _finished(out)
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (ref, run))
    assert [e["step"] for e in b["evaluations"]] == [e["step"] for e in a["evaluations"]]
    for ea, eb in zip(a["evaluations"], b["evaluations"], strict=True):
        assert eb["loss"] == pytest.approx(ea["loss"], abs=1e-5)
        assert eb["accuracy"] == ea["accuracy"]
    wa = load_file(ref / "adapter" / "adapter_model.safetensors")
    wb = load_file(run / "adapter" / "adapter_model.safetensors")
    for key in wa:
        assert (wa[key] - wb[key]).abs().max() < 1e-5, key


@pytest.mark.parametrize("how", ["sigterm-to-parent", "ctrl-c-to-group"])
def test_a_polite_stop_of_two_processes_marks_the_run_interrupted(tmp_path, tiny_model, how):
    """SIGTERM to `tuneforge train` (what an orchestrator sends) or Ctrl-C (SIGINT to the whole
    terminal group) with `training.processes: 2`: the launcher hands the signal on, rank 0 marks
    the run interrupted exactly once (the launcher's forwarded copy must not cut that short), every
    process ends, and the command exits non-zero."""
    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuneforge.cli",
            "train",
            str(_recipe(tmp_path, tiny_model, out, 2)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
        start_new_session=True,  # its own process group, as a terminal gives a command
    )
    deadline = time.time() + 240
    partial = None
    while time.time() < deadline and proc.poll() is None:
        found = list(out.glob(".resume-*.incomplete/checkpoints/checkpoint-6/trainer_state.json"))
        if found:
            partial = found[0].parents[2]
            if how == "sigterm-to-parent":
                os.kill(proc.pid, signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGINT)
            break
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=90)
    if partial is None:
        pytest.skip("the run finished before it could be stopped (machine too fast for this probe)")
    assert proc.returncode != 0
    _wait_until_stopped(partial)
    assert json.loads((partial / "status.json").read_text())["status"] == "interrupted"
    assert "Traceback" not in stderr.decode(errors="replace")


def _wait_until_stopped(partial: Path, timeout: float = 60) -> None:
    """The process that wrote status.json (rank 0 of a launched run) has exited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pid = json.loads((partial / "status.json").read_text()).get("pid")
        if not process_alive(pid):
            return
        time.sleep(0.2)
    pytest.fail(f"training process {pid} still running {timeout} s after its parent was killed")


def test_resume_refuses_a_finished_or_unknown_run(tmp_path, tiny_model):
    assert_user_error(run_cli("train", "--resume", tmp_path), "not an unfinished run")
    assert_user_error(run_cli("train"), "give a recipe file, or --resume")


def test_nan_loss_stops_with_a_clear_message(tmp_path, tiny_model, monkeypatch):
    """A loss that turns NaN at step 5 stops the run; the last good checkpoint stays."""
    import transformers

    from tuneforge import train
    from tuneforge.training.trainer import TrainingDiverged

    original = transformers.Trainer.compute_loss

    def poisoned(self, model, inputs, *args, **kwargs):
        result = original(self, model, inputs, *args, **kwargs)
        if self.state.global_step < 4:
            return result
        if isinstance(result, tuple):
            return (result[0] * float("nan"), *result[1:])
        return result * float("nan")

    monkeypatch.setattr(transformers.Trainer, "compute_loss", poisoned)
    recipe = _recipe(tmp_path, tiny_model, tmp_path / "nan")
    with pytest.raises(TrainingDiverged) as e:
        train(recipe, ["training.save_steps=2", "training.logging_steps=1"])
    assert "the loss became nan at step 5" in e.value.message
    assert "lower training.learning_rate" in e.value.hint
    [partial] = list((tmp_path / "nan").iterdir())
    assert partial.name.endswith(".incomplete")
    assert json.loads((partial / "status.json").read_text())["status"] == "failed"
    checkpoints = sorted(p.name for p in (partial / "checkpoints").iterdir())
    assert checkpoints and "checkpoint-4" in checkpoints and "checkpoint-6" not in checkpoints
