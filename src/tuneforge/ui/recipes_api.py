"""The endpoints of a new run: starting points, validation as the CLI does it, the schema form,
`data preview` / `data check` / `plan` through the CLI, the launch queue and data uploads."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tuneforge.errors import TuneforgeError
from tuneforge.ui import drafts as drafts_module
from tuneforge.ui import live
from tuneforge.ui.requests import body_json, record_of, state, text_field

router = APIRouter()
CLI_TIMEOUT = 600


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
