"""The sentiment recipe's arms over seeds 0-9, from the committed result files: each arm's mean,
the differences paired by seed (same seeds, so the same head initialisation), and Welch's
interval against the plain Trainer + PEFT script (its seeds are not paired with ours).

    .venv/bin/python bench/seed_study.py            # the table of bench/RESULTS.md

Sources (bench/results/): `classification-seeds-0-9.json` (tuneforge's defaults until
2026-12-07, `length_jitter` 0.05, and the script), `classification-seeds.json` and
`classification-ablations-5-9.txt` (random batches), `classification-ablations-jitter.txt`
(factor up to 2), `classification-ablations-jitter-025.txt` (factor up to 1.25).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import differences  # noqa: E402

RESULTS = Path(__file__).parent / "results"
QUALITY = ("accuracy", "loss", "test_accuracy", "test_loss")
LABELS = {
    "accuracy": "validation accuracy",
    "loss": "validation loss",
    "test_accuracy": "test accuracy",
    "test_loss": "test loss",
}

Arm = dict[int, dict[str, float]]


def from_bench(file: str, arm: str) -> Arm:
    """An arm of a `bench/classification.py` JSON: quality per seed."""
    data = json.loads((RESULTS / file).read_text())
    seeds = data["seeds"]  # a merged study lists them; one run gives a count from first_seed
    if isinstance(seeds, int):
        first = data.get("first_seed") or 0
        seeds = range(first, first + seeds)
    return {
        s: {k: r["quality"][k] for k in QUALITY}
        for s, r in zip(seeds, data["per_seed"][arm], strict=True)
    }


def from_lines(file: str, name: str) -> Arm:
    """Lines `name seed val ACC LOSS test ACC LOSS ...` of an ablation text file."""
    out: Arm = {}
    for line in (RESULTS / file).read_text().splitlines():
        f = line.split()
        if f and f[0] == name:
            out[int(f[1])] = {
                "accuracy": float(f[3]),
                "loss": float(f[4]),
                "test_accuracy": float(f[6]),
                "test_loss": float(f[7]),
            }
    return out


def arms() -> dict[str, Arm]:
    random = from_bench("classification-seeds.json", "tuneforge-random-order")
    random.update(from_lines("classification-ablations-5-9.txt", "random"))
    return {
        "factor up to 1.05 (old default)": from_bench("classification-seeds-0-9.json", "tuneforge"),
        "random batches": random,
        "factor up to 2": from_lines("classification-ablations-jitter.txt", "jitter1"),
        "factor up to 1.25 (default)": from_lines(
            "classification-ablations-jitter-025.txt", "j025"
        ),
        "plain Trainer + PEFT script": from_bench("classification-seeds-0-9.json", "baseline"),
    }


def paired(a: Arm, b: Arm, key: str) -> str:
    """Mean of the per-seed differences a - b and its 95% t-interval (scipy's one-sample test)."""
    seeds = sorted(set(a) & set(b))
    x = [a[s][key] - b[s][key] for s in seeds]
    test = stats.ttest_1samp(x, 0.0)
    mean = float(np.mean(x))
    low, high = (mean, mean) if math.isnan(test.pvalue) else test.confidence_interval(0.95)
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def welch(a: Arm, b: Arm, key: str) -> str:
    """a's mean minus b's with Welch's 95% interval: the benchmark's own `differences`."""
    seeds = {
        name: {"quality_seeds": {key: [v[key] for v in arm.values()]}}
        for name, arm in (("a", a), ("baseline", b))
    }
    d = differences(seeds, [key])["a"][key]
    low, high = d["interval"]
    return f"{d['difference']:+.3f} [{low:+.3f}, {high:+.3f}]"


def main() -> None:
    found = arms()
    script = found["plain Trainer + PEFT script"]
    old = found["factor up to 1.05 (old default)"]
    print("| arm (seeds) | " + " | ".join(LABELS[k] for k in QUALITY) + " |")
    print("|---" * (len(QUALITY) + 1) + "|")
    for name, arm in found.items():
        means = " | ".join(f"{np.mean([v[k] for v in arm.values()]):.3f}" for k in QUALITY)
        print(f"| {name} ({min(arm)}-{max(arm)}) | {means} |")
    print("\nPaired by seed (mean difference, 95% t-interval):")
    print("| difference | " + " | ".join(LABELS[k] for k in QUALITY) + " |")
    print("|---" * (len(QUALITY) + 1) + "|")
    default = found["factor up to 1.25 (default)"]
    for name in ("factor up to 1.05 (old default)", "random batches", "factor up to 2"):
        cells = " | ".join(paired(default, found[name], k) for k in QUALITY)
        print(f"| factor up to 1.25 minus {name} | {cells} |")
    for name in ("random batches", "factor up to 2"):
        cells = " | ".join(paired(found[name], old, k) for k in QUALITY)
        print(f"| {name} minus factor up to 1.05 | {cells} |")
    print("\nAgainst the plain script (Welch, unpaired):")
    print("| difference | " + " | ".join(LABELS[k] for k in QUALITY) + " |")
    print("|---" * (len(QUALITY) + 1) + "|")
    for name, arm in found.items():
        if arm is not script:
            cells = " | ".join(welch(arm, script, k) for k in QUALITY)
            print(f"| {name} minus the script | {cells} |")


if __name__ == "__main__":
    main()
