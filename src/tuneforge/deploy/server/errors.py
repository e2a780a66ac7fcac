"""Errors in OpenAI's shape: every refusal is a 4xx (or a 503) with `{"error": {"message", "type",
"param", "code"}}`, the body OpenAI clients parse; pydantic's 422s become 400s; a bug in one
request is a 500 for that request only. `documented` declares them in the OpenAPI document."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from tuneforge.deploy.limits import Limits
from tuneforge.deploy.server.engine import RequestError
from tuneforge.errors import TuneforgeError

log = logging.getLogger("tuneforge.serve")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


WHEN = {
    400: "The request is invalid: not JSON, a parameter of the wrong type or out of range, or a "
    "prompt longer than the model's context (`code` says which; `param` names the field).",
    401: "The API key is missing or wrong (`Authorization: Bearer <key>`).",
    404: "No such model: `model` must be the served model's id.",
    413: "The request body is larger than the server's limit.",
    503: "Not ready (the model is loading or failed to load), shutting down, or busy: too many "
    "requests wait for the model. Retry later.",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route: these error statuses, each with OpenAI's error body."""
    return {status: {"model": ErrorResponse, "description": WHEN[status]} for status in statuses}


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, **fields
) -> JSONResponse:
    return JSONResponse(error_body(message, **fields), status_code=status, headers=headers)


# ------------------------------------------------------------------------------------------------
# Errors


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, str]:
    """One readable message from pydantic's errors, the parameter it names, and a code."""
    body = exc.body
    by_param: dict[str | None, list[str]] = {}
    codes: list[str] = []
    for err in exc.errors():
        kind = err.get("type", "")
        if kind == "json_invalid":
            where = err["loc"][-1] if err.get("loc") else "?"
            return (
                f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')} "
                f"at position {where})",
                None,
                "invalid_json",
            )
        loc = [p for p in err.get("loc", ()) if p != "body"]
        if not loc and kind == "missing":
            return (
                "the request body is missing: send a JSON object (Content-Type: application/json)",
                None,
                "invalid_json",
            )
        param = _param(body, loc, missing=kind == "missing")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if kind == "missing":
            codes.append("missing_required_parameter")
            msg = "this parameter is required"
        else:
            codes.append("invalid_type" if kind.endswith("_type") else "invalid_value")
        by_param.setdefault(param, [])
        if msg not in by_param[param]:
            by_param[param].append(msg)
    parts = [f"{p or 'body'}: {' or '.join(msgs)}" for p, msgs in list(by_param.items())[:3]]
    return "; ".join(parts), next(iter(by_param), None), codes[0]  # param and code: 1st error


def _param(body: Any, loc: list, *, missing: bool) -> str | None:
    """The path of the parameter in the request as sent, e.g. messages[0].role (pydantic's
    union-member names such as 'str' or 'list[str]' are not part of it)."""
    path, node = "", body
    for i, key in enumerate(loc):
        if (
            isinstance(node, dict)
            and isinstance(key, str)
            and (key in node or (missing and i == len(loc) - 1))
        ):
            path = f"{path}.{key}" if path else key
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            path = f"{path}[{key}]"
            node = node[key]
        else:
            break
    return path or None


def too_large(limit: int) -> JSONResponse:
    message = f"the request body is larger than this server's limit of {limit} bytes"
    return error_response(413, message, code="request_too_large")


def install_error_handlers(app: FastAPI, limits: Limits) -> None:
    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(
            exc.status, exc.message, param=exc.param, code=exc.code, type=exc.type
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = _validation_message(exc)
        return error_response(400, message, param=param, code=code)

    @app.exception_handler(TuneforgeError)
    async def _user_error(request: Request, exc: TuneforgeError) -> JSONResponse:
        message = exc.message if not exc.hint else f"{exc.message} ({exc.hint})"
        return error_response(400, message, code="invalid_value")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 413:
            return too_large(limits.max_body_bytes)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
            return error_response(404, message, code="not_found")
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
            return error_response(405, message, code="method_not_allowed", headers=exc.headers)
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        message = f"internal error ({type(exc).__name__}); the server keeps running, see its log"
        return error_response(500, message, type="server_error", code="internal_error")
