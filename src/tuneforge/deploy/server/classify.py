"""POST /v1/classify (classification runs): labels and probabilities for one text or a list;
concurrent calls share forward passes (the micro-batcher)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from tuneforge.deploy.server.batcher import BatcherBusy, BatcherClosed
from tuneforge.deploy.server.engine import RequestError
from tuneforge.deploy.server.errors import documented
from tuneforge.deploy.server.health import require_ready
from tuneforge.deploy.server.schemas import ClassificationList, ClassifyRequest

router = APIRouter(dependencies=[Depends(require_ready)])


@router.post(
    "/v1/classify",
    response_model=ClassificationList,
    responses=documented(400, 404, 413, 503),
)
async def classify(body: ClassifyRequest, request: Request) -> dict[str, Any]:
    """Labels and probabilities for one text or a list; concurrent calls share forwards."""
    state = request.app.state
    service, batcher, limits = state.service, state.batcher, state.limits
    if batcher is None:
        raise RequestError(
            400,
            f"/v1/classify needs a classification run; '{service.name}' is {_a(service.task)} "
            "run: use POST /v1/chat/completions or /v1/completions",
            code="unsupported_task",
        )
    service.check_model(body.model)
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


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeios" else f"a {word}"
