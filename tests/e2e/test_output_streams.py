"""`tuneforge train` as a CI log sees it (#21): stderr piped, not a terminal.

One line per phase with its timing, no carriage-return updates or bar drawing, none of the library
warnings a user cannot act on, the Trainer's log dictionaries not on stdout; with
`training.processes: 2` every line once (rank 0 speaks); TUNEFORGE_PROGRESS=1 forces the bars.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Each phase's one line, as a regular expression of the whole line.
PHASES = [
    r"Loading tokenizer of \S+ … done in \d+\.\d s",
    r"Tokenizing the data … done in \d+\.\d s",
    r"Checking data … done in \d+\.\d s",
    r"Base model zero-shot on validation … 4/4 done in \d+\.\d s",
    r"Base model zero-shot on test … 4/4 done in \d+\.\d s",
    r"Loading model … done in \d+\.\d s",
    r"Trainable parameters: 4,160 of 35,616 \(11\.68%\)",
    r"training … epoch 2/2 step 6/6 loss \d\.\d+ done in \d+\.\d s",
    r"Scoring validation … 2/2 done in \d+\.\d s",
    r"Scoring test … 2/2 done in \d+\.\d s",
]
EVALUATION = (
    r"evaluation at step (3|6) \(epoch (1|2)\): "
    r"loss \d\.\d+ accuracy \d(\.\d+)? macro_f1 \d(\.\d+)? \(\d+\.\d s\)"
)
# What a progress bar or an unactionable warning leaves in a log.
NOISE = ["\r", "\x1b[", "it/s", "%|", "━", "Warning", "gradient_checkpointing", "SortOptions"]


def train(recipe: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    # a user's shell: no tuneforge settings, and not the library-bar variables that tuneforge set
    # in this test process (an earlier in-process test), which it marks as its own
    ours = set(os.environ.get("TUNEFORGE_SET_BAR_VARIABLES", "").split(","))
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_") and k not in ours
    }
    environment.update(
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TUNEFORGE_REGISTRY=str(recipe.parent / "registry.sqlite"),
        # the test's own kept base scores (conftest): every run here scores the base model
        TUNEFORGE_BASE_SCORES=os.environ["TUNEFORGE_BASE_SCORES"],
        **env,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "train", str(recipe), *args],
        capture_output=True,  # pipes: not a terminal
        env=environment,
        timeout=900,
    )
    # decoded by hand: text mode would turn the carriage returns looked for into newlines
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err[-4000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def only_run(output_dir: Path) -> Path:
    [run] = [p for p in output_dir.iterdir() if re.fullmatch(r"streams-\d{8}-\d{6}", p.name)]
    return run


def assert_clean_log(stderr: str) -> list[str]:
    for noise in NOISE:
        assert noise not in stderr, (noise, stderr)
    lines = stderr.splitlines()
    for phase in PHASES:
        matching = [line for line in lines if re.fullmatch(phase, line)]
        assert len(matching) == 1, (phase, stderr)
    evaluations = [line for line in lines if re.fullmatch(EVALUATION, line)]
    assert [e.split(" (")[0] for e in evaluations] == [
        "evaluation at step 3",
        "evaluation at step 6",
    ], stderr
    assert sum(line.startswith("evaluation") for line in lines) == 2
    return lines


@pytest.fixture(scope="module")
def piped(tmp_path_factory, tiny_model):
    from conftest import sentiment_rows, write_csv

    tmp = tmp_path_factory.mktemp("streams")
    files = {
        "train": write_csv(tmp / "train.csv", sentiment_rows(24)),
        "validation": write_csv(tmp / "validation.csv", sentiment_rows(8, offset=100)),
        "test": write_csv(tmp / "test.csv", sentiment_rows(8, offset=200)),
    }
    recipe = tmp / "recipe.yaml"
    recipe.write_text(
        f"""
name: streams
base_model: {tiny_model}
task: classification
data: {{train: {files["train"]}, validation: {files["validation"]}, test: {files["test"]}}}
method: lora
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{epochs: 2, batch_size: 8, learning_rate: 1.0e-2, logging_steps: 1, seed: 0}}
early_stopping: {{metric: macro_f1, patience: 2}}
data_checks: {{small_evaluation: "off"}}  # a findings table is not noise, but draws rules
output_dir: {tmp / "runs"}
"""
    )
    return {"recipe": recipe, "proc": train(recipe)}


def test_a_piped_run_is_one_line_per_phase_without_noise(piped):
    proc = piped["proc"]
    lines = assert_clean_log(proc.stderr)
    assert [line for line in lines if line.startswith("Finished: ")] == [
        f"Finished: {only_run(piped['recipe'].parent / 'runs')}"
    ]
    # the Trainer's log dictionaries are not results: nothing of them on stdout
    assert "'loss'" not in proc.stdout and "'eval_loss'" not in proc.stdout


def test_two_processes_speak_once(piped):
    proc = train(piped["recipe"], "--set", "training.processes=2", "--set", "name=streams-2")
    lines = assert_clean_log(proc.stderr)  # each phase's line exactly once, no warnings
    assert lines[0] == "Training in 2 processes of 1 thread(s) each (training.processes)"
    assert sum("Tokenizing" in line for line in lines) == 1


def test_progress_variable_1_forces_bars_into_a_pipe(piped):
    proc = train(piped["recipe"], "--set", "name=streams-bars", TUNEFORGE_PROGRESS="1")
    err = proc.stderr
    assert "\r" in err and "\x1b[" in err  # live displays, drawn
    assert "Tokenizing train: 100%" in err  # datasets' own bar follows tuneforge's choice
    assert re.search(r"training .*━.*6/6.*epoch 2/2 step 6/6 loss", err)  # the bar, drawn
    assert not re.search(r"^training … .* done in", err, re.MULTILINE)  # no plain line instead
    for warning in ("Warning", "gradient_checkpointing", "SortOptions"):
        assert warning not in err
