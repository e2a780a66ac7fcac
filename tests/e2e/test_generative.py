"""sft and pretrain end to end through the CLI: train, the run directory, generate, chat, predict,
eval, data preview, and every bad input ending in one clear message with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_user_error, run_cli, write_jsonl

CATEGORIES = ["phishing", "malware", "benign"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a busy 2-core machine (much faster)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def chat_row(i: int, turns: int = 1) -> dict:
    cat = CATEGORIES[i % 3]
    messages = [{"role": "system", "content": "Triage the alert."}]
    for t in range(turns):
        messages += [
            {"role": "user", "content": f"alert {i}.{t}: the quick brown fox {cat}"},
            {"role": "assistant", "content": f"Category: {cat}\nReason: the lazy dog {t}"},
        ]
    return {"messages": messages}


def _only_run(output_dir: Path) -> Path:
    runs = list(output_dir.iterdir())
    assert len(runs) == 1 and not runs[0].name.startswith("."), runs
    return runs[0]


@pytest.fixture(scope="module")
def sft(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("sft")
    files = {
        "train": write_jsonl(
            tmp / "train.jsonl", [chat_row(i, turns=1 + i % 2) for i in range(12)]
        ),
        "validation": write_jsonl(
            tmp / "validation.jsonl", [chat_row(i, turns=1 + i % 2) for i in range(100, 104)]
        ),
        "test": write_jsonl(tmp / "test.jsonl", [chat_row(i) for i in range(200, 203)]),
    }
    recipe = tmp / "sft.yaml"
    recipe.write_text(
        f"""
