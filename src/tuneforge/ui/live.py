"""A run's progress as it trains, read from its folder: `progress.jsonl` (training/live_progress.py)
line by line from an offset, so a server-sent-event stream sends each line once; the fraction
done and the ETA from it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.runs.directory import INCOMPLETE
from tuneforge.training.live_progress import FILE


def working_folder(path: str | Path) -> Path:
    """Where a run's files are now: its final folder once finished, else `.<name>.incomplete`."""
    final = Path(path)
    if final.is_dir():
        return final
    return final.parent / f".{final.name}{INCOMPLETE}"


def read_lines(folder: Path, offset: int = 0, limit: int = 2_000_000) -> tuple[list[dict], int]:
    """Whole lines of progress.jsonl after byte `offset` (a last line without its newline is
    still being written: left for the next read); the new offset."""
    path = folder / FILE
    if not path.is_file():
        return [], offset
    with path.open("rb") as f:
        f.seek(offset)
        chunk = f.read(limit)
    end = chunk.rfind(b"\n") + 1
    lines = []
    for raw in chunk[:end].splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines, offset + end


@dataclass
class Progress:
    step: int
    max_steps: int
    fraction: float
    eta_seconds: float | None
    loss: float | None

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def progress(lines: list[dict], now: float | None = None) -> Progress | None:
    """How far training is and when it ends, at the rate since it began (or resumed)."""
    if not lines:
        return None
    begins = [i for i, line in enumerate(lines) if line.get("event") == "begin"]
    since = lines[begins[-1] :] if begins else lines
    first, last = since[0], lines[-1]
    max_steps = int(last.get("max_steps") or first.get("max_steps") or 0)
    step = int(last.get("step") or 0)
    losses = [line["loss"] for line in lines if isinstance(line.get("loss"), (int, float))]
    eta = None
    done = step - int(first.get("step") or 0)
    elapsed = (now or time.time()) - float(first.get("time") or 0)
    if done > 0 and max_steps > step and elapsed > 0:
        eta = (max_steps - step) * elapsed / done
    fraction = step / max_steps if max_steps else 0.0
    return Progress(step, max_steps, min(1.0, fraction), eta, losses[-1] if losses else None)


def compact(lines: list[dict]) -> list[dict]:
    """What `progress` needs of the lines seen so far (the last begin, the last loss, the last
    line), so a stream that follows a long run keeps three lines, not all of them."""
    begins = [line for line in lines if line.get("event") == "begin"]
    losses = [line for line in lines if isinstance(line.get("loss"), (int, float))]
    kept = [*begins[-1:], *losses[-1:], *lines[-1:]]
    return [line for i, line in enumerate(kept) if all(line is not k for k in kept[:i])]


def curves(lines: list[dict]) -> dict[str, list[list[float]]]:
    """[step, value] series: training loss and every evaluation metric (eval_ prefix dropped)."""
    series: dict[str, list[list[float]]] = {}
    for line in lines:
        if line.get("event") != "log":
            continue
        for key, value in line.items():
            if not isinstance(value, (int, float)) or key in ("time", "step", "max_steps", "epoch"):
                continue
            if key == "loss":
                name = "train_loss"
            elif key.startswith("eval_") and not key.endswith(("runtime", "per_second")):
                name = key.removeprefix("eval_")
            else:
                continue
            series.setdefault(name, []).append([line["step"], value])
    return series


def history_lines(metrics: dict[str, Any]) -> list[dict]:
    """A finished run without progress.jsonl (trained before it existed): its log history from
    metrics.json in the same shape."""
    return [{"event": "log", **h} for h in metrics.get("log_history", []) if "step" in h]
