"""Benchmark: tuneforge's instruction-tuning recipe against a plain Trainer + PEFT script.

    .venv/bin/python bench/sft.py            # recipes/alert_triage.yaml on smollm2-135m
    .venv/bin/python bench/sft.py --quick    # tiny random model, a few steps (CI smoke)
    .venv/bin/python bench/sft.py --max-steps 10

The baseline tokenises the rendered chats, masks everything but the assistant turns with -100,
pads with DataCollatorForSeq2Seq and lets the model compute full-vocabulary logits at every
position. Same weights, files, LoRA settings, steps, batch size, learning rate, warm-up and seed;
each arm in a fresh process. Quality is the token-weighted validation loss over the same answer
tokens (tuneforge's generation metrics are kept in its arm's figures; the baseline has none).
Writes bench/results/sft.json (or --output) and prints a table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import (  # noqa: E402
    ROOT,
    Meter,
    arm_report,
    common_overrides,
    data_path,
    drive,
    instrument_trainer,
    parse_args,
    write_json,
)

RECIPE = ROOT / "recipes" / "alert_triage.yaml"
QUALITY = ["loss"]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, ROOT / "bench" / "results" / "sft.json", argv)
    if args.arm:
        write_json(args.arm_output, run_arm(args))
    else:
        drive(args, Path(__file__), "sft", RECIPE, QUALITY, prepare_quick)


def overrides(args, workdir: Path) -> list[str]:
    out = common_overrides(args, workdir)
    if args.quick:
        out[:0] = [
            f"base_model={workdir / 'tiny-llama'}",
            f"data.train={workdir / 'train.jsonl'}",
            f"data.validation={workdir / 'validation.jsonl'}",
            f"data.test={workdir / 'test.jsonl'}",
            "training.eval_steps=2",
            "sft.generation_examples=2",
            "sft.max_new_tokens=4",
        ]
    return out


def prepare_quick(workdir: Path) -> None:
    """A tiny random Llama and the first lines of the recipe's files."""
    from tuneforge.testing import build_tiny_llama

    build_tiny_llama(workdir / "tiny-llama")
    data = ROOT / "examples" / "data" / "alert_triage"
    for split, n in (("train", 32), ("validation", 8), ("test", 8)):
        lines = (data / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        (workdir / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_arm(args) -> dict:
    """One arm, in this (fresh) process: train, then the validation loss and the meter."""
    from tuneforge.config import load_recipe
    from tuneforge.models import resolve_base_model

    t0 = time.perf_counter()
    meter = Meter()
    instrument_trainer(meter)
    recipe = load_recipe(RECIPE, overrides(args, args.workdir))
    extra: dict = {}
    if args.arm.startswith("tuneforge"):  # tuneforge (precision auto) or tuneforge-fp32
        import tuneforge

        run = tuneforge.train(RECIPE, overrides(args, args.workdir))
        tuned = run.metrics["tuned"]["validation"]
        quality = {k: v for k, v in tuned.items() if isinstance(v, (int, float))}
        extra["tuneforge_timings"] = run.meta["timings"]
        extra["precision"] = run.meta.get("precision", "fp32")
    else:
        extra["precision"] = "fp32"
        from _baseline_sft import train_baseline

        tc, lora, data = recipe.training, recipe.lora, recipe.data
        quality = train_baseline(
            resolve_base_model(recipe.base_model).path,
            data_path(data.train, RECIPE),
            data_path(data.validation, RECIPE),
            args.workdir / "baseline-out",
            messages_field=data.messages_field,
            epochs=tc.epochs,
            max_steps=tc.max_steps or -1,
            batch_size=tc.batch_size,
            learning_rate=tc.learning_rate,
            warmup_ratio=tc.warmup_ratio,
            weight_decay=tc.weight_decay,
            max_length=tc.max_length,
            eval_steps=tc.eval_steps,
            seed=tc.seed,
            lora_r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
        )
    return arm_report(meter, quality, time.perf_counter() - t0, extra)


if __name__ == "__main__":
    main()
