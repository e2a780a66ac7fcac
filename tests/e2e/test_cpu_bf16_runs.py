"""bf16 on a CPU that computes it natively, through the CLI as a user runs it: a classification
and an sft run trained with `training.precision: bf16`, then plan, predict, generate, eval, the
server's /stats and a merged export (whose check compares fp32 weights exactly).

The suite pins `precision: auto` to fp32 (conftest); these tests ask for bf16 by name, and run
only where the CPU has native bf16 (elsewhere that is refused: tests/unit/test_cpu_bf16.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, sentiment_rows, write_csv, write_jsonl

from tuneforge import cpu_bf16

pytestmark = pytest.mark.skipif(
    not cpu_bf16.detect().native, reason="this CPU has no native bf16 (AVX512-BF16 / AMX)"
)


@pytest.fixture(autouse=True, scope="module")
def _bf16_inference():
    """Inference follows training where bf16 is measured faster: say it is (the suite says 0)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv(cpu_bf16.ENV, "2.0")
        cpu_bf16.detect.cache_clear()  # this process too (its first detection read "0")
        yield
    cpu_bf16.detect.cache_clear()


def _only_run(output_dir: Path) -> Path:
    runs = list(output_dir.iterdir())
    assert len(runs) == 1 and not runs[0].name.startswith("."), runs
    return runs[0]


