"""The dashboard's FastAPI app and `tuneforge ui`'s server: what the pages and endpoints share
(registry, home folder, launch queue, drafts, playground) lives on `app.state.ui`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles

from tuneforge.deploy.serve import bind
from tuneforge.errors import TuneforgeError
from tuneforge.paths import tuneforge_home
from tuneforge.runs.registry import registry_path
from tuneforge.ui import models_api, pages, recipes_api, runs_api
from tuneforge.ui.drafts import Drafts
from tuneforge.ui.jobs import JobQueue
from tuneforge.ui.playground import Playground
from tuneforge.ui.requests import error_response
from tuneforge.ui.security import Guard, GuardMiddleware, check_binding

STATIC = Path(__file__).parent / "static"


@dataclass
class UiState:
    guard: Guard
    registry: Path | None
    home: Path
    cwd: Path
    jobs: JobQueue
    drafts: Drafts
    playground: Playground
    env: dict[str, str] = field(default_factory=dict)


def create_app(
    *,
    host: str = "127.0.0.1",
    token: str | None = None,
    registry: Path | None = None,
    home: Path | None = None,
    cwd: Path | None = None,
    max_upload_mb: float = 50.0,
) -> FastAPI:
    check_binding(host, token)
    home = (home or tuneforge_home() / "ui").resolve()
    cwd = (cwd or Path.cwd()).resolve()
    # the launched commands use the same registry as the dashboard
    env = {"TUNEFORGE_REGISTRY": str(registry_path(registry).resolve())}
    ui = UiState(
        guard=Guard(host, token, max_upload_bytes=int(max_upload_mb * 1_000_000)),
        registry=registry,
        home=home,
        cwd=cwd,
        jobs=JobQueue(home / "logs", cwd, env),
        drafts=Drafts(home),
        playground=Playground(),
        env=env,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        ui.jobs.close()  # a running training is interrupted (resumable), not orphaned
        ui.playground.close()

    app = FastAPI(title="tuneforge dashboard", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.ui = ui
    app.add_middleware(GuardMiddleware, guard=ui.guard)
    for endpoints in (runs_api, recipes_api, models_api):
        app.include_router(endpoints.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(TuneforgeError)
    async def user_error(request: Request, error: TuneforgeError):
        if request.url.path.startswith("/api/"):
            return error_response(error)
        return pages.error_page(request, error)

    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 7860,
    token: str | None = None,
    registry: Path | None = None,
    max_upload_mb: float = 50.0,
) -> None:
    """Serve the dashboard until Ctrl-C."""
    app = create_app(host=host, token=token, registry=registry, max_upload_mb=max_upload_mb)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"tuneforge dashboard on http://{shown}:{sock.getsockname()[1]}/", flush=True)
    if token:
        print("open it once with ?token=YOUR_TOKEN; the browser keeps it in a cookie", flush=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
