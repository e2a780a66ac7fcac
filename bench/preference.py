"""Benchmark: tuneforge's preference task (DPO) against a plain TRL DPOTrainer script.

    .venv/bin/python bench/preference.py            # DPO on the support assistant's pairs, smollm2-135m
    .venv/bin/python bench/preference.py --quick    # tiny random model, a few steps (CI smoke)
    .venv/bin/python bench/preference.py --max-steps 5

The recipe is RECIPE_YAML below (the worked example's pairwise data,
examples/data/support_assistant/prefs_*.jsonl). The baseline (`_baseline_preference.py`) is
TRL's documented path: AutoModelForCausalLM, DPOConfig, DPOTrainer with `peft_config` on a
Dataset of conversational prompt/chosen/rejected rows. Same weights, files, LoRA settings,
epochs or steps, batch size, max_length, learning rate, warm-up, weight decay, beta, seed,
precision and activation checkpointing; each arm in a fresh process. Quality: the validation
preference accuracy of both final models, scored by one function (mean log-probability per answer
token, chosen above rejected); tuneforge's own metrics are kept beside it.
Writes bench/results/preference.json (or --output; --quick: a file in the temporary folder) and
prints a table.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _measure  # noqa: E402
from _measure import (  # noqa: E402
    ROOT,
    Meter,
    arm_report,
    common_overrides,
    drive,
    instrument_trainer,
    parse_args,
    write_json,
)

DATA = ROOT / "examples" / "data" / "support_assistant"
# The benchmark's recipe (no shipped recipe trains DPO on these pairs yet). Paths are filled in.
RECIPE_YAML = """\
name: support-assistant-dpo-bench
base_model: smollm2-135m
task: preference
data:
  train: {train}
  validation: {validation}
  test: {test}
method: lora
lora: {{r: 16, alpha: 32, dropout: 0.05, target_modules: all-linear}}
training: {{epochs: 1, learning_rate: 1.0e-4, batch_size: 8, max_length: 256, warmup_ratio: 0.1,
  eval_steps: 10, seed: 0}}
