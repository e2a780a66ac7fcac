"""`tuneforge serve` end to end: live servers on loopback (started through the CLI) for a tiny sft
run and a tiny classification run, driven by the official `openai` client and raw HTTP.

Answers are checked against the same run used in-process (`Run.chat`, `Run.generate`,
`Run.predict`), so the server is known to render prompts with the training chat template and to
decode exactly as the library does. Every refusal is checked for its status and OpenAI's error
shape, with the server still healthy afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
import torch
from conftest import assert_user_error, sentiment_rows, write_csv, write_jsonl

from tuneforge.data.chat import encode_prompt
from tuneforge.deploy.server.engine import TextFilter

KEY = "sk-test-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
SYSTEM = "Triage the alert."
CATEGORIES = ["phishing", "malware", "benign"]
ALERT = [{"role": "user", "content": "alert 7: the quick brown fox malware"}]


# --------------------------------------------------------------------------------------------------
# Streaming text is the whole answer, piece by piece (pure, no server)


def _stream(pieces: list[str], stops: list[str]) -> str:
    f = TextFilter(stops)
    out = []
    for piece in pieces:
        out.append(f.feed(piece))
        if f.stopped:
            break
    out.append(f.finish())
    return "".join(out)


@pytest.mark.parametrize(
    "pieces, stops, expected",
    [
        (["  Hello", " world", "  \n"], [], "Hello world"),
        (["\n", " ", "a b", " c\n\n"], [], "a b c"),
        (["Category: ", "mal", "ware\nRe", "ason"], ["\nRe"], "Category: malware"),
        (["ab", "cSTO", "P more"], ["STOP"], "abc"),
        (["x", "S", "T", "O"], ["STOP"], "xSTO"),  # a stop string never completed is output
        (["one", " two"], ["two", "e t"], "on"),  # the earliest stop string wins
    ],
)
def test_streamed_text_equals_the_whole_answer(pieces, stops, expected):
    assert _stream(pieces, stops) == expected
    whole = "".join(pieces)
    cuts = [whole.find(s) for s in stops if s in whole]
    assert expected == (whole[: min(cuts)] if cuts else whole).strip()


def test_text_held_back_is_never_lost():
    f = TextFilter(["END"])
    assert f.feed("abcE") == "abc"  # "E" could start "END"
    assert f.feed("N") == ""
    assert f.feed("x") == "ENx"
    assert f.finish() == ""


# --------------------------------------------------------------------------------------------------
# Runs and live servers


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the servers: the in-process references decode identically
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


def _chat_row(i: int) -> dict:
    cat = CATEGORIES[i % 3]
    return {
        "messages": [
            {"role": "user", "content": f"alert {i}: the quick brown fox {cat}"},
            {"role": "assistant", "content": f"Category: {cat}\nReason: the lazy dog"},
        ]
    }


def _recipes(tmp: Path, tiny_model: Path) -> dict[str, Path]:
    """A tiny sft recipe (with a system prompt) and a tiny classification recipe."""
    train = write_jsonl(tmp / "train.jsonl", [_chat_row(i) for i in range(16)])
    validation = write_jsonl(tmp / "validation.jsonl", [_chat_row(i) for i in range(100, 104)])
    (tmp / "sft.yaml").write_text(
        f"""
