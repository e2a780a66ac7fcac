"""Benchmark: tuneforge's classification recipe against a plain transformers Trainer + PEFT script.

    .venv/bin/python bench/classification.py            # recipes/sentiment.yaml on smollm2-135m
    .venv/bin/python bench/classification.py --quick    # tiny random model, a few steps (CI smoke)
    .venv/bin/python bench/classification.py --epochs 1 --max-steps 5
    .venv/bin/python bench/classification.py --train-rows 1600 --epochs 1 --max-length 128
                                                        # issue 20's whole job: 1,600 rows, 1 epoch
    .venv/bin/python bench/classification.py --rerun    # + the job again, base scores reused

Both arms get the same weights (the safetensors folder tuneforge resolves for the recipe's
base_model), the same files, LoRA settings, epochs, batch size, learning rate, warm-up, weight
decay and seed. Each runs in a fresh process (`--arm tuneforge|baseline`, started by this driver)
so its peak RSS is its own; the fp32 matmul peak for MFU is measured here before and after them.
Writes bench/results/classification.json (or --output) and prints a table.
"""

from __future__ import annotations

import csv
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
    merge_rank_meters,
    meter_child_processes,
    parse_args,
    train_command,
    write_json,
)

RECIPE = ROOT / "recipes" / "sentiment.yaml"
METRICS = ("accuracy", "macro_f1", "loss")
# validation (the checkpoint is chosen on it: each arm's best epoch) and test (held out from both)
QUALITY = [*METRICS, *(f"test_{k}" for k in METRICS)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, ROOT / "bench" / "results" / "classification.json", argv)
    if args.arm:
        write_json(args.arm_output, run_arm(args))
    else:
        drive(args, Path(__file__), "classification", RECIPE, QUALITY, prepare_quick)


def overrides(args, workdir: Path) -> list[str]:
    out = common_overrides(args, workdir)
    if args.quick:
        out[:0] = [
            f"base_model={workdir / 'tiny-llama'}",
            f"data.train={workdir / 'train.csv'}",
            f"data.validation={workdir / 'validation.csv'}",
            f"data.test={workdir / 'test.csv'}",
            "training.epochs=1",
        ]
    if args.train_rows is not None:
        out.append(f"data.train={repeated_train_rows(workdir, args.train_rows)}")
    return out


def repeated_train_rows(workdir: Path, n: int) -> Path:
    """A training file of `n` rows: the recipe's reviews repeated (in whole copies, then the first
    rows of one more) and shuffled with a fixed seed, the same file for every arm."""
    import random

    path = workdir / f"train-{n}.csv"
    if path.is_file():
        return path
    with (ROOT / "examples" / "data" / "movie_reviews" / "train.csv").open(
        newline="", encoding="utf-8"
    ) as f:
        rows = list(csv.DictReader(f))
    out = (rows * (n // len(rows) + 1))[:n]
    random.Random(0).shuffle(out)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in out)
    tmp.replace(path)
    return path


def prepare_quick(workdir: Path) -> None:
    """A tiny random Llama and the first rows of the recipe's files, both labels alternating."""
    from tuneforge.testing import build_tiny_llama

    build_tiny_llama(workdir / "tiny-llama")
    data = ROOT / "examples" / "data" / "movie_reviews"
    for split, n in (("train", 32), ("validation", 16), ("test", 16)):
        with (data / f"{split}.csv").open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        by_label: dict[str, list] = {}
        for row in rows:
            by_label.setdefault(row["label"], []).append(row)
        mixed = [r for pair in zip(*by_label.values(), strict=False) for r in pair][:n]
        with (workdir / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows({"text": r["text"], "label": r["label"]} for r in mixed)


def run_arm(args) -> dict:
    """One arm, in this (fresh) process: train, then the validation metrics and the meter."""
    from tuneforge.config import load_recipe
    from tuneforge.models import resolve_base_model

    t0 = time.perf_counter()
    meter = Meter()
    instrument_trainer(meter)
    recipe = load_recipe(RECIPE, overrides(args, args.workdir))
    extra: dict = {}
    if args.arm.startswith("tuneforge"):  # tuneforge (precision auto) or tuneforge-fp32
        import tuneforge
        from tuneforge.training import launch

        meters = args.workdir / f"meters-{args.arm}-{args.seed}"
        meter_child_processes(meters)  # counted where the training runs
        folder, extra["job_wall_s"] = train_command(
            RECIPE,
            overrides(args, args.workdir),
            args.workdir / "runs",
            in_process=launch.processes(recipe) == 1,
        )
        run = tuneforge.load_run(folder)
        meter = merge_rank_meters(meter, meters)
        tuned = run.metrics["tuned"]
        quality = {k: tuned["validation"][k] for k in METRICS}
        quality |= {f"test_{k}": tuned["test"][k] for k in METRICS}
        extra["tuneforge_timings"] = run.meta["timings"]
        extra["base_scores_reused"] = "base_scores_reused" in run.meta
        extra["precision"] = run.meta.get("precision", "fp32")
    else:
        extra["precision"] = "fp32"
        from _baseline_classification import train_baseline

        tc, lora, data = recipe.training, recipe.lora, recipe.data
        quality = train_baseline(
            resolve_base_model(recipe.base_model).path,
            data_path(data.train, RECIPE),
            data_path(data.validation, RECIPE),
            args.workdir / "baseline-out",
            test_file=data_path(data.test, RECIPE),
            text_field=data.text_field,
            label_field=data.label_field,
            epochs=tc.epochs,
            max_steps=tc.max_steps or -1,
            batch_size=tc.batch_size,
            learning_rate=tc.learning_rate,
            warmup_ratio=tc.warmup_ratio,
            weight_decay=tc.weight_decay,
            max_length=tc.max_length,
            seed=tc.seed,
            lora_r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
        )
    return arm_report(meter, quality, time.perf_counter() - t0, extra)


if __name__ == "__main__":
    main()
