"""What every request passes before a route: the body-size limit and the API key."""

from __future__ import annotations

import secrets

from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tuneforge.deploy.server.errors import error_response, too_large


class BodyLimitMiddleware:
    """Bodies past the limit get a 413 in OpenAI's shape (FastAPI's own limit answers in plain
    text): refused from Content-Length at once, or when a chunked body grows past it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await too_large(self.max_bytes)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413)  # answered by the app's HTTPException handler
            return message

        await self.app(scope, counted, send)


class ApiKeyMiddleware:
    """Every request but those to `open_paths` (the health probes) needs `Authorization: Bearer
    <key>`; checked before the body is even read."""

    def __init__(
        self, app: ASGIApp, api_key: str, open_paths: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.key = api_key.encode()
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            scheme, token = get_authorization_scheme_param(
                Headers(scope=scope).get("authorization")
            )
            if not token or scheme.lower() != "bearer":
                message = "missing API key: send the header 'Authorization: Bearer <key>'"
            elif not secrets.compare_digest(token.encode(), self.key):
                message = "incorrect API key"
            else:
                message = ""
            if message:
                response = error_response(
                    401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
