"""`tuneforge train` under `torchrun --nproc_per_node 2` (gloo, CPU) equals one process with the
same global batch: per-device batch 4 on 2 ranks vs batch 8 on 1 rank, same seed. So do
`accelerate launch` with examples/accelerate/cpu_2proc.yaml, and `training.processes: 2`
(tuneforge starts the two processes itself; batch 8 = 4 per process).

Why the order of examples is the same: accelerate shards the Trainer's batches by handing batch k
of the (seeded, identical) sampler to rank k mod 2, so step s of the 2-rank run sees batches 2s and
2s+1 of size 4, which are exactly the 8 examples of step s of the single run. That holds for
`training.group_by_length: false` (seeded random order): length grouping forms its mega-batches
from the per-device batch size, so its order differs between the two set-ups, hence the override.
24 training examples divide evenly, so no rank pads its last batch with repeats: DDP averages the
ranks' gradients, and each rank's loss is a mean over the same number of examples, so the update
is the single run's update up to floating-point summation order. 11 validation examples do not
(2 ranks x 4): accelerate completes the last batch with repeated rows, which the evaluation's
figures must not count (the Trainer's own eval loss did, as a batch mean).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_recipe
from safetensors.torch import load_file

TORCHRUN = Path(sys.executable).with_name("torchrun")
ACCELERATE = Path(sys.executable).with_name("accelerate")
CPU_2PROC = Path(__file__).resolve().parents[2] / "examples" / "accelerate" / "cpu_2proc.yaml"
LAUNCHED = ["ddp", "accelerate", "processes"]
COMMON = [
    "--set",
    "training.group_by_length=false",
    "--set",
    "training.eval_batch_size=4",
    "--set",
    "training.epochs=2",
]


def _env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TUNEFORGE_QUIET": "1",
        "TUNEFORGE_REGISTRY": str(tmp / "registry.sqlite"),
        "COLUMNS": "200",
    }


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _only_run(output_dir: Path) -> Path:
    runs = list(output_dir.iterdir())
    assert len(runs) == 1 and not runs[0].name.startswith("."), runs
    return runs[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    from conftest import sentiment_rows, write_csv

    tmp = tmp_path_factory.mktemp("ddp")
    train = write_csv(tmp / "train.csv", sentiment_rows(24))
    validation = write_csv(tmp / "validation.csv", sentiment_rows(11, offset=100))
    out = {}
    cli = [sys.executable, "-m", "tuneforge.cli"]
    for name, launcher, batch, extra in (
        ("single", cli, 8, []),
        ("ddp", [str(TORCHRUN), "--nproc_per_node", "2", "-m", "tuneforge.cli"], 4, []),
        (
            "accelerate",
            [str(ACCELERATE), "launch", "--config_file", str(CPU_2PROC), "-m", "tuneforge.cli"],
            4,
            [],
        ),
        ("processes", cli, 8, ["--set", "training.processes=2"]),
    ):
        work = tmp / name
        work.mkdir()
        recipe = write_recipe(
            work / "recipe.yaml",
            f"""