name: serve-sft
base_model: {tiny_model}
task: sft
data: {{train: {train}, validation: {validation}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{batch_size: 8, learning_rate: 5.0e-2, max_length: 128}}
sft: {{generation_examples: 0, system_prompt: "{SYSTEM}"}}
output_dir: {tmp / "runs"}
"""
    )
    cls_train = write_csv(tmp / "train.csv", sentiment_rows(24))
    cls_validation = write_csv(tmp / "validation.csv", sentiment_rows(8, offset=100))
    (tmp / "cls.yaml").write_text(
        f"""
name: serve-cls
base_model: {tiny_model}
task: classification
data: {{train: {cls_train}, validation: {cls_validation}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{batch_size: 8, learning_rate: 1.0e-2}}
output_dir: {tmp / "runs"}
"""
    )
    return {"sft": tmp / "sft.yaml", "cls": tmp / "cls.yaml"}


@pytest.fixture(scope="module")
def loaded(runs):
    import tuneforge

    return {kind: tuneforge.load_run(path) for kind, path in runs.items()}


class Server:
    def __init__(self, run: Path, log: Path, *args: str) -> None:
        self.name = run.name
        self.log = log
        self.url = ""
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tuneforge.cli", "serve", str(run), "--port", "0", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )

    def wait_ready(self, headers: dict, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            if not self.url:
                found = re.search(r"on (http://127\.0\.0\.1:\d+) ", self.log.read_text())
                self.url = found.group(1) if found else ""
            else:
                try:
                    if (
                        httpx.get(f"{self.url}/ready", headers=headers, timeout=5).status_code
                        == 200
                    ):
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        self.proc.terminate()  # uvicorn shuts down gracefully on SIGTERM
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model):
    """Both runs trained (2 steps) and served through the CLI; each server starts while the next
    run trains. The sft server needs an API key; the classification server is open."""
    import tuneforge

    tmp = tmp_path_factory.mktemp("serve")
    recipes = _recipes(tmp, tiny_model)
    runs, servers = {}, {}
    try:
        for kind, args in (("sft", ["--api-key", KEY]), ("cls", [])):
            runs[kind] = tuneforge.train(recipes[kind], ["training.max_steps=2"]).path
            servers[kind] = Server(runs[kind], tmp / f"{kind}.log", *args)
        servers["sft"].wait_ready(AUTH)
        servers["cls"].wait_ready({})
        yield {"runs": runs, "servers": servers}
    finally:
        stopped = {
            kind: (server.stop(), server.log.read_text()) for kind, server in servers.items()
        }
    for kind, (code, log) in stopped.items():  # a graceful shutdown on SIGTERM
        assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in log, (kind, log)


@pytest.fixture(scope="module")
def runs(stack) -> dict[str, Path]:
    return stack["runs"]


@pytest.fixture(scope="module")
def servers(stack) -> dict[str, Server]:
    return stack["servers"]


@pytest.fixture(scope="module")
def client(servers) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{servers['sft'].url}/v1", api_key=KEY, max_retries=0, timeout=120
    )


@pytest.fixture(scope="module")
def sft_http(servers):
    with httpx.Client(base_url=servers["sft"].url, headers=AUTH, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def cls_http(servers):
    with httpx.Client(base_url=servers["cls"].url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def visible(loaded) -> dict[str, float]:
    """logit_bias that bans whitespace-only tokens and the end-of-turn token, so even a barely
    trained model writes visible text for exactly max_tokens tokens."""
    tok = loaded["sft"].tokenizer
    special = set(tok.all_special_ids)
    banned = [i for i in range(len(tok)) if i in special or not tok.decode([i]).strip()]
    return {str(i): -100 for i in banned}


def _eot_id(loaded) -> int:
    run = loaded["sft"]
    return run.tokenizer.convert_tokens_to_ids(run.meta["info"]["end_of_turn"])


def _with_system(messages: list[dict]) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, *messages]


def _healthy(http: httpx.Client) -> dict:
    """The server is alive and ready; its state and counters (/stats, behind the API key)."""
    for probe, status in (("/health", "ok"), ("/ready", "ready")):
        r = http.get(probe)
        assert r.status_code == 200 and r.json() == {"status": status}, (probe, r.text)
    r = http.get("/stats")
    assert r.status_code == 200, r.text
    return r.json()


# --------------------------------------------------------------------------------------------------
# The openai client against the live server


def test_models_are_listed_and_retrieved(client, servers):
    name = servers["sft"].name
    assert [m.id for m in client.models.list().data] == [name]
    assert client.models.retrieve(name).owned_by == "tuneforge"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_answers_exactly_as_the_run_does(client, servers, loaded):
    run = loaded["sft"]
    reply = client.chat.completions.create(
        model=servers["sft"].name, messages=ALERT, temperature=0, max_tokens=8
    )
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == servers["sft"].name
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == run.chat(ALERT, max_new_tokens=8)
    # rendered with the run's chat template, the recipe's system prompt added
    assert reply.usage.prompt_tokens == len(encode_prompt(run.tokenizer, _with_system(ALERT)))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # a conversation with its own system message keeps it (no second one)
    own = [{"role": "system", "content": "Be brief."}, *ALERT]
    reply = client.chat.completions.create(
        model=servers["sft"].name, messages=own, temperature=0, max_tokens=2
    )
    assert reply.usage.prompt_tokens == len(encode_prompt(run.tokenizer, own))
    # content as text parts, and OpenAI's "developer" role, render as text and "system"
    parts = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "alert 7: the quick "},
                                     {"type": "text", "text": "brown fox malware"}]},
    ]  # fmt: skip
    reply = client.chat.completions.create(
        model=servers["sft"].name, messages=parts, temperature=0, max_tokens=2
    )
    assert reply.usage.prompt_tokens == len(encode_prompt(run.tokenizer, own))


def test_temperature_top_p_and_seed_sample_as_the_run_does(client, servers, loaded):
    messages = [{"role": "user", "content": "alert 3: the quick brown fox malware"}]
    answers = []
    for seed, temperature, top_p in [(1, 1.0, 1.0), (2, 1.3, 0.9), (2, 1.3, 0.9)]:
        reply = client.chat.completions.create(
            model=servers["sft"].name,
            messages=messages,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            max_tokens=12,
        )
        torch.manual_seed(seed)
        expected = loaded["sft"].chat(
            messages, max_new_tokens=12, temperature=temperature, top_p=top_p
        )
        assert reply.choices[0].message.content == expected
        answers.append(expected)
    assert answers[1] == answers[2]  # same seed, same answer
    assert answers[0] != answers[1]


def test_streaming_gives_the_same_answer_in_openai_chunks(client, servers, visible):
    kwargs = dict(
        model=servers["sft"].name, messages=ALERT, temperature=0, max_tokens=16, logit_bias=visible
    )
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert whole.choices[0].message.content  # visible text, 16 tokens of it
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 16
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert reasons == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_the_event_stream_is_server_sent_events_ending_with_done(sft_http, servers, visible):
    body = {
        "model": servers["sft"].name,
        "messages": ALERT,
        "max_tokens": 6,
        "temperature": 0,
        "logit_bias": visible,
        "stream": True,
    }
    with sft_http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_generation_stops_at_the_end_of_turn_token(client, servers, loaded):
    force_eot = {str(_eot_id(loaded)): 100}
    kwargs = dict(model=servers["sft"].name, messages=ALERT, max_tokens=20, logit_bias=force_eot)
    reply = client.chat.completions.create(**kwargs, temperature=0)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 0 and reply.choices[0].message.content == ""
    chunks = list(client.chat.completions.create(**kwargs, temperature=0, stream=True))
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"


def test_stop_strings_cut_the_answer_streaming_or_not(client, servers, visible):
    kwargs = dict(
        model=servers["sft"].name, messages=ALERT, temperature=0, max_tokens=24, logit_bias=visible
    )
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    stop = full[4:6]
    expected = full[: full.find(stop)].strip()
    reply = client.chat.completions.create(**kwargs, stop=[stop, "never-there"])
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(**kwargs, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completions_answer_the_prompt_as_one_user_turn(client, servers, loaded, visible):
    run = loaded["sft"]
    prompt = "alert 9: the quick brown fox benign"
    name = servers["sft"].name
    reply = client.completions.create(model=name, prompt=prompt, temperature=0, max_tokens=8)
    assert reply.object == "text_completion"
    assert reply.choices[0].text == run.generate(prompt, max_new_tokens=8)
    as_chat = _with_system([{"role": "user", "content": prompt}])
    assert reply.usage.prompt_tokens == len(encode_prompt(run.tokenizer, as_chat))

    kwargs = dict(model=name, prompt=prompt, temperature=0, max_tokens=10, logit_bias=visible)
    whole = client.completions.create(**kwargs)
    streamed = list(client.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text != ""
    assert streamed[-1].choices[0].finish_reason == "length"
    echoed = client.completions.create(**kwargs, echo=True)
    assert echoed.choices[0].text == prompt + whole.choices[0].text


def test_classify_returns_the_runs_labels_and_probabilities(cls_http, servers, loaded):
    texts = ["great film, loved it", "boring and dull mess", "a moving, beautiful movie"]
    expected = loaded["cls"].predict(texts)
    one = cls_http.post("/v1/classify", json={"input": texts[0]})
    many = cls_http.post("/v1/classify", json={"input": texts, "model": servers["cls"].name})
    assert one.status_code == many.status_code == 200, (one.text, many.text)
    assert len(one.json()["data"]) == 1
    data = many.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    for got, want in zip([one.json()["data"][0], *data], [expected[0], *expected], strict=True):
        assert got["label"] == want["label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
        assert set(got["probabilities"]) == {"negative", "positive"}


# --------------------------------------------------------------------------------------------------
# API key


def test_every_request_needs_the_api_key(servers):
    url = servers["sft"].url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        for method, path in (
            ("GET", "/stats"),
            ("GET", "/v1/models"),
            ("POST", "/v1/chat/completions"),
        ):
            r = httpx.request(method, url + path, headers=headers, content=b"{not json")
            assert r.status_code == 401, (headers, path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            _assert_error_shape(r.json(), code="invalid_api_key")
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    for probe in ("/health", "/ready"):  # open for an orchestrator's probes, no model details
        r = httpx.get(url + probe)
        assert r.status_code == 200 and set(r.json()) == {"status"}, (probe, r.text)
    assert httpx.get(f"{servers['cls'].url}/stats").status_code == 200  # no --api-key: open


# --------------------------------------------------------------------------------------------------
# Refusals: the right status, OpenAI's error shape, and the server still healthy


def _assert_error_shape(body: dict, **expected) -> None:
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    for key, value in expected.items():
        assert error[key] == value, (key, error)


M = "__model__"  # replaced by the served model's name
USER = [{"role": "user", "content": "hello"}]
CHAT, TEXT, CLASSIFY = "/v1/chat/completions", "/v1/completions", "/v1/classify"
BASE = {CHAT: {"model": M, "messages": USER}, TEXT: {"model": M, "prompt": "hi"}, CLASSIFY: {}}
DROP = object()  # removes the field from the base body
IMAGE = [{"type": "image_url", "image_url": {"url": "http://x"}}]
# (id, path, fields over the path's base body, status, param, code)
SFT_ERRORS = [
    ("no-messages", CHAT, {"messages": []}, 400, "messages", "invalid_value"),
    ("messages-text", CHAT, {"messages": "hi"}, 400, "messages", "invalid_type"),
    ("bad-role", CHAT, {"messages": [{"role": "bot", "content": "x"}]}, 400,
     "messages[0].role", "invalid_value"),
    ("content-number", CHAT, {"messages": [{"role": "user", "content": 5}]}, 400,
     "messages[0].content", "invalid_type"),
    ("no-content", CHAT, {"messages": [{"role": "user"}]}, 400,
     "messages[0].content", "missing_required_parameter"),
    ("image-part", CHAT, {"messages": [{"role": "user", "content": IMAGE}]}, 400,
     "messages[0].content", None),
    ("unknown-model", CHAT, {"model": "gpt-4o"}, 404, "model", "model_not_found"),
    ("no-model", CHAT, {"model": DROP}, 400, "model", "missing_required_parameter"),
    ("negative-temperature", CHAT, {"temperature": -0.5}, 400, "temperature", "invalid_value"),
    ("temperature-text", CHAT, {"temperature": "hot"}, 400, "temperature", "invalid_type"),
    ("top-p-above-1", CHAT, {"top_p": 1.5}, 400, "top_p", "invalid_value"),
    ("max-tokens-0", CHAT, {"max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ("max-tokens-over-limit", CHAT, {"max_tokens": 100_000}, 400, "max_tokens", "invalid_value"),
    ("max-tokens-text", CHAT, {"max_tokens": "ten"}, 400, "max_tokens", "invalid_type"),
    ("stream-text", CHAT, {"stream": "yes"}, 400, "stream", "invalid_type"),
    ("five-stops", CHAT, {"stop": list("abcde")}, 400, "stop", "invalid_value"),
    ("n-2", CHAT, {"n": 2}, 400, "n", "invalid_value"),
    ("bias-outside-vocab", CHAT, {"logit_bias": {"999999": 5}}, 400, "logit_bias", "invalid_value"),
    ("bias-not-an-id", CHAT, {"logit_bias": {"fox": 5}}, 400, "logit_bias", "invalid_value"),
    ("prompt-too-long", CHAT, {"messages": [{"role": "user", "content": "fox " * 3000}]}, 400,
     "messages", "context_length_exceeded"),
    ("completion-prompt-number", TEXT, {"prompt": 5}, 400, "prompt", "invalid_type"),
    ("two-prompts", TEXT, {"prompt": ["a", "b"]}, 400, "prompt", None),
    ("completion-negative-top-p", TEXT, {"top_p": -1}, 400, "top_p", "invalid_value"),
    ("classify-generative", CLASSIFY, {"input": "hello"}, 400, None, "unsupported_task"),
]  # fmt: skip
CLS_ERRORS = [
    ("chat-on-classifier", CHAT, {}, 400, None, "unsupported_task"),
    ("completion-on-classifier", TEXT, {}, 400, None, "unsupported_task"),
    ("too-many-texts", CLASSIFY, {"input": ["a text"] * 65}, 400, "input", "too_many_inputs"),
    ("empty-text", CLASSIFY, {"input": ""}, 400, "input", "invalid_value"),
    ("blank-in-list", CLASSIFY, {"input": ["fine", "  "]}, 400, "input[1]", "invalid_value"),
    ("empty-list", CLASSIFY, {"input": []}, 400, "input", None),
    ("input-number", CLASSIFY, {"input": 5}, 400, "input", "invalid_type"),
    ("no-input", CLASSIFY, {}, 400, "input", "missing_required_parameter"),
    ("classify-unknown-model", CLASSIFY, {"input": "x", "model": "nope"}, 404, "model",
     "model_not_found"),
]  # fmt: skip


def _body(path: str, fields: dict, name: str) -> dict:
    body = {**BASE[path], **fields}
    return {k: name if v == M else v for k, v in body.items() if v is not DROP}


@pytest.mark.parametrize(
    "kind, path, body, status, param, code",
    [("sft", *case[1:]) for case in SFT_ERRORS] + [("cls", *case[1:]) for case in CLS_ERRORS],
    ids=[c[0] for c in SFT_ERRORS] + [c[0] for c in CLS_ERRORS],
)
def test_bad_requests_get_openai_errors(
    kind, path, body, status, param, code, servers, sft_http, cls_http
):
    http = sft_http if kind == "sft" else cls_http
    r = http.post(path, json=_body(path, body, servers[kind].name))
    assert r.status_code == status, r.text
    expected = {"param": param, "type": "invalid_request_error"}
    if code is not None:
        expected["code"] = code
    _assert_error_shape(r.json(), **expected)
    _healthy(http)


def test_max_tokens_past_the_context_ends_the_answer_where_the_context_does(
    client, servers, visible
):
    """max_tokens is an upper bound: a prompt of n tokens leaves room for 1024 - n (the tiny
    model's context), and the answer stops there with finish_reason "length", not a 400."""
    reply = client.chat.completions.create(
        model=servers["sft"].name, messages=USER, temperature=0, max_tokens=2000, logit_bias=visible
    )
    assert reply.usage.total_tokens == 1024
    assert reply.choices[0].finish_reason == "length"


def test_a_chat_ending_with_any_role_gets_the_next_assistant_turn(sft_http, servers):
    """As OpenAI: the server answers the conversation as it is (no rule on the last role)."""
    for role in ("assistant", "system"):
        messages = [*USER, {"role": role, "content": "x"}]
        r = sft_http.post(
            CHAT, json={"model": servers["sft"].name, "messages": messages, "max_tokens": 2}
        )
        assert r.status_code == 200, (role, r.text)
        assert r.json()["choices"][0]["message"]["role"] == "assistant"


def test_malformed_and_oversized_bodies_and_unknown_routes(sft_http):
    json_type = {"content-type": "application/json"}
    cases = [
        ("POST", "/v1/chat/completions", b'{"model": "x", "messages": [', 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400, None),
        ("POST", "/v1/chat/completions", b"x" * 2_000_000, 413, "request_too_large"),
        ("GET", "/v1/nothing-here", b"", 404, "not_found"),
        ("GET", "/v1/chat/completions", b"", 405, "method_not_allowed"),
    ]
    for method, path, content, status, code in cases:
        r = sft_http.request(method, path, content=content, headers=json_type)
        assert r.status_code == status, (path, content[:40], r.text)
        _assert_error_shape(r.json(), **({"code": code} if code else {}))

    def chunked():  # no Content-Length: the limit is enforced while reading
        for _ in range(200):
            yield b" " * 10_000

    r = sft_http.post("/v1/chat/completions", content=chunked(), headers=json_type)
    assert r.status_code == 413, r.text
    _assert_error_shape(r.json(), code="request_too_large")
    _healthy(sft_http)


def test_the_openai_client_raises_on_refusals_and_the_server_keeps_answering(client, servers):
    name = servers["sft"].name
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=name, messages=USER, temperature=-1)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=USER)
    with pytest.raises(openai.BadRequestError, match="at most"):
        client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "fox " * 3000}]
        )
    reply = client.chat.completions.create(model=name, messages=USER, max_tokens=2)
    assert reply.usage.completion_tokens <= 2


