"""The dashboard's HTML pages, rendered by Jinja2 with autoescaping on: every text a user wrote
(run and recipe names, labels, data, generations) reaches the page escaped. The pages' scripts
(static/app.js) fill in live parts through the JSON endpoints (*_api.py), with textContent only."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from tuneforge.errors import TuneforgeError
from tuneforge.runs import registry
from tuneforge.ui import drafts, recipes_api, runs_api, views
from tuneforge.ui.requests import record_of, state

router = APIRouter()
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.autoescape = True  # every template, whatever its file name


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return ""
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


templates.env.filters.update(number=_number, duration=_duration, when=_when)


def page(request: Request, name: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context)


def error_page(request: Request, error: TuneforgeError) -> HTMLResponse:
    status = 404 if "is not in the registry" in error.message else 400
    response = page(request, "error.html", error=error.message, hint=error.hint)
    response.status_code = status
    return response


@router.get("/", response_class=HTMLResponse)
@router.get("/partials/runs", response_class=HTMLResponse)
def runs_page(
    request: Request,
    task: str = "",
    status: str = "",
    q: str = "",
    page_: int = Query(1, alias="page"),
):
    """The runs page, or (htmx's refresh) only its table."""
    partial = request.url.path.startswith("/partials/")
    return page(
        request,
        "runs_table.html" if partial else "runs.html",
        tasks=views.TASKS,
        statuses=views.STATUSES,
        task=task,
        status=status,
        q=q,
        listing=runs_api.runs(request, task, status, q, page_),
    )


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str):
    return page(request, "run.html", run=runs_api.run(request, run_id))


@router.get("/runs/{run_id}/playground", response_class=HTMLResponse)
def playground_page(request: Request, run_id: str):
    record = record_of(request, run_id)
    if record.status != "finished":
        raise TuneforgeError(
            f"run {record.id} is {record.status}; the playground needs a finished run"
        )
    return page(request, "playground.html", run=views.run_row(record))


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, ids: Annotated[list[str] | None, Query()] = None):
    ids = ids or []
    if not 2 <= len(ids) <= 8:
        raise TuneforgeError("compare needs 2 to 8 runs", hint="tick them on the runs page")
    records = [record_of(request, run_id) for run_id in ids]
    return page(request, "compare.html", comparison=views.compare_runs(records))


@router.get("/new", response_class=HTMLResponse)
def new_page(request: Request, start: str = "shipped:sentiment.yaml"):
    records, _ = registry.page_runs(state(request).registry, limit=50)
    points = drafts.starting_points(records)
    try:
        text = recipes_api.start(request, start)["yaml"]
    except TuneforgeError:
        text = ""
    fields = drafts.schema_fields()
    sections: dict[str, list] = {}
    for f in fields:
        sections.setdefault(f.section, []).append(f)
    return page(
        request,
        "new.html",
        points=points,
        start=start,
        text=text,
        sections=sections,
        open_sections=drafts.OPEN_SECTIONS,
        values=drafts.form_values(text),
        uploads=state(request).drafts.list_uploads(),
    )


@router.get("/partials/jobs", response_class=HTMLResponse)
def jobs_rows(request: Request):
    return page(request, "jobs_table.html", jobs=recipes_api.jobs(request)["jobs"])


@router.get("/favicon.ico")
def favicon() -> Response:
    return Response(status_code=204)


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request):
    ui = state(request)
    found = registry.list_models(ui.registry)
    events = [e for e in registry.events(ui.registry) if e["kind"].startswith("promoted")][-20:]
    return page(request, "models.html", models=found, events=list(reversed(events)))