name: ddp-check
base_model: {tiny_model}
task: classification
data: {{train: {train}, validation: {validation}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{batch_size: {batch}, learning_rate: 1.0e-2, logging_steps: 1, seed: 0}}
output_dir: {work / "runs"}
""",
        )
        proc = _run([*launcher, "train", str(recipe), *COMMON, *extra], cwd=work)
        out[name] = {"proc": proc, "run": _only_run(work / "runs"), "work": work}
    return out


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("how", LAUNCHED)
def test_same_losses_and_metrics(runs, how):
    single, ddp = _metrics(runs["single"]["run"]), _metrics(runs[how]["run"])
    losses = [[h["loss"] for h in m["log_history"] if "loss" in h] for m in (single, ddp)]
    assert len(losses[0]) == 6  # 24 examples / global batch 8 = 3 steps per epoch, 2 epochs
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    evals = [[e["loss"] for e in m["evaluations"]] for m in (single, ddp)]
    assert len(evals[0]) == 2 and evals[1] == pytest.approx(evals[0], abs=1e-5)
    assert ddp["best"]["global_steps"] == single["best"]["global_steps"] == 6
    for name in ("accuracy", "macro_f1", "loss"):
        assert ddp["tuned"]["validation"][name] == pytest.approx(
            single["tuned"]["validation"][name], abs=1e-5
        )
    base, single_base = ddp["base"]["validation"], single["base"]["validation"]
    assert base["confusion_matrix"] == single_base["confusion_matrix"]  # scored on rank 0 only
    # (in one thread there, in two in the single run: the same up to summation order)
    assert base["loss"] == pytest.approx(single_base["loss"], abs=1e-6)
    # the final scoring scores the best checkpoint again: the same loss as its evaluation
    (best,) = [e for e in ddp["evaluations"] if e["step"] == ddp["best"]["step"]]
    assert best["loss"] == pytest.approx(ddp["tuned"]["validation"]["loss"], abs=1e-5)


@pytest.mark.parametrize("how", LAUNCHED)
def test_same_weights(runs, how):
    a = load_file(runs["single"]["run"] / "adapter" / "adapter_model.safetensors")
    b = load_file(runs[how]["run"] / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)
    # and training did move them: LoRA B starts at zero
    assert any(float(t.abs().max()) > 1e-3 for k, t in a.items() if "lora_B" in k)


@pytest.mark.parametrize("how", LAUNCHED)
def test_only_rank_zero_writes(runs, how):
    work = runs[how]["work"]
    # one run directory (both ranks agreed on its name), nothing else beside the recipe
    assert sorted(p.name for p in work.iterdir()) == ["recipe.yaml", "registry.sqlite", "runs"]
    with sqlite3.connect(work / "registry.sqlite") as db:
        rows = db.execute("select id, status from runs").fetchall()
    assert rows == [(runs[how]["run"].name, "finished")]
    run = runs[how]["run"]
    assert not (run / "checkpoints").exists()  # removed by rank 0 after training
    info = json.loads((run / "run.json").read_text())
    assert info["parameters"]["trainable"] == 4160
    # rank 0 printed the summary once; rank 1 printed nothing of its own
    stdout = runs[how]["proc"].stdout
    assert stdout.count("ddp-check-") == runs["single"]["proc"].stdout.count("ddp-check-") >= 1


def test_processes_report_what_they_split(runs):
    assert "Training in 2 processes of 1 thread(s) each" in runs["processes"]["proc"].stderr


def test_error_in_a_training_process_reaches_the_user(tmp_path, tiny_model):
    """A data error raised inside the launched processes: one clear message, exit 2, no run."""
    from conftest import write_csv

    train = write_csv(tmp_path / "train.csv", [{"review": "fine", "label": "positive"}] * 8)
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        f"""
name: broken
base_model: {tiny_model}
task: classification
data: {{train: {train}, validation_split: 0.25}}
training: {{batch_size: 4, processes: 2}}
output_dir: {tmp_path / "runs"}
""",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "train", str(recipe)],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "text" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_batch_that_does_not_split_is_refused(tmp_path, tiny_model):
    from tuneforge.config import load_recipe
    from tuneforge.errors import TuneforgeError

    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        f"""
name: odd
base_model: {tiny_model}
task: classification
data: {{train: x.csv}}
training: {{batch_size: 7, processes: 2}}
""",
    )
    with pytest.raises(TuneforgeError, match="batch_size 7 does not split across 2 processes"):
        load_recipe(recipe)


def test_sft_evaluation_loss_counts_every_token_once(tmp_path, tiny_model):
    """sft in 2 processes, 5 validation chats in batches of 2 per process: accelerate completes
    the last batch with a repeated chat. The evaluations' loss is the token-weighted mean of the
    final scoring (the Trainer's own was a mean of batch means, the repeat included)."""
    from conftest import write_jsonl

    def chat(i: int) -> dict:
        answer = " ".join(["the lazy dog"] * (1 + i % 3))
        return {
            "messages": [
                {"role": "user", "content": f"alert {i}: the quick brown fox"},
                {"role": "assistant", "content": f"Category: benign\nReason: {answer}"},
            ]
        }

    train = write_jsonl(tmp_path / "train.jsonl", [chat(i) for i in range(8)])
    validation = write_jsonl(tmp_path / "validation.jsonl", [chat(i) for i in range(100, 105)])
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        f"""
name: ddp-sft
base_model: {tiny_model}
task: sft
data: {{train: {train}, validation: {validation}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{batch_size: 4, eval_batch_size: 2, epochs: 1, learning_rate: 1.0e-2, processes: 2}}
sft: {{generation_examples: 0}}
output_dir: {tmp_path / "runs"}
""",
    )
    _run([sys.executable, "-m", "tuneforge.cli", "train", str(recipe)], cwd=tmp_path)
    run = _only_run(tmp_path / "runs")
    metrics = _metrics(run)
    (best,) = [e for e in metrics["evaluations"] if e["step"] == metrics["best"]["step"]]
    assert best["loss"] == pytest.approx(metrics["tuned"]["validation"]["loss"], rel=1e-5)
