"""The feedback log: every chat completion a served run returns, and what its users said of it.

One JSON Lines file per served run, `<run dir>/feedback/feedback.jsonl` unless a path is given,
append-only and kept for good: it is the raw material of the next version (`tuneforge feedback
export` turns it into preference data, :mod:`tuneforge.deploy.feedback_export`). Two record types:

- ``{"type": "completion", "id": "chatcmpl-…", "time": ISO-8601, "model": {"run": <run id>,
  "version": "<name>@<version>" | null}, "prompt": [chat messages], "completion": "<text>"}``,
  written by the server for each chat completion it returns (a stream: once it has ended);
- ``{"type": "feedback", "id": "fb-…", "time", "model", "completion_id": "chatcmpl-…"}`` — or
  ``"prompt"`` (chat messages) and ``"completion"`` (text) instead of the id, for an answer the
  log has not seen — with ``"rating": "up" | "down"`` and/or ``"preferred": "<a better answer>"``,
  and an optional ``"comment"``.

Why the appends look the way they do: several server workers (threads, processes) write one
file, and a worker may be killed mid-write. So each record is one line written by one `os.write`
to a file opened `O_APPEND`, under an exclusive `flock` (writers never interleave), then
`fsync`ed (a record the server acknowledged survives a power cut). A line torn by a kill is
ended by the next writer before its own record, so one bad line never swallows a good one;
readers skip such lines and count them.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneforge.data.chat import Message, parse_messages
from tuneforge.deploy.limits import FeedbackLimits
from tuneforge.errors import TuneforgeError
from tuneforge.files import ensure_dir, fsync_dir

FEEDBACK_DIR = "feedback"
LOG_NAME = "feedback.jsonl"
RATINGS = ("up", "down")
FEEDBACK_FIELDS = ("completion_id", "prompt", "completion", "rating", "preferred", "comment")


def default_log_path(run_dir: Path) -> Path:
    """Where a served run's feedback goes unless `tuneforge serve` is given another path."""
    return Path(run_dir) / FEEDBACK_DIR / LOG_NAME


class FeedbackError(TuneforgeError):
    """A feedback request the client can fix. `http_status` and `param` are what the server
    puts in its OpenAI-shaped error (`{"error": {"message", "type", "param", "code"}}`)."""

    http_status = 400
    code = "invalid_value"

    def __init__(self, message: str, *, param: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.param = param


class FeedbackTooLong(FeedbackError):
    code = "string_above_max_length"


class CompletionNotFound(FeedbackError):
    """Feedback on a completion id the log has never recorded (mistyped, or another server's)."""

    http_status = 404
    code = "not_found"


@dataclass(frozen=True)
class ModelRef:
    """Which model answered: the run's id (its folder name) and, when it was served as a
    registered version, `name@version` — so feedback on version 3 stays on version 3."""

    run: str
    version: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"run": self.run, "version": self.version}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------------------------------
# Appending and reading lines


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One line: compact JSON (a newline inside a string is escaped, so it never splits a line).

    Readable UTF-8; text that is not valid Unicode (a lone surrogate a client sent as `\\ud800`)
    falls back to ASCII escapes rather than failing the request.
    """
    try:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        return (text + "\n").encode()
    except UnicodeEncodeError:
        return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def append_line(path: Path, line: bytes) -> int:
    """Append one whole line atomically and durably; the offset where it starts.

    Under the exclusive lock, a file not ending in a newline holds a line torn by a killed
    writer: ours starts with a newline, so the torn fragment stays a (skipped) line of its own.
    """
    created = not path.exists()
    if created:
        ensure_dir(path.parent, "feedback log folder")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)  # users' words: private
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
        start = os.fstat(fd).st_size
        if start and os.pread(fd, 1, start - 1) != b"\n":
            line, start = b"\n" + line, start + 1
        _write_all(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)  # the new file's name is durable too
    return start


def _write_all(fd: int, data: bytes) -> None:
    """One `os.write` writes a regular file's line whole; the loop only covers a short write."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextmanager
def _shared_lock(path: Path) -> Iterator[int]:
    """Read under a shared lock: a line being appended is never mistaken for a torn one."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)


def read_bytes(path: Path, offset: int = 0) -> bytes:
    with _shared_lock(path) as fd, os.fdopen(os.dup(fd), "rb") as f:
        f.seek(offset)
        return f.read()


def parse_line(line: bytes) -> dict[str, Any] | None:
    """A record, or None for a torn or foreign line (not JSON, not an object, no known type)."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.get("type") not in ("completion", "feedback"):
        return None
    return record