name: tiny-sft
base_model: {tiny_model}
task: sft
data: {{train: {files["train"]}, validation: {files["validation"]}, test: {files["test"]}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{epochs: 2, batch_size: 4, eval_batch_size: 2, learning_rate: 2.0e-2, logging_steps: 1,
  max_length: 128}}
sft: {{generation_examples: 2, max_new_tokens: 8}}
output_dir: {tmp / "runs"}
"""
    )
    proc = run_cli("train", recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        "proc": proc,
        "run": _only_run(tmp / "runs"),
        "files": files,
        "recipe": recipe,
        "tmp": tmp,
    }


def test_sft_run_directory_metrics_and_report(sft):
    run = sft["run"]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "tokenizer" / "chat_template.jinja").is_file() or "chat_template" in (
        run / "tokenizer" / "tokenizer_config.json"
    ).read_text()
    meta = json.loads((run / "run.json").read_text())
    assert meta["task"] == "sft"
    assert meta["info"]["examples"] == {"train": 12, "validation": 4, "test": 3}
    assert meta["info"]["end_of_turn"] == "<|im_end|>"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selection_metric"] == "loss"
    for split in ("validation", "test"):
        base, tuned = metrics["base"][split], metrics["tuned"][split]
        for m in (
            "loss",
            "perplexity",
            "exact_match",
            "first_line_exact_match",
            "rouge_l",
            "chrf",
            "bleu",
        ):
            assert m in base and m in tuned, (split, m)
        assert tuned["perplexity"] == pytest.approx(2.718281828 ** tuned["loss"], rel=1e-6)
        assert len(tuned["samples"]) == 2 and len(base["samples"]) == 2
    assert metrics["tuned"]["validation"]["loss"] < metrics["base"]["validation"]["loss"]
    # the evaluations' loss is token-weighted, as the final scoring's (2 batches of 2 answers of
    # different lengths: a mean of the batch means would differ)
    (best,) = [e for e in metrics["evaluations"] if e["step"] == metrics["best"]["step"]]
    assert best["loss"] == pytest.approx(metrics["tuned"]["validation"]["loss"], rel=1e-5)
    assert best["perplexity"] == pytest.approx(2.718281828 ** best["loss"], rel=1e-6)
    for e in metrics["evaluations"]:
        assert {"loss", "perplexity", "exact_match", "rouge_l"} <= set(e)
        samples = (run / "samples" / f"step-{e['step']}.jsonl").read_text().splitlines()
        assert len(samples) == 2 and {"prompt", "reference", "prediction"} <= set(
            json.loads(samples[0])
        )
    report = (run / "report.md").read_text()
    assert "| perplexity |" in report and "Sample generations" in report
    assert "perplexity" in sft["proc"].stdout  # the summary printed after training


def test_generate_is_greedy_and_matches_the_python_api(sft):
    proc = run_cli(
        "generate", sft["run"], "alert 7.0: the quick brown fox malware", "--max-new-tokens", "6"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import tuneforge

    run = tuneforge.load_run(sft["run"])
    assert proc.stdout.rstrip("\n") == run.generate(
        "alert 7.0: the quick brown fox malware", max_new_tokens=6
    )
    again = run_cli(
        "generate", sft["run"], "alert 7.0: the quick brown fox malware", "--max-new-tokens", "6"
    )
    assert again.stdout == proc.stdout


def test_chat_keeps_the_conversation_and_ends_on_exit_or_eof(sft):
    import subprocess
    import sys

    def chat(stdin: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "tuneforge.cli",
                "chat",
                str(sft["run"]),
                "--max-new-tokens",
                "4",
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
        )

    proc = chat("hello\nthe quick brown fox\n/exit\nnever read\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.splitlines()) <= 2 and "you>" in proc.stderr
    assert chat("").returncode == 0  # EOF at once
    # The second turn sees the first: the same as the Python API given the whole conversation.
    import tuneforge

    run = tuneforge.load_run(sft["run"])
    first = run.chat([{"role": "user", "content": "hello"}], max_new_tokens=4)
    second = run.chat(
        [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "the quick brown fox"},
        ],
        max_new_tokens=4,
    )
    assert proc.stdout == f"{first}\n{second}\n"


def test_predict_input_file_writes_one_completion_per_row(sft):
    out = sft["tmp"] / "pred.jsonl"
    proc = run_cli("predict", sft["run"], "--input", sft["files"]["test"], "--output", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(
        isinstance(r["completion"], str) and "messages" in r for r in rows
    )
    prompts = sft["tmp"] / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": "alert 1: the quick brown fox"}, {"prompt": "alert 2"}])
    proc = run_cli("predict", sft["run"], "--input", prompts, "--output", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 2


def test_eval_json_with_base(sft):
    proc = run_cli("eval", sft["run"], "--data", sft["files"]["test"], "--json", "--base")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["loss"] < result["base"]["loss"]
    assert {"perplexity", "exact_match", "rouge_l", "chrf", "bleu"} <= set(result) & set(
        result["base"]
    )
    # every row of the file answered (the recipe's generation_examples is 2), not a sample
    rows = len(sft["files"]["test"].read_text().splitlines())
    assert result["generated"] == result["n"] == rows
    comparison = result["comparison"]
    assert comparison["rouge_l"]["n"] == rows and comparison["loss"]["n"] == result["n_scored"]
    assert comparison["exact_match"]["test"]["name"] == "McNemar (exact)"
    low, high = result["intervals"]["chrf"]
    assert low <= result["chrf"] <= high


def test_eval_generate_caps_the_answers_and_says_so(sft):
    proc = run_cli("eval", sft["run"], "--data", sft["files"]["test"], "--generate", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rouge_l (1 answer)" in proc.stdout
    assert "Generation metrics from the first 1 of" in proc.stdout
    assert "95% intervals: " in proc.stdout


def test_data_preview_marks_the_trained_tokens(sft):
    proc = run_cli("data", "preview", sft["recipe"], "-n", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "⟦Category: phishing\nReason: the lazy dog 0<|im_end|>⟧" in proc.stdout
    assert "⟦" not in proc.stdout.split("<|im_start|>assistant")[0]  # system and user: context only


# ------------------------------------------------------------------ pretrain


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("pretrain")
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "Security alert: failed login from 203.0.113.7 for user admin.",
        "The film was wonderful, moving and beautifully acted.",
    ]
    # validation documents are 5 sentences long, train ones 4: held out, not copies (the data
    # check would rightly refuse copies as leakage)
    for split, n, length in (("train", 6, 4), ("validation", 2, 5)):
        (tmp / split).mkdir()
        for i in range(n):
            (tmp / split / f"doc{i}.txt").write_text(
                " ".join(sentences[(i + k) % 3] for k in range(length))
            )
    recipe = tmp / "pretrain.yaml"
    recipe.write_text(
        f"""
name: tiny-pretrain
base_model: {tiny_model}
task: pretrain
data: {{train: {tmp / "train"}, validation: {tmp / "validation"}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{epochs: 3, batch_size: 4, learning_rate: 2.0e-2, logging_steps: 1, max_length: 32}}
output_dir: {tmp / "runs"}
"""
    )
    proc = run_cli("train", recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"proc": proc, "run": _only_run(tmp / "runs"), "tmp": tmp}


def test_pretrain_run_lowers_held_out_perplexity(pretrain):
    run = pretrain["run"]
    meta = json.loads((run / "run.json").read_text())
    assert meta["info"]["documents"] == {"train": 6, "validation": 2}
    metrics = json.loads((run / "metrics.json").read_text())
    base, tuned = metrics["base"]["validation"], metrics["tuned"]["validation"]
    assert tuned["perplexity"] < base["perplexity"]
    assert all("perplexity" in e for e in metrics["evaluations"])
    assert "| perplexity |" in (run / "report.md").read_text()


def test_pretrain_generate_and_eval(pretrain):
    proc = run_cli("generate", pretrain["run"], "The quick brown", "--max-new-tokens", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli("eval", pretrain["run"], "--data", pretrain["tmp"] / "validation", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["perplexity"] > 1


# ------------------------------------------------------------------ bad input


def _recipe(tmp_path: Path, tiny_model: Path, task: str, train: Path, extra: str = "") -> Path:
    validation = f"validation: {train}" if task == "sft" else "validation_split: 0.5"
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"name: bad\nbase_model: {tiny_model}\ntask: {task}\n"
        f"data: {{train: {train}, {validation}}}\n{extra}output_dir: {tmp_path / 'runs'}\n"
    )
    return path


GOOD = chat_row(0)["messages"]


@pytest.mark.parametrize(
    ("messages", "fragments"),
    [
        (
            [{"role": "bot", "content": "hi"}, GOOD[2]],
            ["line 2", "field 'messages' message 1", "unknown role 'bot'"],
        ),
        (
            [GOOD[1], {"role": "assistant", "content": ""}],
            ["line 2", "message 2 (assistant): empty content"],
        ),
        ([GOOD[0], GOOD[1]], ["line 2", "field 'messages'", "no assistant message"]),
        ("hello", ["line 2", "field 'messages' must be a list of"]),
        ([["user", "hi"]], ["line 2", "message 1: expected"]),
    ],
)
def test_bad_chats_exit_2_naming_file_line_and_field(tmp_path, tiny_model, messages, fragments):
    train = write_jsonl(tmp_path / "chats.jsonl", [{"messages": GOOD}, {"messages": messages}])
    proc = run_cli("train", _recipe(tmp_path, tiny_model, "sft", train))
    assert_user_error(proc, str(train), *fragments)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bad_corpus_columns_and_sizes_exit_2(tmp_path, tiny_model):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"body": "some text"}, {"body": "more text"}])
    assert_user_error(
        run_cli("train", _recipe(tmp_path, tiny_model, "pretrain", corpus)),
        str(corpus),
        "no column 'text'",
    )
    write_jsonl(corpus, [{"text": ""}, {"text": " "}])
    assert_user_error(
        run_cli("train", _recipe(tmp_path, tiny_model, "pretrain", corpus)),
        "column 'text' is empty in every row",
    )
    write_jsonl(corpus, [{"text": "a short one"}, {"text": "another short one"}])
    proc = run_cli("train", _recipe(tmp_path, tiny_model, "pretrain", corpus))
    assert_user_error(proc, str(corpus), "fewer than one block of training.max_length=256")
