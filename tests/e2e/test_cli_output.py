"""Issue 21 (scripts, CI logs, terminals): `--json` on stdout and nothing else there, tables that
keep every run id whole at 60 columns and in a pipe, exit codes 0/1/2/70, shell completion and the
global `--progress/--no-progress` option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    assert_check_failed,
    assert_user_error,
    sentiment_rows,
    write_csv,
    write_jsonl,
)

from tuneforge.runs import registry as reg

# two runs whose ids share a long prefix: the issue's `holdout-res…` twice
RUN_A = "holdout-results-sentiment-20260105-101010"
RUN_B = "holdout-results-sentiment-20260105-101010-2"
RUN_KEYS = {
    "id",
    "name",
    "path",
    "status",
    "task",
    "method",
    "base_model",
    "parent",
    "created",
    "finished",
    "headline",
}


def cli(*args: str | Path, columns: int | None = 200, **env: str) -> subprocess.CompletedProcess:
    """The CLI as a script runs it: stdout and stderr piped; COLUMNS=None leaves it unset."""
    environ = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        environ["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**environ, **env},
    )


def ok_json(proc: subprocess.CompletedProcess):
    """The whole of stdout is one JSON document."""
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    return json.loads(proc.stdout)


def ok_json_lines(proc: subprocess.CompletedProcess) -> list:
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    return [json.loads(line) for line in proc.stdout.splitlines()]


# --------------------------------------------------------------------------------------------------
# The registry: runs and models, recorded directly (no training needed)


def _fake_run(folder: Path, run_id: str, f1: float, lr: float) -> None:
    path = folder / run_id
    path.mkdir(parents=True)
    metrics = {
        "selection_metric": "macro_f1",
        "tuned": {"test": {"macro_f1": f1, "accuracy": f1, "n": 8}},
        "base": {"test": {"macro_f1": 0.5, "accuracy": 0.5, "n": 8}},
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    reg.record_run(
        run_id,
        path=str(path),
        name="holdout-results-sentiment",
        task="classification",
        method="lora",
        base_model="/models/some/rather/long/path/to/a/local/base-model-folder",
        status="finished",
        created=1.0 if run_id == RUN_A else 2.0,
        finished=3.0,
        recipe={"name": "holdout", "training": {"learning_rate": lr, "epochs": 2}},
        data={"test": {"path": "test.csv", "sha256": "ab" * 32}},
        metrics=metrics,
    )


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "registry.sqlite"
    monkeypatch.setenv("TUNEFORGE_REGISTRY", str(path))
    _fake_run(tmp_path / "runs", RUN_A, 0.9, 1e-3)
    _fake_run(tmp_path / "runs", RUN_B, 0.6, 1e-2)
    return path


@pytest.mark.parametrize("columns", [60, None, 47], ids=["60-columns", "piped", "just-wide-enough"])
def test_runs_list_keeps_every_run_id_whole(registry, columns):
    proc = cli("runs", "list", columns=columns)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(len(line) <= (columns or 80) for line in lines), proc.stdout
    for run_id in (RUN_A, RUN_B):
        assert any(run_id in line for line in lines), proc.stdout  # whole, on one line
    assert "…" not in proc.stdout
    if columns == 60:  # the least important columns make room: said so in the caption
        assert "left out at this width" in " ".join(proc.stdout.split())
        assert "finished" in proc.stdout  # status is kept longest


def test_runs_list_shows_everything_when_wide(registry):
    proc = cli("runs", "list", columns=200)
    flat = " ".join(proc.stdout.split())
    for text in ("base-model-folder", "test macro_f1: 0.5000 → 0.9000", "lora", "classification"):
        assert text in flat
    assert "left out" not in flat


def test_an_id_wider_than_the_terminal_folds_instead_of_being_cut(registry, tmp_path):
    long_id = "x" * 70 + "-end"
    reg.record_run(long_id, path=str(tmp_path / long_id), status="finished", created=5.0)
    proc = cli("runs", "list", columns=60)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    cells = "".join(ch for ch in proc.stdout if ch not in "│┃ \n")
    assert long_id in cells


def test_runs_list_json(registry):
    listed = ok_json(cli("runs", "list", "--json", columns=60))
    assert listed["registry"] == str(registry)
    assert [r["id"] for r in listed["runs"]] == [RUN_B, RUN_A]  # newest first
    run = listed["runs"][1]
    assert set(run) == RUN_KEYS
    assert run["status"] == "finished" and run["path"].endswith(RUN_A)
    assert run["headline"] == {"split": "test", "metric": "macro_f1", "base": 0.5, "tuned": 0.9}


def test_runs_show_and_compare_json(registry):
    shown = ok_json(cli("runs", "show", RUN_A, "--json"))
    assert shown["id"] == RUN_A and shown["lineage"] == [RUN_A] and shown["parent"] is None
    assert shown["metrics"]["tuned"]["test"]["macro_f1"] == 0.9
    assert {"path", "status", "data", "versions", "chain", "git_commit"} <= set(shown)

    compared = ok_json(cli("runs", "compare", RUN_A, RUN_B, "--json"))
    assert compared["a"] == RUN_A and compared["b"] == RUN_B
    assert compared["recipe_differences"] == [
        {"field": "training.learning_rate", "a": 1e-3, "b": 1e-2}
    ]
    assert {"split": "test", "metric": "macro_f1", "a": 0.9, "b": 0.6} in compared["metrics"]

    table = cli("runs", "compare", RUN_A, RUN_B, columns=60)
    assert table.returncode == 0, table.stderr
    assert f"A  {RUN_A}" in table.stdout and f"B  {RUN_B}" in table.stdout
    assert "training.learning_rate" in table.stdout and "test/macro_f1" in table.stdout


def test_models_json_and_the_promotion_gate_exit_code(registry):
    registered = ok_json(cli("models", "register", "sentiment", RUN_A, "--json"))
    assert registered == {"name": "sentiment", "version": 1, "run_id": RUN_A}
    assert ok_json(cli("models", "register", "sentiment", RUN_B, "--json"))["version"] == 2

    for args in (("models", "--json"), ("models", "list", "--json")):
        listed = ok_json(cli(*args))
        assert set(listed) == {"base_models", "registry", "registered"}
        fields = {"name", "kind", "location", "ready", "architecture", "chat_template"}
        assert all(set(m) == fields | {"gguf_export"} for m in listed["base_models"])
        embedded = {m["name"]: m for m in listed["base_models"] if m["kind"] == "embedded"}
        assert {"smollm2-135m", "gemma3-270m"} <= set(embedded)
        assert (
            embedded["smollm2-135m"]["architecture"],
            embedded["smollm2-135m"]["chat_template"],
        ) == (
            "llama",
            True,
        )
        assert embedded["gemma3-270m"]["chat_template"] is False
        assert [
            (m["name"], m["version"], m["stage"], m["run_id"]) for m in listed["registered"]
        ] == [
            ("sentiment", 1, "none", RUN_A),
            ("sentiment", 2, "none", RUN_B),
        ]

    promoted = ok_json(cli("models", "promote", "sentiment", "1", "--json"))
    assert promoted["promoted"] is True and promoted["compared_with"] is None
    assert promoted["name"] == "sentiment" and promoted["version"] == 1

    refused = cli("models", "promote", "sentiment", "2", "--json")  # worse: the gate says no
    assert_check_failed(refused, "promotion refused", "sentiment@1")
    assert refused.stdout == ""

    forced = ok_json(cli("models", "promote", "sentiment", "2", "--force", "--json"))
    assert forced["forced"] is True and forced["compared_with"] == "sentiment@1"
    assert forced["candidate"] == 0.6 and forced["current"] == 0.9 and forced["worse"] is True

    table = cli("models", columns=60)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert any({"sentiment@1", RUN_A} <= set(line.split()) for line in lines), table.stdout
    assert any({"sentiment@2", RUN_B} <= set(line.split()) for line in lines), table.stdout


# --------------------------------------------------------------------------------------------------
# Exit codes, completion, --progress


def test_exit_codes(registry, monkeypatch):
    import tuneforge.cli as cli_module
    from tuneforge.errors import CheckFailed, TuneforgeError

    usage = cli("runs", "list", "--no-such-option")
    assert usage.returncode == 2 and "No such option" in usage.stderr
    assert_user_error(cli("runs", "show", "nope"), "not in the registry")

    for raised, code in (
        (RuntimeError("a bug"), 70),
        (TuneforgeError("bad"), 2),
        (CheckFailed("no"), 1),
        (KeyboardInterrupt(), 130),
    ):

        def app(standalone_mode: bool, raised=raised) -> None:
            raise raised

        monkeypatch.setattr(cli_module, "app", app)
        with pytest.raises(SystemExit) as exited:
            cli_module.main()
        assert exited.value.code == code, raised


def test_shell_completion_is_installable(tmp_path):
    """Through the installed `tuneforge` script: completion is keyed to the program's name."""
    tuneforge = str(Path(sys.executable).parent / "tuneforge")

    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        environ = {**os.environ, "HOME": str(tmp_path), "SHELL": "/bin/bash", **env}
        return subprocess.run([tuneforge, *args], capture_output=True, text=True, env=environ)

    shown = run("--show-completion", "bash")
    assert shown.returncode == 0 and "_tuneforge_completion" in shown.stdout, shown.stderr
    installed = run("--install-completion", "bash")
    assert installed.returncode == 0, installed.stderr
    script = tmp_path / ".bash_completions" / "tuneforge.sh"
    assert script.is_file() and str(script) in (tmp_path / ".bashrc").read_text()
    completed = run(
        COMP_WORDS="tuneforge runs l", COMP_CWORD="2", _TUNEFORGE_COMPLETE="complete_bash"
    )
    assert completed.returncode == 0 and completed.stdout.split() == ["list"], completed.stdout


