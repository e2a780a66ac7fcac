"""Read CSV, JSONL, Parquet or a saved `datasets` folder into a list of row dicts.

CSV and JSONL are parsed here with the standard library rather than through `datasets` so that a
broken row is reported with its line number; every problem becomes one TuneforgeError naming the
file and the line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError

Row = dict[str, Any]
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


def read_records(path: str | Path, *, what: str = "data") -> list[Row]:
    """All rows of a data file; `what` names the role (e.g. 'data.train') in error messages."""
    path = Path(path)
    if not path.exists():
        raise TuneforgeError(f"{what}: file not found: {path}", hint="check the path in the recipe")
    if path.is_dir():
        rows = _read_saved_dataset(path, what)
    else:
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise TuneforgeError(
                f"{what}: {path}: unknown format '{path.suffix or '(no extension)'}'",
                hint="use .csv, .tsv, .jsonl, .json, .parquet or a folder saved with datasets.save_to_disk",
            )
        if path.stat().st_size == 0:
            raise TuneforgeError(f"{what}: {path} is empty")
        if fmt == "parquet":
            rows = _read_parquet(path, what)
        else:
            text = _read_utf8(path, what)
            if fmt in ("csv", "tsv"):
                rows = _read_csv(text, path, what, delimiter="," if fmt == "csv" else "\t")
            elif fmt == "json" and text.lstrip().startswith("["):
                rows = _read_json_array(text, path, what)
            else:
                rows = _read_jsonl(text, path, what)
    if not rows:
        raise TuneforgeError(f"{what}: {path} has no rows")
    return rows


def _read_utf8(path: Path, what: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TuneforgeError(
            f"{what}: {path} line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})",
            hint="re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`",
        ) from None


def _read_csv(text: str, path: Path, what: str, delimiter: str) -> list[Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[Row] = []
    try:
        header = reader.fieldnames
        if not header:
            raise TuneforgeError(f"{what}: {path} has no header row")
        if len(set(header)) != len(header):
            raise TuneforgeError(f"{what}: {path} line 1: duplicate column names in the header {header}")
        for row in reader:
            if None in row:  # more cells than header columns
                raise TuneforgeError(
                    f"{what}: {path} line {reader.line_num}: {len(header) + len(row[None])} cells "
                    f"but the header has {len(header)} columns",
                    hint="quote cells that contain the delimiter",
                )
            if any(v is None for v in row.values()):
                if all(v in (None, "") for v in row.values()):
                    continue  # a blank line
                raise TuneforgeError(
                    f"{what}: {path} line {reader.line_num}: fewer cells than the {len(header)} header columns"
                )
            row["_line"] = reader.line_num
            rows.append(row)
    except csv.Error as e:
        raise TuneforgeError(f"{what}: {path} line {reader.line_num}: malformed CSV: {e}") from None
    return rows


def _read_jsonl(text: str, path: Path, what: str) -> list[Row]:
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TuneforgeError(
                f"{what}: {path} line {number}: invalid JSON: {e.msg} (column {e.colno})",
                hint="JSONL needs one complete JSON object per line",
            ) from None
        if not isinstance(obj, dict):
            raise TuneforgeError(f"{what}: {path} line {number}: expected a JSON object, got {type(obj).__name__}")
        obj["_line"] = number
        rows.append(obj)
    return rows


def _read_json_array(text: str, path: Path, what: str) -> list[Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TuneforgeError(f"{what}: {path} line {e.lineno}: invalid JSON: {e.msg}") from None
    rows = []
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise TuneforgeError(f"{what}: {path} item {i}: expected a JSON object, got {type(obj).__name__}")
        rows.append({**obj, "_line": i + 1})
    return rows


def _read_parquet(path: Path, what: str) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:
        raise TuneforgeError(f"{what}: {path}: cannot read Parquet: {e}") from None
    return [{**row, "_line": i + 1} for i, row in enumerate(table.to_pylist())]


def _read_saved_dataset(path: Path, what: str) -> list[Row]:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception:
        raise TuneforgeError(
            f"{what}: {path} is a folder but not one saved by datasets.save_to_disk",
            hint="point at a file (.csv, .jsonl, .parquet) or a saved dataset folder",
        ) from None
    if isinstance(ds, DatasetDict):
        if len(ds) != 1:
            raise TuneforgeError(
                f"{what}: {path} holds several splits ({', '.join(ds)}); point at one split's folder"
            )
        ds = next(iter(ds.values()))
    assert isinstance(ds, Dataset)
    return [{**row, "_line": i + 1} for i, row in enumerate(ds)]


def require_column(rows: list[Row], column: str, path: Path | str, what: str) -> None:
    """Fail with the available columns when a configured column is missing."""
    columns = [c for c in rows[0] if c != "_line"]
    if column not in columns:
        from tuneforge.errors import did_you_mean

        raise TuneforgeError(
            f"{what}: {path} has no column '{column}'{did_you_mean(column, columns)}; columns: {columns}",
            hint="set the column name in the recipe's data section (e.g. data.text_field)",
        )
    for row in rows:
        if column not in row:
            raise TuneforgeError(f"{what}: {path} line {row['_line']}: missing field '{column}'")


def row_where(path: Path | str, row: Row) -> str:
    return f"{path} line {row.get('_line', '?')}"
