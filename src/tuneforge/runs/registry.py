"""The run registry (SQLite): every run's lineage, status and metrics; named model versions.

One file, standard library only. Lineage is what reproduces or audits a run: the recipe, the base
model's identity and weights hash, a content hash of every data file, package versions, hardware,
the project's git commit. Named models get versions and stages; promotion to a stage is gated on
the evaluation metric and every forced promotion is recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError
from tuneforge.paths import default_registry
from tuneforge.runs.directory import process_alive

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, path TEXT NOT NULL, name TEXT, task TEXT, method TEXT, base_model TEXT,
    base_weights_sha256 TEXT, parent TEXT, status TEXT NOT NULL, created REAL, finished REAL,
    recipe TEXT, data TEXT, versions TEXT, hardware TEXT, git_commit TEXT, metrics TEXT, error TEXT
);
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL, version INTEGER NOT NULL, run_id TEXT NOT NULL REFERENCES runs(id),
    stage TEXT NOT NULL DEFAULT 'none', registered REAL, PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS events (
    time REAL NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL, detail TEXT
);
"""


def registry_path(override: Path | None = None) -> Path:
    """Recipe/CLI override, else $TUNEFORGE_REGISTRY, else <tuneforge home>/registry.sqlite."""
    if override is not None:
        return Path(override)
    return default_registry()


@contextlib.contextmanager
def connect(path: Path | None = None) -> Iterator[sqlite3.Connection]:
    db = registry_path(path)
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        conn.executescript(SCHEMA)
        with conn:
            yield conn
    finally:
        conn.close()


def record_run(run_id: str, **fields: Any) -> None:
    """Insert or update one run; dict/list values are stored as JSON."""
    db = fields.pop("registry", None)
    values = {
        k: json.dumps(v, default=str) if isinstance(v, (dict, list)) else v
        for k, v in fields.items()
    }
    with connect(db) as conn:
        exists = conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone()
        if exists:
            if values:
                sets = ", ".join(f"{k} = ?" for k in values)
                conn.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*values.values(), run_id))
        else:
            cols = ["id", *values]
            conn.execute(
                f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                (run_id, *values.values()),
            )


@dataclass
class RunRecord:
    id: str
    path: str
    status: str
    row: dict[str, Any]

    def json(self, key: str) -> Any:
        value = self.row.get(key)
        return json.loads(value) if value else None


def list_runs(db: Path | None = None) -> list[RunRecord]:
    with connect(db) as conn:
        rows = conn.execute("SELECT * FROM runs ORDER BY created DESC").fetchall()
    return [_alive(RunRecord(r["id"], r["path"], r["status"], dict(r))) for r in rows]


LIGHT_COLUMNS = (
    "id, path, name, task, method, base_model, parent, status, created, finished, metrics, error"
)


def page_runs(
    db: Path | None = None,
    *,
    task: str | None = None,
    status: str | None = None,
    text: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[RunRecord], int]:
    """One page of runs, newest first, and how many match: filtered by task and text (id, name or
    base model containing it) in SQL, by the live status (a dead 'running' run is 'interrupted')
    here. Only the columns a list shows are read, so thousands of runs stay fast."""
    where, args = [], []
    if task:
        where.append("task = ?")
        args.append(task)
    if text:
        where.append(
            "(id LIKE ? ESCAPE '\\' OR name LIKE ? ESCAPE '\\' OR base_model LIKE ? ESCAPE '\\')"
        )
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        args += [pattern] * 3
    if status in ("running", "interrupted"):  # a dead 'running' run reads as interrupted
        where.append("status IN ('running', 'interrupted')")
    elif status:
        where.append("status = ?")
        args.append(status)
    sql = f"SELECT {LIGHT_COLUMNS} FROM runs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    with connect(db) as conn:
        rows = conn.execute(sql + " ORDER BY created DESC", args).fetchall()
    records = [_alive(RunRecord(r["id"], r["path"], r["status"], dict(r))) for r in rows]
    if status:
        records = [r for r in records if r.status == status]
    return records[offset : offset + limit], len(records)


def get_run(ref: str, db: Path | None = None) -> RunRecord:
    """A run by id, by a unique id prefix, or by its directory path."""
    name = Path(ref).name if ("/" in ref or Path(ref).is_dir()) else ref
    with connect(db) as conn:
        rows = conn.execute(
            "SELECT * FROM runs WHERE id = ? OR id LIKE ?", (name, f"{name}%")
        ).fetchall()
    exact = [r for r in rows if r["id"] == name]
    rows = exact or rows
    if not rows:
        raise TuneforgeError(
            f"run '{ref}' is not in the registry {registry_path(db)}",
            hint="see `tuneforge runs list`",
        )
    if len(rows) > 1:
        raise TuneforgeError(f"run '{ref}' is ambiguous: {', '.join(r['id'] for r in rows)}")
    r = rows[0]
    return _alive(RunRecord(r["id"], r["path"], r["status"], dict(r)))


