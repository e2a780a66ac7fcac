"""The FastAPI app serving one run: the model loaded once, the request limits and the API key
in front (`middleware`), errors in OpenAI's shape (`errors`), and one router per resource:
`health` (/health, /v1/models), `completions` (/v1/chat/completions, /v1/completions),
`classify` (/v1/classify)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from tuneforge.deploy.limits import Limits
from tuneforge.deploy.server import classify, completions, health
from tuneforge.deploy.server.batcher import MicroBatcher
from tuneforge.deploy.server.engine import ModelService
from tuneforge.deploy.server.errors import install_error_handlers
from tuneforge.deploy.server.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from tuneforge.runs.run import Run


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
    install_error_handlers(app, limits)
    app.state.service, app.state.batcher, app.state.limits = service, batcher, limits
    app.state.created, app.state.started = int(run.path.stat().st_mtime), time.time()
    for routes in (health, completions, classify):
        app.include_router(routes.router)
    return app
