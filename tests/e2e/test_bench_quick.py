"""The benchmarks' --quick modes (tiny random model, a few requests) run end to end and write
their JSON. Only the shape and the correctness figures are checked, never timings. (bench/gpu.py's
quick mode runs on the CPU, so the GPU benchmark cannot rot where no GPU is at hand.)"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run_quick(script: str, *args: str) -> subprocess.CompletedProcess:
    """`python SCRIPT --quick ARGS` from the repository root, one thread, offline; it must exit 0."""
    proc = subprocess.run(
        [sys.executable, script, "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_serve_bench_quick(tmp_path):
    """bench/serve.py --quick: every request to the live server answered (200), every answer
    equal to the plain transformers loop's, for classify and chat at each concurrency level."""
    out = tmp_path / "serve.json"
    proc = _run_quick("bench/serve.py", "--threads", "1", "--output", str(out))
    assert "POST /v1/classify" in proc.stdout and "POST /v1/chat/completions" in proc.stdout
    data = json.loads(out.read_text())
    plan = data["meta"]["plan"]
    assert data["meta"]["quick"] is True and data["meta"]["torch_threads"] == 1
    figures = {"arm", "clients", "wall_s", "requests_per_s", "p50_ms", "p95_ms"}

    cls = data["classify"]
    assert cls["requests"] == plan["classify_requests"]
    sequential, batched = cls["plain"]
    assert figures <= set(sequential) and sequential["clients"] == 1
    assert batched["mismatches"] == []  # padded batches give the same labels
    assert [level["clients"] for level in cls["server"]] == plan["concurrency"]
    for level in cls["server"]:
        assert figures | {"forward_passes", "mean_batch", "max_abs_prob_diff"} <= set(level)
        assert level["forward_passes"] >= 1
        assert (level["succeeded"], level["failed"], level["failures"]) == (cls["requests"], 0, [])
        assert level["mismatches"] == []
        assert level["max_abs_prob_diff"] < 1e-4
        # the micro-batcher ran every text through a forward pass, no more and no fewer
        assert level["texts_forwarded"] == cls["requests"]

    chat = data["chat"]
    assert (chat["requests"], chat["max_tokens"]) == (plan["chat_requests"], plan["max_tokens"])
    (plain,) = chat["plain"]
    assert figures | {"generated_tokens", "tokens_per_s"} <= set(plain)
    assert [level["clients"] for level in chat["server"]] == plan["concurrency"]
    for level in chat["server"]:
        assert (level["succeeded"], level["failed"], level["failures"]) == (chat["requests"], 0, [])
        assert level["mismatches"] == []  # greedy: the same text as model.generate
        assert level["generated_tokens"] == plain["generated_tokens"]


def _training_bench(tmp_path, script: str, *args: str) -> dict:
    out = tmp_path / "result.json"
    proc = _run_quick(script, "--output", str(out), *args)
    assert "real tokens / s" in proc.stdout and "MFU" in proc.stdout
    data = json.loads(out.read_text())
    assert data["quick"] is True
    assert data["matmul_peak"]["flops_per_s"] > 0 and data["matmul_peak"]["threads"] == 1
    import math

    figures = [
        "wall_s", "train_s", "eval_s", "real_tokens_per_s", "padded_tokens_per_s",
        "model_flops", "mfu", "peak_rss_mb", "peak_rss_train_mb",
    ]  # fmt: skip
    for arm in ("tuneforge", "baseline"):
        r = data[arm]
        for key in figures:
            assert math.isfinite(r[key]) and r[key] > 0, (arm, key, r[key])
        assert r["threads"] == 1
        assert 0 < r["real_tokens"] <= r["padded_tokens"]
        assert r["evaluations"] >= 1
    for key in ("real_tokens_per_s", "mfu", "peak_rss_mb"):
        assert math.isfinite(data["ratios"][key]), key
    t, b = data["tuneforge"], data["baseline"]
    # Same data, same examples, same loss: the arms differ only in how they get there.
    assert (t["steps"], t["examples"], t["real_tokens"]) == (
        b["steps"],
        b["examples"],
        b["real_tokens"],
    )
    assert t["loss_positions"] == b["loss_positions"]
    assert t["model"] == b["model"]  # same LoRA layers: same trained/frozen parameter counts
    return data


def test_classification_bench_quick(tmp_path):
    """bench/classification.py --quick: both arms train the tiny model on the same examples and
    report throughput, MFU, memory, accuracy and macro-F1; with --rerun, tuneforge's job runs a
    second time and reads the base model's scores the first one kept."""
    data = _training_bench(tmp_path, "bench/classification.py", "--rerun")
    first, rerun = data["per_seed"]["tuneforge"][0], data["per_seed"]["tuneforge-rerun"][0]
    assert (first["base_scores_reused"], rerun["base_scores_reused"]) == (False, True)
    assert rerun["quality"] == first["quality"]  # the same job, the same seed: the same figures
    assert data["ratios"]["job_speedup_by_arm"]["tuneforge-rerun"] > 0
    for arm in ("tuneforge", "baseline"):
        q = data[arm]["quality"]
        assert 0 <= q["accuracy"] <= 1 and 0 <= q["macro_f1"] <= 1
        # the held-out test split, which neither arm chose its checkpoint on
        assert 0 <= q["test_accuracy"] <= 1 and 0 <= q["test_macro_f1"] <= 1
        assert math.isfinite(q["test_loss"]) and q["test_loss"] > 0
        assert data[arm]["vocab_rows"] == 0  # the classifier never projects onto the vocabulary
        assert data[arm]["model"]["vocab_params"] == 0


