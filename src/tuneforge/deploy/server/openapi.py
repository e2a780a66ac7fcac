"""The OpenAPI document the server publishes (/openapi.json), for client generators and API fuzzers.

It describes this server, not every server: only the routes of the run's kind (the others are
mounted with `include_in_schema=False`), every error status each operation can answer with
OpenAI's error body (declared on the routes; 401 here, where the API key guards the route), and
the limits this server enforces (`max_tokens`, texts per call, the model id, token ids in
`logit_bias`), so that a request valid by the document is a request the server accepts. What no
JSON Schema can say (a prompt longer than the model's context in tokens) is a documented 400.

The limits that need the model (its vocabulary, whether prompts are chats) are added once it is
loaded; until then the document is rebuilt on every request rather than cached.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from tuneforge.deploy.limits import Limits
from tuneforge.deploy.server.engine import ModelService
from tuneforge.deploy.server.errors import WHEN

Schema = dict[str, Any]
ERROR = {"$ref": "#/components/schemas/ErrorResponse"}
BEARER = "apiKey"


def install_openapi(
    app: FastAPI, service: ModelService, limits: Limits, open_paths: frozenset[str] | None
) -> None:
    """`app.openapi()` builds this server's document; `open_paths` None: no API key."""

    def openapi() -> Schema:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = document(app, service, limits, open_paths)
        if service.ready:
            app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def document(
    app: FastAPI, service: ModelService, limits: Limits, open_paths: frozenset[str] | None
) -> Schema:
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    doc = copy.deepcopy(doc)  # the models' schemas (WithJsonSchema) are shared: edit a copy
    schemas = doc["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):  # 422s become 400s (errors.py)
        schemas.pop(name, None)
    for path, operation in _operations(doc):
        operation["responses"].pop("422", None)
        if open_paths is not None and path not in open_paths:
            operation["security"] = [{BEARER: []}]
            operation["responses"]["401"] = {
                "description": WHEN[401],
                "content": {"application/json": {"schema": ERROR}},
            }
    if open_paths is not None:
        doc["components"]["securitySchemes"] = {BEARER: {"type": "http", "scheme": "bearer"}}
    _served_limits(schemas, service, limits)
    return doc


def _operations(doc: Schema) -> Iterator[tuple[str, Schema]]:
    for path, item in doc["paths"].items():
        for operation in item.values():
            yield path, operation


def _served_limits(schemas: Schema, service: ModelService, limits: Limits) -> None:
    """This server's limits on the request bodies it accepts."""
    if not service.generative:
        body = schemas["ClassifyRequest"]["properties"]
        _narrow(body["model"], "string", enum=[service.name])
        _narrow(body["input"], "array", maxItems=limits.max_texts)
        return
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        body = schemas[name]["properties"]
        _narrow(body["model"], "string", enum=[service.name])
        for field in ("max_tokens", "max_completion_tokens"):
            _narrow(body[field], "integer", maximum=limits.max_tokens)
        if service.ready:
            pattern = decimal_below(service.vocab)
            _narrow(body["logit_bias"], "object", propertyNames={"pattern": pattern})
    if service.ready and not service.chat_prompts:  # plain text: "" has no token to continue
        prompt = schemas["CompletionRequest"]["properties"]["prompt"]
        _narrow(prompt, "string", minLength=1)
        for listed in _members(prompt, "array"):
            listed["items"]["minLength"] = 1


def _narrow(field: Schema, kind: str, **keywords: Any) -> None:
    """Adds keywords to the field's schema for values of JSON type `kind`."""
    members = list(_members(field, kind))
    if not members:
        raise KeyError(f"no '{kind}' in the schema {field}")  # the models changed: update here
    for member in members:
        member.update(keywords)


def _members(field: Schema, kind: str) -> Iterator[Schema]:
    if field.get("type") == kind:
        yield field
    for member in field.get("anyOf", []):
        yield from _members(member, kind)


def decimal_below(n: int) -> str:
    """A regular expression matching the decimal numbers 0 .. n-1, written without leading zeros
    (token ids in a vocabulary of n)."""
    top = str(n - 1)
    if len(top) == 1:
        return f"^[0-{top}]$"
    shorter = ["[0-9]"] + ([f"[1-9][0-9]{{1,{len(top) - 2}}}"] if len(top) > 2 else [])
    same_length = [top]
    for i, digit in enumerate(top):
        lowest = 1 if i == 0 else 0
        if int(digit) > lowest:
            rest = len(top) - 1 - i
            tail = f"[0-9]{{{rest}}}" if rest else ""
            same_length.append(f"{top[:i]}[{lowest}-{int(digit) - 1}]{tail}")
    return "^(" + "|".join(shorter + same_length) + ")$"
