"""The run directory: built under a temporary name, renamed only when everything is written.

`<output_dir>/.<name>-<timestamp>.incomplete/` while the run works; `<output_dir>/<name>-<timestamp>/`
once finished. An interrupted or failed run keeps its `.incomplete` name and says why in
`status.json`, so it can never be mistaken for a finished one.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from tuneforge.errors import TuneforgeError
from tuneforge.files import ensure_dir, fsync_dir, fsync_tree, write_json

INCOMPLETE = ".incomplete"


class RunDir:
    def __init__(self, final: Path) -> None:
        self.final = final
        self.path = final.parent / f".{final.name}{INCOMPLETE}"
        self.started = time.time()

    @classmethod
    def create(cls, output_dir: Path, name: str) -> RunDir:
        ensure_dir(output_dir, "output_dir")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for n in itertools.count(1):
            run = cls(output_dir / (f"{name}-{stamp}" + ("" if n == 1 else f"-{n}")))
            if run.final.exists():
                continue
            try:  # the claim: mkdir is atomic, so runs started in the same second get distinct ids
                run.path.mkdir()
            except FileExistsError:
                continue
            run.set_status("running")
            return run
        raise AssertionError("unreachable")

    @classmethod
    def reopen(cls, partial: Path) -> RunDir:
        """An interrupted or failed run, to be resumed in place."""

        partial = unfinished_folder(partial)
        status = (
            json.loads((partial / "status.json").read_text())
            if (partial / "status.json").is_file()
            else {}
        )
        if status.get("status") == "running" and process_alive(status.get("pid")):
            raise TuneforgeError(f"--resume: {partial} is still running (pid {status['pid']})")
        run = cls(partial.parent / partial.name[1 : -len(INCOMPLETE)])
        run.started = status.get("started", run.started)
        run.set_status("running", resumed=True)
        return run

    def set_status(self, status: str, **extra: Any) -> None:
        write_json(
            self.path / "status.json",
            {
                "status": status,
                "pid": os.getpid(),
                "started": self.started,
                "updated": time.time(),
                **extra,
            },
        )

    def finish(self) -> Path:
        self.set_status("finished", seconds=round(time.time() - self.started, 1))
        fsync_tree(self.path)  # every file on disk before the rename makes the run look finished
        self.path.rename(self.final)
        fsync_dir(self.final.parent)
        return self.final

    def discard(self) -> None:
        """Remove everything (used when the run stopped on a user error before producing anything)."""
        shutil.rmtree(self.path, ignore_errors=True)


def unfinished_folder(path: Path) -> Path:
    """The `.<name>-<timestamp>.incomplete` folder of an unfinished run, given it or its final
    name; a clear error for anything else."""
    partial = Path(path)
    hidden = partial.parent / f".{partial.name}{INCOMPLETE}"
    if not partial.name.endswith(INCOMPLETE) and hidden.is_dir():
        partial = hidden
    if (
        not partial.is_dir()
        or not partial.name.startswith(".")
        or not partial.name.endswith(INCOMPLETE)
    ):
        raise TuneforgeError(
            f"--resume: {partial} is not an unfinished run",
            hint="pass the run's .<name>-<timestamp>.incomplete folder (or its final name)",
        )
    return partial


def process_alive(pid: int | None) -> bool:
    """Whether `pid` runs; a zombie (exited, not yet reaped: an orphan under a PID 1 that does not
    reap) does not. psutil comes with accelerate."""
    if not pid or pid == os.getpid():
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it exists
        return True
