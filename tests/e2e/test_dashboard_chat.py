"""The dashboard's playground on a generative run: a tiny sft run trained through the CLI, then
the tuned and the base model answering a chat side by side, streamed as server-sent events with
the server's generation code (chat template, stop tokens), and the same answer `Run.chat` gives."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import run_cli, write_jsonl
from fastapi.testclient import TestClient

from tuneforge.runs import registry
from tuneforge.runs.run import Run
from tuneforge.ui.app import create_app

WRITE = {"X-Tuneforge": "1"}


def chat_row(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"alert {i}: the quick brown fox"},
            {"role": "assistant", "content": f"Category: {('phishing', 'benign')[i % 2]}"},
        ]
    }


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("dash-sft")
    train = write_jsonl(tmp / "train.jsonl", [chat_row(i) for i in range(8)])
    validation = write_jsonl(tmp / "validation.jsonl", [chat_row(i) for i in range(100, 104)])
    recipe = tmp / "sft.yaml"
    recipe.write_text(
        f"""
name: tiny-chat
base_model: {tiny_model}
task: sft
data: {{train: {train}, validation: {validation}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{epochs: 1, batch_size: 4, learning_rate: 2.0e-2, max_length: 64, processes: 1, logging_steps: 1}}
sft: {{generation_examples: 1, max_new_tokens: 4}}
output_dir: {tmp / "runs"}
registry: {tmp / "registry.sqlite"}
"""
    )
    proc = run_cli("train", recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = registry.list_runs(tmp / "registry.sqlite")
    return tmp, record


def read_events(text: str) -> list[tuple[str, object]]:
    events = []
    for block in text.strip().split("\n\n"):
        kind = next(line[7:] for line in block.splitlines() if line.startswith("event: "))
        data = next(line[6:] for line in block.splitlines() if line.startswith("data: "))
        events.append((kind, json.loads(data)))
    return events


def test_chat_side_by_side_streamed(sft_run):
    tmp, record = sft_run
    app = create_app(registry=tmp / "registry.sqlite", home=tmp / "home", cwd=tmp)
    messages = [{"role": "user", "content": "alert 3: the quick brown fox"}]
    try:
        with TestClient(app, base_url="http://127.0.0.1") as client:
            page = client.get(f"/runs/{record.id}/playground")
            assert page.status_code == 200 and 'id="chat-form"' in page.text
            answers = {}
            for who in ("tuned", "base"):
                body = {"who": who, "messages": messages, "max_tokens": 6}
                answer = client.post(f"/api/runs/{record.id}/chat", json=body, headers=WRITE)
                assert answer.status_code == 200
                assert answer.headers["content-type"].startswith("text/event-stream")
                events = read_events(answer.text)
                assert events[-1][0] == "done", events
                answers[who] = "".join(data for kind, data in events if kind == "piece")
            # the server's generation gives what the run itself answers (greedy)
            assert answers["tuned"] == Run.load(record.path).chat(messages, max_new_tokens=6)
            answer = client.post(
                f"/api/runs/{record.id}/classify", json={"texts": ["x"]}, headers=WRITE
            )
            assert answer.status_code == 400 and "does not classify" in answer.json()["error"]
            # the run page shows its generation samples and its curves' data
            page = client.get(f"/runs/{record.id}")
            assert page.status_code == 200 and "Generation samples" in page.text
            series = client.get(f"/api/runs/{record.id}/curves").json()["series"]
            assert series["train_loss"] and series["loss"]
            inspections(client, tmp)
            exported(client, app, record.id)
    finally:
        app.state.ui.jobs.close()
        app.state.ui.playground.close()


def inspections(client, tmp) -> None:
    """`data preview` and `data check` of a recipe, through the CLI, as the new-run page asks."""
    text = (tmp / "sft.yaml").read_text()
    preview = client.post("/api/recipes/preview", json={"yaml": text}, headers=WRITE)
    assert preview.status_code == 200, preview.text
    pieces = preview.json()["result"]["examples"][0]["pieces"]
    assert {p["kind"] for p in pieces} >= {"trained", "context"}
    check = client.post("/api/recipes/check", json={"yaml": text}, headers=WRITE).json()
    assert check["ok"] and check["result"]["passed"] is True


def exported(client, app, run_id: str) -> None:
    """Export is a queued `tuneforge export`; its folder lands under the dashboard's home."""
    answer = client.post(f"/api/runs/{run_id}/export", json={"format": "adapter"}, headers=WRITE)
    assert answer.status_code == 200, answer.text
    job = app.state.ui.jobs.get(answer.json()["job"]["id"])
    deadline = time.monotonic() + 300
    while job.state not in ("finished", "failed") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.state == "finished", Path(job.log).read_text()[-2000:]
    assert (Path(answer.json()["output"]) / "README.md").is_file()