preference: {{algorithm: dpo, beta: 0.1}}
"""
QUALITY = ["preference_accuracy", "logp_margin"]


def main(argv: list[str] | None = None) -> None:
    quick = "--quick" in (sys.argv[1:] if argv is None else argv)
    # a smoke run never lands beside the real figures in bench/results/
    default = (
        Path(tempfile.gettempdir()) / "tuneforge-bench" / "preference-quick.json"
        if quick
        else ROOT / "bench" / "results" / "preference.json"
    )
    args = parse_args(__doc__, default, argv)
    if args.arm:
        write_json(args.arm_output, run_arm(args))
    else:
        drive(args, Path(__file__), "preference", Path(__file__), QUALITY, prepare_quick)


def write_recipe(args) -> Path:
    """The recipe, in the benchmark's folder: the full data, or the quick mode's excerpts."""
    splits = ("train", "validation", "test")
    if args.quick:
        train, validation, test = (args.workdir / f"{s}.jsonl" for s in splits)
    else:
        train, validation, test = (DATA / f"prefs_{s}.jsonl" for s in splits)
    path = args.workdir / "preference.yaml"
    path.write_text(
        RECIPE_YAML.format(train=train, validation=validation, test=test), encoding="utf-8"
    )
    return path


def overrides(args, workdir: Path) -> list[str]:
    out = common_overrides(args, workdir)
    if args.quick:
        out[:0] = [
            f"base_model={workdir / 'tiny-llama'}",
            "training.eval_steps=2",
            "preference.generation_examples=2",
            "preference.kl_examples=2",
            "preference.max_new_tokens=4",
        ]
    return out


def prepare_quick(workdir: Path) -> None:
    """A tiny random Llama and the first lines of the worked example's pairs."""
    from tuneforge.testing import build_tiny_llama

    build_tiny_llama(workdir / "tiny-llama")
    for split, n in (("train", 32), ("validation", 8), ("test", 8)):
        lines = (DATA / f"prefs_{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        (workdir / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# Counting DPO batches: TRL's collator puts each pair's chosen and rejected sequences in one batch
# (input_ids, attention_mask, completion_mask) and has no `labels`, which `_measure.count_batch`
# would read as classification (one prediction per row).


def count_preference_batch(meter: Meter, inputs, tokenizer=None) -> None:
    """Rows (2 per pair), real and padded tokens as for the other tasks; examples are pairs; the
    loss positions are the answer tokens whose log-probabilities DPO sums; vocabulary rows are the
    positions TRL's fused output layer projects (all of them on a CPU, the answers on CUDA)."""
    completion = inputs.get("completion_mask")
    if completion is None:
        return count_batch(meter, inputs, tokenizer)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    lengths = mask.sum(dim=1)
    meter.steps += 1
    meter.examples += ids.shape[0] // 2
    meter.real_tokens += int(lengths.sum())
    meter.padded_tokens += ids.numel()
    meter.sum_sq_lengths += int((lengths.long() ** 2).sum())
    answers = int(completion[:, 1:].sum())
    meter.loss_positions += answers
    meter.vocab_rows += answers if _fused_head_compact() else ids.shape[0] * (ids.shape[1] - 1)


def describe_running_model(model) -> dict:
    """`_measure.describe_model` less the LoRA adapters that do not run in the policy's forward.

    Handed a model already wrapped by PEFT (as tuneforge does), TRL adds a frozen copy of its
    adapter named "ref" and runs the reference pass through it; describe_model would count that
    copy's layers as frozen weights of every forward (`idle_adapter_linear` says how many)."""
    from torch import nn

    description = describe_model(model)
    model = getattr(model, "module", model)
    idle = set(getattr(model, "peft_config", {})) - set(getattr(model, "active_adapters", []))
    skipped = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and idle & set(name.split(".")):
            skipped += module.weight.numel() + (
                module.bias.numel() if module.bias is not None else 0
            )
    description["frozen_linear"] -= skipped
    description["idle_adapter_linear"] = skipped
    return description


count_batch, describe_model = _measure.count_batch, _measure.describe_model
# what instrument_trainer's training_step calls (looked up in _measure at each call)
_measure.count_batch, _measure.describe_model = count_preference_batch, describe_running_model


def _fused_head_compact() -> bool:
    """TRL's fused output layer scores only the answer positions where it has Triton kernels."""
    import torch
    from trl.kernels.chunked_logprob import _use_triton

    return torch.cuda.is_available() and _use_triton(torch.device("cuda"))


def reference_flops(meter: Meter) -> float:
    """The reference model's forward pass in each DPO step (no gradient, so 2 FLOPs per frozen
    parameter and token; LoRA's reference is the base weights with the adapter off): the Meter
    counts only the policy's forward and backward."""
    m = meter.model
    if not m:
        return 0.0
    attention = 2 * m["layers"] * m["attention_width"] * meter.sum_sq_lengths
    return (
        2 * m["frozen_linear"] * meter.real_tokens
        + 2 * m["vocab_params"] * meter.loss_positions
        + attention
    )


def run_arm(args) -> dict:
    """One arm, in this (fresh) process: train, then validation preference accuracy and the meter."""
    from _baseline_preference import preference_accuracy

    from tuneforge.config import load_recipe
    from tuneforge.devices import precision, resolve
    from tuneforge.models import resolve_base_model

    t0 = time.perf_counter()
    meter = Meter()
    instrument_trainer(meter)
    recipe_path = write_recipe(args)
    recipe = load_recipe(recipe_path, overrides(args, args.workdir))
    tc, lora, data = recipe.training, recipe.lora, recipe.data
    extra: dict = {}
    if args.arm == "tuneforge":
        from datasets import load_dataset

        import tuneforge

        run = tuneforge.train(recipe_path, overrides(args, args.workdir))
        # the scoring below loads the run's model again: if peak_rss_mb ends above this, it did
        extra["peak_rss_before_scoring_mb"] = _measure.peak_rss_mb()
        validation = load_dataset("json", data_files=str(data.validation), split="train")
        rows = [(r[data.prompt_field], r[data.chosen_field], r[data.rejected_field])
                for r in validation]  # fmt: skip
        batch = tc.eval_batch_size or tc.batch_size
        quality = preference_accuracy(run.model, run.tokenizer, rows, tc.max_length, batch)
        metrics = run.metrics
        for key, value in metrics["tuned"]["validation"].items():
            if isinstance(value, (int, float)):
                quality[f"tuneforge_{key}"] = value
        base = metrics.get("base", {}).get("validation", {})
        quality["tuneforge_base_preference_accuracy"] = base.get("preference_accuracy")
        extra["tuneforge_timings"] = run.meta["timings"]
    else:
        from _baseline_preference import train_baseline

        quality = train_baseline(
            resolve_base_model(recipe.base_model).path,
            data.train,
            data.validation,
            args.workdir / "baseline-out",
            prompt_field=data.prompt_field,
            chosen_field=data.chosen_field,
            rejected_field=data.rejected_field,
            epochs=tc.epochs,
            max_steps=tc.max_steps or -1,
            batch_size=tc.batch_size,
            eval_batch_size=tc.eval_batch_size,
            learning_rate=tc.learning_rate,
            warmup_ratio=tc.warmup_ratio,
            weight_decay=tc.weight_decay,
            lr_scheduler=tc.lr_scheduler,
            max_length=tc.max_length,
            eval_steps=tc.eval_steps,
            seed=tc.seed,
            beta=recipe.preference.beta,
            lora_r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            bf16=precision(tc.precision, resolve(recipe.device)) == "bf16",
            activation_checkpointing=tc.gradient_checkpointing,
        )
    report = arm_report(meter, quality, time.perf_counter() - t0, extra)
    report["reference_flops"] = reference_flops(meter)
    report["model_flops"] += report["reference_flops"]
    report["model_flops_per_s"] = (
        report["model_flops"] / meter.train_s if meter.train_s > 0 else 0.0
    )
    return report


if __name__ == "__main__":
    main()
