"""`progress.jsonl` in the run directory: the Trainer's progress as it happens, one JSON object a
line, for whoever watches the run from outside its process (the dashboard's live curves).

metrics.json has the whole log history, but only once the run has finished; evaluations.json only
the evaluations. This file gets a line when training begins (max_steps), at every log (training
loss, learning rate; evaluation metrics as `eval_*`) and at most every `every` seconds at a step
end (how far it is, for the progress bar and ETA). Appending a short line is atomic enough for a
reader that skips a last line without its newline. Rank 0 alone writes it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

FILE = "progress.jsonl"


class LiveProgress(TrainerCallback):
    def __init__(self, run_path: Path, every: float = 1.0) -> None:
        self.path = run_path / FILE
        self.every = every
        self._last = 0.0

    def _write(self, state, **fields: Any) -> None:
        if not state.is_world_process_zero:
            return
        line = {"time": round(time.time(), 3), "step": state.global_step, **fields}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=_finite) + "\n")
        self._last = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self._write(state, event="begin", max_steps=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self._last >= self.every or state.global_step == state.max_steps:
            self._write(state, event="step", max_steps=state.max_steps, epoch=state.epoch)

    def on_log(self, args, state, control, logs=None, **kwargs):
        numbers = {
            k: _finite(v)
            for k, v in (logs or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self._write(state, event="log", max_steps=state.max_steps, **numbers)


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: a diverged loss is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (int, float)) else str(value)