def test_progress_option_sets_the_environment(registry, monkeypatch):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    monkeypatch.setenv("TUNEFORGE_PROGRESS", "untouched")
    for flag, value in (("--progress", "1"), ("--no-progress", "0")):
        result = CliRunner().invoke(app, [flag, "runs", "list", "--json"])
        assert result.exit_code == 0, result.output
        assert os.environ["TUNEFORGE_PROGRESS"] == value
    monkeypatch.setenv("TUNEFORGE_PROGRESS", "untouched")
    assert CliRunner().invoke(app, ["runs", "list", "--json"]).exit_code == 0
    assert os.environ["TUNEFORGE_PROGRESS"] == "untouched"  # unset: the caller's choice (auto)


# --------------------------------------------------------------------------------------------------
# Data, prediction and evaluation on the tiny model


def test_data_check_json_and_exit_code(tmp_path, tiny_model, sentiment_recipe):
    clean = ok_json(cli("data", "check", sentiment_recipe, "--json"))
    assert set(clean) == {"findings", "summary", "passed"} and clean["passed"] is True
    assert clean["summary"]["splits"]["train"]["examples"] == 24

    train = write_csv(tmp_path / "leaky-train.csv", sentiment_rows(20))
    validation = write_csv(tmp_path / "leaky-validation.csv", sentiment_rows(4, offset=2))
    recipe = tmp_path / "leaky.yaml"
    recipe.write_text(
        f"name: leak\nbase_model: {tiny_model}\ntask: classification\n"
        f"data: {{train: {train}, validation: {validation}}}\n"
    )
    proc = cli("data", "check", recipe, "--json")
    assert_check_failed(proc, "data check found", "--set data_checks.leakage=warning")
    report = json.loads(proc.stdout)  # the findings still reach the script
    assert report["passed"] is False
    leak = [f for f in report["findings"] if f["check"] == "leakage"]
    assert leak and leak[0]["severity"] == "error" and leak[0]["split"] == "validation"
    assert {"check", "severity", "message", "split", "count", "lines"} <= set(leak[0])


