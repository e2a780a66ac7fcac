"""`tuneforge verify`: tiny classification and sft runs, their merged (and a GGUF) export and a
live in-process server scored on the same held-out rows; broken exports (a perturbed weight, a
wrong chat template) caught with exit 1; user errors with exit 2; `models promote --verify`."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    assert_check_failed,
    assert_user_error,
    run_cli,
    sentiment_rows,
    write_csv,
    write_jsonl,
)

from tuneforge.deploy.export import export_run
from tuneforge.deploy.verify import verify_run
from tuneforge.errors import CheckFailed, TuneforgeError

KEY = "verify-test-key"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """The runs trained here are recorded in a registry of their own."""
    path = tmp_path_factory.mktemp("registry") / "registry.sqlite"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEFORGE_REGISTRY", str(path))
        yield path


def _train(tmp: Path, body: str) -> Path:
    import tuneforge

    recipe = tmp / "recipe.yaml"
    recipe.write_text(body + f"\noutput_dir: {tmp / 'runs'}\n", encoding="utf-8")
    return tuneforge.train(recipe).path


def _chat_rows(n: int, offset: int = 0) -> list[dict]:
    cats = ["phishing", "malware", "benign"]
    return [
        {
            "messages": [
                {"role": "user", "content": f"alert {i}: the quick brown fox {cats[i % 3]}"},
                {"role": "assistant", "content": f"Category: {cats[i % 3]}"},
            ]
        }
        for i in range(offset, offset + n)
    ]


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory, tiny_model, registry) -> Path:
    tmp = tmp_path_factory.mktemp("verify-cls")
    train = write_csv(tmp / "train.csv", sentiment_rows(16))
    validation = write_csv(tmp / "validation.csv", sentiment_rows(6, offset=100))
    test = write_csv(tmp / "test.csv", sentiment_rows(6, offset=200))
    return _train(
        tmp,
        f"""
