"""The endpoints of runs: the paged list, one run (detail, live progress as server-sent events,
curves, log, report), its actions (cancel, resume, export, register) and its playground."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse

from tuneforge.errors import TuneforgeError
from tuneforge.runs import registry
from tuneforge.runs.directory import process_alive
from tuneforge.ui import jobs as jobs_module
from tuneforge.ui import live, views
from tuneforge.ui.requests import NO_CACHE, body_json, record_of, state, text_field
from tuneforge.ui.security import valid_model_name

router = APIRouter()
PAGE_SIZE = 50
POLL_SECONDS = 0.5
EXPORT_FORMATS = ("adapter", "merged", "gguf")


@router.get("/api/runs")
def runs(
    request: Request,
    task: str = "",
    status: str = "",
    q: str = "",
    page: int = 1,
) -> dict[str, Any]:
    if task and task not in views.TASKS:
        raise TuneforgeError(f"unknown task '{task}'", hint=f"one of {', '.join(views.TASKS)}")
    if status and status not in views.STATUSES:
        raise TuneforgeError(
            f"unknown status '{status}'", hint=f"one of {', '.join(views.STATUSES)}"
        )
    if page < 1 or len(q) > 200:
        raise TuneforgeError("page must be 1 or more and q at most 200 characters")
    found, total = registry.page_runs(
        state(request).registry,
        task=task or None,
        status=status or None,
        text=q or None,
        offset=(page - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
    )
    return {
        "runs": [views.run_row(r) for r in found],
        "total": total,
        "page": page,
        "pages": max(1, -(-total // PAGE_SIZE)),
    }


@router.get("/api/runs/{run_id}")
def run(request: Request, run_id: str) -> dict[str, Any]:
    return views.run_detail(record_of(request, run_id), state(request).registry)


@router.get("/api/runs/{run_id}/curves")
def curves(request: Request, run_id: str) -> dict[str, Any]:
    record = record_of(request, run_id)
    lines = _all_lines(record)
    return {"id": record.id, "series": live.curves(lines)}


def _all_lines(record: registry.RunRecord) -> list[dict]:
    folder = live.working_folder(record.path)
    lines, _ = live.read_lines(folder)
    if not lines and (folder / "metrics.json").is_file():
        lines = live.history_lines(json.loads((folder / "metrics.json").read_text()))
    return lines


@router.get("/api/runs/{run_id}/events")
async def events(request: Request, run_id: str) -> StreamingResponse:
    """Server-sent events: `progress` with each batch of new progress lines (and the status,
    fraction and ETA), then `end` once the run is no longer running."""
    record = record_of(request, run_id)
    db = state(request).registry

    async def stream() -> AsyncIterator[str]:
        offset, seen = 0, []
        folder = live.working_folder(record.path)
        while True:
            current = await asyncio.to_thread(registry.get_run, record.id, db)
            folder = live.working_folder(current.path)
            lines, offset = await asyncio.to_thread(live.read_lines, folder, offset)
            seen = live.compact(seen + lines)
            found = live.progress(seen)
            payload = {
                "status": current.status,
                "series": live.curves(lines),
                "progress": found.to_dict() if found else None,
            }
            yield f"event: progress\ndata: {json.dumps(payload)}\n\n"
            if current.status != "running":
                yield f"event: end\ndata: {json.dumps({'status': current.status})}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(stream(), media_type="text/event-stream", headers=NO_CACHE)


@router.get("/api/runs/{run_id}/log")
def log(request: Request, run_id: str) -> PlainTextResponse:
    record = record_of(request, run_id)
    text = jobs_module.tail(state(request).jobs.log_of_run(record.id))
    if not text:  # not launched here: the progress lines are the log there is
        text = jobs_module.tail(live.working_folder(record.path) / "progress.jsonl")
    return PlainTextResponse(text)


@router.get("/runs/{run_id}/report")
def report(request: Request, run_id: str) -> FileResponse:
    """The run's self-contained report, sandboxed: no script of it runs, whatever text it quotes."""
    record = record_of(request, run_id)
    path = live.working_folder(record.path) / "report.html"
    if not path.is_file():
        raise TuneforgeError(f"run {record.id} has no report yet (it is written when it finishes)")
    return FileResponse(
        path,
        media_type="text/html",
        headers={
            "Content-Security-Policy": "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
        },
    )


