"""What guards the dashboard: loopback unless a token is given, the token on every request, no
cross-site writes, bounded bodies, and names checked before they reach the filesystem."""

from __future__ import annotations

import hmac
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from tuneforge.errors import TuneforgeError

COOKIE = "tuneforge_ui_token"
# A run id is a run folder's name: <recipe name>-<timestamp>[-n]; no separators, no leading dot.
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
UPLOAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.(csv|jsonl)$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class Guard:
    """The settings the middleware enforces."""

    host: str
    token: str | None = None
    max_body_bytes: int = 1_000_000
    max_upload_bytes: int = 50_000_000


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Only loopback without a token: anyone who reaches the port could launch runs."""
    if not is_loopback(host) and not token:
        raise TuneforgeError(
            f"--host {host} makes the dashboard reachable from other machines; it needs --token",
            hint="pass --token SECRET (users open http://HOST:PORT/?token=SECRET once), "
            "or keep the default --host 127.0.0.1",
        )


def valid_run_id(run_id: str) -> str:
    if not RUN_ID.match(run_id) or ".." in run_id:
        raise TuneforgeError(f"not a run id: {run_id!r}")
    return run_id


def valid_upload_name(name: str) -> str:
    if not UPLOAD_NAME.match(name) or ".." in name:
        raise TuneforgeError(
            f"not an allowed file name: {name!r}",
            hint="letters, digits, '.', '_' and '-', ending in .csv or .jsonl",
        )
    return name


def valid_model_name(name: str) -> str:
    if not MODEL_NAME.match(name):
        raise TuneforgeError(
            f"not a model name: {name!r}", hint="letters, digits, '.', '_' and '-' only"
        )
    return name


class GuardMiddleware(BaseHTTPMiddleware):
    """Host header (DNS rebinding), token, same-origin writes and the declared body size."""

    def __init__(self, app, guard: Guard) -> None:
        super().__init__(app)
        self.guard = guard

    async def dispatch(self, request: Request, call_next) -> Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        given = request.query_params.get("token")
        if self.guard.token and given is not None and hmac.compare_digest(given, self.guard.token):
            response = RedirectResponse(request.url.remove_query_params("token"), 303)
            response.set_cookie(COOKIE, self.guard.token, httponly=True, samesite="strict")
            return response
        return await call_next(request)

    def _refusal(self, request: Request) -> Response | None:
        guard = self.guard
        hostname = (request.headers.get("host") or "").rsplit(":", 1)[0]
        if is_loopback(guard.host) and hostname and not is_loopback(hostname):
            return PlainTextResponse("this dashboard answers on localhost only", 421)
        if guard.token and not self._authorised(request):
            if request.url.path.startswith("/api/") or request.method != "GET":
                return JSONResponse({"error": "a valid token is required"}, 401)
            return PlainTextResponse(
                "This dashboard needs its token: open /?token=YOUR_TOKEN once.", 401
            )
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            if origin and urlsplit(origin).netloc != request.headers.get("host"):
                return JSONResponse({"error": "cross-origin request refused"}, 403)
            if request.headers.get("x-tuneforge") != "1":  # set by the pages' scripts
                return JSONResponse({"error": "missing X-Tuneforge header"}, 403)
        declared = request.headers.get("content-length")
        limit = (
            guard.max_upload_bytes
            if request.url.path.startswith("/api/uploads/")
            else guard.max_body_bytes
        )
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return JSONResponse({"error": f"request body over {limit} bytes"}, 413)
        return None

    def _authorised(self, request: Request) -> bool:
        token = self.guard.token or ""
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = request.cookies.get(COOKIE) or bearer or request.query_params.get("token") or ""
        return hmac.compare_digest(given, token)
