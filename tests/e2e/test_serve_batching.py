"""Concurrent generation requests are decoded together (deploy/server/scheduler.py, rows.py) and
each still gets the answer it would get alone.

A tiny sft run is served in-process (create_app + uvicorn in a thread) with a long batching
window, so that requests sent at once land in one batch; answers sent one at a time (each a batch
of one: the generation.py path `tuneforge chat` uses) are the reference.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx2 as httpx
import pytest
from test_serve import _in_process, _one_thread, _recipes  # noqa: F401 - a fixture, helpers

import tuneforge
from tuneforge.deploy.serve import Limits, create_app
from tuneforge.deploy.server.scheduler import GenerationJob, GenerationQueue

KEY = "sk-test-0123456789"  # test_serve's `_in_process` polls /ready with its key
AUTH = {"Authorization": f"Bearer {KEY}"}
NAME = "batched"
PROMPTS = [
    "alert 1: fox",
    "alert 22: the quick brown fox phishing",
    "alert 333: the quick brown fox jumps over the lazy dog malware",
    "alert 4: benign",
    "alert 55: the lazy dog",
    "alert 6: the quick brown fox jumps benign benign benign",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model):
    recipes = _recipes(tmp_path_factory.mktemp("batching"), tiny_model)
    return tuneforge.train(recipes["sft"], ["training.max_steps=2"])


@pytest.fixture(scope="module")
def server(run) -> Iterator[dict]:
    """Requests arriving within 0.5 s share a batch (the default window is 5 ms)."""
    limits = Limits(max_tokens=64, generation_batch=8, generation_wait=0.5)
    app = create_app(run.path, name=NAME, api_key=KEY, limits=limits, feedback_log=False)
    with _in_process(app) as url:
        yield {"url": url, "app": app}


@pytest.fixture(scope="module")
def visible(run) -> dict[str, float]:
    """Bans whitespace-only and special tokens: the barely trained model writes visible text."""
    tok = run.tokenizer
    special = set(tok.all_special_ids)
    return {str(i): -100 for i in range(len(tok)) if i in special or not tok.decode([i]).strip()}


def _chat(i: int, **extra) -> dict:
    body = {"model": NAME, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
    return body | {"temperature": 0, "max_tokens": 4 + 3 * (i % 4)} | extra


def _send(url: str, bodies: list[dict], *, together: bool) -> list[httpx.Response]:
    """POSTs each (path, body): all at once, or one after the other."""

    async def post(c: httpx.AsyncClient, body: dict) -> httpx.Response:
        path = body.pop("_path", "/v1/chat/completions")
        return await c.post(path, json=body)

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120) as c:
            if together:
                return await asyncio.gather(*(post(c, dict(b)) for b in bodies))
            return [await post(c, dict(b)) for b in bodies]

    return asyncio.run(go())


def _stats(url: str) -> dict:
    return httpx.get(f"{url}/stats", headers=AUTH).json()["generation"]


def _queue(server: dict):
    """The served app's generation queue (batches decoded, the largest)."""
    return server["app"].state.service.queue


def _answer(r: httpx.Response) -> tuple[str, str, int]:
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    return text, choice["finish_reason"], body["usage"]["completion_tokens"]


def _batched(server: dict, bodies: list[dict]) -> list[httpx.Response]:
    """Sends `bodies` at once and checks they were decoded in one batch."""
    queue = _queue(server)
    before = queue.batches
    replies = _send(server["url"], bodies, together=True)
    assert queue.batches - before == 1 and queue.largest >= len(bodies)
    return replies


def test_greedy_answers_in_a_batch_equal_those_sent_one_at_a_time(server, run, visible):
    """Chats and completions of different lengths and max_tokens, with and without logit_bias."""
    url = server["url"]
    bodies = [_chat(i) for i in range(5)]  # 8 in all: one batch
    bodies += [_chat(i, logit_bias=visible, max_tokens=12) for i in range(2)]
    bodies.append({"_path": "/v1/completions", "model": NAME, "prompt": PROMPTS[2],
                   "temperature": 0, "max_tokens": 10})  # fmt: skip
    alone = [_answer(r) for r in _send(url, bodies, together=False)]
    together = [_answer(r) for r in _batched(server, bodies)]
    assert together == alone
    # ... which is what the run itself answers
    assert alone[0][0] == run.chat(bodies[0]["messages"], max_new_tokens=bodies[0]["max_tokens"])
    assert {reason for _, reason, _ in alone} >= {"length"}