@dataclass
class LogContents:
    """A whole log read back: its records in order and how many lines were skipped."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped_lines: int = 0


def read_log(path: Path) -> LogContents:
    """Every record; torn lines (a writer killed mid-line) and garbage are skipped and counted."""
    path = Path(path)
    if not path.is_file():
        raise TuneforgeError(
            f"no feedback log at {path}",
            hint="a run served with `tuneforge serve` logs its completions and feedback under "
            "<run>/feedback/; pass --log for a log kept elsewhere",
        )
    contents = LogContents()
    for line in read_bytes(path).split(b"\n"):
        if not line.strip():
            continue
        record = parse_line(line)
        if record is None:
            contents.skipped_lines += 1
        else:
            contents.records.append(record)
    return contents


# --------------------------------------------------------------------------------------------------
# The log a server writes


class FeedbackLog:
    """The served run's log: record completions, validate and record feedback on them.

    Safe to share between threads and to open in several processes on one file. Completion ids
    are indexed in memory (id → where its line is), built on open and caught up from the file on
    a miss, so a completion another worker recorded is found too. Each call fsyncs: a server
    calls these from a worker thread (`run_in_threadpool`), not on its event loop.
    """

    def __init__(self, path: Path, model: ModelRef, limits: FeedbackLimits | None = None) -> None:
        self.path = Path(path)
        self.model = model
        self.limits = limits or FeedbackLimits()
        self._index: dict[str, tuple[int, int]] = {}  # completion id -> (offset, length)
        self._scanned = 0  # bytes of the file indexed so far (whole lines only)
        self._lock = threading.Lock()
        if self.path.exists() and not self.path.is_file():
            raise TuneforgeError(f"feedback log {self.path} is not a file")
        with self._lock:
            self._catch_up()

    def record_completion(
        self, completion_id: str, prompt: list[Message], completion: str
    ) -> dict[str, Any]:
        """Log a completion the server is returning (the prompt as the client sent it)."""
        record = {
            "type": "completion",
            "id": completion_id,
            "time": now_iso(),
            "model": self.model.to_json(),
            "prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
            "completion": completion,
        }
        line = encode_record(record)
        start = append_line(self.path, line)
        with self._lock:
            self._index[completion_id] = (start, len(line) - 1)
        return record

    def record_feedback(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Validate a feedback request (the JSON body of `POST /v1/feedback`) and log it.

        Raises :class:`FeedbackError` (400), :class:`FeedbackTooLong` (400) or
        :class:`CompletionNotFound` (404); nothing is written then.
        """
        record = {"type": "feedback", "id": f"fb-{uuid.uuid4().hex}", "time": now_iso()}
        record["model"] = self.model.to_json()
        fields = validate_feedback(body, self.limits)
        if "completion_id" in fields:
            original = self.find_completion(fields["completion_id"])
            if original is None:
                raise CompletionNotFound(
                    f"no completion with id {fields['completion_id']!r} in this server's log",
                    param="completion_id",
                    hint="use the `id` of a chat completion this model returned, or send "
                    "`prompt` and `completion` instead",
                )
            check_preferred_differs(fields, original["completion"])
        record.update(fields)
        append_line(self.path, encode_record(record))
        return record

    def find_completion(self, completion_id: str) -> dict[str, Any] | None:
        """The completion record with this id, or None."""
        with self._lock:
            if completion_id not in self._index:
                self._catch_up()
            where = self._index.get(completion_id)
        if where is None:
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            record = parse_line(os.pread(fd, where[1], where[0]))
        finally:
            os.close(fd)
        return record if record and record.get("id") == completion_id else None

    def _catch_up(self) -> None:
        """Index the whole lines appended since the last look (by any writer); caller holds
        the lock. An unfinished last line is left for the next look."""
        if not self.path.is_file():
            return
        data = read_bytes(self.path, self._scanned)
        pos = self._scanned
        for line in data.split(b"\n")[:-1]:
            if b'"completion"' in line:  # cheap filter before parsing
                record = parse_line(line)
                if record and record["type"] == "completion" and isinstance(record.get("id"), str):
                    self._index[record["id"]] = (pos, len(line))
            pos += len(line) + 1
        self._scanned = pos


