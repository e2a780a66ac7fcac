"""End to end through the CLI, as a user runs it: train, look at the run, predict, eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, sentiment_rows, write_csv


def _only_run(output_dir: Path) -> Path:
    runs = [p for p in output_dir.iterdir()]
    assert len(runs) == 1, runs
    assert not runs[0].name.startswith("."), "the run directory must be renamed when finished"
    return runs[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """One LoRA run shared by the read-only tests below."""
    tmp = tmp_path_factory.mktemp("e2e")
    files = {
        "train": write_csv(tmp / "train.csv", sentiment_rows(24)),
        "validation": write_csv(tmp / "validation.csv", sentiment_rows(8, offset=100)),
        "test": write_csv(tmp / "test.csv", sentiment_rows(8, offset=200)),
    }
    recipe = tmp / "recipe.yaml"
    recipe.write_text(
        f"""
name: tiny-sentiment
base_model: {tiny_model}
task: classification
data: {{train: {files["train"]}, validation: {files["validation"]}, test: {files["test"]}}}
method: lora
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{epochs: 3, batch_size: 8, learning_rate: 1.0e-2, logging_steps: 1}}
early_stopping: {{metric: macro_f1}}
output_dir: {tmp / "runs"}
"""
    )
    proc = run_cli("train", recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"proc": proc, "run": _only_run(tmp / "runs"), "files": files, "tmp": tmp}


def test_run_directory_holds_everything_needed(trained):
    run = trained["run"]
    assert (run / "recipe.yaml").is_file()
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    assert not (run / "checkpoints").exists()
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    meta = json.loads((run / "run.json").read_text())
    assert meta["info"]["labels"] == ["negative", "positive"]
    assert meta["info"]["counts"]["train"] == {"negative": 12, "positive": 12}
    metrics = json.loads((run / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["evaluations"]] == [1.0, 2.0, 3.0]
    for e in metrics["evaluations"]:
        assert {"loss", "accuracy", "macro_f1", "details"} <= set(e)
        assert len(e["details"]["confusion_matrix"]) == 2
    assert set(metrics["base"]) == set(metrics["tuned"]) == {"validation", "test"}
    report = (run / "report.md").read_text()
    assert "Base model vs fine-tuned" in report and run.name in report


def test_best_checkpoint_is_the_one_kept(trained):
    metrics = json.loads((trained["run"] / "metrics.json").read_text())
    best = max(metrics["evaluations"], key=lambda e: e["macro_f1"])
    assert metrics["best"]["value"] == pytest.approx(best["macro_f1"])
    # the saved model re-scored on validation gives the best evaluation's figures
    assert metrics["tuned"]["validation"]["macro_f1"] == pytest.approx(best["macro_f1"])
    assert metrics["tuned"]["validation"]["accuracy"] == pytest.approx(best["accuracy"])


def test_cli_prints_base_vs_tuned(trained):
    out = trained["proc"].stdout
    assert "base model" in out and "fine-tuned" in out and "accuracy" in out


def test_adapter_is_plain_peft_format(trained, tiny_model, tiny_tokenizer):
    import torch
    from peft import PeftModel

    from tuneforge import load_run
    from tuneforge.models import load_sequence_classifier

    base = load_sequence_classifier(
        tiny_model, ["negative", "positive"], tiny_tokenizer.pad_token_id
    )
    model = PeftModel.from_pretrained(base, trained["run"] / "adapter").eval()
    text = "great film, loved it"
    with torch.no_grad():
        probs = torch.softmax(model(**tiny_tokenizer([text], return_tensors="pt")).logits, -1)[0]
    ours = load_run(trained["run"]).predict([text])[0]["probabilities"]
    assert ours["negative"] == pytest.approx(float(probs[0]), abs=1e-5)
    assert ours["positive"] == pytest.approx(float(probs[1]), abs=1e-5)


def test_predict_texts_and_file(trained, tmp_path):
    run = trained["run"]
    proc = run_cli("predict", run, "great film, loved it", "a waste of two hours", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.strip().splitlines()]
    assert [x["text"] for x in lines] == ["great film, loved it", "a waste of two hours"]
    assert lines[0]["label"] in {"negative", "positive"}
    assert sum(lines[0]["probabilities"].values()) == pytest.approx(1.0)

    inputs = write_csv(
        tmp_path / "in.csv", [{"id": i, "text": r["text"]} for i, r in enumerate(sentiment_rows(5))]
    )
    out = tmp_path / "preds.jsonl"
    proc = run_cli("predict", run, "--input", inputs, "--output", out)
    assert proc.returncode == 0, proc.stderr
    preds = [json.loads(x) for x in out.read_text().splitlines()]
    assert [p["id"] for p in preds] == ["0", "1", "2", "3", "4"]
    assert all(p["label"] in {"negative", "positive"} for p in preds)


def test_eval_json_and_base(trained):
    run, test_file = trained["run"], trained["files"]["test"]
    proc = run_cli("eval", run, "--data", test_file, "--json", "--base")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == 8
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix"} <= set(result)
    assert set(result["per_class"]) == {"negative", "positive"}
    # the same file scored at the end of training gives the same figures
    stored = json.loads((run / "metrics.json").read_text())
    assert result["accuracy"] == pytest.approx(stored["tuned"]["test"]["accuracy"])
    assert result["base"]["accuracy"] == pytest.approx(stored["base"]["test"]["accuracy"])

    table = run_cli("eval", run, "--data", test_file)
    assert table.returncode == 0 and "accuracy" in table.stdout


@pytest.mark.parametrize(("method", "weights"), [("full", "model"), ("freeze", "model")])
def test_full_and_freeze_save_safetensors(sentiment_recipe, tmp_path, method, weights):
    proc = run_cli(
        "train", sentiment_recipe, "--set", f"method={method}", "--set", "training.max_steps=3"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _only_run(tmp_path / "runs")
    assert (run / weights / "model.safetensors").is_file()
    assert not list(run.rglob("*.bin"))
    pred = run_cli("predict", run, "great film", "--json")
    assert pred.returncode == 0, pred.stderr


def test_stratified_validation_split(tmp_path, tiny_model):
    from tuneforge import train

    rows = sentiment_rows(30) + [{"text": f"meh #{i}", "label": "neutral"} for i in range(10)]
    data = write_csv(tmp_path / "all.csv", rows)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: split\nbase_model: {tiny_model}\ntask: classification\n"
        f"data: {{train: {data}, validation_split: 0.25}}\n"
        f"training: {{max_steps: 2, batch_size: 8}}\nbaseline: {{enabled: false}}\noutput_dir: {tmp_path / 'runs'}\n"
    )
    run = train(recipe)
    counts = run.meta["info"]["counts"]
    assert counts["validation"] == {"negative": 4, "neutral": 2, "positive": 4}
    assert sum(counts["train"].values()) == 30
    assert run.labels == ["negative", "neutral", "positive"]


def test_early_stopping_ends_the_run(sentiment_recipe, tmp_path):
    proc = run_cli(
        "train",
        sentiment_recipe,
        "--set",
        "training.epochs=6",
        "--set",
        "training.learning_rate=1e-9",
        "--set",
        "early_stopping.patience=1",
        "--set",
        "baseline.enabled=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((_only_run(tmp_path / "runs") / "metrics.json").read_text())
    assert len(metrics["evaluations"]) == 2  # no gain after the first evaluation, patience 1


def test_same_seed_same_result(sentiment_recipe, tmp_path):
    from safetensors.torch import load_file

    from tuneforge import train

    a = train(
        sentiment_recipe,
        ["training.max_steps=4", "baseline.enabled=false", f"output_dir={tmp_path / 'a'}"],
    )
    b = train(
        sentiment_recipe,
        ["training.max_steps=4", "baseline.enabled=false", f"output_dir={tmp_path / 'b'}"],
    )
    assert a.metrics["evaluations"][-1]["loss"] == b.metrics["evaluations"][-1]["loss"]
    wa, wb = (load_file(r.path / "adapter" / "adapter_model.safetensors") for r in (a, b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] == wb[k]).all(), k