@router.post("/api/runs/{run_id}/cancel")
def cancel_run(request: Request, run_id: str) -> dict[str, Any]:
    """Interrupts a running run (SIGTERM: it ends `interrupted`, resumable)."""
    record = record_of(request, run_id)
    if record.status != "running":
        raise TuneforgeError(f"run {record.id} is {record.status}, not running")
    queue = state(request).jobs
    for job in queue.jobs:
        if job.run_id == record.id and job.state == jobs_module.RUNNING:
            return {"cancelled": queue.cancel(job.id).to_dict()}
    status = json.loads((live.working_folder(record.path) / "status.json").read_text())
    pid = status.get("pid")
    if not process_alive(pid) or not _is_tuneforge(pid):
        raise TuneforgeError(f"run {record.id} has no live tuneforge process to interrupt")
    os.kill(pid, signal.SIGTERM)
    return {"signalled": pid}


def _is_tuneforge(pid: int) -> bool:
    """The process is a tuneforge one (not another that got a dead run's pid)."""
    try:
        return "tuneforge" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


@router.post("/api/runs/{run_id}/resume")
def resume_run(request: Request, run_id: str) -> dict[str, Any]:
    record = record_of(request, run_id)
    folder = live.working_folder(record.path)
    if record.status not in ("interrupted", "failed") or not folder.name.endswith(".incomplete"):
        raise TuneforgeError(f"run {record.id} is {record.status}; only an interrupted run resumes")
    job = state(request).jobs.submit(
        "resume", f"resume {record.id}", ["train", "--resume", str(folder)]
    )
    return {"job": job.to_dict()}


@router.post("/api/runs/{run_id}/export")
async def export_run(request: Request, run_id: str) -> dict[str, Any]:
    body = await body_json(request)
    record = record_of(request, run_id)
    fmt = text_field(body, "format", "merged")
    if fmt not in EXPORT_FORMATS:
        raise TuneforgeError(
            f"unknown export format '{fmt}'", hint=f"one of {', '.join(EXPORT_FORMATS)}"
        )
    if record.status != "finished":
        raise TuneforgeError(f"run {record.id} is {record.status}; only finished runs export")
    output = state(request).home / "exports" / f"{record.id}-{fmt}"
    args = ["export", record.path, "--format", fmt, "--output", str(output), "--force"]
    job = state(request).jobs.submit("export", f"export {record.id} ({fmt})", args)
    return {"job": job.to_dict(), "output": str(output)}


@router.post("/api/runs/{run_id}/register")
async def register(request: Request, run_id: str) -> dict[str, Any]:
    body = await body_json(request)
    record = record_of(request, run_id)
    name = valid_model_name(text_field(body, "name"))
    version = registry.register_model(name, record.id, state(request).registry)
    return {"name": name, "version": version, "run_id": record.id}


@router.post("/api/runs/{run_id}/classify")
async def classify(request: Request, run_id: str) -> dict[str, Any]:
    body = await body_json(request)
    record = record_of(request, run_id)
    texts = body.get("texts")
    if not isinstance(texts, list):
        raise TuneforgeError("'texts' must be a list of strings")
    ui = state(request)
    return await asyncio.to_thread(ui.playground.classify, Path(record.path), texts)


@router.post("/api/runs/{run_id}/chat")
async def chat(request: Request, run_id: str) -> StreamingResponse:
    """The answer streamed as server-sent events: `piece` events, then `done` (or `error`)."""
    body = await body_json(request)
    record = record_of(request, run_id)
    who = text_field(body, "who", "tuned")
    messages = body.get("messages")
    max_tokens = body.get("max_tokens", 64)
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise TuneforgeError("'messages' must be a list of {role, content}")
    if not isinstance(max_tokens, int):
        raise TuneforgeError("'max_tokens' must be a whole number")
    pieces = state(request).playground.chat(Path(record.path), who, messages, max_tokens)
    first = await _first(pieces)  # errors before the stream starts are a 400, not a broken stream

    async def stream() -> AsyncIterator[str]:
        try:
            if first is not None:
                yield f"event: piece\ndata: {json.dumps(first)}\n\n"
                async for piece in pieces:
                    yield f"event: piece\ndata: {json.dumps(piece)}\n\n"
            yield "event: done\ndata: {}\n\n"
        except TuneforgeError as e:
            yield f"event: error\ndata: {json.dumps(e.message)}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers=NO_CACHE)


async def _first(pieces: AsyncIterator[str]) -> str | None:
    try:
        return await pieces.__anext__()
    except StopAsyncIteration:
        return None
