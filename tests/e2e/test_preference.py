"""Preference tuning end to end on the tiny model: DPO and KTO runs, SFT then DPO, the gate,
using a run, resume after SIGKILL, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_user_error, run_cli, write_jsonl

GOOD = ["great film, loved it", "wonderful acting and a warm story", "a moving, beautiful movie"]
BAD = ["dreadful, slow and ugly", "I hated every minute of it", "a waste of two hours"]


def pairs(n: int, offset: int = 0) -> list[dict]:
    return [
        {
            "prompt": f"Review film #{i}.",
            "chosen": GOOD[i % 3],
            "rejected": f"{BAD[i % 3]} #{i}",
        }
        for i in range(offset, offset + n)
    ]


def feedback(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for p in pairs(n, offset):
        rows.append({"prompt": p["prompt"], "completion": p["chosen"], "label": "thumbs_up"})
        rows.append({"prompt": p["prompt"], "completion": p["rejected"], "label": "thumbs_down"})
    return rows


def _recipe(tmp: Path, tiny_model, name: str, data: str, extra: str = "", base=None) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nbase_model: {base or tiny_model}\ntask: preference\n"
        f"data: {data}\n"
        "lora: {r: 4, alpha: 8, dropout: 0.0}\n"
        "training: {epochs: 2, batch_size: 4, learning_rate: 2.0e-2, logging_steps: 1, "
        "max_length: 96, seed: 0}\n"
        "preference: {generation_examples: 2, kl_examples: 3, max_new_tokens: 6"
        + (f", {extra}" if extra else "")
        + "}\n"
        f"output_dir: {tmp / 'runs' / name}\nregistry: {tmp / 'registry.sqlite'}\n"
    )
    return path


def _only_run(out: Path) -> Path:
    [run] = [p for p in out.iterdir() if not p.name.startswith(".")]
    return run


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("prefs")
    return {
        "tmp": tmp,
        "train": write_jsonl(tmp / "train.jsonl", pairs(16)),
        "validation": write_jsonl(tmp / "validation.jsonl", pairs(6, offset=100)),
        "test": write_jsonl(tmp / "test.jsonl", pairs(6, offset=200)),
        "fb_train": write_jsonl(tmp / "fb_train.jsonl", feedback(8)),
        "fb_validation": write_jsonl(tmp / "fb_validation.jsonl", feedback(4, offset=100)),
        "sft_train": write_jsonl(
            tmp / "sft_train.jsonl",
            [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs(16)],
        ),
        "sft_validation": write_jsonl(
            tmp / "sft_validation.jsonl",
            [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs(6, offset=100)],
        ),
    }


def _pair_data(files) -> str:
    return f"{{train: {files['train']}, validation: {files['validation']}, test: {files['test']}}}"


@pytest.fixture(scope="module")
def dpo(files, tiny_model) -> dict:
    recipe = _recipe(files["tmp"], tiny_model, "dpo", _pair_data(files))
    proc = run_cli("train", recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"proc": proc, "run": _only_run(files["tmp"] / "runs" / "dpo"), "recipe": recipe}


def test_dpo_run_measures_base_and_tuned_the_same_way(dpo):
    run = dpo["run"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "preference" and metrics["selection_metric"] == "preference_accuracy"
    for split in ("validation", "test"):
        base, tuned = metrics["base"][split], metrics["tuned"][split]
        assert base["n_pairs"] == tuned["n_pairs"] == 6
        assert {"preference_accuracy", "logp_margin", "chosen_logp"} <= set(base) & set(tuned)
        assert {"reward_accuracy", "reward_margin", "kl", "kl_per_token"} <= set(tuned)
        assert tuned["kl_samples"] == 3 and tuned["kl"] > 0  # the adapter moved the model
        assert len(base["samples"]) == len(tuned["samples"]) == 2
        assert {"prompt", "prediction", "chosen", "rejected"} <= set(tuned["samples"][0])
    # training pushed chosen above rejected on held-out pairs
    assert metrics["tuned"]["test"]["logp_margin"] > metrics["base"]["test"]["logp_margin"]
    for e in metrics["evaluations"]:  # ours and TRL's, at every evaluation
        assert {
            "preference_accuracy",
            "logp_margin",
            "rewards/accuracies",
            "rewards/margins",
        } <= set(e)
    meta = json.loads((run / "run.json").read_text())
    assert meta["info"]["examples"] == {"train": 16, "validation": 6, "test": 6}
    assert meta["info"]["preference"]["format"] == "pairwise"
    # only the trained adapter is saved, not TRL's frozen reference copy
    assert sorted(p.name for p in (run / "adapter").iterdir() if p.is_dir()) == []
    report = (run / "report.md").read_text()
    assert "| preference_accuracy |" in report and "Preferred answer (chosen)" in report


def test_eval_generate_and_predict_on_a_preference_run(dpo, files):
    proc = run_cli("eval", dpo["run"], "--data", files["test"], "--json", "--base")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    metrics = json.loads((dpo["run"] / "metrics.json").read_text())
    assert result["preference_accuracy"] == pytest.approx(
        metrics["tuned"]["test"]["preference_accuracy"]
    )
    assert result["logp_margin"] == pytest.approx(metrics["tuned"]["test"]["logp_margin"], abs=1e-4)
    assert "preference_accuracy" in result["base"]

    gen = run_cli("generate", dpo["run"], "Review film #7.", "--max-new-tokens", "5")
    assert gen.returncode == 0, gen.stderr[-2000:]
    import tuneforge

    assert gen.stdout.rstrip("\n") == tuneforge.load_run(dpo["run"]).generate(
        "Review film #7.", max_new_tokens=5
    )
    out = files["tmp"] / "pred.jsonl"
    proc = run_cli("predict", dpo["run"], "--input", files["test"], "--output", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 6


def test_kto_learns_from_unpaired_thumbs_up_and_down(files, tiny_model):
    data = f"{{train: {files['fb_train']}, validation: {files['fb_validation']}}}"
    recipe = _recipe(files["tmp"], tiny_model, "kto", data, "algorithm: kto")
    proc = run_cli("train", recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _only_run(files["tmp"] / "runs" / "kto")
    metrics = json.loads((run / "metrics.json").read_text())
    tuned, base = metrics["tuned"]["validation"], metrics["base"]["validation"]
    assert (tuned["n_desirable"], tuned["n_undesirable"]) == (4, 4)
    assert 0.0 <= base["preference_accuracy"] <= 1.0
    assert tuned["desirable_logp"] - tuned["undesirable_logp"] > (
        base["desirable_logp"] - base["undesirable_logp"]
    )
    assert json.loads((run / "run.json").read_text())["info"]["preference"]["format"] == "unpaired"


def test_sft_then_dpo_starts_from_the_sft_model_and_passes_the_gate(files, tiny_model):
    tmp = files["tmp"]
    sft = tmp / "sft.yaml"
    sft.write_text(
        f"name: sft\nbase_model: {tiny_model}\ntask: sft\n"
        f"data: {{train: {files['sft_train']}, validation: {files['sft_validation']}}}\n"
        "lora: {r: 4, alpha: 8, dropout: 0.0}\n"
        "training: {epochs: 1, batch_size: 4, learning_rate: 2.0e-2, max_length: 96}\n"
        "sft: {generation_examples: 0}\n"
        f"output_dir: {tmp / 'runs' / 'sft'}\nregistry: {tmp / 'registry.sqlite'}\n"
    )
    assert run_cli("train", sft).returncode == 0
    sft_run = _only_run(tmp / "runs" / "sft")
    env_registry = ["--registry", str(tmp / "registry.sqlite")]
    assert run_cli("models", "register", "assistant", sft_run.name, *env_registry).returncode == 0
    assert run_cli("models", "promote", "assistant", "1", *env_registry).returncode == 0

    recipe = _recipe(
        tmp, tiny_model, "dpo-after-sft", _pair_data(files), base="model:assistant@production"
    )
    proc = run_cli("train", recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _only_run(tmp / "runs" / "dpo-after-sft")
    metrics = json.loads((run / "metrics.json").read_text())
    # the starting point (the SFT model) measured on the same pairs, beside base and tuned
    start = metrics["start"]["test"]
    assert start["n_pairs"] == 6 and start["logp_margin"] != metrics["base"]["test"]["logp_margin"]
    assert "reward_margin" not in start and "kl" not in start  # its own reference: nothing to say
    assert {"reward_margin", "kl"} <= set(metrics["tuned"]["test"])  # against the SFT model
    # forgetting is measured on the parent's own task and metric (sft loss)
    assert metrics["forgetting"]["metric"] == "loss"
    assert metrics["forgetting"]["parent_run"] == sft_run.name

    # loaded back, the run compares against the SFT adapter it trained against (as "ref")
    again = run_cli("eval", run, "--data", files["test"], "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["reward_margin"] == pytest.approx(
        metrics["tuned"]["test"]["reward_margin"], abs=1e-3
    )

    assert run_cli("models", "register", "assistant", run.name, *env_registry).returncode == 0
    gate = run_cli("models", "promote", "assistant", "2", *env_registry)
    assert gate.returncode in (0, 1), gate.stderr
    flat = " ".join((gate.stdout + gate.stderr).split())
    assert "preference_accuracy" in flat and "starting point" in flat


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, files, tiny_model):
    def recipe(name: str) -> Path:
        path = _recipe(tmp_path, tiny_model, name, _pair_data(files))
        text = (
            path.read_text()
            .replace("logging_steps: 1,", "logging_steps: 1, save_steps: 2,")
            .replace("kl_examples: 3", "kl_examples: 0")
            .replace("generation_examples: 2", "generation_examples: 0")
        )
        text = text.replace("epochs: 2", "epochs: 3")
        path.write_text(text)
        return path

    ref_proc = run_cli("train", recipe("ref"))
    assert ref_proc.returncode == 0, ref_proc.stderr[-2000:]
    ref = _only_run(tmp_path / "runs" / "ref")
    out = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", "train", str(recipe("killed"))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    partial = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        found = list(out.glob(".killed-*.incomplete/checkpoints/checkpoint-6/trainer_state.json"))
        if found:
            partial = found[0].parents[2]
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    if partial is None:
        pytest.skip("the run finished before it could be killed")
    time.sleep(1)
    resumed = run_cli("train", "--resume", partial)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = _only_run(out)
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (ref, run))
    assert [e["step"] for e in b["evaluations"]] == [e["step"] for e in a["evaluations"]]
    for ea, eb in zip(a["evaluations"], b["evaluations"], strict=True):
        assert eb["loss"] == pytest.approx(ea["loss"], abs=1e-5)
        assert eb["preference_accuracy"] == ea["preference_accuracy"]


@pytest.mark.parametrize(
    ("rows", "extra", "fragments"),
    [
        ([{"prompt": "p", "chosen": "a"}], "", ["train.jsonl", "cannot tell"]),
        (
            [{"prompt": "p", "chosen": "same", "rejected": "same"}],
            "",
            ["train.jsonl line 1", "the same answer"],
        ),
        (
            [{"prompt": "p", "completion": "a", "label": "meh"}],
            "algorithm: kto",
            ["train.jsonl line 1", "unknown feedback label 'meh'"],
        ),
        (
            [{"prompt": "p", "completion": "a", "label": "up"}],
            "",
            ["learns from pairs", "preference.algorithm: kto"],
        ),
    ],
    ids=["missing-column", "chosen-equals-rejected", "unknown-label", "dpo-on-feedback"],
)
def test_bad_preference_data_exits_2_naming_file_and_line(
    tmp_path, tiny_model, rows, extra, fragments
):
    train = write_jsonl(tmp_path / "train.jsonl", rows * 4)
    recipe = _recipe(
        tmp_path, tiny_model, "bad", f"{{train: {train}, validation_split: 0.5}}", extra
    )
    proc = run_cli("train", recipe)
    assert_user_error(proc, *fragments)
    assert not (tmp_path / "runs" / "bad").exists() or not any(
        (tmp_path / "runs" / "bad").iterdir()
    )


def test_plan_counts_pairs_and_times_real_steps(dpo):
    proc = run_cli("plan", dpo["recipe"], "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout)
    assert plan["task"] == "preference"
    assert plan["dataset"]["examples"] == 16 and plan["dataset"]["sequences_per_example"] == 2
    assert plan["timing"]["tokens_per_second"] > 0 and plan["fits"] is True


# ------------------------------------------------------------------ the feedback loop


def test_served_answers_get_feedback_that_trains_the_next_version(dpo, files, tiny_model):
    """serve -> chat -> POST /v1/feedback (by id, and as text) -> feedback export -> a KTO run
    continuing the served version -> the gate; the log is never half-written."""
    import threading

    import httpx2 as httpx
    import uvicorn

    from tuneforge.deploy.serve import bind, create_app

    tmp = files["tmp"]
    log = tmp / "served-feedback.jsonl"
    sock = bind("127.0.0.1", 0)
    app = create_app(dpo["run"], name="assistant", feedback_log=log, model_version="assistant@1")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        deadline = time.monotonic() + 120
        while not server.started or httpx.get(f"{url}/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "/v1/feedback" in httpx.get(f"{url}/openapi.json").json()["paths"]
        ids = []
        for i in range(6):
            r = httpx.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": "assistant",
                    "messages": [{"role": "user", "content": f"Review film #{300 + i}."}],
                    "max_tokens": 4,
                },
                timeout=60,
            )
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
        for i, completion_id in enumerate(ids):
            body = {"completion_id": completion_id, "rating": "up" if i % 2 else "down"}
            if i == 0:
                body["preferred"] = GOOD[0]
            r = httpx.post(f"{url}/v1/feedback", json=body, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["object"] == "feedback" and r.json()["completion_id"] == completion_id
        # feedback on an answer given as text (from another channel)
        for i in range(8):
            r = httpx.post(
                f"{url}/v1/feedback",
                json={
                    "prompt": f"Review film #{400 + i}.",
                    "completion": GOOD[i % 3] if i % 2 else BAD[i % 3],
                    "rating": "up" if i % 2 else "down",
                },
                timeout=30,
            )
            assert r.status_code == 200, r.text
        unknown = httpx.post(
            f"{url}/v1/feedback", json={"completion_id": "chatcmpl-nope", "rating": "up"}
        )
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "completion_id"
        bad = httpx.post(f"{url}/v1/feedback", json={"completion_id": ids[0], "rating": "meh"})
        assert bad.status_code == 400 and "error" in bad.json()
        big = httpx.post(
            f"{url}/v1/feedback", json={"completion_id": ids[0], "preferred": "x" * 40_000}
        )
        assert big.status_code in (400, 413)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()

    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert sum(r["type"] == "completion" for r in records) == 6
    assert sum(r["type"] == "feedback" for r in records) == 14  # refused requests wrote nothing
    assert all(r["model"] == {"run": dpo["run"].name, "version": "assistant@1"} for r in records)

    exported = tmp / "from-feedback.jsonl"
    proc = run_cli(
        "feedback", "export", dpo["run"], "--log", log, "--kind", "kto", "-o", exported, "--json"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(rows) == 15  # 14 judged answers + the preferred (edited) one
    assert {r["label"] for r in rows} == {True, False}

    recipe = _recipe(
        tmp,
        tiny_model,
        "kto-from-feedback",
        f"{{train: {exported}, validation_split: 0.3}}",
        "algorithm: kto, kl_examples: 0",
        base=f"run:{dpo['run']}",
    )
    proc = run_cli("train", recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _only_run(tmp / "runs" / "kto-from-feedback")
    meta = json.loads((run / "run.json").read_text())
    assert meta["parent"]["run_id"] == dpo["run"].name
