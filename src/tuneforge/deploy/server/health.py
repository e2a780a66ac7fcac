"""The server's condition: GET /health (alive: answers as soon as the server does), GET /ready
(200 once the model is loaded and requests are answered; 503 while it loads, after it failed to
load, and while shutting down) and GET /stats (model, load and counters: behind the API key).

/health and /ready say nothing about the model, so they can stay open to an orchestrator's probes
while the API is guarded (`tuneforge serve --api-key`; `--guard-health` guards them too)."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from tuneforge.deploy.server.errors import documented

router = APIRouter()

PROBES = frozenset({"/health", "/ready"})


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]


class Generation(BaseModel):
    busy: bool
    waiting: int
    finished: int


class Batching(BaseModel):
    batches: int
    items: int
    requests: int
    largest_batch: int


class Stats(BaseModel):
    model: str
    task: str
    state: Literal["loading", "ready", "failed", "stopping"]
    precision: Literal["fp32", "bf16"] = Field(
        description="What the model computes in: bf16 on a CPU with native bf16 where the run "
        "trained in bf16, else fp32"
    )
    uptime_s: float
    generation: Generation | None
    classify: Batching | None


@router.get("/health", response_model=Health)
async def health() -> dict[str, str]:
    """Liveness: the server answers."""
    return {"status": "ok"}


def require_ready(request: Request) -> None:
    """A dependency of the routes that need the model: 503 until it is loaded."""
    request.app.state.service.require_ready()


@router.get("/ready", response_model=Ready, responses=documented(503))
async def ready(request: Request) -> dict[str, str]:
    """Readiness: the model is loaded and requests are answered."""
    require_ready(request)
    return {"status": "ready"}


@router.get("/stats", response_model=Stats)
async def stats(request: Request) -> dict:
    """The served model, its state and what it has done."""
    state = request.app.state
    service, batcher = state.service, state.batcher
    generation = {"busy": service.busy, "waiting": service.waiting, "finished": service.generations}
    return {
        "model": service.name,
        "task": service.task,
        "state": service.state,
        "precision": service.run.precision,
        "uptime_s": round(time.time() - state.started, 1),
        "generation": generation if service.generative else None,
        "classify": batcher.stats.as_dict() if batcher is not None else None,
    }
