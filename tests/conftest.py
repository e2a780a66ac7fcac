"""Shared fixtures: a tiny random Llama and small labelled files, all built locally."""

from __future__ import annotations

import atexit
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["TUNEFORGE_QUIET"] = "1"
# `precision: auto` stays fp32 on every CPU the suite runs on (CI machines differ: some compute
# bf16 natively), as a measured bf16 speed-up of 0 says; the bf16 paths are tested on purpose
# (tests/unit/test_cpu_bf16.py, tests/e2e/test_cpu_bf16_runs.py) with precision: bf16 or mocks.
os.environ["TUNEFORGE_CPU_BF16_SPEEDUP"] = "0"
# The base model's kept scores (runs/base_scores.py): a fresh folder per session, per module (its
# shared trained runs) and per test, so a run scores the base model itself unless a test is
# about the reuse; never the user's own cache.
os.environ["TUNEFORGE_BASE_SCORES"] = tempfile.mkdtemp(prefix="tuneforge-base-scores-")
atexit.register(shutil.rmtree, os.environ["TUNEFORGE_BASE_SCORES"], ignore_errors=True)

POSITIVE = [
    "great film, loved it",
    "wonderful acting and a warm story",
    "a moving, beautiful movie",
    "brilliant fun from start to end",
    "superb direction and a lovely cast",
]
NEGATIVE = [
    "boring and dull mess",
    "terrible acting and an awful plot",
    "a waste of two hours",
    "I hated every minute of it",
    "dreadful, slow and ugly",
]


@pytest.fixture(autouse=True, scope="module")
def _module_base_scores(tmp_path_factory):
    before = os.environ["TUNEFORGE_BASE_SCORES"]
    os.environ["TUNEFORGE_BASE_SCORES"] = str(tmp_path_factory.mktemp("base-scores"))
    yield
    os.environ["TUNEFORGE_BASE_SCORES"] = before


@pytest.fixture(autouse=True)
def _own_base_scores(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_BASE_SCORES", str(tmp_path_factory.mktemp("base-scores")))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from tuneforge.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from tuneforge.models import load_tokenizer

    return load_tokenizer(tiny_model)


def write_csv(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> Path:
    fieldnames = fieldnames or list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sentiment_rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        pool, label = (POSITIVE, "positive") if i % 2 else (NEGATIVE, "negative")
        rows.append({"text": f"{pool[i % len(pool)]} #{i}", "label": label})
    return rows


@pytest.fixture
def sentiment_files(tmp_path) -> dict[str, Path]:
    return {
        "train": write_csv(tmp_path / "train.csv", sentiment_rows(24)),
        "validation": write_csv(tmp_path / "validation.csv", sentiment_rows(8, offset=100)),
        "test": write_csv(tmp_path / "test.csv", sentiment_rows(8, offset=200)),
    }


def write_recipe(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


@pytest.fixture
def sentiment_recipe(tmp_path, tiny_model, sentiment_files) -> Path:
    return write_recipe(
        tmp_path / "recipe.yaml",
        f"""
name: tiny-sentiment
base_model: {tiny_model}
task: classification
data:
  train: {sentiment_files["train"]}
  validation: {sentiment_files["validation"]}
  test: {sentiment_files["test"]}
method: lora
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{epochs: 2, batch_size: 8, learning_rate: 1.0e-2, logging_steps: 1, seed: 0}}
early_stopping: {{metric: macro_f1, patience: 2}}
output_dir: {tmp_path / "runs"}
""",
    )


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would; returns the finished process (never raises)."""
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def assert_user_error(
    proc: subprocess.CompletedProcess, *fragments: str, exit_code: int = 2
) -> None:
    """Exit 2, one clear message naming what is wrong, no traceback."""
    assert proc.returncode == exit_code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "error:" in proc.stderr, proc.stderr
    flat = " ".join(proc.stderr.split())
    for fragment in fragments:
        assert fragment in flat, (fragment, proc.stderr)


def assert_check_failed(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 1 (a check ran and said no: data check, promotion gate, plan), one clear message."""
    assert_user_error(proc, *fragments, exit_code=1)