def _long(url: str, visible: dict, max_tokens: int) -> tuple[dict, str, str]:
    """A greedy chat and a stop string its answer meets: (body, answer, stop). The visible
    character first seen furthest into the answer; the barely trained model may repeat one
    character, then its first three (the answer is cut to nothing, ended early all the same).
    Not a space: the answer is stripped, and the raw text may begin with one, which a stop string
    of one space would cut at (the raw text " of of ..." ends at once on " ")."""
    body = _chat(2, logit_bias=visible, max_tokens=max_tokens)
    [(answer, _, _)] = [_answer(r) for r in _send(url, [body], together=False)]
    assert len(answer) >= 4, answer
    later = max((c for c in answer if not c.isspace()), key=answer.find)
    return body, answer, later if answer.find(later) >= 2 else answer[:3]


def test_each_request_keeps_its_own_settings_and_stops_in_a_batch(server, run, visible):
    url = server["url"]
    long, reference, stop = _long(url, visible, 16)
    cut = reference[: reference.find(stop)].strip()
    eot = {str(run.tokenizer.convert_tokens_to_ids(run.meta["info"]["end_of_turn"])): 100}
    bodies = [
        long,
        long | {"max_tokens": 2},  # cut at 2 tokens
        long | {"stop": [stop]},  # cut before the stop string
        long | {"top_p": 0.0, "temperature": 1.5},  # top_p 0 decodes greedily
        long | {"temperature": 1.0, "top_p": 0.9},  # samples: a well-formed answer
        _chat(1, logit_bias=eot),  # an end token first: an empty answer that stopped
    ]
    replies = [_answer(r) for r in _batched(server, bodies)]
    assert replies[0] == (reference, "length", 16)
    assert replies[1][1:] == ("length", 2) and reference.startswith(replies[1][0])
    assert replies[2][:2] == (cut, "stop") and replies[2][2] < 16
    assert replies[3] == replies[0]
    assert replies[4][1] == "length" and replies[4][2] == 16
    assert replies[5] == ("", "stop", 0)


def test_streams_in_a_batch_give_the_answers_sent_one_at_a_time(server, visible):
    url = server["url"]
    long, answer, stop = _long(url, visible, 12)
    bodies = [_chat(i, logit_bias=visible, max_tokens=6 + 2 * i) for i in range(3)]
    alone = [_answer(r)[0] for r in _send(url, bodies, together=False)]
    bodies.append(long | {"stop": [stop]})
    expected = [*alone, answer[: answer.find(stop)].strip()]

    async def stream(c: httpx.AsyncClient, body: dict) -> list[str]:
        async with c.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as r:
            assert r.status_code == 200
            return [line async for line in r.aiter_lines() if line]

    async def go() -> list[list[str]]:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120) as c:
            return await asyncio.gather(*(stream(c, b) for b in bodies))

    before = _queue(server).batches
    streams = asyncio.run(go())
    assert _queue(server).batches - before == 1
    for lines, want in zip(streams, expected, strict=True):
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        pieces = [ch["choices"][0]["delta"].get("content") or "" for ch in chunks]
        assert "".join(pieces) == want
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_short_answer_is_not_held_back_by_a_long_one(run):
    """Every decoding step made 20 ms longer: the 2-token answer arrives while the 150-token
    one in its batch still decodes."""
    limits = Limits(max_tokens=256, generation_wait=0.5)
    app = create_app(run.path, name=NAME, api_key=KEY, limits=limits, feedback_log=False)
    with _in_process(app) as url:
        embed = app.state.service.model.get_input_embeddings()
        embed.register_forward_pre_hook(lambda *_: time.sleep(0.02))
        eot = run.tokenizer.convert_tokens_to_ids(run.meta["info"]["end_of_turn"])
        keep_going = {str(eot): -100, str(run.tokenizer.eos_token_id): -100}
        long, short = _chat(0, max_tokens=150, logit_bias=keep_going), _chat(1, max_tokens=2)

        async def go() -> tuple[float, float, bool]:
            async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120) as c:
                start = time.monotonic()
                first = asyncio.create_task(c.post("/v1/chat/completions", json=long))
                quick = await c.post("/v1/chat/completions", json=short)
                quick_s, still_busy = time.monotonic() - start, _stats(url)["busy"]
                assert quick.status_code == 200 and quick.json()["usage"]["completion_tokens"] == 2
                assert (await first).json()["usage"]["completion_tokens"] == 150
                return quick_s, time.monotonic() - start, still_busy

        quick_s, long_s, still_busy = asyncio.run(go())
    assert still_busy and quick_s < long_s / 2, (quick_s, long_s)


