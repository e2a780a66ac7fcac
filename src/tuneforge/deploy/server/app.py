"""The FastAPI app: OpenAI-compatible routes, /v1/classify, /health, errors in OpenAI's shape.

Every refusal is a 4xx with `{"error": {"message", "type", "param", "code"}}`, the body OpenAI
clients parse; pydantic's 422s become 400s. Nothing a request sends can stop the server: a bug in
one request is a 500 for that request only.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security.utils import get_authorization_scheme_param
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneforge.deploy.limits import Limits
from tuneforge.deploy.server.batcher import BatcherBusy, BatcherClosed, MicroBatcher
from tuneforge.deploy.server.engine import (
    GenerationParams,
    ModelService,
    Prompt,
    RequestError,
)
from tuneforge.deploy.server.schemas import (
    ChatCompletionRequest,
    ClassifyRequest,
    CompletionRequest,
    _Sampling,
)
from tuneforge.errors import TuneforgeError
from tuneforge.generation import Generation
from tuneforge.runs.run import Run

log = logging.getLogger("tuneforge.serve")


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


def _install_error_handlers(app: FastAPI, limits: Limits) -> None:
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
            return _too_large(limits.max_body_bytes)
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


class BodyLimitMiddleware:
    """Bodies past the limit get a 413 in OpenAI's shape (FastAPI's own limit answers in plain
    text): refused from Content-Length at once, or when a chunked body grows past it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await _too_large(self.max_bytes)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413)  # answered by the app's HTTPException handler
            return message

        await self.app(scope, counted, send)


def _too_large(limit: int) -> JSONResponse:
    message = f"the request body is larger than this server's limit of {limit} bytes"
    return error_response(413, message, code="request_too_large")


