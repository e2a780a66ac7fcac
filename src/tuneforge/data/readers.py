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

from tuneforge.errors import TuneforgeError, did_you_mean

Row = dict[str, Any]
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


Skipped = list[tuple[int, str]]


def read_records(
    path: str | Path, *, what: str = "data", skipped: Skipped | None = None
) -> list[Row]:
    """All rows of a data file; `what` names the role (e.g. 'data.train') in error messages.

    By default the first broken row raises. With a `skipped` list (used by `data check`), rows
    that cannot be parsed are recorded there as (line, problem) and left out instead.
    """
    path = Path(path)
    if not path.exists():
        where = "in the recipe" if what.startswith("data.") else "on the command line"
        raise TuneforgeError(f"{what}: file not found: {path}", hint=f"check the path {where}")
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
            text = read_utf8(path, what)
            if fmt in ("csv", "tsv"):
                rows = _read_csv(text, path, what, "," if fmt == "csv" else "\t", skipped)
            elif fmt == "json" and text.lstrip().startswith("["):
                rows = _read_json_array(text, path, what)
            else:
                rows = _read_jsonl(text, path, what, skipped)
    if not rows:
        raise TuneforgeError(f"{what}: {path} has no rows")
    return rows


def read_utf8(path: Path, what: str) -> str:
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TuneforgeError(
            f"{what}: {path} line 1: the file is UTF-16 text (it starts with a UTF-16 byte "
            "order mark), not UTF-8",
            hint="re-save it as UTF-8 (in Excel: 'CSV UTF-8'), "
            "e.g. `iconv -f utf-16 -t utf-8 in.csv > out.csv`",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TuneforgeError(
            f"{what}: {path} line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})",
            hint="re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`",
        ) from None


def _row_problem(skipped: Skipped | None, line: int, error: TuneforgeError) -> None:
    """Raise, or record the broken row and go on (lenient mode)."""
    if skipped is None:
        raise error
    skipped.append((line, error.message.split(f"line {line}: ", 1)[-1]))


def _read_csv(
    text: str, path: Path, what: str, delimiter: str, skipped: Skipped | None = None
) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[Row] = []
    start = 1  # first physical line of the record being read (a quoted cell may span lines)
    try:
        header = next(reader, None)
        if not header:
            raise TuneforgeError(f"{what}: {path} has no header row")
        if len(set(header)) != len(header):
            raise TuneforgeError(
                f"{what}: {path} line 1: duplicate column names in the header {header}"
            )
        while True:
            start = reader.line_num + 1
            cells = next(reader, None)
            if cells is None:
                break
            if len(cells) > len(header):
                _row_problem(
                    skipped,
                    reader.line_num,
                    TuneforgeError(
                        f"{what}: {path} line {reader.line_num}: {len(cells)} cells "
                        f"but the header has {len(header)} columns",
                        hint="quote cells that contain the delimiter",
                    ),
                )
                continue
            if len(cells) < len(header):
                if all(c == "" for c in cells):
                    continue  # a blank line
                _row_problem(
                    skipped,
                    reader.line_num,
                    TuneforgeError(
                        f"{what}: {path} line {reader.line_num}: fewer cells than the "
                        f"{len(header)} header columns"
                    ),
                )
                continue
            row: Row = dict(zip(header, cells, strict=True))
            row["_line"] = reader.line_num
            rows.append(row)
    except csv.Error as e:
        if "end of data" in str(e):
            hint = 'a quoted cell starting on this line is never closed: add the closing quote (")'
        else:
            hint = (
                'look for an unmatched quote (") on this line: a cell that starts with a quote '
                "runs to the next quote, even on a later line"
            )
        hint += '; a quote inside a quoted cell is written ""'
        message = f"{what}: {path} line {start}: malformed CSV: {e}"
        raise TuneforgeError(message, hint=hint) from None
    return rows


def _read_jsonl(text: str, path: Path, what: str, skipped: Skipped | None = None) -> list[Row]:
    rows: list[Row] = []
    # Split on "\n" only: str.splitlines() also breaks at U+2028, form feeds etc., which JSON
    # strings may contain unescaped (json.dumps(..., ensure_ascii=False) writes U+2028 as is).
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            _row_problem(
                skipped,
                number,
                TuneforgeError(
                    f"{what}: {path} line {number}: invalid JSON: {e.msg} (column {e.colno})",
                    hint="JSONL needs one complete JSON object per line",
                ),
            )
            continue
        if not isinstance(obj, dict):
            _row_problem(
                skipped,
                number,
                TuneforgeError(
                    f"{what}: {path} line {number}: expected a JSON object, got {type(obj).__name__}"
                ),
            )
            continue
        obj["_line"] = number
        rows.append(obj)
    return rows


def _read_json_array(text: str, path: Path, what: str) -> list[Row]:
    """A JSON array of objects; each row remembers the line its object starts on."""
    decoder = json.JSONDecoder()
    ws = " \t\r\n"

    def fail(pos: int, message: str) -> TuneforgeError:
        return TuneforgeError(f"{what}: {path} line {text.count(chr(10), 0, pos) + 1}: {message}")

    pos = text.index("[") + 1
    rows: list[Row] = []
    line, counted = 1, 0
    while True:
        while pos < len(text) and text[pos] in ws:
            pos += 1
        if pos < len(text) and text[pos] == "]" and not rows:
            break
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise fail(e.pos, f"invalid JSON: {e.msg}") from None
        line += text.count("\n", counted, pos)
        counted = pos
        if not isinstance(obj, dict):
            kind = type(obj).__name__
            raise fail(pos, f"item {len(rows) + 1}: expected a JSON object, got {kind}")
        rows.append({**obj, "_line": line})
        pos = end
        while pos < len(text) and text[pos] in ws:
            pos += 1
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            break
        if pos >= len(text):
            raise fail(pos, "invalid JSON: the array is never closed with ']'")
        raise fail(pos, "invalid JSON: expected ',' or ']' after an array item")
    if text[pos + 1 :].strip():
        raise fail(pos + 1, "invalid JSON: extra data after the closing ']'")
    return rows


def _read_parquet(path: Path, what: str) -> list[Row]:
    import pyarrow.parquet as pq  # deferred: CLI start of report (pyarrow)

    try:
        table = pq.read_table(path)
    except Exception as e:
        raise TuneforgeError(f"{what}: {path}: cannot read Parquet: {e}") from None
    return [{**row, "_line": i + 1} for i, row in enumerate(table.to_pylist())]


def _read_saved_dataset(path: Path, what: str) -> list[Row]:
    import datasets  # deferred: CLI start of report (datasets)

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception:
        raise TuneforgeError(
            f"{what}: {path} is a folder but not one saved by datasets.save_to_disk",
            hint="point at a file (.csv, .jsonl, .parquet) or a saved dataset folder",
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise TuneforgeError(
                f"{what}: {path} holds several splits ({', '.join(ds)}); point at one split's folder"
            )
        ds = next(iter(ds.values()))
    assert isinstance(ds, datasets.Dataset)
    return [{**row, "_line": i + 1} for i, row in enumerate(ds)]


def require_column(rows: list[Row], column: str, path: Path | str, what: str) -> None:
    """Fail with the available columns when a configured column is missing."""
    columns = [c for c in rows[0] if c != "_line"]
    if column not in columns:
        if what.startswith("data."):
            hint = "set the column name in the recipe's data section (e.g. data.text_field)"
        else:  # a file given to predict / eval: the run fixes the column names
            hint = f"the run reads column '{column}' (as in its training data): rename the column"
        if len(columns) == 1:
            sep = next((d for d in (";", "\t", "|", ",") if d in columns[0]), None)
            if sep is not None:
                shown = {"\t": "tabs", ";": "';'", "|": "'|'", ",": "','"}[sep]
                hint = (
                    f"the header looks separated by {shown}: a .csv file must use ',' and a "
                    ".tsv file tabs; re-save the file with the right separator or extension"
                )
        close = did_you_mean(column, columns)
        raise TuneforgeError(
            f"{what}: {path} has no column '{column}'{close}; columns: {columns}", hint=hint
        )
    for row in rows:
        if column not in row:
            raise TuneforgeError(f"{what}: {row_where(path, row)}: missing field '{column}'")


def row_where(path: Path | str, row: Row) -> str:
    """'file line N' for text files; 'file row N' for Parquet files and saved datasets."""
    name = str(path)
    unit = "row" if ".parquet" in name.lower() or Path(name.split(" (")[0]).is_dir() else "line"
    return f"{path} {unit} {row.get('_line', '?')}"
