"""The JSON and server-sent-event endpoints the dashboard's pages call. Each one is a thin layer
over the library (registry, run folder, promotion gate, recipe validation) or over the CLI run as
a subprocess (data preview, data check, plan, train, export), so the dashboard says what the CLI
says. User errors come back as 400 (409 for a check that said no) with the CLI's message."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse

from tuneforge.errors import CheckFailed, TuneforgeError
from tuneforge.runs import promotion, registry
from tuneforge.runs.directory import process_alive
from tuneforge.ui import drafts as drafts_module
from tuneforge.ui import jobs as jobs_module
from tuneforge.ui import live, views
from tuneforge.ui.security import valid_model_name, valid_run_id

router = APIRouter()
PAGE_SIZE = 50
POLL_SECONDS = 0.5
CLI_TIMEOUT = 600
EXPORT_FORMATS = ("adapter", "merged", "gguf")


def state(request: Request):
    return request.app.state.ui


async def body_json(request: Request) -> dict[str, Any]:
    """The request's JSON object, its size bounded while it is read (a body without a declared
    length is counted too)."""
    limit = state(request).guard.max_body_bytes
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise TuneforgeError(f"request body over {limit} bytes")
    try:
        parsed = json.loads(data or b"{}")
    except ValueError:
        raise TuneforgeError("the request body is not JSON") from None
    if not isinstance(parsed, dict):
        raise TuneforgeError("the request body must be a JSON object")
    return parsed


def text_field(body: dict[str, Any], key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise TuneforgeError(f"'{key}' must be a string")
    return value


def record_of(request: Request, run_id: str) -> registry.RunRecord:
    valid_run_id(run_id)
    record = registry.get_run(run_id, state(request).registry)
    if record.id != run_id:  # no prefix matching from a URL
        raise TuneforgeError(f"run '{run_id}' is not in the registry")
    return record


# ---------------------------------------------------------------------------------------- runs


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
            seen += lines
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

    return StreamingResponse(stream(), media_type="text/event-stream", headers=_NO_CACHE)


_NO_CACHE = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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
    if not process_alive(pid):
        raise TuneforgeError(f"run {record.id} has no live process to interrupt")
    os.kill(pid, signal.SIGTERM)
    return {"signalled": pid}


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

    return StreamingResponse(stream(), media_type="text/event-stream", headers=_NO_CACHE)


async def _first(pieces: AsyncIterator[str]) -> str | None:
    try:
        return await pieces.__anext__()
    except StopAsyncIteration:
        return None


# ------------------------------------------------------------------------------------- recipes


@router.get("/api/recipes/start")
def start(request: Request, key: str) -> dict[str, Any]:
    """A starting point's YAML: `shipped:<file>` or `run:<id>` (its resolved recipe)."""
    kind, _, name = key.partition(":")
    if kind == "shipped":
        text = drafts_module.shipped_text(name)
    elif kind == "run":
        record = record_of(request, name)
        path = live.working_folder(record.path) / "recipe.yaml"
        if not path.is_file():
            raise TuneforgeError(f"run {record.id} has no recipe.yaml")
        text = path.read_text(encoding="utf-8")
    else:
        raise TuneforgeError(f"unknown starting point '{key}'", hint="shipped:<file> or run:<id>")
    return {"yaml": text, "values": drafts_module.form_values(text)}


@router.post("/api/recipes/validate")
async def validate(request: Request) -> dict[str, Any]:
    text = text_field(await body_json(request), "yaml")
    return _validated(request, text)


def _validated(request: Request, text: str) -> dict[str, Any]:
    values = drafts_module.form_values(text)
    try:
        path, recipe = state(request).drafts.validate(text)
    except TuneforgeError as e:
        return {"ok": False, "error": e.message, "hint": e.hint, "values": values}
    return {
        "ok": True,
        "path": str(path),
        "name": recipe.name,
        "task": recipe.task,
        "values": values,
    }


@router.post("/api/recipes/set")
async def set_field(request: Request) -> dict[str, Any]:
    body = await body_json(request)
    text = drafts_module.set_field(
        text_field(body, "yaml"), text_field(body, "field"), text_field(body, "value")
    )
    return {"yaml": text, **_validated(request, text)}


