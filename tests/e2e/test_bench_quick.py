"""The benchmarks' --quick modes (tiny random model, a few requests) run end to end and write
their JSON. Only the shape and the correctness figures are checked, never timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serve_bench_quick(tmp_path):
    """bench/serve.py --quick: every request to the live server answered (200), every answer
    equal to the plain transformers loop's, for classify and chat at each concurrency level."""
    out = tmp_path / "serve.json"
    proc = subprocess.run(
        [sys.executable, "bench/serve.py", "--quick", "--threads", "1", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
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
