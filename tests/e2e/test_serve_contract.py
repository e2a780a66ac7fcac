"""The server's contract: its OpenAPI document describes what it does.

Schemathesis generates requests from /openapi.json of two live servers (uvicorn on a free loopback
port: a tiny sft run behind an API key, a tiny classification run without one) and fails on any
server error, any status the document does not list for the operation, any answer that does not
match its documented schema, and any request valid by the document that the server refuses.
Plain tests check the health probes (open beside a guarded API, readiness while the model loads or
after it failed to load) and which endpoints each kind of run lists.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import pytest
import schemathesis
import uvicorn
from conftest import assert_user_error
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)
from test_serve import _one_thread, _recipes  # noqa: F401 - a fixture and the tiny recipes

import tuneforge
from tuneforge.deploy.serve import Limits, bind, create_app
from tuneforge.deploy.server.engine import ModelService
from tuneforge.deploy.server.openapi import decimal_below

KEY = "sk-contract-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    positive_data_acceptance,
]
# Small generation limits keep every answer a few tokens long (the run is fuzzed, not benchmarked)
LIMITS = {"max_tokens": 8, "default_max_tokens": 8, "max_texts": 8}
FUZZ = settings(
    max_examples=25,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a finding is reported as found
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same requests on every run
    database=None,
)


# --------------------------------------------------------------------------------------------------
# Runs and live servers


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model) -> dict[str, Path]:
    recipes = _recipes(tmp_path_factory.mktemp("contract"), tiny_model)
    return {
        kind: tuneforge.train(recipes[kind], ["training.max_steps=2"]).path
        for kind in ("sft", "cls")
    }


@contextmanager
def live(run: Path, **options) -> Iterator[str]:
    """A uvicorn server for `run` on a free loopback port, once /ready says the model is loaded."""
    sock = bind("127.0.0.1", 0)
    app = create_app(run, limits=Limits(**LIMITS), **options)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        deadline = time.monotonic() + 120
        while not server.started or httpx.get(f"{url}/ready").status_code != 200:
            assert thread.is_alive() and time.monotonic() < deadline, "the server never got ready"
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


@pytest.fixture(scope="module")
def sft_url(runs) -> Iterator[str]:
    with live(runs["sft"], api_key=KEY) as url:
        yield url


@pytest.fixture(scope="module")
def cls_url(runs) -> Iterator[str]:
    with live(runs["cls"]) as url:
        yield url


@pytest.fixture(scope="module")
def sft_schema(sft_url):
    return schemathesis.openapi.from_url(f"{sft_url}/openapi.json", headers=AUTH)


@pytest.fixture(scope="module")
def cls_schema(cls_url):
    return schemathesis.openapi.from_url(f"{cls_url}/openapi.json")


# --------------------------------------------------------------------------------------------------
# Schemathesis against each server


def findings(schema, headers: dict[str, str]) -> list[str]:
    """Every operation of the document, fuzzed with valid and with invalid requests; what the
    checks found, one entry per operation and mode. (Hypothesis is driven here rather than through
    `schemathesis.pytest.from_fixture`, whose lazy loader does not run under pytest 9.)"""
    found = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @FUZZ
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case) -> None:
                case.call_and_validate(headers=headers, checks=CHECKS, timeout=60)

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid: an operation without parameters
                continue
            except Exception as e:  # noqa: BLE001 - a finding, reported with the others
                found.append(f"{operation.label} ({mode.value} data): {e}")
    return found


@pytest.mark.parametrize("kind", ["sft", "cls"])
def test_the_server_keeps_its_documented_contract(kind, request):
    schema = request.getfixturevalue(f"{kind}_schema")
    found = findings(schema, AUTH if kind == "sft" else {})
    assert not found, f"{len(found)} contract findings:\n\n" + "\n\n".join(found)


# --------------------------------------------------------------------------------------------------
# Health and readiness


def test_the_probes_are_open_while_the_api_needs_the_key(sft_url):
    for probe, body in (("/health", {"status": "ok"}), ("/ready", {"status": "ready"})):
        r = httpx.get(sft_url + probe)
        assert r.status_code == 200 and r.json() == body, (probe, r.text)  # no model details
    for path in ("/stats", "/v1/models", "/openapi.json"):
        r = httpx.get(sft_url + path)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key"
    stats = httpx.get(f"{sft_url}/stats", headers=AUTH).json()
    assert stats["state"] == "ready" and stats["task"] == "sft"
    assert set(stats["generation"]) == {"busy", "waiting", "finished"}


def test_guard_health_puts_the_probes_behind_the_key(runs):
    app = create_app(runs["cls"], api_key=KEY, guard_health=True)
    with TestClient(app) as client:
        for probe in ("/health", "/ready"):
            assert client.get(probe).status_code == 401, probe
        assert client.get("/health", headers=AUTH).json() == {"status": "ok"}
        doc = client.get("/openapi.json", headers=AUTH).json()
    assert "401" in doc["paths"]["/health"]["get"]["responses"]


def test_guard_health_without_an_api_key_is_a_user_error(runs):
    command = [sys.executable, "-m", "tuneforge.cli", "serve", str(runs["cls"]), "--guard-health"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert_user_error(result, "--guard-health needs --api-key")


@contextmanager
def loading(runs, monkeypatch, outcome: Exception | None) -> Iterator[tuple]:
    """A classification app whose model load waits for `release`, then ends with `outcome`; the
    list receives what `on_loaded` is told."""
    release, told = threading.Event(), []
    real_load = ModelService.load

    def held_load(self):
        assert release.wait(60)
        if outcome is not None:
            raise outcome
        real_load(self)

    monkeypatch.setattr(ModelService, "load", held_load)
    with TestClient(create_app(runs["cls"], on_loaded=told.append)) as client:
        try:
            yield client, release, told
        finally:
            release.set()


def _loaded(release: threading.Event, told: list) -> None:
    release.set()
    deadline = time.monotonic() + 60
    while not told:
        assert time.monotonic() < deadline, "loading never ended"
        time.sleep(0.02)


def test_ready_is_503_until_the_model_is_loaded(runs, monkeypatch):
    with loading(runs, monkeypatch, None) as (client, release, told):
        assert client.get("/health").json() == {"status": "ok"}  # alive while loading
        for r in (client.get("/ready"), client.post("/v1/classify", json={"input": "fine"})):
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "model_loading"
        assert client.get("/stats").json()["state"] == "loading"
        _loaded(release, told)
        assert told == [None]
        assert client.get("/ready").json() == {"status": "ready"}
        assert client.post("/v1/classify", json={"input": "fine"}).status_code == 200


def test_a_model_that_fails_to_load_keeps_ready_at_503(runs, monkeypatch):
    with loading(runs, monkeypatch, OSError("weights unreadable")) as (client, release, told):
        _loaded(release, told)
        assert isinstance(told[0], OSError)
        r = client.get("/ready")
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_failed"
        assert "weights unreadable" in r.json()["error"]["message"]
        assert client.get("/health").status_code == 200  # alive: the orchestrator decides


# --------------------------------------------------------------------------------------------------
# The document lists what the run serves


def _document(url: str, headers: dict | None = None) -> dict:
    r = httpx.get(f"{url}/openapi.json", headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()


def _statuses(doc: dict, path: str, method: str) -> set[str]:
    return set(doc["paths"][path][method]["responses"])


def test_the_sft_document_lists_the_chat_endpoints_their_errors_and_limits(sft_url):
    doc = _document(sft_url, AUTH)
    assert set(doc["paths"]) == {
        "/health", "/ready", "/stats", "/v1/models", "/v1/models/{model}",
        "/v1/chat/completions", "/v1/completions", "/v1/feedback",
    }  # fmt: skip
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert _statuses(doc, path, "post") == {"200", "400", "401", "404", "413", "503"}
    assert _statuses(doc, "/v1/feedback", "post") == {"200", "400", "401", "404", "413"}
    feedback = doc["components"]["schemas"]["FeedbackRequest"]
    assert len(feedback["oneOf"]) == 2 and feedback["anyOf"]  # an id or the text; a judgement
    assert _statuses(doc, "/health", "get") == {"200"}  # open: no 401
    assert _statuses(doc, "/ready", "get") == {"200", "503"}
    assert _statuses(doc, "/stats", "get") == {"200", "401"}
    assert "422" not in str(doc) and "HTTPValidationError" not in doc["components"]["schemas"]
    body = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert body["messages"]["minItems"] == 1
    assert body["max_tokens"]["anyOf"][0]["maximum"] == LIMITS["max_tokens"]
    name = httpx.get(f"{sft_url}/v1/models", headers=AUTH).json()["data"][0]["id"]
    assert body["model"]["enum"] == [name]  # the one model id the server accepts
    error = doc["components"]["schemas"]["ErrorDetail"]
    assert set(error["properties"]) == {"message", "type", "param", "code"}


def test_the_classification_document_lists_classify_only(cls_url):
    doc = _document(cls_url)
    assert set(doc["paths"]) == {
        "/health", "/ready", "/stats", "/v1/models", "/v1/models/{model}", "/v1/classify"
    }  # fmt: skip
    assert _statuses(doc, "/v1/classify", "post") == {"200", "400", "404", "413", "503"}
    assert "securitySchemes" not in doc["components"]  # no API key
    text = doc["components"]["schemas"]["ClassifyRequest"]["properties"]["input"]
    single, listed = text["anyOf"]
    assert single["pattern"] == r"\S"  # not empty, not blank
    assert listed["minItems"] == 1 and listed["maxItems"] == LIMITS["max_texts"]
    # a route of the other kind stays mounted, out of the document, and says what to use instead
    chat = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{cls_url}/v1/chat/completions", json=chat)
    assert r.status_code == 400 and "/v1/classify" in r.json()["error"]["message"]


@pytest.mark.parametrize("n", [1, 2, 7, 10, 11, 99, 100, 101, 400, 1000, 32000, 49152, 128256])
def test_token_id_pattern_matches_exactly_the_ids_below_the_vocabulary_size(n):
    pattern = re.compile(decimal_below(n))
    probe = set(range(min(n + 50, 2000))) | {n - 2, n - 1, n, n + 1, 10 * n}
    for i in probe:
        if i >= 0:
            assert bool(pattern.match(str(i))) == (i < n), (n, i)
    assert not pattern.match("007") and not pattern.match("-1") and not pattern.match("")