@pytest.fixture(scope="module")
def classification(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("bf16-cls")
    files = {
        "train": write_csv(tmp / "train.csv", sentiment_rows(24)),
        "validation": write_csv(tmp / "validation.csv", sentiment_rows(8, offset=100)),
    }
    recipe = tmp / "recipe.yaml"
    recipe.write_text(
        f"""
name: tiny-bf16
base_model: {tiny_model}
task: classification
data: {{train: {files["train"]}, validation: {files["validation"]}}}
lora: {{r: 4, alpha: 8, dropout: 0.1}}
training: {{epochs: 2, batch_size: 8, learning_rate: 1.0e-2, precision: bf16}}
data_checks: {{small_evaluation: "off"}}
output_dir: {tmp / "runs"}
"""
    )
    proc = run_cli("train", recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"run": _only_run(tmp / "runs"), "recipe": recipe, "files": files, "tmp": tmp}


def test_the_run_records_bf16_and_the_cpu(classification):
    meta = json.loads((classification["run"] / "run.json").read_text())
    assert meta["precision"] == "bf16"
    assert "native bf16" in meta["cpu"]
    metrics = json.loads((classification["run"] / "metrics.json").read_text())
    assert 0.0 <= metrics["tuned"]["validation"]["accuracy"] <= 1.0


def test_plan_shows_the_cpus_bf16_and_the_precision(classification):
    proc = run_cli("plan", classification["recipe"], "--steps", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "precision bf16" in proc.stdout
    assert "native bf16" in proc.stdout and "fp32's throughput" in proc.stdout


def test_predict_and_eval_run_in_bf16_and_agree_with_fp32(classification):
    from tuneforge.runs.run import Run

    run = classification["run"]
    texts = [r["text"] for r in sentiment_rows(16, offset=300)]
    bf16, fp32 = Run.load(run), Run.load(run, precision="fp32")
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    fast, exact = bf16.predict(texts), fp32.predict(texts)
    same = sum(a["label"] == b["label"] for a, b in zip(fast, exact, strict=True))
    assert same >= 15, (same, fast, exact)  # classification agreement (>= 99% on the demo)
    for a, b in zip(fast, exact, strict=True):
        for label, p in a["probabilities"].items():
            assert abs(p - b["probabilities"][label]) < 0.05
    proc = run_cli("eval", run, "--data", classification["files"]["validation"], "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 0.0 <= json.loads(proc.stdout)["accuracy"] <= 1.0


def test_a_merged_export_of_a_bf16_run_holds_fp32_weights_and_passes_its_check(classification):
    out = classification["tmp"] / "merged"
    proc = run_cli("export", classification["run"], "--format", "merged", "--output", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) in ("float32", None)
    from safetensors import safe_open

    with safe_open(str(next(out.glob("*.safetensors"))), "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
    assert dtypes == {"F32"}, dtypes


def test_sft_trains_and_generates_in_bf16(tmp_path, tiny_model):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"alert {i}: the quick brown fox"},
                {"role": "assistant", "content": f"Category: {'benign' if i % 2 else 'malware'}"},
            ]
        }
        for i in range(16)
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows[:12])
    validation = write_jsonl(tmp_path / "validation.jsonl", rows[12:])
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(
        f"""
name: tiny-sft-bf16
base_model: {tiny_model}
task: sft
data: {{train: {train}, validation: {validation}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{epochs: 1, batch_size: 4, learning_rate: 2.0e-2, max_length: 64, precision: bf16}}
sft: {{generation_examples: 2, max_new_tokens: 6}}
data_checks: {{small_evaluation: "off"}}
output_dir: {tmp_path / "runs"}
"""
    )
    proc = run_cli("train", recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _only_run(tmp_path / "runs")
    assert json.loads((run / "run.json").read_text())["precision"] == "bf16"
    proc = run_cli("generate", run, "alert 3: the quick brown fox", "--max-new-tokens", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()
    # generation runs in fp32 (greedy answers as the exports give them), and the run's own final
    # scores were measured on the saved weights in fp32: `eval` finds the same figures
    from tuneforge.runs.run import Run

    assert Run.load(run).precision == "fp32"
    proc = run_cli("eval", run, "--data", validation, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads(proc.stdout)
    saved = json.loads((run / "metrics.json").read_text())["tuned"]["validation"]
    assert again["loss"] == pytest.approx(saved["loss"], rel=1e-5)
    assert again["rouge_l"] == pytest.approx(saved["rouge_l"], abs=1e-9)


def test_the_server_says_it_computes_in_bf16(classification):
    from fastapi.testclient import TestClient

    from tuneforge.deploy.serve import create_app
    from tuneforge.runs.run import Run

    with TestClient(create_app(Run.load(classification["run"]))) as client:
        for _ in range(600):  # the model loads in the background
            stats = client.get("/stats").json()
            if stats["state"] != "loading":
                break
            __import__("time").sleep(0.05)
        assert (stats["state"], stats["precision"]) == ("ready", "bf16")
        answer = client.post("/v1/classify", json={"input": ["a warm, moving film"]})
        assert answer.status_code == 200, answer.text


def test_dpo_and_pretrain_train_in_bf16(tmp_path, tiny_model):
    good, bad = ["great film, loved it", "a moving, beautiful movie"], ["dreadful", "a waste"]
    pairs = [
        {"prompt": f"Review film #{i}.", "chosen": good[i % 2], "rejected": f"{bad[i % 2]} #{i}"}
        for i in range(16)
    ]
    train = write_jsonl(tmp_path / "train.jsonl", pairs[:12])
    validation = write_jsonl(tmp_path / "validation.jsonl", pairs[12:])
    docs = [{"text": f"The quick brown fox {i} jumps over the lazy dog."} for i in range(24)]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs[:18])
    held = write_jsonl(tmp_path / "held.jsonl", docs[18:])
    recipes = {
        "dpo": "task: preference\n"
        f"data: {{train: {train}, validation: {validation}}}\n"
        "preference: {generation_examples: 1, kl_examples: 2, max_new_tokens: 4}\n",
        "pretrain": f"task: pretrain\ndata: {{train: {corpus}, validation: {held}}}\n",
    }
    for name, body in recipes.items():
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(
            f"name: tiny-{name}-bf16\nbase_model: {tiny_model}\n{body}"
            "lora: {r: 4, alpha: 8, dropout: 0.0}\n"
            "training: {epochs: 1, batch_size: 4, learning_rate: 1.0e-2, max_length: 64, "
            "precision: bf16}\n"
            'data_checks: {small_evaluation: "off"}\n'
            f"output_dir: {tmp_path / 'runs' / name}\n"
        )
        proc = run_cli("train", recipe)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
        run = _only_run(tmp_path / "runs" / name)
        meta = json.loads((run / "run.json").read_text())
        assert meta["precision"] == "bf16", name
