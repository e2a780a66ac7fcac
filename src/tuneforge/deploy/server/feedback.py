"""POST /v1/feedback (generative runs): a user's judgement of an answer — thumbs up or down, a
better answer, a comment — about a chat completion by its `id`, or about a prompt and answer
given as text. Appended durably to the served run's feedback log
(:class:`tuneforge.deploy.feedback.FeedbackLog`), with the served model version;
`tuneforge feedback export` turns the log into preference data for the next version."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from tuneforge.deploy.feedback import FeedbackError
from tuneforge.deploy.server.engine import ModelService, RequestError
from tuneforge.deploy.server.errors import documented
from tuneforge.deploy.server.schemas import FeedbackReceipt, FeedbackRequest

router = APIRouter()


@router.post("/v1/feedback", response_model=FeedbackReceipt, responses=documented(400, 404, 413))
async def feedback(body: FeedbackRequest, request: Request):
    service: ModelService = request.app.state.service
    log = service.feedback
    if log is None:  # mounted for the 400 only: this server keeps no log
        raise RequestError(
            400, "this server does not record feedback (started with --no-feedback)",
            code="unsupported_endpoint",
        )  # fmt: skip
    try:
        # each append is fsync'ed: off the event loop
        record = await run_in_threadpool(log.record_feedback, body.model_dump(exclude_none=True))
    except FeedbackError as e:
        message = e.message if not e.hint else f"{e.message} ({e.hint})"
        raise RequestError(e.http_status, message, param=e.param, code=e.code) from None
    return {
        "id": record["id"],
        "object": "feedback",
        "created": record["time"],
        "model": service.name,
        "completion_id": record.get("completion_id"),
    }
