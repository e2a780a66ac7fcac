"""Batch prediction for a run: texts in, one result per text out."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tuneforge.data.readers import read_records
from tuneforge.errors import TuneforgeError
from tuneforge.files import ensure_dir
from tuneforge.runs.run import Run


def predict_texts(run: str | Path | Run, texts: list[str]) -> list[dict[str, Any]]:
    loaded = run if isinstance(run, Run) else Run.load(run)
    for i, text in enumerate(texts):
        if not text.strip():
            raise TuneforgeError(f"predict: text {i + 1} is empty")
    return loaded.predict(texts)


def predict_records(run: str | Path | Run, input_path: Path) -> list[dict[str, Any]]:
    """One record per row of a file: the input row's fields plus the prediction.

    The task says which columns are the input (classification: the text; sft: the chat or prompt).
    """
    loaded = run if isinstance(run, Run) else Run.load(run)
    rows = read_records(input_path, what="--input")
    inputs = loaded.task.inputs_from_rows(rows, input_path, loaded.meta["info"])
    results = loaded.predict(inputs)
    return [
        {**{k: v for k, v in row.items() if k != "_line"}, **result}
        for row, result in zip(rows, results, strict=True)
    ]


def predict_file(run: str | Path | Run, input_path: Path, output_path: Path) -> int:
    """Predict every row of a file and write JSONL (the input row plus the prediction)."""
    records = predict_records(run, input_path)
    ensure_dir(output_path.parent, "--output")
    tmp = output_path.with_name(f".{output_path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(output_path)
    return len(records)