name: verify-cls
base_model: {tiny_model}
task: classification
data: {{train: {train}, validation: {validation}, test: {test}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{max_steps: 2, batch_size: 8, learning_rate: 2.0e-2, logging_steps: 1}}
baseline: {{enabled: false}}
""",
    )


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model, registry) -> Path:
    tmp = tmp_path_factory.mktemp("verify-sft")
    train = write_jsonl(tmp / "train.jsonl", _chat_rows(8))
    validation = write_jsonl(tmp / "validation.jsonl", _chat_rows(4, offset=100))
    return _train(
        tmp,
        f"""
name: verify-sft
base_model: {tiny_model}
task: sft
data: {{train: {train}, validation: {validation}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{max_steps: 2, batch_size: 4, learning_rate: 5.0e-2, logging_steps: 1, max_length: 64}}
baseline: {{enabled: false}}
sft: {{generation_examples: 1, max_new_tokens: 6}}
""",
    )


@pytest.fixture(scope="module")
def exports(cls_run, sft_run, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("verify-exports")
    made = {
        "cls": export_run(cls_run, "merged", tmp / "cls-merged").path,
        "sft": export_run(sft_run, "merged", tmp / "sft-merged").path,
    }
    return made


def _copy(folder: Path, tmp: Path, name: str) -> Path:
    target = tmp / name
    shutil.copytree(folder, target)
    return target


def _perturb(folder: Path, key_part: str, scale: float) -> str:
    """Adds noise to the first tensor whose name contains `key_part`, in place."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    name = next(k for k in sorted(tensors) if key_part in k)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(tensors[name].shape, generator=generator) * scale
    tensors[name] = tensors[name] + noise
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return name


# --------------------------------------------------------------------------------------------------
# Clean exports


def test_merged_exports_verify_clean_and_the_result_is_saved(cls_run, sft_run, exports):
    for run, folder in ((cls_run, exports["cls"]), (sft_run, exports["sft"])):
        result = verify_run(run, [folder])
        assert result["passed"], json.dumps(result["targets"], indent=1)
        (target,) = result["targets"]
        assert target["kind"] == "merged" and target["tolerance"]["name"] == "exact"
        assert all(c["passed"] for c in target["checks"])
        saved = json.loads((run / "verify.json").read_text())
        assert saved["passed"] and saved["created"]
        identity = saved["targets"][0]["identity"]
        assert identity["path"] == str(folder.resolve())
        import hashlib

        digest = hashlib.sha256((folder / "export.json").read_bytes()).hexdigest()
        assert identity["export_json_sha256"] == digest
    cls = json.loads((cls_run / "verify.json").read_text())
    assert cls["data"]["split"] == "test" and cls["data"]["rows"] == 6  # test split preferred
    drift = cls["targets"][0]["drift"]
    assert drift["label_agreement"] == 1.0 and drift["max_abs_prob_diff"] < 1e-4
    sft = json.loads((sft_run / "verify.json").read_text())
    assert sft["data"]["split"] == "validation" and sft["data"]["rows"] == 4
    assert sft["targets"][0]["drift"]["identical_answers"] == 1.0
    assert sft["targets"][0]["drift"]["mean_abs_logprob_diff"] < 1e-3
    names = {c["check"] for c in sft["targets"][0]["checks"]}
    assert {
        "prompt token ids",
        "chat template",
        "stop behaviour",
        "exact_match",
        "rouge_l",
    } <= names


def test_gguf_export_verifies_within_its_quant_tolerance(sft_run, tmp_path):
    folder = export_run(sft_run, "gguf", tmp_path / "gguf", quant="q8_0").path
    gguf_file = next(folder.glob("*.gguf"))
    result = verify_run(sft_run, [gguf_file], rows=2, save=False)  # the .gguf file itself works too
    (target,) = result["targets"]
    assert target["kind"] == "gguf" and target["tolerance"]["name"] == "q8_0"
    assert target["passed"], target["checks"]
    assert target["identity"]["file"] == gguf_file.name


# --------------------------------------------------------------------------------------------------
# Broken exports: exit 1


def test_a_perturbed_weight_in_a_merged_classifier_fails_with_exit_1(cls_run, exports, tmp_path):
    broken = _copy(exports["cls"], tmp_path, "broken")
    _perturb(broken, "score", 0.5)
    proc = run_cli("verify", cls_run, "--export", broken)
    assert_check_failed(proc, "verify:", "beyond tolerance", "max |Δp|")
    assert "FAIL" in proc.stdout
    saved = json.loads((cls_run / "verify.json").read_text())
    assert saved["passed"] is False


def test_a_perturbed_weight_in_a_merged_sft_model_is_caught(sft_run, exports, tmp_path):
    broken = _copy(exports["sft"], tmp_path, "broken")
    _perturb(broken, "layers.0.mlp", 0.2)
    result = verify_run(sft_run, [broken], save=False)
    (target,) = result["targets"]
    assert not target["passed"]
    failed = {c["check"] for c in target["checks"] if not c["passed"]}
    assert "mean |Δ log p|" in failed
    assert "prompt token ids" not in failed and "chat template" not in failed


def test_a_wrong_chat_template_fails_with_exit_1_and_the_json_shape(sft_run, exports, tmp_path):
    """A clean export and one with a wrong chat template in one call: exit 1, and the JSON
    document on stdout says which target failed and why."""
    broken = _copy(exports["sft"], tmp_path, "wrong-template")
    template = broken / "chat_template.jinja"
    text = template.read_text()
    assert "assistant" in text
    template.write_text(text.replace("assistant", "bot"))
    proc = run_cli("verify", sft_run, "-e", exports["sft"], "-e", broken, "--rows", "2", "--json")
    assert_check_failed(proc, "chat template", str(broken))
    doc = json.loads(proc.stdout)
    assert set(doc) >= {"run", "run_name", "task", "created", "data", "reference", "targets"}
    assert doc["passed"] is False and doc["task"] == "sft"
    assert doc["data"]["rows"] == 2 and doc["data"]["available"] == 4
    assert set(doc["reference"]["metrics"]) >= {"exact_match", "rouge_l"}
    clean, wrong = doc["targets"]
    assert clean["passed"] and not wrong["passed"]
    for target in (clean, wrong):
        assert set(target) >= {"kind", "target", "identity", "tolerance", "metrics", "drift"}
        for check in target["checks"]:
            assert set(check) == {"check", "run", "target", "limit", "passed", "note"}
    tolerance = {"name", "metric", "loss", "agreement", "answers", "probability", "logprob"}
    assert set(clean["tolerance"]) == tolerance
    failed = {c["check"] for c in wrong["checks"] if not c["passed"]}
    assert {"chat template", "prompt token ids"} <= failed


def test_user_errors(cls_run, exports, tmp_path):
    """Exit 2 through the CLI; the same errors from the library, before any model is loaded."""
    assert_user_error(
        run_cli("verify", cls_run, "--export", exports["sft"]), "exported from another run"
    )
    assert_user_error(
        run_cli("verify", cls_run, "--server", "http://127.0.0.1:9"), "--server", "cannot reach it"
    )
    plain = tmp_path / "plain"
    plain.mkdir()
    adapter = export_run(cls_run, "adapter", tmp_path / "adapter").path
    cases = [
        ({"exports": [tmp_path / "nothing"]}, "not found"),
        ({}, "nothing to compare the run with"),
        ({"server": "localhost:8000"}, "not an http(s) URL"),
        ({"exports": [plain]}, "no export.json"),
        ({"exports": [adapter]}, "an adapter export"),
        ({"exports": [exports["cls"]], "data": tmp_path / "missing.csv"}, "not found"),
    ]
    for kwargs, fragment in cases:
        with pytest.raises(TuneforgeError, match=re.escape(fragment)):
            verify_run(cls_run, save=False, **kwargs)


# --------------------------------------------------------------------------------------------------
# A live server


@contextlib.contextmanager
def _in_process(app):
    """`app` served by uvicorn in a thread on a free loopback port; yields its URL once ready."""
    import urllib.request

    import uvicorn

    from tuneforge.deploy.serve import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 60
    while True:
        assert thread.is_alive() and time.monotonic() < deadline, "in-process server not ready"
        try:
            if server.started and urllib.request.urlopen(f"{url}/ready", timeout=5).status == 200:
                break
        except OSError:
            pass
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


@pytest.mark.parametrize("which", ["sft", "cls"])
def test_a_live_server_matches_the_run_exactly(which, cls_run, sft_run, exports):
    from tuneforge.deploy.serve import create_app

    run = {"sft": sft_run, "cls": cls_run}[which]
    app = create_app(run, name=f"verify-{which}", api_key=KEY, feedback_log=False)
    with _in_process(app) as url:
        with pytest.raises(TuneforgeError, match="refused the request"):
            verify_run(run, server=url, api_key="wrong", save=False)
        result = verify_run(run, [exports[which]], server=url, api_key=KEY, save=False)
        other = {"sft": cls_run, "cls": sft_run}[which]
        with pytest.raises(TuneforgeError, match=f"serves a {run_task(run)} model"):
            verify_run(other, server=url, api_key=KEY, save=False)
    assert result["passed"], json.dumps(result["targets"], indent=1)
    server = result["targets"][-1]
    assert server["kind"] == "server" and server["tolerance"]["name"] == "exact"
    assert server["identity"]["model"] == f"verify-{which}"
    names = {c["check"] for c in server["checks"]}
    if which == "sft":
        assert {"prompt token count", "stop behaviour", "identical answers"} <= names
        assert "mean |Δ log p|" not in names  # no logits from a server
    else:
        assert {"label names", "accuracy", "label agreement", "max |Δp|"} <= names


def run_task(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["task"]


# --------------------------------------------------------------------------------------------------
# models promote --verify


def test_promote_verify_needs_a_passing_verify(cls_run, exports, tmp_path, registry):
    from tuneforge.runs import registry as reg
    from tuneforge.runs.promotion import promote

    (cls_run / "verify.json").unlink(missing_ok=True)
    version = reg.register_model("verified", str(cls_run), registry)
    refused = run_cli("models", "promote", "verified", str(version), "--verify")
    assert_check_failed(refused, "promotion refused", "never been verified", "tuneforge verify")

    broken = _copy(exports["cls"], tmp_path, "broken")
    _perturb(broken, "score", 0.5)
    assert not verify_run(cls_run, [broken])["passed"]
    with pytest.raises(CheckFailed, match="last verify .* failed"):
        promote("verified", version, verify=True, force=True, db=registry)

    assert verify_run(cls_run, [exports["cls"]])["passed"]
    promoted = run_cli("models", "promote", "verified", str(version), "--verify", "--json")
    assert promoted.returncode == 0, promoted.stderr[-2000:]
    detail = json.loads(promoted.stdout)
    assert detail["promoted"] and detail["verify"]["targets"] == [str(exports["cls"])]

    record = exports["cls"] / "export.json"  # the verified export replaced since
    original = record.read_bytes()
    record.write_text(json.dumps({**json.loads(original), "created": "later"}))
    try:
        with pytest.raises(CheckFailed, match="replaced after it was verified"):
            promote("verified", version, stage="staging", verify=True, db=registry)
    finally:
        record.write_bytes(original)