def _alive(record: RunRecord) -> RunRecord:
    """A 'running' run whose process is gone was killed: report it as interrupted."""
    if record.status == "running":
        status = Path(record.path).parent / f".{Path(record.path).name}.incomplete" / "status.json"
        with contextlib.suppress(Exception):
            pid = json.loads(status.read_text())["pid"]
            if pid == os.getpid() or process_alive(pid):
                return record
        record.status = "interrupted"
    return record


def remove_run(ref: str, db: Path | None = None, *, delete_files: bool = True) -> RunRecord:
    record = get_run(ref, db)
    with connect(db) as conn:
        used = conn.execute(
            "SELECT name, version FROM models WHERE run_id = ?", (record.id,)
        ).fetchall()
        if used:
            names = ", ".join(f"{r['name']}@{r['version']}" for r in used)
            raise TuneforgeError(f"run {record.id} is registered as {names}; it cannot be removed")
        children = conn.execute("SELECT id FROM runs WHERE parent = ?", (record.id,)).fetchall()
        if children and delete_files:  # continued runs load their parent's weights from its folder
            ids = ", ".join(r["id"] for r in children)
            raise TuneforgeError(
                f"run {record.id} is the parent of {ids}, which load(s) its weights; it cannot be deleted",
                hint="remove the continued runs first, or pass --keep-files to only forget it",
            )
        conn.execute("DELETE FROM runs WHERE id = ?", (record.id,))
        conn.execute(
            "INSERT INTO events VALUES (?, 'run_removed', ?, ?)",
            (time.time(), record.id, record.path),
        )
    if delete_files and Path(record.path).is_dir():
        shutil.rmtree(record.path)
    return record


def lineage_chain(ref: str, db: Path | None = None) -> list[RunRecord]:
    """The run, its parent run, the parent's parent... (continued fine-tuning)."""
    chain = [get_run(ref, db)]
    while chain[-1].row.get("parent") and len(chain) < 100:
        try:
            chain.append(get_run(chain[-1].row["parent"], db))
        except TuneforgeError:
            break
    return chain


# --------------------------------------------------------------------------------------------------
# Named models


def register_model(name: str, run_ref: str, db: Path | None = None) -> int:
    record = get_run(run_ref, db)
    if record.status != "finished":
        raise TuneforgeError(
            f"run {record.id} is {record.status}; only finished runs can be registered"
        )
    with connect(db) as conn:
        (latest,) = conn.execute(
            "SELECT COALESCE(MAX(version), 0) FROM models WHERE name = ?", (name,)
        ).fetchone()
        version = latest + 1
        conn.execute(
            "INSERT INTO models VALUES (?, ?, ?, 'none', ?)",
            (name, version, record.id, time.time()),
        )
        conn.execute(
            "INSERT INTO events VALUES (?, 'registered', ?, ?)",
            (time.time(), f"{name}@{version}", record.id),
        )
    return version


def list_models(db: Path | None = None) -> list[dict[str, Any]]:
    with connect(db) as conn:
        rows = conn.execute("SELECT * FROM models ORDER BY name, version").fetchall()
    return [dict(r) for r in rows]


def model_version(name: str, version: int | str, db: Path | None = None) -> dict[str, Any]:
    """`version` is a number or a stage name (e.g. production)."""
    with connect(db) as conn:
        if str(version).isdigit():
            row = conn.execute(
                "SELECT * FROM models WHERE name = ? AND version = ?", (name, int(version))
            ).fetchone()
        else:
            row = conn.execute(
                "SELECT * FROM models WHERE name = ? AND stage = ? ORDER BY version DESC",
                (name, str(version)),
            ).fetchone()
    if row is None:
        raise TuneforgeError(
            f"model {name}@{version} is not registered", hint="see `tuneforge models list`"
        )
    return dict(row)


def set_stage(
    name: str,
    version: int,
    stage: str,
    *,
    forced: bool,
    detail: dict[str, Any],
    db: Path | None = None,
) -> None:
    """Move a version to `stage`; the previous holder of that stage is archived."""
    with connect(db) as conn:
        conn.execute(
            "UPDATE models SET stage = 'archived' WHERE name = ? AND stage = ?", (name, stage)
        )
        conn.execute(
            "UPDATE models SET stage = ? WHERE name = ? AND version = ?", (stage, name, version)
        )
        kind = "promoted_forced" if forced else "promoted"
        conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?)",
            (time.time(), kind, f"{name}@{version}", json.dumps(detail)),
        )


def events(db: Path | None = None) -> list[dict[str, Any]]:
    with connect(db) as conn:
        return [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY time").fetchall()]