# --------------------------------------------------------------------------------------------------
# Concurrency


def test_sixty_simultaneous_requests_are_all_answered_correctly(servers, loaded, visible):
    """40 classify (single texts and small lists) and 24 chat requests (sampled with their own
    seed, or greedy streams), sent at once; every answer is the right one for its request."""
    sft_name = servers["sft"].name
    texts = [row["text"] for row in sentiment_rows(60, offset=300)]
    classify_inputs = [texts[i] if i % 2 else texts[i : i + 3] for i in range(40)]
    expected_cls = {t: p for t, p in zip(texts, loaded["cls"].predict(texts), strict=True)}
    prompts = [[{"role": "user", "content": f"alert {i}: the quick brown fox"}] for i in range(12)]
    expected_chat = []
    for i, messages in enumerate(prompts):
        torch.manual_seed(1000 + i)
        expected_chat.append(loaded["sft"].chat(messages, max_new_tokens=6, temperature=1.0))
    stream_body = {
        "model": sft_name, "messages": ALERT, "temperature": 0, "max_tokens": 6,
        "logit_bias": visible,
    }  # fmt: skip
    client = openai.OpenAI(base_url=f"{servers['sft'].url}/v1", api_key=KEY, max_retries=0)
    expected_stream = client.chat.completions.create(**stream_body).choices[0].message.content
    before = httpx.get(f"{servers['cls'].url}/stats").json()["classify"]

    async def classify(c: httpx.AsyncClient, value):
        r = await c.post(f"{servers['cls'].url}/v1/classify", json={"input": value})
        return r.status_code, r.json()

    async def chat(c: httpx.AsyncClient, i: int):
        body = {"model": sft_name, "messages": prompts[i], "temperature": 1.0,
                "seed": 1000 + i, "max_tokens": 6}  # fmt: skip
        r = await c.post(f"{servers['sft'].url}/v1/chat/completions", json=body, headers=AUTH)
        return r.status_code, r.json()

    async def stream(c: httpx.AsyncClient):
        url = f"{servers['sft'].url}/v1/chat/completions"
        body = {**stream_body, "stream": True}
        async with c.stream("POST", url, json=body, headers=AUTH) as r:
            lines = [line async for line in r.aiter_lines() if line]
        return r.status_code, lines

    async def everything():
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=120, limits=limits) as c:
            jobs = [classify(c, value) for value in classify_inputs]
            jobs += [chat(c, i) for i in range(len(prompts))]
            jobs += [stream(c) for _ in range(12)]
            return await asyncio.wait_for(asyncio.gather(*jobs), timeout=150)

    start = time.monotonic()
    results = asyncio.run(everything())
    elapsed = time.monotonic() - start
    assert len(results) == 64
    assert all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:3]
    for value, (_, body) in zip(classify_inputs, results[:40], strict=True):
        sent = [value] if isinstance(value, str) else value
        assert [d["label"] for d in body["data"]] == [expected_cls[t]["label"] for t in sent]
        for d, t in zip(body["data"], sent, strict=True):
            assert d["probabilities"] == pytest.approx(expected_cls[t]["probabilities"], abs=1e-5)
    for want, (_, body) in zip(expected_chat, results[40:52], strict=True):
        assert body["choices"][0]["message"]["content"] == want
    for _, lines in results[52:]:
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
        assert text == expected_stream
    after = httpx.get(f"{servers['cls'].url}/stats").json()["classify"]
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == 40
    assert batches < requests  # concurrent classify calls shared forward passes
    assert elapsed < 150
    print(f"64 simultaneous requests in {elapsed:.1f}s; 40 classify calls in {batches} passes")


