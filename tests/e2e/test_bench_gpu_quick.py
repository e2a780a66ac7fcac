"""bench/gpu.py --quick (a tiny random Llama on the CPU, padding-free sft batches asked for) runs
its arms end to end and writes its JSON and table, so the GPU benchmark cannot rot where no GPU
is at hand. Only the shape and the correctness figures are checked, never a timing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_quick_trains_the_baselines_loss_curve(tmp_path):
    proc = subprocess.run(
        [sys.executable, "bench/gpu.py", "--quick", "--jobs", "sft", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "gpu.json").read_text())
    rows = {r["arm"]: r for r in data["summary"]}
    assert set(rows) == {"baseline", "tuneforge"} and all(
        r["status"] == "PASS" for r in rows.values()
    )
    tuned = rows["tuneforge"]
    assert tuned["same_examples"] is True  # the same examples, tokens and loss positions
    assert tuned["equal_loss_curve"] is True  # fp32 on a CPU: equal to float tolerance
    assert tuned["loss_curve"]["steps_compared"] == 3
    assert tuned["loss_curve"]["max_rel_diff_per_step"] < 1e-4
    for arm in data["arms"].values():
        assert math.isfinite(arm["real_tokens_per_s"]) and arm["real_tokens_per_s"] > 0
        assert len(arm["loss_curve"]) == 3
    assert "| tiny | sft | tuneforge | PASS |" in (tmp_path / "gpu.md").read_text()
    assert (tmp_path / "logs" / "tiny-sft-tuneforge.log").is_file()
