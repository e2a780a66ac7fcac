"""Files that are either whole or absent: atomic writes (temporary name, fsync, rename) and
flushing a folder tree to the disk before it is published by a rename."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def ensure_dir(path: Path, what: str) -> None:
    """mkdir -p with a clear error when a file (or something unwritable) is in the way."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise TuneforgeError(
            f"{what}: {path} (or one of its parents) is a file, not a folder"
        ) from None
    except PermissionError:
        raise TuneforgeError(f"{what}: no permission to create {path}") from None


def write_text(path: Path, text: str) -> None:
    """Write text atomically and durably (temporary name, fsync, rename), like :func:`write_json`."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def fsync_tree(root: Path) -> None:
    """Flush every file under `root`, then every folder (bottom-up), to the disk."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