@contextlib.contextmanager
def _in_process(app):
    """`app` served by uvicorn in a thread on a free loopback port; yields its URL once ready."""
    import uvicorn

    from tuneforge.deploy.serve import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    while not server.started or httpx.get(f"{url}/ready", headers=AUTH).status_code != 200:
        assert thread.is_alive() and time.monotonic() < deadline, "in-process server not ready"
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


STEP_S = 0.01


def _slow_down(app) -> None:
    """Every forward pass of the served model (one per generated token) takes STEP_S longer."""
    embed = app.state.service.model.get_input_embeddings()
    embed.register_forward_pre_hook(lambda *_: time.sleep(STEP_S))


@pytest.fixture(scope="module")
def slow_sft(runs):
    """The sft run served in-process with every forward pass made STEP_S longer, so that a long
    generation lasts seconds on any machine (the tiny model alone writes ~1,000 tokens a second:
    a test could not see it running, as one CI run found)."""
    from tuneforge.deploy.serve import create_app

    app = create_app(runs["sft"], name="slow-sft", api_key=KEY, feedback_log=False)
    with _in_process(app) as url:
        _slow_down(app)
        with httpx.Client(base_url=url, headers=AUTH, timeout=120) as http:
            yield {"url": url, "http": http, "name": "slow-sft"}