@router.post("/api/recipes/{what}")
async def inspect_recipe(request: Request, what: str) -> JSONResponse:
    """`data preview`, `data check` or `plan` of the recipe, by the CLI itself (`--json`)."""
    commands = {"preview": ["data", "preview"], "check": ["data", "check"], "plan": ["plan"]}
    if what not in commands:
        raise TuneforgeError(f"unknown recipe action '{what}'")
    text = text_field(await body_json(request), "yaml")
    path, _ = state(request).drafts.validate(text)
    result = await asyncio.to_thread(
        run_cli, state(request), [*commands[what], str(path), "--json"]
    )
    return JSONResponse(result, status_code=200 if result["ok"] else 400)


def run_cli(ui, args: list[str]) -> dict[str, Any]:
    """A `tuneforge` command's JSON, or its error message as the terminal would show it."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tuneforge.cli", *args],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            cwd=ui.cwd,
            env={**os.environ, "TUNEFORGE_PROGRESS": "0", "COLUMNS": "400", **ui.env},
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"tuneforge {' '.join(args[:2])} took over {CLI_TIMEOUT} s"}
    result: dict[str, Any] = {"ok": proc.returncode == 0, "exit_code": proc.returncode}
    try:
        result["result"] = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        result["result"] = None
    if proc.returncode != 0:
        at = proc.stderr.rfind("error:")
        result["error"] = proc.stderr[at:].strip() if at >= 0 else proc.stderr.strip()[-2000:]
    return result


@router.post("/api/launch")
async def launch(request: Request) -> dict[str, Any]:
    """Validates as `tuneforge train` would, then queues the training."""
    text = text_field(await body_json(request), "yaml")
    path, recipe = state(request).drafts.validate(text)
    job = state(request).jobs.submit("train", f"train {recipe.name}", ["train", str(path)])
    return {"job": job.to_dict()}


# ---------------------------------------------------------------------------------- jobs, files


@router.get("/api/jobs")
def jobs(request: Request) -> dict[str, Any]:
    return {"jobs": [j.to_dict() for j in reversed(state(request).jobs.jobs)]}


@router.get("/api/jobs/{job_id}")
def job(request: Request, job_id: int) -> dict[str, Any]:
    return state(request).jobs.get(job_id).to_dict()


@router.post("/api/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: int) -> dict[str, Any]:
    return state(request).jobs.cancel(job_id).to_dict()


@router.put("/api/uploads/{name}")
async def upload(request: Request, name: str) -> dict[str, Any]:
    """A CSV or JSONL file as the raw body, into the managed uploads folder (size-bounded)."""
    ui = state(request)
    target = ui.drafts.upload_path(name)
    limit = ui.guard.max_upload_bytes
    partial = target.with_name(f".{target.name}.part")
    size = 0
    try:
        with partial.open("wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TuneforgeError(f"the file is over {limit} bytes (--max-upload-mb)")
                f.write(chunk)
        if size == 0:
            raise TuneforgeError("the file is empty")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return {"name": target.name, "path": str(target), "bytes": size}


@router.get("/api/uploads")
def uploads(request: Request) -> dict[str, Any]:
    return {"uploads": state(request).drafts.list_uploads()}


# -------------------------------------------------------------------------------------- models


@router.get("/api/models")
def models(request: Request) -> dict[str, Any]:
    return {"models": registry.list_models(state(request).registry)}


@router.post("/api/models/{name}/{version}/promote")
async def promote(request: Request, name: str, version: int) -> dict[str, Any]:
    """The promotion gate: promoted, or refused with the gate's reason (409)."""
    body = await body_json(request)
    valid_model_name(name)
    stage = valid_model_name(text_field(body, "stage", "production"))
    tolerance = body.get("tolerance", 0.0)
    if not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise TuneforgeError("'tolerance' must be a number, 0 or more")
    force = bool(body.get("force", False))
    result = await asyncio.to_thread(
        promotion.promote,
        name,
        version,
        stage,
        tolerance=float(tolerance),
        force=force,
        db=state(request).registry,
    )
    return {"name": name, "version": version, **result}


def error_response(error: TuneforgeError) -> JSONResponse:
    status = 409 if isinstance(error, CheckFailed) else 400
    if "is not in the registry" in error.message or error.message.startswith("no job"):
        status = 404
    return JSONResponse({"error": error.message, "hint": error.hint}, status_code=status)
