"""The endpoints of named models: the registry's versions and promotion through the gate (a
refusal is a 409 with the gate's reason)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from tuneforge.errors import TuneforgeError
from tuneforge.runs import promotion, registry
from tuneforge.ui.requests import body_json, state, text_field
from tuneforge.ui.security import valid_model_name

router = APIRouter()


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