def _busy(http: httpx.Client) -> bool:
    return _healthy(http)["generation"]["busy"]


def _until(condition, seconds: float, what: str) -> float:
    """Polls `condition` until true; the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, what
        time.sleep(0.02)
    return time.monotonic() - start


def test_health_and_other_requests_are_answered_during_a_long_generation(slow_sft, visible):
    """Generation runs off the event loop: while one holds the model (500 tokens, over 5 s),
    probes, the model list and refusals are answered at once, and a second chat waits its turn."""
    http, name = slow_sft["http"], slow_sft["name"]
    client = openai.OpenAI(
        base_url=f"{slow_sft['url']}/v1", api_key=KEY, max_retries=0, timeout=120
    )
    long = client.chat.completions.create(
        model=name, messages=ALERT, temperature=0, max_tokens=500, logit_bias=visible,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks: list = []
    reader = threading.Thread(target=lambda: chunks.extend(long), daemon=True)
    reader.start()
    _until(lambda: _busy(http), 30, "the long generation never started")
    queued: dict = {}

    def second_chat():
        queued["reply"] = client.chat.completions.create(model=name, messages=USER, max_tokens=3)

    waiter = threading.Thread(target=second_chat, daemon=True)
    waiter.start()
    latencies = {}
    for label, call in [
        ("health", lambda: _healthy(http)),
        ("models", lambda: http.get("/v1/models").raise_for_status()),
        ("classify", lambda: http.post("/v1/classify", json={"input": "x"})),
    ]:
        start = time.monotonic()
        call()
        latencies[label] = time.monotonic() - start
    state = _healthy(http)["generation"]
    assert state["busy"], "the long generation ended before the other requests were answered"
    assert max(latencies.values()) < 2.0, latencies
    reader.join(timeout=120)
    waiter.join(timeout=120)
    assert not reader.is_alive() and not waiter.is_alive()
    assert chunks[-1].usage.completion_tokens == 500
    assert queued["reply"].usage.completion_tokens <= 3
    shown = ", ".join(f"{k} {v:.3f}s" for k, v in latencies.items())
    print(f"while generating 500 tokens: {shown}")


def test_a_client_that_leaves_a_stream_frees_the_model(slow_sft, visible):
    """950 tokens take over 9.5 s here: a model free within 3 s of the client leaving was
    stopped, not left to finish."""
    http = slow_sft["http"]
    body = {
        "model": slow_sft["name"], "messages": ALERT, "temperature": 0, "max_tokens": 950,
        "logit_bias": visible, "stream": True,
    }  # fmt: skip
    before = _healthy(http)["generation"]["finished"]
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(lines)  # the role chunk, sent before the generation starts
        assert next(line for line in lines if line.startswith("data:"))  # the first text
        assert _busy(http), "the generation ended before the client left"
    # leaving the block closed the connection mid-generation
    _until(lambda: not _busy(http), 3.0, "the abandoned generation kept the model")
    assert _healthy(http)["generation"]["finished"] == before + 1
    reply = http.post(
        "/v1/chat/completions", json={"model": slow_sft["name"], "messages": USER, "max_tokens": 2}
    )
    assert reply.status_code == 200


# --------------------------------------------------------------------------------------------------
# The command line


def test_serve_refuses_a_missing_run_and_a_taken_port(tmp_path, runs):
    def cli(*args) -> subprocess.Popen:
        command = [sys.executable, "-m", "tuneforge.cli", "serve", *map(str, args)]
        env = {**os.environ, "COLUMNS": "200"}
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    def finished(proc: subprocess.Popen) -> subprocess.CompletedProcess:
        out, err = proc.communicate(timeout=120)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        missing, busy = cli(tmp_path / "no-such-run"), cli(runs["cls"], "--port", port)
        missing, busy = finished(missing), finished(busy)  # both at once: half the wait
    assert_user_error(missing, "run directory not found")
    assert_user_error(busy, f"cannot listen on 127.0.0.1:{port}", "--port")


def test_limits_set_on_the_command_line_refuse_with_openai_errors(tmp_path, runs, visible):
    """Lowered --max-* flags: a request past each one gets its 4xx in OpenAI's shape, a request
    within them is answered, and the server stays up."""
    sft = Server(
        runs["sft"], tmp_path / "sft.log",
        "--max-tokens", "4", "--max-prompt-tokens", "40", "--max-body-bytes", "3000",
    )  # fmt: skip
    cls = Server(runs["cls"], tmp_path / "cls.log", "--max-texts", "2")
    try:
        sft.wait_ready({})
        cls.wait_ready({})
        with httpx.Client(base_url=sft.url, timeout=120) as http:
            chat = {"model": sft.name, "messages": USER, "logit_bias": visible}
            r = http.post(CHAT, json={**chat, "max_tokens": 5})
            assert r.status_code == 400, r.text
            _assert_error_shape(r.json(), param="max_tokens", code="invalid_value")
            assert "at most 4" in r.json()["error"]["message"]
            # no max_tokens: the default (256) is capped by --max-tokens
            r = http.post(CHAT, json=chat)
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] == 4
            long = [{"role": "user", "content": "fox " * 60}]
            r = http.post(CHAT, json={**chat, "messages": long, "logit_bias": {}})
            assert r.status_code == 400, r.text
            _assert_error_shape(r.json(), param="messages", code="context_length_exceeded")
            assert "at most 40" in r.json()["error"]["message"]
            r = http.post(
                CHAT, json={**chat, "messages": [{"role": "user", "content": "x" * 3000}]}
            )
            assert r.status_code == 413, r.text
            _assert_error_shape(r.json(), code="request_too_large")
            assert "3000 bytes" in r.json()["error"]["message"]
            _healthy(http)
        with httpx.Client(base_url=cls.url, timeout=120) as http:
            r = http.post(CLASSIFY, json={"input": ["good", "bad", "fine"]})
            assert r.status_code == 400, r.text
            _assert_error_shape(r.json(), param="input", code="too_many_inputs")
            assert "at most 2" in r.json()["error"]["message"]
            r = http.post(CLASSIFY, json={"input": ["good", "bad"]})
            assert r.status_code == 200, r.text
            assert [d["index"] for d in r.json()["data"]] == [0, 1]
            _healthy(http)
    finally:
        sft.stop()
        cls.stop()


def test_serve_help_shows_the_limits_and_their_defaults():
    from typer.testing import CliRunner

    from tuneforge.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if "--max-" in line}
    assert "[default: 1000000]" in lines["--max-body-bytes"]
    assert "[default: 64]" in lines["--max-texts"]
    assert "[default: 2048]" in lines["--max-tokens"]
    assert "[default: 64]" in lines["--max-waiting"]
    assert "the model's context" in lines["--max-prompt-tokens"]


# --------------------------------------------------------------------------------------------------
# A pretrain run, served in-process (create_app + uvicorn in a thread)


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory, tiny_model):
    import tuneforge
    from tuneforge.deploy.serve import Limits, create_app

    tmp = tmp_path_factory.mktemp("serve-pretrain")
    sentence = "the quick brown fox jumps over the lazy dog and the film was wonderful"
    for split, first, n in (("train", 0, 6), ("validation", 100, 2)):
        docs = [{"text": f"Note {k}: {sentence[k % 7 :]}"} for k in range(first, first + n)]
        write_jsonl(tmp / f"{split}.jsonl", docs)
    (tmp / "pretrain.yaml").write_text(
        f"""
