"""POST /v1/chat/completions and /v1/completions (sft and pretrain runs), streamed as
server-sent events in OpenAI's chunk format when asked."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.sse import EventSourceResponse, format_sse_event

from tuneforge.deploy.server.engine import GenerationParams, ModelService, Prompt
from tuneforge.deploy.server.errors import documented, error_body
from tuneforge.deploy.server.health import require_ready
from tuneforge.deploy.server.schemas import (
    STREAM,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    _Sampling,
)
from tuneforge.generation import Generation

log = logging.getLogger("tuneforge.serve")
router = APIRouter(dependencies=[Depends(require_ready)])
RESPONSES = {200: {"content": STREAM}} | documented(400, 404, 413, 503)


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=RESPONSES)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    service: ModelService = request.app.state.service
    service.require_generative("chat completions")
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    prompt, params = await _prepare(service, body, service.chat_prompt, messages)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time())}
    head |= {"model": service.name}

    async def record(gen: Generation) -> None:  # the answer, by its id, for POST /v1/feedback
        await service.record_completion(head["id"], messages, gen.text)

    if body.stream:

        def delta(text: str | None, reason: str | None) -> dict:
            content = {} if text is None else {"content": text}
            return {"index": 0, "delta": content, "logprobs": None, "finish_reason": reason}

        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        first["finish_reason"] = None
        return _sse(
            service, prompt, params, body, head | {"object": "chat.completion.chunk"}, delta, first,
            record,
        )  # fmt: skip
    gen = await service.complete(prompt, params)
    await record(gen)
    choice = {"index": 0, "message": {"role": "assistant", "content": gen.text}}
    choice |= {"logprobs": None, "finish_reason": _finish_reason(gen)}
    return head | {
        "object": "chat.completion",
        "choices": [choice],
        "usage": _usage(prompt, gen),
    }


@router.post("/v1/completions", response_model=Completion, responses=RESPONSES)
async def completions(body: CompletionRequest, request: Request):
    service: ModelService = request.app.state.service
    service.require_generative("completions")
    prompt, params = await _prepare(service, body, service.completion_prompt, body.text)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion"}
    head |= {"created": int(time.time()), "model": service.name}

    def choice(text: str | None, reason: str | None) -> dict:
        return {"text": text or "", "index": 0, "logprobs": None, "finish_reason": reason}

    if body.stream:
        first = choice(body.text, None) if body.echo else None
        return _sse(service, prompt, params, body, head, choice, first)
    gen = await service.complete(prompt, params)
    text = body.text + gen.text if body.echo else gen.text
    return head | {"choices": [choice(text, _finish_reason(gen))], "usage": _usage(prompt, gen)}


async def _prepare(
    service: ModelService, body: _Sampling, prompt_of, arg
) -> tuple[Prompt, GenerationParams]:
    service.check_model(body.model)
    prompt = await asyncio.to_thread(prompt_of, arg)  # tokenising is off the event loop
    params = service.params(
        prompt, body.requested_tokens, body.temperature, body.top_p, body.stop, body.seed,
        body.logit_bias,
    )  # fmt: skip
    return prompt, params


def _usage(prompt: Prompt, gen: Generation) -> dict[str, int]:
    n = len(prompt.ids)
    return {
        "prompt_tokens": n,
        "completion_tokens": gen.n_tokens,
        "total_tokens": n + gen.n_tokens,
    }


def _finish_reason(gen: Generation) -> str:
    return "stop" if gen.stopped else "length"


def _sse(
    service: ModelService, prompt, params, body: _Sampling, head: dict, choice, first, done=None
):
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`: an optional
    first chunk, one per piece of text, one with the finish reason, then (if asked) usage;
    `done(generation)` is awaited once the answer is complete."""
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
        if done is not None:  # a streamed answer is recorded once it has ended
            await done(gen)
        yield _event(head | {"choices": [choice(None, _finish_reason(gen))]})
        if body.include_usage:
            yield _event(head | {"choices": [], "usage": _usage(prompt, gen)})
        yield format_sse_event(data_str="[DONE]")

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return EventSourceResponse(events(), headers=headers)


def _event(payload: dict) -> bytes:
    return format_sse_event(data_str=json.dumps(payload, ensure_ascii=False, separators=(",", ":")))