class ApiKeyMiddleware:
    """Every request needs `Authorization: Bearer <key>`; checked before the body is even read."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scheme, token = get_authorization_scheme_param(
                Headers(scope=scope).get("authorization")
            )
            if not token or scheme.lower() != "bearer":
                message = "missing API key: send the header 'Authorization: Bearer <key>'"
            elif not secrets.compare_digest(token.encode(), self.key):
                message = "incorrect API key"
            else:
                message = ""
            if message:
                response = error_response(
                    401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ------------------------------------------------------------------------------------------------
# The application


def create_app(
    run: Run | str | Path,
    *,
    name: str | None = None,
    api_key: str | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """An app serving one run; its model is loaded here, once, before any request."""
    run = run if isinstance(run, Run) else Run.load(run)
    limits = limits or Limits()
    service = ModelService(run, name or run.path.name, limits)
    batcher: MicroBatcher | None = None
    if not service.generative:
        per_pass = (
            limits.max_batch
            or run.recipe.training.eval_batch_size
            or run.recipe.training.batch_size
        )
        batcher = MicroBatcher(run.predict, max_batch=per_pass, max_wait=limits.batch_wait)
    created = int(run.path.stat().st_mtime)
    started = time.time()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if batcher is not None:
            await batcher.start()
        try:
            yield
        finally:
            if batcher is not None:
                await batcher.close()
            service.close()

    app = FastAPI(
        title="tuneforge",
        summary=f"OpenAI-compatible API for the fine-tuned run {run.path.name}",
        lifespan=lifespan,
        docs_url=None,  # the interactive pages load scripts from a CDN; openapi.json stays
        redoc_url=None,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    if api_key:  # added last, so it runs first: no body is read for a request without the key
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    _install_error_handlers(app, limits)
    app.state.service = service
    app.state.batcher = batcher

    def check_model(model: str | None) -> None:
        if model is not None and model != service.name:
            raise RequestError(
                404,
                f"the model '{model}' does not exist; this server serves '{service.name}'",
                param="model",
                code="model_not_found",
            )

    def require_generative(endpoint: str) -> None:
        if not service.generative:
            raise RequestError(
                400,
                f"{endpoint} needs a generative (sft or pretrain) run; '{service.name}' is a "
                "classification run: use POST /v1/classify",
                code="unsupported_task",
            )

    async def prepare(body: _Sampling, prompt_of, arg) -> tuple[Prompt, GenerationParams]:
        check_model(body.model)
        prompt = await asyncio.to_thread(prompt_of, arg)  # tokenising is off the event loop
        params = service.params(
            prompt, body.requested_tokens, body.temperature, body.top_p, body.stop, body.seed,
            body.logit_bias,
        )  # fmt: skip
        return prompt, params

    def usage(prompt: Prompt, gen: Generation) -> dict[str, int]:
        n = len(prompt.ids)
        return {
            "prompt_tokens": n,
            "completion_tokens": gen.n_tokens,
            "total_tokens": n + gen.n_tokens,
        }

    def finish_reason(gen: Generation) -> str:
        return "stop" if gen.stopped else "length"

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Ready: the model is loaded (it is, before the server accepts a connection)."""
        return {
            "status": "ok",
            "model": service.name,
            "task": service.task,
            "uptime_s": round(time.time() - started, 1),
            "generation": {
                "busy": service.busy,
                "waiting": service.waiting,
                "finished": service.generations,
            }
            if service.generative
            else None,
            "classify": batcher.stats.as_dict() if batcher is not None else None,
        }

    def model_card() -> dict[str, Any]:
        return {"id": service.name, "object": "model", "created": created, "owned_by": "tuneforge"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model}")
    async def get_model(model: str) -> dict[str, Any]:
        check_model(model)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        require_generative("chat completions")
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        prompt, params = await prepare(body, service.chat_prompt, messages)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time())}
        head |= {"model": service.name}
        if body.stream:

            def delta(text: str | None, reason: str | None) -> dict:
                content = {} if text is None else {"content": text}
                return {"index": 0, "delta": content, "logprobs": None, "finish_reason": reason}

            first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
            first["finish_reason"] = None
            return sse(
                prompt, params, body, head | {"object": "chat.completion.chunk"}, delta, first
            )
        gen = await service.complete(prompt, params)
        choice = {"index": 0, "message": {"role": "assistant", "content": gen.text}}
        choice |= {"logprobs": None, "finish_reason": finish_reason(gen)}
        return head | {
            "object": "chat.completion",
            "choices": [choice],
            "usage": usage(prompt, gen),
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        require_generative("completions")
        prompt, params = await prepare(body, service.completion_prompt, body.text)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion"}
        head |= {"created": int(time.time()), "model": service.name}

        def choice(text: str | None, reason: str | None) -> dict:
            return {"text": text or "", "index": 0, "logprobs": None, "finish_reason": reason}

        if body.stream:
            first = choice(body.text, None) if body.echo else None
            return sse(prompt, params, body, head, choice, first)
        gen = await service.complete(prompt, params)
        text = body.text + gen.text if body.echo else gen.text
        return head | {"choices": [choice(text, finish_reason(gen))], "usage": usage(prompt, gen)}

    def sse(prompt, params, body: _Sampling, head: dict, choice, first: dict | None):
        """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`: an optional
        first chunk, one per piece of text, one with the finish reason, then (if asked) usage."""
        service.check_capacity()  # a 503 must come before the response starts

        async def events() -> AsyncIterator[bytes]:
            finished: list[Generation] = []
            if first is not None:
                yield _event(head | {"choices": [first]})
            try:
                async for text in service.stream(prompt, params, finished.append):
                    yield _event(head | {"choices": [choice(text, None)]})
            except Exception as e:  # noqa: BLE001 - the status is sent already: report in-stream
                log.exception("generation failed")
                message = f"generation failed ({type(e).__name__})"
                yield _event(error_body(message, type="server_error", code="internal_error"))
                yield format_sse_event(data_str="[DONE]")
                return
            gen = finished[0]
            yield _event(head | {"choices": [choice(None, finish_reason(gen))]})
            if body.include_usage:
                yield _event(head | {"choices": [], "usage": usage(prompt, gen)})
            yield format_sse_event(data_str="[DONE]")

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return EventSourceResponse(events(), headers=headers)

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest) -> dict[str, Any]:
        """Labels and probabilities for one text or a list; concurrent calls share forwards."""
        if batcher is None:
            raise RequestError(
                400,
                f"/v1/classify needs a classification run; '{service.name}' is {_a(service.task)} "
                "run: use POST /v1/chat/completions or /v1/completions",
                code="unsupported_task",
            )
        check_model(body.model)
        texts = body.texts
        if len(texts) > limits.max_texts:
            raise RequestError(
                400,
                f"{len(texts)} texts in one call; this server accepts at most {limits.max_texts}: "
                "split them over several calls",
                param="input",
                code="too_many_inputs",
            )
        for i, text in enumerate(texts):
            if not text.strip():
                where = "input" if isinstance(body.input, str) else f"input[{i}]"
                raise RequestError(400, f"{where} is empty", param=where, code="invalid_value")
        try:
            results = await batcher.submit(texts)
        except BatcherBusy as e:
            raise RequestError(
                503,
                f"the server is busy ({e}); retry later",
                type="server_error",
                code="server_busy",
            ) from None
        except BatcherClosed as e:
            raise RequestError(503, str(e), type="server_error", code="shutting_down") from None
        return {
            "object": "list",
            "model": service.name,
            "data": [
                {
                    "object": "classification",
                    "index": i,
                    "label": r["label"],
                    "probabilities": r["probabilities"],
                }
                for i, r in enumerate(results)
            ],
        }

    return app


def _event(payload: dict) -> bytes:
    import json

    return format_sse_event(data_str=json.dumps(payload, ensure_ascii=False, separators=(",", ":")))


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeios" else f"a {word}"
