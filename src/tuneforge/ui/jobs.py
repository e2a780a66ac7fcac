"""The launch queue: the dashboard's trainings (and exports) run one at a time, each as a
`tuneforge` subprocess, so the dashboard stays responsive and a training gets the machine's cores
(two torch processes at once slow each other several-fold). The rest wait, visible and
cancellable. Cancelling a running training sends it SIGTERM, which the job marks `interrupted`
(training/job.py) and keeps resumable; the job's output goes to a log file the run page tails.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import TuneforgeError

RUN_DIRECTORY = re.compile(r"Run directory: (\S+) \(written as")
WAITING, RUNNING, FINISHED, FAILED, CANCELLED = (
    "waiting",
    "running",
    "finished",
    "failed",
    "cancelled",
)


@dataclass
class Job:
    id: int
    kind: str  # train | resume | export
    title: str
    args: list[str]  # after `tuneforge`
    log: str
    state: str = WAITING
    queued: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    returncode: int | None = None
    run_id: str | None = None
    error: str | None = None
    pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JobQueue:
    """Jobs in order; a worker thread runs the first waiting one when none runs."""

    def __init__(self, folder: Path, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.cwd = cwd
        self.env = env
        self.jobs: list[Job] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._process: subprocess.Popen | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="tuneforge-ui-jobs", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ asking

    def submit(self, kind: str, title: str, args: list[str]) -> Job:
        with self._lock:
            job_id = next(self._ids)
            log = self.folder / f"job-{int(time.time())}-{job_id}.log"
            job = Job(job_id, kind, title, args, str(log))
            self.jobs.append(job)
        self._wake.set()
        return job

    def get(self, job_id: int) -> Job:
        for job in self.jobs:
            if job.id == job_id:
                return job
        raise TuneforgeError(f"no job {job_id} in the queue")

    def cancel(self, job_id: int) -> Job:
        """A waiting job leaves the queue; a running one gets SIGTERM (training: interrupted)."""
        with self._lock:
            job = self.get(job_id)
            if job.state == WAITING:
                job.state, job.ended = CANCELLED, time.time()
            elif job.state == RUNNING and self._process is not None:
                self._process.send_signal(signal.SIGTERM)
                job.error = "cancelled: interrupted, resumable"
            else:
                raise TuneforgeError(
                    f"job {job_id} is {job.state}; only waiting or running jobs cancel"
                )
        return job

    def log_of_run(self, run_id: str) -> Path | None:
        """The log of the job that trained `run_id` (the newest), or the index file's memory of it."""
        for job in reversed(self.jobs):
            if job.run_id == run_id:
                return Path(job.log)
        index = self._index()
        return Path(index[run_id]) if run_id in index else None

    def close(self) -> None:
        """Ends the worker; a running training is interrupted (resumable), not orphaned."""
        self._stop = True
        self._wake.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    # ------------------------------------------------------------------ working

    def _next(self) -> Job | None:
        with self._lock:
            return next((j for j in self.jobs if j.state == WAITING), None)

    def _work(self) -> None:
        while not self._stop:
            job = self._next()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        env = {
            **os.environ,
            **(self.env or {}),
            "TUNEFORGE_PROGRESS": "0",  # one line per phase: a log, not a terminal
            "COLUMNS": "400",  # rich wraps nothing a log line holds
            "PYTHONUNBUFFERED": "1",
        }
        with self._lock:
            if job.state != WAITING:  # cancelled meanwhile
                return
            with open(job.log, "wb") as log:
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "tuneforge.cli", *job.args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.cwd,
                    env=env,
                )
            job.state, job.started, job.pid = RUNNING, time.time(), self._process.pid
        while self._process.poll() is None:
            self._learn_run_id(job)
            time.sleep(0.5)
        self._learn_run_id(job)
        with self._lock:
            job.returncode = self._process.returncode
            job.ended = time.time()
            if job.returncode == 0:
                job.state = FINISHED
            elif job.error and job.error.startswith("cancelled"):
                job.state = CANCELLED
            else:
                job.state = FAILED
                job.error = error_message(Path(job.log)) or f"exit code {job.returncode}"
            self._process = None

    def _learn_run_id(self, job: Job) -> None:
        if job.run_id is not None or job.kind == "export":
            return
        try:
            text = Path(job.log).read_text(errors="replace")
        except OSError:
            return
        found = RUN_DIRECTORY.search(text)
        if found:
            job.run_id = Path(found.group(1)).name
            index = self._index()
            index[job.run_id] = job.log
            (self.folder / "runs.json").write_text(json.dumps(index))

    def _index(self) -> dict[str, str]:
        try:
            return json.loads((self.folder / "runs.json").read_text())
        except (OSError, ValueError):
            return {}


def error_message(log: Path) -> str | None:
    """The CLI's own message of a failed command: from its `error:` line to the end (the hint
    included), as the user would have read it in a terminal."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    at = text.rfind("error:")
    return text[at:].strip()[:4000] if at >= 0 else None


def tail(path: Path | None, max_bytes: int = 20_000) -> str:
    if path is None or not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - max_bytes))
        return f.read().decode("utf-8", errors="replace")
