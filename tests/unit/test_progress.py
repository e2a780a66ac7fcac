"""Progress output (#21): live bars only on a terminal or when forced, plain timed lines
elsewhere; the Trainer's progress through ProgressLog; the unactionable library warnings off;
ranks other than 0 silent."""

from __future__ import annotations

import logging
import os
import pty
import subprocess
import sys
import warnings

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from tuneforge import progress
from tuneforge.library_output import tame
from tuneforge.progress import Meter, bars_enabled, status, track
from tuneforge.training.progress_log import ProgressLog, evaluation_line, where


@pytest.fixture
def piped(monkeypatch):
    """stderr is not a terminal, nothing forced, not quiet: what a CI log gets."""
    monkeypatch.delenv(progress.ENV_PROGRESS, raising=False)
    monkeypatch.delenv("TUNEFORGE_QUIET", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines(capture) -> list[str]:
    return capture.get().splitlines()


@pytest.mark.parametrize(
    ("tty", "forced", "quiet", "expected"),
    [
        (True, None, None, True),  # a terminal: bars
        (False, None, None, False),  # a pipe, a CI log: lines
        (False, "1", None, True),  # --progress
        (True, "0", None, False),  # --no-progress
        (True, "1", "1", False),  # a silenced rank inherits the variable: quiet wins
        (True, "yes", None, True),  # anything else: auto
    ],
)
def test_bars_on_a_terminal_or_when_forced(monkeypatch, tty, forced, quiet, expected):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    for name, value in ((progress.ENV_PROGRESS, forced), ("TUNEFORGE_QUIET", quiet)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert bars_enabled() is expected


def test_status_without_bars_is_one_line_with_its_time(piped):
    with progress.console.capture() as cap, status("Loading [model]"):
        pass
    [line] = lines(cap)
    assert line.startswith("Loading [model] … done in ")  # markup in a message is text
    assert line.endswith(" s") and "\r" not in line


def test_status_of_failed_work_prints_no_done_line(piped):
    with progress.console.capture() as cap, pytest.raises(ValueError), status("Loading model"):
        raise ValueError("boom")
    assert cap.get() == ""


def test_track_without_bars_is_one_line_at_the_end(piped):
    with progress.console.capture() as cap:
        assert list(track(range(3), "Scoring validation")) == [0, 1, 2]
    [line] = lines(cap)
    assert line.startswith("Scoring validation … 3/3 done in ")


def test_meter_in_a_log_writes_a_line_at_most_every_interval(piped):
    clock = Clock()
    with progress.console.capture() as cap:
        meter = Meter("training", 50, every=30.0, clock=clock)
        meter.start()
        for t, step in ((10, 5), (31, 12), (45, 20), (62, 25), (70, 30)):
            clock.now = t
            meter.update(step, f"epoch 1/2 step {step}/50 loss 0.41")
        clock.now = 75.25
        meter.close()
        meter.close()  # a second close says nothing
    assert lines(cap) == [
        "training … epoch 1/2 step 12/50 loss 0.41 (31 s)",
        "training … epoch 1/2 step 25/50 loss 0.41 (62 s)",
        "training … epoch 1/2 step 30/50 loss 0.41 done in 75.2 s",
    ]


def test_meter_when_quiet_says_nothing(piped, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_QUIET", "1")
    clock = Clock()
    with progress.console.capture() as cap, Meter("training", 2, every=1.0, clock=clock) as m:
        clock.now = 5
        m.update(2)
    assert cap.get() == ""


def on_a_terminal(code: str) -> tuple[int, str]:
    """Run `code` with stderr on a pseudo-terminal, no TUNEFORGE_PROGRESS: (exit code, drawn)."""
    leader, follower = pty.openpty()
    unset = ("TUNEFORGE_QUIET", "TUNEFORGE_PROGRESS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    proc = subprocess.run([sys.executable, "-c", code], stderr=follower, env=env, timeout=60)
    os.close(follower)
    drawn = os.read(leader, 65536).decode(errors="replace")
    os.close(leader)
    return proc.returncode, drawn


def test_bars_are_drawn_on_a_terminal_unasked():
    code = "from tuneforge.progress import track\nfor _ in track(range(3), 'counting'): pass\n"
    returncode, drawn = on_a_terminal(code)
    assert returncode == 0
    assert "counting" in drawn and "3/3" in drawn
    assert "\x1b[" in drawn  # drawn as a live display, not a finished line
    assert "done in" not in drawn


def test_a_bar_left_open_by_an_interrupt_gives_the_cursor_back():
    code = "from tuneforge.progress import Meter\nMeter('training', 10).start()\nraise KeyboardInterrupt\n"
    returncode, drawn = on_a_terminal(code)
    assert returncode != 0 and "KeyboardInterrupt" in drawn
    assert drawn.count("\x1b[?25l") == 1  # the cursor hidden while the bar is drawn
    assert drawn.endswith("\x1b[?25h")  # and shown again at exit, after the traceback


def state(**fields) -> TrainerState:
    s = TrainerState(max_steps=6, num_train_epochs=2)
    for name, value in fields.items():
        setattr(s, name, value)
    return s


def test_where_training_is():
    assert where(state(epoch=0.3333, global_step=1), None) == "epoch 1/2 step 1/6"
    assert where(state(epoch=1.0, global_step=3), 0.68204) == "epoch 1/2 step 3/6 loss 0.682"
    assert where(state(epoch=1.3333, global_step=4), 0.5) == "epoch 2/2 step 4/6 loss 0.5"
    assert where(state(epoch=2.0, global_step=6), 0.51) == "epoch 2/2 step 6/6 loss 0.51"


def test_evaluation_line_has_the_metrics_and_the_time_not_the_speed():
    metrics = {
        "eval_loss": 0.63912,
        "eval_accuracy": 0.625,
        "eval_macro_f1": 0.56364,
        "eval_runtime": 2.04,
        "eval_samples_per_second": 658.3,
        "eval_steps_per_second": 82.29,
        "epoch": 1.0,
    }
    assert evaluation_line(state(epoch=1.0, global_step=3), metrics) == (
        "evaluation at step 3 (epoch 1): loss 0.6391 accuracy 0.625 macro_f1 0.5636 (2.0 s)"
    )


def test_progress_log_in_a_pipe_speaks_for_rank_0_only(piped, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    control = TrainerControl()
    with progress.console.capture() as cap:
        for zero in (False, True):
            log = ProgressLog()
            s = state(is_world_process_zero=zero, epoch=0.0, global_step=0)
            log.on_train_begin(args, s, control)
            for step in range(1, 7):
                s.global_step, s.epoch = step, step / 3
                log.on_step_end(args, s, control)
                log.on_log(args, s, control, logs={"loss": 0.9 - step / 10})
                if step % 3 == 0:
                    log.on_evaluate(
                        args, s, control, metrics={"eval_loss": 0.5, "eval_runtime": 0.1}
                    )
            log.on_train_end(args, s, control)
    out = lines(cap)
    assert out[:2] == [
        "evaluation at step 3 (epoch 1): loss 0.5 (0.1 s)",
        "evaluation at step 6 (epoch 2): loss 0.5 (0.1 s)",
    ]
    assert len(out) == 3 and out[2].startswith("training … epoch 2/2 step 6/6 loss 0.3 done in ")


def test_unactionable_warnings_are_silenced_others_are_not():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        tame()
        warnings.warn(
            "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use "
            "`is_activation_checkpointing` instead.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn("`something_else` is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["`something_else` is deprecated"]


def test_the_trainers_mtime_notice_is_dropped():
    tame()
    logger = logging.getLogger("transformers.trainer_utils")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    try:
        logger.warning(
            "mtime may not be reliable on this filesystem, falling back to numerical ordering"
        )
        logger.warning("checkpoint-3 is missing")
    finally:
        logger.removeHandler(handler)
    assert records == ["checkpoint-3 is missing"]


SILENCED_RANK = """
import logging, os, warnings
from tuneforge.training import distributed
distributed.silence()
warnings.warn("a warning every rank would repeat", UserWarning)
logging.getLogger("transformers.modeling_utils").warning("a library notice")
logging.getLogger("transformers.modeling_utils").error("a library error")
from tuneforge.progress import bars_enabled, console
console.print("a message")
print("bars", bars_enabled(), os.environ["TUNEFORGE_QUIET"])
"""


def test_a_rank_other_than_0_is_silent_but_for_errors():
    env = {**os.environ, "TUNEFORGE_PROGRESS": "1"}
    env.pop("TUNEFORGE_QUIET", None)
    proc = subprocess.run(
        [sys.executable, "-c", SILENCED_RANK],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert proc.stdout == "bars False 1\n"
    assert proc.stderr == "a library error\n"


def test_checkpointing_is_enabled_under_its_current_name(tiny_model):
    """LoRA + activation checkpointing through `methods` alone: no FutureWarning about the
    deprecated `gradient_checkpointing` names, and the adapters still get gradients."""
    import torch

    from tuneforge.config import FreezeConfig, LoraConfig
    from tuneforge.methods import apply_method, enable_gradient_checkpointing
    from tuneforge.models import load_causal_lm

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = load_causal_lm(tiny_model)
        model = apply_method(model, "lora", LoraConfig(r=4, alpha=8), FreezeConfig(), "CAUSAL_LM")
        enable_gradient_checkpointing(model, "lora")
        assert model.base_model.model.is_activation_checkpointing
        model.train()
        ids = torch.tensor([[1, 5, 9, 14, 3]])
        model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_the_gguf_readers_own_bar_follows_the_progress_switch(monkeypatch):
    """transformers draws the GGUF conversion bar with tqdm directly (a first run's log showed it);
    while converting it is off when bars are, and it is the library's own bar again after."""
    from transformers import modeling_gguf_pytorch_utils as gguf

    from tuneforge.library_output import gguf_conversion_bar

    original = gguf.tqdm
    monkeypatch.setenv("TUNEFORGE_PROGRESS", "0")
    monkeypatch.delenv("TUNEFORGE_QUIET", raising=False)
    with gguf_conversion_bar():
        assert gguf.tqdm(range(3)).disable
    assert gguf.tqdm is original
    monkeypatch.setenv("TUNEFORGE_PROGRESS", "1")
    with gguf_conversion_bar():
        assert gguf.tqdm is original
