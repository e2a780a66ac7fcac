"""GET /v1/models and /v1/models/{model}: the one model this server serves, as OpenAI lists it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from tuneforge.deploy.server.errors import documented
from tuneforge.deploy.server.schemas import ModelCard, ModelList

router = APIRouter()


def model_card(request: Request) -> dict[str, Any]:
    state = request.app.state
    return {
        "id": state.service.name,
        "object": "model",
        "created": state.created,
        "owned_by": "tuneforge",
    }


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(request)]}


@router.get("/v1/models/{model}", response_model=ModelCard, responses=documented(404))
async def get_model(model: str, request: Request) -> dict[str, Any]:
    request.app.state.service.check_model(model)
    return model_card(request)