name: serve-pretrain
base_model: {tiny_model}
task: pretrain
data: {{train: {tmp / "train.jsonl"}, validation: {tmp / "validation.jsonl"}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{batch_size: 4, learning_rate: 2.0e-2, max_length: 32}}
output_dir: {tmp / "runs"}
"""
    )
    run = tuneforge.train(tmp / "pretrain.yaml", ["training.max_steps=2"])
    # one may wait; one generates at a time (tests/e2e/test_serve_batching.py: the limit in batches)
    app = create_app(run, name="notes-lm", limits=Limits(max_waiting=1, generation_batch=1))
    with _in_process(app) as url:
        _slow_down(app)  # 200 tokens take over 2 s: a burst of requests finds the model taken
        yield {"url": url, "run": run}


def test_a_pretrain_run_continues_plain_text_and_stops_at_eos(pretrain):
    run = pretrain["run"]
    client = openai.OpenAI(base_url=f"{pretrain['url']}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["notes-lm"]
    prompt = "The quick brown"
    reply = client.completions.create(model="notes-lm", prompt=prompt, temperature=0, max_tokens=8)
    assert reply.choices[0].text == run.generate(prompt, max_new_tokens=8)
    plain = run.tokenizer(prompt, add_special_tokens=False)["input_ids"]  # no chat template
    assert reply.usage.prompt_tokens == len(plain)
    eos = {str(run.tokenizer.eos_token_id): 100}
    ended = client.completions.create(model="notes-lm", prompt=prompt, max_tokens=8, logit_bias=eos)
    assert ended.choices[0].finish_reason == "stop" and ended.usage.completion_tokens == 0
    chat = client.chat.completions.create(
        model="notes-lm", messages=ALERT, temperature=0, max_tokens=6
    )
    assert chat.choices[0].message.content == run.chat(ALERT, max_new_tokens=6)
    r = httpx.post(f"{pretrain['url']}/v1/classify", json={"input": "x"})
    assert r.status_code == 400 and "pretrain run" in r.json()["error"]["message"]
    r = httpx.post(f"{pretrain['url']}/v1/completions", json={"model": "notes-lm", "prompt": ""})
    assert r.status_code == 400
    _assert_error_shape(r.json(), param="prompt", code="invalid_value")


def test_requests_past_the_waiting_limit_get_503_and_the_rest_are_served(pretrain):
    """One generation runs, one waits (max_waiting=1): more at once are refused, not queued."""
    run = pretrain["run"]
    body = {"model": "notes-lm", "prompt": "The quick", "max_tokens": 200, "temperature": 0,
            "logit_bias": {str(run.tokenizer.eos_token_id): -100}}  # fmt: skip

    async def burst():
        async with httpx.AsyncClient(base_url=pretrain["url"], timeout=120) as c:
            return await asyncio.gather(*[c.post("/v1/completions", json=body) for _ in range(6)])

    replies = asyncio.run(burst())
    statuses = [r.status_code for r in replies]
    assert statuses.count(200) >= 2 and 503 in statuses, statuses
    for r in replies:
        if r.status_code == 503:
            _assert_error_shape(r.json(), type="server_error", code="server_busy")
        else:
            assert r.json()["usage"]["completion_tokens"] == 200
    assert httpx.get(f"{pretrain['url']}/stats").json()["generation"]["busy"] is False
