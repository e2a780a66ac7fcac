"""GET /health (liveness and load) and the model list, /v1/models."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Ready: the model is loaded (it is, before the server accepts a connection)."""
    state = request.app.state
    service, batcher = state.service, state.batcher
    return {
        "status": "ok",
        "model": service.name,
        "task": service.task,
        "uptime_s": round(time.time() - state.started, 1),
        "generation": {
            "busy": service.busy,
            "waiting": service.waiting,
            "finished": service.generations,
        }
        if service.generative
        else None,
        "classify": batcher.stats.as_dict() if batcher is not None else None,
    }


def model_card(request: Request) -> dict[str, Any]:
    state = request.app.state
    return {
        "id": state.service.name,
        "object": "model",
        "created": state.created,
        "owned_by": "tuneforge",
    }


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(request)]}


@router.get("/v1/models/{model}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    request.app.state.service.check_model(model)
    return model_card(request)
