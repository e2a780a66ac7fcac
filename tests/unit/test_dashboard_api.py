"""The dashboard's endpoints (tuneforge/ui) without a browser or a training: security (loopback,
token, host, cross-site writes, body sizes, names), the runs listing, recipe validation and the
schema form, uploads, the launch queue, progress reading, and bad input everywhere."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import assert_user_error, run_cli
from fastapi.testclient import TestClient

from tuneforge.errors import TuneforgeError
from tuneforge.runs import registry
from tuneforge.training.live_progress import FILE, LiveProgress
from tuneforge.ui import drafts, live
from tuneforge.ui.app import create_app
from tuneforge.ui.jobs import JobQueue
from tuneforge.ui.security import check_binding

WRITE = {"X-Tuneforge": "1"}
RECIPE = """name: tiny
base_model: ./model
task: classification
data:
  train: train.csv
training:
  epochs: 1
"""


@pytest.fixture
def app(tmp_path):
    app = create_app(registry=tmp_path / "registry.sqlite", home=tmp_path / "home", cwd=tmp_path)
    yield app
    app.state.ui.jobs.close()


@pytest.fixture
def client(app):
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def add_runs(db: Path, n: int, **fields) -> list[str]:
    ids = []
    for i in range(n):
        run_id = f"run-{i:05d}"
        registry.record_run(
            run_id,
            registry=db,
            path=f"/nowhere/{run_id}",
            name=fields.get("name", f"r{i}"),
            task=("classification", "sft")[i % 2],
            method="lora",
            base_model="tiny",
            status=("finished", "failed")[i % 3 == 0],
            created=1000.0 + i,
        )
        ids.append(run_id)
    return ids


# ------------------------------------------------------------------------------------ security


def test_binding_elsewhere_needs_a_token(tmp_path):
    with pytest.raises(TuneforgeError, match="needs --token"):
        check_binding("0.0.0.0", None)
    check_binding("0.0.0.0", "secret")
    check_binding("127.0.0.1", None)
    check_binding("::1", None)
    with pytest.raises(TuneforgeError):
        create_app(host="0.0.0.0", home=tmp_path / "h")


def test_cli_refuses_a_public_host_without_token():
    proc = run_cli("ui", "--host", "0.0.0.0", "--port", "0")
    assert_user_error(proc, "needs --token")


def test_token_required_then_kept_in_a_cookie(tmp_path):
    app = create_app(host="0.0.0.0", token="s3cret", home=tmp_path / "h", registry=tmp_path / "r")
    try:
        with TestClient(app, base_url="http://example.org", follow_redirects=False) as c:
            assert c.get("/").status_code == 401
            assert c.get("/api/runs").status_code == 401
            assert c.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert c.get("/?token=wrong").status_code == 401
            answer = c.get("/?token=s3cret")
            assert answer.status_code == 303 and "token" not in answer.headers["location"]
            assert c.get("/").status_code == 200  # the cookie
    finally:
        app.state.ui.jobs.close()


def test_loopback_dashboard_answers_loopback_hosts_only(client):
    assert client.get("/api/runs", headers={"Host": "evil.example:7860"}).status_code == 421
    assert client.get("/api/runs", headers={"Host": "localhost:7860"}).status_code == 200


def test_writes_need_the_pages_header_and_the_same_origin(client):
    body = {"yaml": RECIPE}
    assert client.post("/api/recipes/validate", json=body).status_code == 403
    cross = {**WRITE, "Origin": "http://evil.example"}
    assert client.post("/api/recipes/validate", json=body, headers=cross).status_code == 403
    same = {**WRITE, "Origin": "http://127.0.0.1"}
    assert client.post("/api/recipes/validate", json=body, headers=same).status_code == 200


def test_bodies_are_bounded(client):
    big = json.dumps({"yaml": "x" * 1_100_000})
    answer = client.post("/api/recipes/validate", content=big, headers=WRITE)
    assert answer.status_code == 413

    def chunks():  # no declared length: counted while read
        yield b'{"yaml": "'
        for _ in range(12):
            yield b"x" * 100_000
        yield b'"}'

    answer = client.post("/api/recipes/validate", content=chunks(), headers=WRITE)
    assert answer.status_code == 400 and "over" in answer.json()["error"]
    for bad in (b"not json", b"[1, 2]"):
        answer = client.post("/api/recipes/validate", content=bad, headers=WRITE)
        assert answer.status_code == 400, bad


def test_run_ids_never_reach_the_filesystem_unchecked(client, app):
    add_runs(app.state.ui.registry, 1)
    for bad in ("..", ".hidden", "a%2F..%2Fb", "..%2F..%2Fetc%2Fpasswd", "x" * 300):
        answer = client.get(f"/api/runs/{bad}")
        assert answer.status_code in (400, 404), bad
        assert "Traceback" not in answer.text
    assert client.get("/api/runs/run-0000").status_code == 404  # no prefix matching from a URL
    assert client.get("/api/runs/nope").status_code == 404
    page = client.get("/runs/<b>nope</b>")
    assert page.status_code in (400, 404) and "<b>nope" not in page.text


def test_user_text_is_escaped(client, app):
    add_runs(app.state.ui.registry, 1, name="<script>alert(1)</script>")
    registry.record_run("evil-<img>", registry=app.state.ui.registry, path="/x", status="failed")
    page = client.get("/").text
    assert "<script>alert" not in page and "&lt;script&gt;" not in page  # names: ids shown
    rows = client.get("/partials/runs?q=evil").text
    assert "evil-&lt;img&gt;" in rows and "evil-<img>" not in rows


# ------------------------------------------------------------------------------------ runs list


def test_runs_paged_filtered_newest_first(client, app):
    db = app.state.ui.registry
    add_runs(db, 2000)
    started = time.perf_counter()
    first = client.get("/api/runs").json()
    print(f"first page of 2000 runs: {time.perf_counter() - started:.3f} s")
    assert first["total"] == 2000 and first["pages"] == 40 and len(first["runs"]) == 50
    assert first["runs"][0]["id"] == "run-01999"
    last = client.get("/api/runs?page=40").json()
    assert last["runs"][-1]["id"] == "run-00000"
    sft = client.get("/api/runs?task=sft").json()
    assert sft["total"] == 1000 and {r["task"] for r in sft["runs"]} == {"sft"}
    failed = client.get("/api/runs?status=failed").json()
    assert failed["total"] == 667 and {r["status"] for r in failed["runs"]} == {"failed"}
    found = client.get("/api/runs?q=run-0123").json()
    assert [r["id"] for r in found["runs"]] == [f"run-0123{i}" for i in range(9, -1, -1)]
    assert client.get("/api/runs?q=%25").json()["total"] == 0  # % is a character, not a wildcard
    assert "run-01999" in client.get("/partials/runs?page=1").text


def test_a_dead_running_run_lists_as_interrupted(client, app):
    db = app.state.ui.registry
    registry.record_run("gone", registry=db, path="/nowhere/gone", status="running", created=1.0)
    assert client.get("/api/runs?status=interrupted").json()["runs"][0]["id"] == "gone"
    assert client.get("/api/runs?status=running").json()["total"] == 0


@pytest.mark.parametrize(
    "query", ["task=nonsense", "status=exploded", "page=0", "page=abc", "q=" + "x" * 201]
)
def test_bad_listing_queries(client, query):
    answer = client.get(f"/api/runs?{query}")
    assert 400 <= answer.status_code < 500 and "Traceback" not in answer.text


def test_compare_needs_two_known_runs(client, app):
    add_runs(app.state.ui.registry, 2)
    assert client.get("/compare?ids=run-00000").status_code == 400
    assert client.get("/compare?ids=run-00000&ids=nope").status_code == 404
    page = client.get("/compare?ids=run-00000&ids=run-00001")
    assert page.status_code == 200 and "run-00001" in page.text


# ------------------------------------------------------------------------------------ recipes


def test_validation_says_what_the_cli_says(client):
    bad = RECIPE.replace("training:", "trainng:")
    answer = client.post("/api/recipes/validate", json={"yaml": bad}, headers=WRITE).json()
    assert answer["ok"] is False
    assert "line 6: unknown key 'trainng' (did you mean 'training'?)" in answer["error"]
    answer = client.post("/api/recipes/validate", json={"yaml": "a: [1"}, headers=WRITE).json()
    assert answer["ok"] is False and "invalid YAML" in answer["error"]
    answer = client.post("/api/recipes/validate", json={"yaml": RECIPE}, headers=WRITE).json()
    assert answer["ok"] is True and answer["name"] == "tiny"
    assert answer["values"]["training.epochs"] == "1"
    assert answer["values"]["lora.r"] == "16"  # the schema's default
    answer = client.post("/api/recipes/validate", json={"yaml": 5}, headers=WRITE)
    assert answer.status_code == 400


def test_form_fields_write_the_yaml(client):
    def set_(field: str, value: str):
        body = {"yaml": RECIPE, "field": field, "value": value}
        return client.post("/api/recipes/set", json=body, headers=WRITE)

    answer = set_("training.learning_rate", "0.001").json()
    assert "learning_rate: 0.001" in answer["yaml"] and answer["ok"]
    answer = set_("training.epochs", "").json()
    assert "epochs" not in answer["yaml"]  # removed: the default applies
    answer = set_("training.epochs", "-1").json()
    assert answer["ok"] is False and "training.epochs" in answer["error"]
    assert set_("training.nonsense", "1").status_code == 400


def test_schema_form_covers_the_recipe():
    fields = {f.name: f for f in drafts.schema_fields()}
    assert fields["task"].kind == "choice" and "sft" in fields["task"].choices
    assert fields["training.gradient_checkpointing"].kind == "bool"
    assert fields["training.epochs"].kind == "number"
    assert fields["training.processes"].kind == "text"  # int or 'auto'
    assert fields["training.report_to"].kind == "text"  # a list of choices
    assert fields["name"].required and fields["training.epochs"].help


def test_starting_points(client, app):
    answer = client.get("/api/recipes/start?key=shipped:sentiment.yaml").json()
    assert "movie_reviews/train.csv" in answer["yaml"]
    assert str(drafts.SHIPPED.parent) in answer["yaml"]  # data paths made absolute
    for bad in ("shipped:../pyproject.toml", "shipped:nope.yaml", "elsewhere:x", "run:.."):
        assert client.get(f"/api/recipes/start?key={bad}").status_code in (400, 404), bad
    page = client.get("/new?start=shipped:sentiment.yaml")
    assert page.status_code == 200 and 'name="training.epochs"' in page.text


def test_a_launch_refused_by_validation_queues_nothing(client, app):
    answer = client.post(
        "/api/launch", json={"yaml": RECIPE.replace("task:", "tsk:")}, headers=WRITE
    )
    assert answer.status_code == 400 and "did you mean 'task'" in answer.json()["error"]
    assert app.state.ui.jobs.jobs == []


@pytest.mark.parametrize("what", ["preview", "check", "plan"])
def test_inspections_refuse_an_invalid_recipe(client, what):
    answer = client.post(f"/api/recipes/{what}", json={"yaml": "name: x"}, headers=WRITE)
    assert answer.status_code == 400 and "missing required field" in answer.json()["error"]
    assert (
        client.post("/api/recipes/dance", json={"yaml": RECIPE}, headers=WRITE).status_code == 400
    )


# ------------------------------------------------------------------------------------ uploads


def test_uploads_land_in_the_managed_folder(client, app):
    answer = client.put("/api/uploads/reviews.csv", content=b"text,label\na,b\n", headers=WRITE)
    assert answer.status_code == 200
    saved = Path(answer.json()["path"])
    assert saved.parent == app.state.ui.home / "uploads" and saved.read_bytes().startswith(b"text")
    listed = client.get("/api/uploads").json()["uploads"]
    assert [u["name"] for u in listed] == ["reviews.csv"]
    for bad in ("..reviews.csv", "reviews.exe", ".hidden.csv", "a b.csv", "x.csv.sh"):
        answer = client.put(f"/api/uploads/{bad}", content=b"a\n", headers=WRITE)
        assert answer.status_code == 400, bad
    assert client.put("/api/uploads/empty.csv", content=b"", headers=WRITE).status_code == 400


def test_uploads_are_size_bounded(tmp_path):
    app = create_app(home=tmp_path / "h", registry=tmp_path / "r", max_upload_mb=0.001)
    try:
        with TestClient(app, base_url="http://127.0.0.1") as c:
            over = b"x" * 2000
            assert c.put("/api/uploads/a.csv", content=over, headers=WRITE).status_code == 413
            answer = c.put("/api/uploads/a.csv", content=iter([over]), headers=WRITE)
            assert answer.status_code == 400 and "over 1000 bytes" in answer.json()["error"]
            assert not list((tmp_path / "h" / "uploads").iterdir())  # nothing half-written
    finally:
        app.state.ui.jobs.close()


# ------------------------------------------------------------------------------------ jobs


def wait_for(job, states=("finished", "failed", "cancelled"), timeout=120):
    deadline = time.monotonic() + timeout
    while job.state not in states and time.monotonic() < deadline:
        time.sleep(0.2)
    return job


def test_queue_runs_one_at_a_time_and_reports_the_cli_error(tmp_path):
    queue = JobQueue(tmp_path / "logs", tmp_path)
    try:
        failing = queue.submit("train", "train missing", ["train", "missing.yaml"])
        waiting = queue.submit("train", "train later", ["--help"])
        assert waiting.state == "waiting"
        assert queue.cancel(waiting.id).state == "cancelled"
        wait_for(failing)
        assert failing.state == "failed" and failing.returncode == 2
        assert failing.error.startswith("error: recipe file not found: missing.yaml")
        with pytest.raises(TuneforgeError, match="only waiting or running"):
            queue.cancel(failing.id)
        with pytest.raises(TuneforgeError, match="no job 99"):
            queue.get(99)
    finally:
        queue.close()


def test_job_endpoints(client):
    assert client.get("/api/jobs").json() == {"jobs": []}
    assert client.get("/api/jobs/7").status_code == 404
    assert client.post("/api/jobs/7/cancel", headers=WRITE).status_code == 404
    assert "Nothing queued" in client.get("/partials/jobs").text


# ------------------------------------------------------------------------------------ progress


def state(step: int, max_steps: int = 10, zero: bool = True):
    return SimpleNamespace(
        global_step=step, max_steps=max_steps, epoch=step / 5, is_world_process_zero=zero
    )


def test_live_progress_lines_and_reading(tmp_path):
    callback = LiveProgress(tmp_path, every=0.0)
    callback.on_train_begin(None, state(0), None)
    for step in (1, 2):
        callback.on_step_end(None, state(step), None)
        callback.on_log(None, state(step), None, logs={"loss": 1.0 / step, "learning_rate": 0.1})
    callback.on_log(
        None, state(2), None, logs={"eval_loss": 0.7, "eval_accuracy": 0.5, "eval_runtime": 1}
    )
    callback.on_log(None, state(3), None, logs={"loss": float("nan")})
    LiveProgress(tmp_path / "other").on_log(None, state(1, zero=False), None, logs={"loss": 1})
    with (tmp_path / FILE).open("a") as f:
        f.write('{"step": 4, "event": "lo')  # being written: not read yet
    lines, offset = live.read_lines(tmp_path)
    assert [line["event"] for line in lines] == [
        "begin",
        "step",
        "log",
        "step",
        "log",
        "log",
        "log",
    ]
    assert lines[-1]["loss"] is None  # NaN is not JSON
    assert live.read_lines(tmp_path, offset) == ([], offset)
    curves = live.curves(lines)
    assert curves["train_loss"] == [[1, 1.0], [2, 0.5]]
    assert curves["loss"] == [[2, 0.7]] and curves["accuracy"] == [[2, 0.5]]
    assert "runtime" not in curves
    found = live.progress(lines, now=lines[0]["time"] + 30)
    assert found.step == 3 and found.max_steps == 10 and found.fraction == 0.3
    assert found.eta_seconds == pytest.approx(70, rel=0.05)
    kept = live.compact(lines)
    assert len(kept) == 3 and live.progress(kept, now=lines[0]["time"] + 30) == found


def test_working_folder_is_the_incomplete_one_until_finished(tmp_path):
    final = tmp_path / "run-1"
    assert live.working_folder(final) == tmp_path / ".run-1.incomplete"
    final.mkdir()
    assert live.working_folder(final) == final


# ------------------------------------------------------------------------------------ actions


def test_actions_refuse_bad_input(client, app):
    db = app.state.ui.registry
    add_runs(db, 3)  # run-00000 failed, run-00001 finished (no folder)
    assert client.post("/api/runs/run-00001/cancel", headers=WRITE).status_code == 400
    assert client.post("/api/runs/run-00001/resume", headers=WRITE).status_code == 400
    answer = client.post("/api/runs/run-00001/export", json={"format": "zip"}, headers=WRITE)
    assert answer.status_code == 400 and "unknown export format" in answer.json()["error"]
    answer = client.post("/api/runs/run-00000/register", json={"name": "m"}, headers=WRITE)
    assert answer.status_code == 400 and "only finished runs" in answer.json()["error"]
    answer = client.post("/api/runs/run-00001/register", json={"name": "../m"}, headers=WRITE)
    assert answer.status_code == 400
    bad_chats = [
        {"who": "nobody", "messages": [{"role": "user", "content": "hi"}]},
        {"who": "tuned", "messages": []},
        {"who": "tuned", "messages": [{"role": "assistant", "content": "hi"}]},
        {"who": "tuned", "messages": "hi"},
        {"who": "tuned", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000},
    ]
    for body in bad_chats:
        answer = client.post("/api/runs/run-00001/chat", json=body, headers=WRITE)
        assert answer.status_code == 400, body
    answer = client.post("/api/runs/run-00001/classify", json={"texts": "x"}, headers=WRITE)
    assert answer.status_code == 400
    answer = client.post("/api/runs/run-00001/classify", json={"texts": ["x"]}, headers=WRITE)
    assert answer.status_code == 400 and "run directory not found" in answer.json()["error"]
    assert client.get("/runs/run-00001/report").status_code == 400
    assert client.get("/runs/run-00000/playground").status_code == 400


def test_promotion_refuses_bad_input(client):
    answer = client.post("/api/models/m/1/promote", json={}, headers=WRITE)
    assert answer.status_code == 400 and "not registered" in answer.json()["error"]
    body = {"tolerance": -1}
    assert client.post("/api/models/m/1/promote", json=body, headers=WRITE).status_code == 400
    body = {"stage": "../prod"}
    assert client.post("/api/models/m/1/promote", json=body, headers=WRITE).status_code == 400
    assert "No model versions yet" in client.get("/models").text


# ------------------------------------------------------------------------------------ run page


def fake_run(folder: Path, db: Path, run_id: str = "fake-1", parent: str | None = None) -> None:
    """A finished run's folder as the job writes it, every section the run page shows, with
    user-written text that must come out escaped."""
    folder.mkdir(parents=True)
    evil = "<script>alert(1)</script>"
    split = {
        "n": 4,
        "accuracy": 0.75,
        "macro_f1": 0.7,
        "labels": [evil, "b"],
        "confusion_matrix": [[2, 0], [1, 1]],
        "samples": [{"prompt": evil, "reference": "r", "prediction": "p"}],
    }
    metrics = {
        "selection_metric": "macro_f1",
        "tuned": {"validation": split},
        "base": {
            "validation": {
                **split,
                "accuracy": 0.5,
                "macro_f1": 0.4,
                "samples": [{"prediction": "bp"}],
            }
        },
        "evaluations": [{"step": 2, "epoch": 1.0, "loss": 0.5, "macro_f1": 0.7}],
        "log_history": [{"step": 1, "loss": 0.9}, {"step": 2, "eval_loss": 0.5}],
        "overfitting": {"began_step": 2, "message": f"validation loss rose {evil}"},
        "best": {"metric": "macro_f1", "value": 0.7, "step": 2},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "run.json").write_text("{}")
    (folder / "recipe.yaml").write_text(f"name: fake\n# {evil}\n")
    findings = [{"severity": "warning", "check": "duplicates", "split": "train", "message": evil}]
    (folder / "data_check.json").write_text(json.dumps({"findings": findings}))
    (folder / "report.html").write_text("<html><body>report</body></html>")
    registry.record_run(
        run_id, registry=db, path=str(folder), name="fake", task="classification",
        method="lora", base_model="tiny", status="finished", created=1.0, finished=5.0,
        metrics=metrics, recipe={"name": "fake", "replay": 0.2}, parent=parent,
    )  # fmt: skip


def test_run_page_shows_every_section_escaped(client, app, tmp_path):
    db = app.state.ui.registry
    fake_run(tmp_path / "runs" / "fake-1", db)
    fake_run(tmp_path / "runs" / "fake-2", db, "fake-2", parent="fake-1")
    page = client.get("/runs/fake-2")
    assert page.status_code == 200
    text = page.text
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    for section in (
        "Base model vs fine-tuned",
        "error −",  # the change with its error reduction
        "Every evaluation",
        "overfitting began after step 2",
        "Confusion matrix (validation)",
        "Generation samples",
        "Data check",
        "Lineage",
        "Continued from",
        "replaying 0.2",
        "Recipe (resolved)",
        'src="/runs/fake-2/report"',
    ):
        assert section in text, section
    detail = client.get("/api/runs/fake-2").json()
    assert [r["id"] for r in detail["lineage"]] == ["fake-2", "fake-1"]
    assert detail["samples"][0]["base model"] == "bp"
    series = client.get("/api/runs/fake-2/curves").json()["series"]  # from metrics.json
    assert series == {"train_loss": [[1, 0.9]], "loss": [[2, 0.5]]}
    report = client.get("/runs/fake-2/report")
    assert report.status_code == 200 and "sandbox" in report.headers["content-security-policy"]
    events = client.get("/api/runs/fake-2/events").text  # finished: one progress, then end
    assert "event: progress" in events and 'event: end\ndata: {"status": "finished"}' in events
    compare = client.get("/compare?ids=fake-1&ids=fake-2")
    assert compare.status_code == 200 and "The recipes are the same." in compare.text