# --------------------------------------------------------------------------------------------------
# Validation


def validate_feedback(body: Mapping[str, Any], limits: FeedbackLimits) -> dict[str, Any]:
    """The record's fields from a request body, or a :class:`FeedbackError` naming the field."""
    if not isinstance(body, Mapping):
        raise FeedbackError("feedback must be a JSON object")
    unknown = sorted(set(body) - set(FEEDBACK_FIELDS))
    if unknown:
        raise FeedbackError(
            f"unknown field(s) {unknown}", param=unknown[0], hint=f"fields: {FEEDBACK_FIELDS}"
        )
    given = {k: v for k, v in body.items() if v is not None}
    fields = _target(given, limits)
    rating = given.get("rating")
    if rating is not None and rating not in RATINGS:
        raise FeedbackError(f"rating must be 'up' or 'down', got {rating!r}", param="rating")
    preferred = _text(given, "preferred", limits.max_answer_chars)
    if rating is None and preferred is None:
        raise FeedbackError(
            "feedback needs a `rating` ('up' or 'down') or a `preferred` answer (or both)",
            param="rating",
        )
    comment = _text(given, "comment", limits.max_comment_chars, blank_ok=True)
    fields.update(
        {
            k: v
            for k, v in (("rating", rating), ("preferred", preferred), ("comment", comment))
            if v is not None
        }
    )
    # A `preferred` equal to a `completion` given as text, or a `prompt` ending in an answer,
    # is kept as sent: the OpenAPI document cannot state these rules, so the API does not refuse
    # them; `feedback export` skips (and counts) what it cannot turn into a preference.
    return fields


def _target(given: Mapping[str, Any], limits: FeedbackLimits) -> dict[str, Any]:
    """What the feedback is about: a logged completion's id, or a prompt and its answer."""
    has_text = "prompt" in given or "completion" in given
    if "completion_id" in given:
        if has_text:
            raise FeedbackError(
                "give either `completion_id` or `prompt` and `completion`, not both",
                param="completion_id",
            )
        return {"completion_id": _text(given, "completion_id", limits.max_id_chars)}
    if not ("prompt" in given and "completion" in given):
        raise FeedbackError(
            "feedback needs the `completion_id` of a chat completion, or its `prompt` and "
            "`completion`",
            param="completion_id",
        )
    return {
        "prompt": _prompt(given["prompt"], limits),
        "completion": _text(given, "completion", limits.max_answer_chars),
    }


def _text(given: Mapping[str, Any], name: str, limit: int, blank_ok: bool = False) -> str | None:
    value = given.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or (not blank_ok and not value.strip()):
        raise FeedbackError(f"`{name}` must be a non-empty string", param=name)
    if len(value) > limit:
        raise FeedbackTooLong(
            f"`{name}` is {len(value):,} characters; at most {limit:,} are accepted", param=name
        )
    return value


def _prompt(value: Any, limits: FeedbackLimits) -> list[Message]:
    """Chat messages (or one user message's text), bounded."""
    if isinstance(value, list) and len(value) > limits.max_messages:
        raise FeedbackTooLong(
            f"`prompt` has {len(value)} messages; at most {limits.max_messages} are accepted",
            param="prompt",
        )
    if isinstance(value, str):
        if not value.strip():
            raise FeedbackError("`prompt` must not be empty", param="prompt")
        messages: list[Message] = [{"role": "user", "content": value}]
    else:
        try:
            messages = parse_messages({"prompt": value}, "prompt", "feedback")
        except FeedbackError:
            raise
        except TuneforgeError as e:
            raise FeedbackError(e.message, param="prompt", hint=e.hint) from None
    chars = sum(len(m["content"]) for m in messages)
    if chars > limits.max_prompt_chars:
        raise FeedbackTooLong(
            f"`prompt` is {chars:,} characters; at most {limits.max_prompt_chars:,} are accepted",
            param="prompt",
        )
    return messages


def check_preferred_differs(fields: Mapping[str, Any], completion: str) -> None:
    """An 'edited' answer equal to the original teaches nothing (and makes a pair with no
    preference in it)."""
    preferred = fields.get("preferred")
    if preferred is not None and preferred.strip() == completion.strip():
        raise FeedbackError(
            "`preferred` is the same as the completion",
            param="preferred",
            hint="send the better answer, or only a rating",
        )