def test_bad_requests_get_their_4xx_while_a_batch_runs(server, visible):
    url = server["url"]
    good = _chat(0, logit_bias=visible, max_tokens=8)
    bad = [
        (_chat(0, max_tokens=10_000), 400, "max_tokens"),
        (_chat(0) | {"model": "other"}, 404, "model"),
        (_chat(0, logit_bias={"999999": 1}), 400, "logit_bias"),
        (_chat(0, temperature=-1), 400, None),
        ({"model": NAME, "messages": []}, 400, None),
    ]
    replies = _send(url, [good, *[b for b, _, _ in bad], good], together=True)
    assert _answer(replies[0]) == _answer(replies[-1])
    for r, (_, status, param) in zip(replies[1:-1], bad, strict=True):
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["message"] and "Traceback" not in r.text
        if param:
            assert error["param"] == param


def test_seeded_requests_sample_as_the_run_does_beside_a_batch(server, run):
    """A request with a seed is decoded alone (its sampling owns the random generator)."""
    import torch

    url = server["url"]
    seeded = [_chat(i, temperature=1.0, seed=50 + i, max_tokens=6) for i in range(3)]
    replies = _send(url, [*seeded, _chat(0), _chat(1)], together=True)
    for body, r in zip(seeded, replies[:3], strict=True):
        torch.manual_seed(body["seed"])
        want = run.chat(body["messages"], max_new_tokens=6, temperature=1.0)
        assert _answer(r)[0] == want
    assert all(r.status_code == 200 for r in replies)


def test_past_a_batch_and_the_waiting_limit_requests_get_503(run):
    """Batches of 2, one request may wait for the next: of 6 sent at once, 3 are answered."""
    limits = Limits(max_waiting=1, generation_batch=2, generation_wait=0.5)
    app = create_app(run.path, name=NAME, api_key=KEY, limits=limits, feedback_log=False)
    with _in_process(app) as url:
        replies = _send(url, [_chat(i, max_tokens=4) for i in range(6)], together=True)
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200, 200, 200, 503, 503, 503], statuses
    for r in replies:
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "server_busy"


# --------------------------------------------------------------------------------------------------
# The queue alone


def _job(stop: list[int], seed: int | None = None) -> GenerationJob:
    class P:
        stop_ids = stop

    class Q:
        pass

    q = Q()
    q.seed = seed  # type: ignore[attr-defined]
    return GenerationJob(P(), q, future=None)  # type: ignore[arg-type]


def test_the_queue_groups_requests_that_can_share_a_batch():
    """In arrival order, up to max_batch, same stop tokens; a seeded request goes alone."""
    queue = GenerationQueue(lambda jobs: None, max_batch=3, wait=0, on_closed=RuntimeError)
    a, b, seeded, c, other, d, e = (
        _job([1]), _job([1]), _job([1], seed=3), _job([1]), _job([2]), _job([1]), _job([1])
    )  # fmt: skip
    queue._pending.extend([a, b, seeded, c, other, d, e])
    assert queue._take() == [a, b, c]
    assert queue._take() == [seeded]
    assert queue._take() == [other]
    assert queue._take() == [d, e]
    assert queue.waiting == 0
    queue.close()
