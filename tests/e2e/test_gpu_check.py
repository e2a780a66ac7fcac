"""scripts/gpu_check.py in its CPU mode: every row runs through the CLI on tiny random Llamas built
from the embedded model's config and tokenizer (the files `--export-model-files` ships to a GPU
machine), and the table says PASS everywhere except the rows that need CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"

EXPECTED = [
    "environment",
    "data",
    "build-small",
    "cls-lora",
    "sft-lora",
    "predict-cls",
    "predict-sft",
    "eval-base-cls",
    "bias-probe",
    "serve-classify",
    "serve-chat",
    "export-merged-cls",
    "export-merged-sft",
    "cls-full",
    "cls-freeze",
    "pretrain-lora",
    "build-large",
    "cls-lora-large",
    "sft-lora-large-gc",
    "sft-qlora-large",
]
CUDA_ONLY = {"sft-qlora-large"}


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_gpu_check_cpu_mode_passes_every_row(tmp_path):
    files = tmp_path / "model_files"
    exported = _run("--export-model-files", str(files), timeout=600)
    assert exported.returncode == 0, exported.stderr
    shipped = {p.name for p in files.iterdir()}
    assert {"config.json", "tokenizer.json"} <= shipped
    assert not any(name.endswith((".safetensors", ".bin", ".gguf")) for name in shipped)
    assert sum(p.stat().st_size for p in files.iterdir()) < 10_000_000

    out = tmp_path / "out"
    proc = _run("--device", "cpu", "--model-files", str(files), "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert results["device"] == "cpu"
    rows = {r["step"]: r for r in results["steps"]}
    assert list(rows) == EXPECTED
    for name, row in rows.items():
        expected = "SKIP" if name in CUDA_ONLY else "PASS"
        assert row["status"] == expected, (name, row["note"], row["log_tail"])
        if expected == "PASS" and name != "data":
            assert (out / row["log"]).is_file()
            assert row["wall_s"] is not None
    for name in ("cls-lora", "sft-lora", "pretrain-lora", "cls-full", "sft-lora-large-gc"):
        assert rows[name]["tokens_per_s"] > 0, rows[name]
    assert rows["serve-chat"]["tokens_per_s"] > 0
    assert rows["sft-qlora-large"]["note"] == "needs CUDA"

    table = (out / "results.md").read_text()
    assert "| step | status | wall s | train tokens/s |" in table
    for name in EXPECTED:
        assert f"| {name} |" in table
    assert "| step | status |" in proc.stdout  # the table is printed too
    assert (out / "logs.tar.gz").is_file()
