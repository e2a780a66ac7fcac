"""`tuneforge plan` through the CLI on the tiny model: what a user sees, --json, --auto-batch-size,
and the does-not-fit verdict with its suggestions (a failed check: exit 1)."""

from __future__ import annotations

import json

import pytest
from conftest import assert_check_failed, assert_user_error, run_cli, sentiment_rows, write_jsonl

from tuneforge.training import launch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def test_plan_text(sentiment_recipe, tiny_tokenizer):
    proc = run_cli("plan", sentiment_recipe)
    assert proc.returncode == 0, proc.stderr[-2000:]
    flat = " ".join(proc.stdout.split())
    # counts written out by hand in tests/unit/test_planning.py
    assert "35,616 total, 4,160 trainable (11.68%)" in flat
    tokens = sum(
        len(tiny_tokenizer(r["text"], split_special_tokens=True)["input_ids"])
        for r in sentiment_rows(24)
    )
    assert f"24 examples, {tokens:,} tokens" in flat
    assert "8 per process x 1 accumulation x 1 process(es) = global batch 8" in flat
    for part in ("weights", "gradients", "optimiser", "activations", "runtime", "total"):
        assert f" {part} " in flat
    assert "available RAM): fits" in flat
    assert "3 batches, 3 optimiser steps" in flat  # 24 examples / batch 8
    # the tiny validation set cannot show a 0.05 difference, and plan says what size would
    assert "validation set: " in flat and "1,570 would show 0.05" in flat
    assert not list((sentiment_recipe.parent / "runs").glob("*"))  # plan trains nothing


def test_plan_json_and_grad_accum(sentiment_recipe):
    proc = run_cli(
        "plan",
        sentiment_recipe,
        "--json",
        "--set",
        "training.batch_size=4",
        "--set",
        "training.grad_accum=3",
        "--steps",
        "2",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout)
    assert plan["parameters"] == {"total": 35616, "trainable": 4160}
    assert plan["batch"]["gradient_accumulation_steps"] == 3
    assert plan["batch"]["global_batch"] == 12
    m = plan["memory"]
    assert m["gradients"] == 4 * 4160 and m["optimizer"] == 8 * 4160 and m["weights"] == 4 * 35616
    assert m["total"] == sum(
        m[k] for k in ("weights", "gradients", "optimizer", "activations", "runtime")
    )
    t = plan["timing"]
    assert t["steps_timed"] == 2 and t["micro_batches_per_epoch"] == 6
    assert t["optimizer_steps_per_epoch"] == 2
    # the epoch's own batches (length-sorted), at the rate measured on batches spread over them
    assert t["padded_tokens_per_epoch"] > 0
    assert t["seconds_per_epoch"] == pytest.approx(
        t["padded_tokens_per_epoch"] / t["tokens_per_second"], abs=0.1
    )
    assert plan["fits"] is True and m["total"] <= plan["budget"]


def test_auto_batch_size(sentiment_recipe):
    proc = run_cli("plan", sentiment_recipe, "--auto-batch-size", "--memory-budget", "8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the tiny model fits any batch: the search stops at the training set's 24 examples
    assert "Use: --set training.batch_size=24" in proc.stdout
    assert "by the estimate, not measured" in " ".join(proc.stdout.split())


def test_does_not_fit(sentiment_recipe):
    proc = run_cli(
        "plan",
        sentiment_recipe,
        "--set",
        "method=full",
        "--memory-budget",
        "0.05",
    )
    assert_check_failed(
        proc,
        "does not fit in 51.2 MB (--memory-budget 0.05 GB)",
        "changes that reduce it",
        "--set method=lora",
        "--set training.batch_size=",
        "--set training.gradient_accumulation_steps=",
        "--set training.gradient_checkpointing=true",
        "--set training.max_length=",
    )


def test_auto_batch_size_cannot_fit(sentiment_recipe):
    proc = run_cli("plan", sentiment_recipe, "--auto-batch-size", "--memory-budget", "0.05")
    assert_check_failed(proc, "does not fit", "--set training.gradient_checkpointing=true")


def test_cuda_only_options_refused(sentiment_recipe):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU refusal")
    from tuneforge import cpu_bf16

    proc = run_cli("plan", sentiment_recipe, "--set", "training.precision=fp16")
    assert_user_error(proc, "training.precision: fp16 needs a CUDA GPU")
    if not cpu_bf16.detect().native:  # with native bf16: tests/e2e/test_cpu_bf16_runs.py
        proc = run_cli("plan", sentiment_recipe, "--set", "training.precision=bf16")
        assert_user_error(proc, "training.precision: bf16 on a CPU needs native", "36x slower")
    proc = run_cli("train", sentiment_recipe, "--set", "method=qlora")
    assert_user_error(proc, "lora.quantize_base: 4bit (QLoRA) needs a CUDA GPU")
    assert not list((sentiment_recipe.parent / "runs").glob("*"))


def test_processes_split_the_batch_and_add_up_memory(sentiment_recipe):
    """training.processes=2 on batch 4: each process takes 2 examples, both hold a model, so
    every part of the estimate is twice that of one process training batches of 2."""

    def plan(*sets: str) -> dict:
        args = [a for s in sets for a in ("--set", s)]
        proc = run_cli("plan", sentiment_recipe, "--json", "--steps", "1", *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    two = plan("training.processes=2", "training.batch_size=4")
    one = plan("training.processes=1", "training.batch_size=2")
    batch = {k: two["batch"][k] for k in ("batch_size", "per_process_batch", "processes")}
    assert batch == {"batch_size": 4, "per_process_batch": 2, "processes": 2}
    assert two["batch"]["global_batch"] == 4
    for part in ("weights", "gradients", "optimizer", "activations"):
        assert two["memory"][part] == 2 * one["memory"][part], part
    assert two["timing"]["threads"] == max(1, launch.cores() // 2)  # one process's share
    # each process computes every other batch of the epoch: 24 examples / 2 per batch / 2
    assert two["timing"]["micro_batches_per_epoch"] == 6
    assert one["timing"]["micro_batches_per_epoch"] == 12


def test_plan_times_sft_steps_with_the_shared_prefix(tmp_path, tiny_model, monkeypatch):
    """Chats with one system prompt: the timed steps run the way training does, with the prefix
    every row shares computed once (the model would silently ignore a `shared_prefix` passed on)."""
    from tuneforge import answer_forward, planning

    rows = [
        {
            "messages": [
                {"role": "system", "content": "Security alert triage."},
                {"role": "user", "content": f"alert {i}: " + "the quick brown fox " * (1 + i % 3)},
                {"role": "assistant", "content": "Category: phishing"},
            ]
        }
        for i in range(16)
    ]
    for name, part in (("train", rows[:12]), ("validation", rows[12:])):
        write_jsonl(tmp_path / f"{name}.jsonl", part)
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(
        f"""
name: tiny-sft
base_model: {tiny_model}
task: sft
data: {{train: {tmp_path / "train.jsonl"}, validation: {tmp_path / "validation.jsonl"}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{batch_size: 4}}
output_dir: {tmp_path / "runs"}
"""
    )
    shared: list[int] = []
    real = answer_forward.continue_after_prefix

    def spy(model, inputs):
        shared.append(int(inputs.get(answer_forward.KEY, 0)))
        return real(model, inputs)

    monkeypatch.setattr(answer_forward, "continue_after_prefix", spy)
    result = planning.plan(recipe, steps=2).to_dict()
    assert result["timing"]["steps_timed"] == 2 and result["timing"]["tokens_per_second"] > 0
    assert len(shared) == 3 and min(shared) > 0  # warm-up + 2 timed steps, each shared