def test_sft_bench_quick(tmp_path):
    """bench/sft.py --quick: same answer tokens in both arms; tuneforge projects only the
    positions the loss needs onto the vocabulary, the baseline every position."""
    data = _training_bench(tmp_path, "bench/sft.py")
    t, b = data["tuneforge"], data["baseline"]
    assert b["vocab_rows"] == b["padded_tokens"]
    assert t["loss_positions"] <= t["vocab_rows"] < b["vocab_rows"]
    assert t["quality"]["tokens"] == b["quality"]["tokens"]  # validation loss over the same tokens
    assert abs(t["quality"]["loss"] - b["quality"]["loss"]) < 0.05  # same start, same few steps


def test_preference_bench_quick(tmp_path):
    """bench/preference.py --quick: tuneforge's DPO and a plain TRL DPOTrainer script train the
    tiny model on the same pairs in the same steps and report throughput, MFU, memory and the
    validation preference accuracy of both, scored the same way."""
    out = tmp_path / "result.json"
    proc = _run_quick("bench/preference.py", "--output", str(out))
    assert "real tokens / s" in proc.stdout and "validation preference_accuracy" in proc.stdout
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["matmul_peak"]["threads"] == 1
    figures = [
        "wall_s", "train_s", "eval_s", "real_tokens_per_s", "padded_tokens_per_s",
        "model_flops", "reference_flops", "mfu", "peak_rss_mb", "peak_rss_train_mb",
    ]  # fmt: skip
    for arm in ("tuneforge", "baseline"):
        r = data[arm]
        for key in figures:
            assert math.isfinite(r[key]) and r[key] > 0, (arm, key, r[key])
        assert r["threads"] == 1 and r["evaluations"] >= 1
        assert 0 < r["loss_positions"] < r["real_tokens"] <= r["padded_tokens"]
        assert r["vocab_rows"] >= r["loss_positions"]
        q = r["quality"]
        assert 0 <= q["preference_accuracy"] <= 1 and q["pairs"] == 8
        assert math.isfinite(q["logp_margin"])
    for key in ("real_tokens_per_s", "mfu", "peak_rss_mb", "peak_pss_all_mb"):
        assert math.isfinite(data["ratios"][key]), key
    t, b = data["tuneforge"], data["baseline"]
    # Same pairs in the same steps, the same LoRA layers running (TRL's frozen "ref" copy of an
    # adapter it is handed is left out of the count).
    assert (t["steps"], t["examples"]) == (b["steps"], b["examples"]) == (4, 32)
    assert t["model"]["frozen_linear"] == b["model"]["frozen_linear"]
    assert t["model"]["trained_linear"] == b["model"]["trained_linear"]
    # The same prompts and answers; TRL's answers also keep the newline the chat template puts
    # after the end-of-turn token (one token per sequence not cut at max_length), and only that.
    extra = b["real_tokens"] - t["real_tokens"]
    assert extra == b["loss_positions"] - t["loss_positions"]
    assert 0 <= extra <= 2 * b["examples"]
    assert "tuneforge_preference_accuracy" in t["quality"]


def test_gpu_bench_quick_trains_the_baselines_loss_curve(tmp_path):
    """bench/gpu.py --quick: a tiny random Llama on the CPU with padding-free sft batches asked
    for; both arms train the same examples, and the loss curves agree to float tolerance."""
    _run_quick("bench/gpu.py", "--jobs", "sft", "--out", str(tmp_path))
    data = json.loads((tmp_path / "gpu.json").read_text())
    rows = {r["arm"]: r for r in data["summary"]}
    assert set(rows) == {"baseline", "tuneforge"}
    assert all(r["status"] == "PASS" for r in rows.values())
    tuned = rows["tuneforge"]
    assert tuned["same_examples"] is True  # the same examples, tokens and loss positions
    assert tuned["equal_loss_curve"] is True
    assert tuned["loss_curve"]["steps_compared"] == 3
    assert tuned["loss_curve"]["max_rel_diff_per_step"] < 1e-4  # fp32 on a CPU
    for arm in data["arms"].values():
        assert math.isfinite(arm["real_tokens_per_s"]) and arm["real_tokens_per_s"] > 0
        assert len(arm["loss_curve"]) == 3
    assert "| tiny | sft | tuneforge | PASS |" in (tmp_path / "gpu.md").read_text()
    assert (tmp_path / "logs" / "tiny-sft-tuneforge.log").is_file()