def test_data_preview_json(tmp_path, tiny_model):
    rows = [{"prompt": f"Say hi to {name}.", "completion": f"Hi {name}!"} for name in "abcd"]
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(
        f"name: p\nbase_model: {tiny_model}\ntask: sft\n"
        f"data: {{train: {write_jsonl(tmp_path / 'train.jsonl', rows)}}}\n"
    )
    preview = ok_json(cli("data", "preview", recipe, "-n", "2", "--json"))
    assert len(preview["examples"]) == 2
    for example in preview["examples"]:
        assert set(example) == {"title", "note", "pieces"}
        assert {p["kind"] for p in example["pieces"]} <= {"trained", "context", "special"}
        assert "".join(p["text"] for p in example["pieces"]).strip()
        assert "trained" in {p["kind"] for p in example["pieces"]}  # the completion


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model) -> dict:
    tmp = tmp_path_factory.mktemp("cli-output")
    files = {
        split: write_csv(tmp / f"{split}.csv", sentiment_rows(n, offset=offset))
        for split, n, offset in (("train", 16, 0), ("validation", 8, 100), ("test", 8, 200))
    }
    recipe = tmp / "recipe.yaml"
    recipe.write_text(
        f"name: tiny\nbase_model: {tiny_model}\ntask: classification\n"
        f"data: {{train: {files['train']}, validation: {files['validation']}, "
        f"test: {files['test']}}}\n"
        "lora: {r: 4, alpha: 8, dropout: 0.0}\n"
        "training: {max_steps: 2, batch_size: 8, seed: 0}\n"
        f"baseline: {{enabled: false}}\noutput_dir: {tmp / 'runs'}\n"
    )
    env = {"TUNEFORGE_REGISTRY": str(tmp / "registry.sqlite")}
    proc = cli("train", recipe, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = (tmp / "runs").iterdir()
    return {"run": run, "files": files, "tmp": tmp, "env": env}


def test_predict_json_lines(tiny_run):
    run, env = tiny_run["run"], tiny_run["env"]
    texts = ["great film, loved it", "a waste of two hours"]
    lines = ok_json_lines(cli("predict", run, *texts, "--json", **env))
    assert [line["text"] for line in lines] == texts
    assert all({"label", "probabilities"} <= set(line) for line in lines)

    records = ok_json_lines(
        cli("predict", run, "--input", tiny_run["files"]["test"], "--json", **env)
    )
    assert len(records) == 8 and all({"text", "label", "probabilities"} <= set(r) for r in records)
    assert not list(tiny_run["tmp"].glob("*.predictions.jsonl"))  # on stdout, not into a file


def test_eval_json(tiny_run):
    run, env, test = tiny_run["run"], tiny_run["env"], tiny_run["files"]["test"]
    metrics = ok_json(cli("eval", run, "--data", test, "--json", "--base", **env))
    assert metrics["n"] == 8 and "macro_f1" in metrics and metrics["base"]["n"] == 8
    both = ok_json(cli("eval", run, "--data", test, "--bias", "--json", **env))
    assert "macro_f1" in both and "tuned" in both["bias"] and "base" not in both
