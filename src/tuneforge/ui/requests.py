"""What every endpoint of the dashboard shares: its state, a bounded JSON body, checked fields
and run ids, and user errors as JSON (400, 404; 409 for a check that said no)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from tuneforge.errors import CheckFailed, TuneforgeError
from tuneforge.runs import registry
from tuneforge.ui.security import valid_run_id

NO_CACHE = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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


def error_response(error: TuneforgeError) -> JSONResponse:
    status = 409 if isinstance(error, CheckFailed) else 400
    if "is not in the registry" in error.message or error.message.startswith("no job"):
        status = 404
    return JSONResponse({"error": error.message, "hint": error.hint}, status_code=status)
