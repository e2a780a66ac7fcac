"""The FastAPI app serving one run: the model loaded in the background once the server is up (the
probes answer meanwhile), the request limits and the API key in front (`middleware`), errors in
OpenAI's shape (`errors`), one router per resource: `health` (/health, /ready, /stats), `models`
(/v1/models), `completions` (/v1/chat/completions, /v1/completions), `classify` (/v1/classify),
`feedback` (/v1/feedback), and the OpenAPI document of what this run serves (`openapi`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI

from tuneforge.deploy.feedback import FeedbackLog, ModelRef, default_log_path
from tuneforge.deploy.limits import Limits
from tuneforge.deploy.server import classify, completions, feedback, health, models
from tuneforge.deploy.server.batcher import MicroBatcher
from tuneforge.deploy.server.engine import ModelService
from tuneforge.deploy.server.errors import install_error_handlers
from tuneforge.deploy.server.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from tuneforge.deploy.server.openapi import install_openapi
from tuneforge.errors import TuneforgeError
from tuneforge.runs.run import Run

log = logging.getLogger("tuneforge.serve")
Loaded = Callable[[BaseException | None], None]
"""Told when loading ends: None once the model is ready, or the error it failed with."""


def routers(service: ModelService) -> list[tuple[APIRouter, bool]]:
    """Every router, and whether this run serves it. The others stay mounted, out of the OpenAPI
    document, to answer with a 400 that names the endpoint to use instead of a bare 404."""
    return [
        (health.router, True),
        (models.router, True),
        (completions.router, service.generative),
        (classify.router, not service.generative),
        (feedback.router, service.feedback is not None),
    ]


def create_app(
    run: Run | str | Path,
    *,
    name: str | None = None,
    api_key: str | None = None,
    limits: Limits | None = None,
    guard_health: bool = False,
    on_loaded: Loaded | None = None,
    feedback_log: Path | None | bool = True,
    model_version: str | None = None,
) -> FastAPI:
    """An app serving one run. Its model loads in a background thread when the app starts:
    GET /ready answers 200 once it has (and `on_loaded` is told). A generative run records its
    chat completions and POST /v1/feedback in `feedback_log` (True: the run's
    feedback/feedback.jsonl; False: no log, no feedback endpoint), with `model_version`."""
    run = run if isinstance(run, Run) else Run.load(run)
    limits = limits or Limits()
    service = ModelService(run, name or run.path.name, limits)
    if service.generative and feedback_log is not False:
        path = default_log_path(run.path) if feedback_log is True else Path(feedback_log)
        service.feedback = FeedbackLog(writable(path), ModelRef(run.path.name, model_version))
    batcher = None if service.generative else _batcher(run, limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if batcher is not None:
            await batcher.start()
        _load_in_background(service, on_loaded)
        try:
            yield
        finally:
            service.state = "stopping"
            if batcher is not None:
                await batcher.close()
            service.close()

    app = FastAPI(
        title="tuneforge",
        summary=f"OpenAI-compatible API for the fine-tuned run {run.path.name} ({service.task})",
        lifespan=lifespan,
        docs_url=None,  # the interactive pages load scripts from a CDN; openapi.json stays
        redoc_url=None,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    open_paths = frozenset() if guard_health else health.PROBES
    if api_key:  # added last, so it runs first: no body is read for a request without the key
        app.add_middleware(ApiKeyMiddleware, api_key=api_key, open_paths=open_paths)
    install_error_handlers(app, limits)
    app.state.service, app.state.batcher, app.state.limits = service, batcher, limits
    app.state.created, app.state.started = int(run.path.stat().st_mtime), time.time()
    for router, served in routers(service):
        app.include_router(router, include_in_schema=served)
    install_openapi(app, service, limits, open_paths if api_key else None)
    return app


def writable(path: Path) -> Path:
    """The feedback log's path once its folder exists and can be written: refused at start,
    not at the first answer."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TuneforgeError(f"feedback log: cannot create {path.parent}: {e.strerror}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TuneforgeError(
            f"feedback log: {path} cannot be written",
            hint="pass --feedback-log PATH somewhere writable, or --no-feedback",
        )
    return path


def _batcher(run: Run, limits: Limits) -> MicroBatcher:
    """Classify requests share forward passes of the run's evaluation batch size."""
    training = run.recipe.training
    per_pass = limits.max_batch or training.eval_batch_size or training.batch_size
    return MicroBatcher(run.predict, max_batch=per_pass, max_wait=limits.batch_wait)


def _load_in_background(service: ModelService, on_loaded: Loaded | None) -> None:
    """A daemon thread, so that Ctrl-C during a long load stops the server at once."""

    def load() -> None:
        try:
            service.load()
        except Exception as e:  # noqa: BLE001 - reported by /ready and to the caller
            log.exception("loading the model failed")
            service.fail(e)
            error: BaseException | None = e
        else:
            error = None
        if on_loaded is not None:
            on_loaded(error)

    threading.Thread(target=load, name="tuneforge-load", daemon=True).start()
