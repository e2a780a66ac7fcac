"""What the training benchmarks measure, the same way for tuneforge and for the plain baseline.

Each arm runs in its own fresh process (so peak RSS is that arm's alone). Inside it, the
transformers Trainer is instrumented, not changed: every training micro-batch is counted (real
tokens from the attention mask, padded tokens, examples, positions whose logits the loss needs,
vocabulary rows computed) and `train`, `evaluate` and checkpoint saving are timed, so throughput is
"real tokens / time spent in training steps" for both arms. Model FLOPs are counted from the
model's own linear layers and those counts, never from the implementation: frozen weights cost 4
FLOPs per parameter and token (forward + input gradient), trained ones 6, attention 6·L·H·d·n² per
example (causal half of QKᵀ and AV, forward + backward), the vocabulary projection only where the
loss needs it. MFU divides those FLOPs per second by this machine's fp32 matmul peak, measured by
the driver in the same run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------------
# Machine peak and memory


def matmul_peak(n: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """Best-of-`repeats` fp32 square matmul rate (FLOP/s) with torch's current thread count."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool, caches
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return {
        "flops_per_s": 2 * n**3 / best,
        "n": n,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM) since start or the last reset."""
    return _status_kb("VmHWM") / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: `5` into /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# Counting what the Trainer trains on


@dataclass
class Meter:
    steps: int = 0
    examples: int = 0
    real_tokens: int = 0  # attention-mask ones: tokens that carry data
    padded_tokens: int = 0  # batch x length, what the model actually processed
    loss_positions: int = 0  # positions whose prediction the loss uses
    vocab_rows: int = 0  # positions the output layer projected onto the vocabulary
    sum_sq_lengths: int = 0  # sum over examples of real_length², for attention FLOPs
    prefix_reused: int = 0  # real tokens not recomputed: a prefix shared by a batch's rows
    sum_sq_prefix_reused: int = 0  # the same for the attention FLOPs
    train_wall_s: float = 0.0  # Trainer.train(): steps + evaluations + checkpoints
    eval_s: float = 0.0  # evaluations inside Trainer.train()
    eval_after_s: float = 0.0  # evaluations after it (the baseline's final trainer.evaluate())
    save_s: float = 0.0
    in_train: bool = False
    evaluations: int = 0
    peak_rss_train_mb: float = 0.0  # VmHWM during Trainer.train()
    peak_rss_reset: bool = False
    model: dict[str, Any] = field(default_factory=dict)  # parameter counts for the FLOP count

    @property
    def train_s(self) -> float:
        """Time spent training: Trainer.train minus evaluations and checkpoint saving."""
        return self.train_wall_s - self.eval_s - self.save_s

    def model_flops(self) -> float:
        m = self.model
        if not m:
            return 0.0
        per_token = 4 * m["frozen_linear"] + 6 * m["trained_linear"]
        vocab = (6 if m["vocab_trained"] else 4) * m["vocab_params"]
        # QKᵀ and AV: 2·n²·width each, causal half of that, x3 for forward + backward
        # Only what was computed: a prefix shared by a batch's rows runs once, not once per row
        # (so MFU is not inflated by the tokens it skips).
        squares = self.sum_sq_lengths - self.sum_sq_prefix_reused
        attention = 6 * m["layers"] * m["attention_width"] * squares
        computed = self.real_tokens - self.prefix_reused
        return per_token * computed + vocab * self.loss_positions + attention


def describe_model(model) -> dict[str, Any]:
    """Parameters of the linear layers, split frozen / trained, plus the vocabulary projection."""
    from torch import nn

    model = getattr(model, "module", model)  # DistributedDataParallel's wrapped model
    frozen = trained = vocab = 0
    vocab_trained = False
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        n = module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)
        trainable = module.weight.requires_grad
        if "lm_head" in name.split("."):
            vocab = max(vocab, n)
            vocab_trained |= trainable
        elif trainable or not _is_frozen_head_copy(name):
            if trainable:
                trained += n
            else:
                frozen += n
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {
        "frozen_linear": frozen,
        "trained_linear": trained,
        "vocab_params": vocab,
        "vocab_trained": vocab_trained,
        "layers": config.num_hidden_layers,
        "attention_width": heads * head_dim,
    }


def _is_frozen_head_copy(name: str) -> bool:
    """PEFT keeps the original head beside its trained copy (modules_to_save); only one runs."""
    return "original_module" in name.split(".")


def instrument_trainer(meter: Meter) -> None:
    """Wrap transformers.Trainer's train, training_step, evaluate and checkpointing to feed meter."""
    from transformers import Trainer

    train, step, evaluate, save = (
        Trainer.train,
        Trainer.training_step,
        Trainer.evaluate,
        Trainer._save_checkpoint,
    )

    def timed_train(self, *args, **kwargs):
        meter.peak_rss_reset = reset_peak_rss()
        t = time.perf_counter()
        meter.in_train = True
        try:
            return train(self, *args, **kwargs)
        finally:
            meter.in_train = False
            meter.train_wall_s += time.perf_counter() - t
            meter.peak_rss_train_mb = peak_rss_mb()

    def counted_step(self, model, inputs, *args, **kwargs):
        if not meter.model:
            meter.model = describe_model(model)
        count_batch(meter, inputs, self.processing_class)
        return step(self, model, inputs, *args, **kwargs)

    def timed_evaluate(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return evaluate(self, *args, **kwargs)
        finally:
            if meter.in_train:
                meter.eval_s += time.perf_counter() - t
                meter.evaluations += 1
            else:
                meter.eval_after_s += time.perf_counter() - t

    def timed_save(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return save(self, *args, **kwargs)
        finally:
            meter.save_s += time.perf_counter() - t

    Trainer.train = timed_train
    Trainer.training_step = counted_step
    Trainer.evaluate = timed_evaluate
    Trainer._save_checkpoint = timed_save


# --------------------------------------------------------------------------------------------------
# Training processes started by tuneforge (`training.processes`): counted in each, merged here

METER_DIR_ENV = "TUNEFORGE_BENCH_METER_DIR"
CHILD_SITE = Path(__file__).resolve().parent / "_child_site"  # its sitecustomize instruments


def meter_child_processes(folder: Path) -> None:
    """Processes started from now on by this one count their training into folder/rank-N.json.

    Python imports `sitecustomize` from PYTHONPATH at start-up; ours (`_child_site/`) calls
    `instrument_rank` when METER_DIR_ENV is set. This process itself is instrumented directly.
    """
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[METER_DIR_ENV] = str(folder)
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(CHILD_SITE), *([path] if path else [])])


def train_command(recipe: Path, overrides: list[str], run_folder: Path, *, in_process: bool):
    """`tuneforge train RECIPE --set ...` run as a user runs it, in its own process; returns the
    finished run's folder and the command's wall time, from its start to its exit.

    The training is metered where it runs (`meter_child_processes` first): in the processes it
    launches, or with `in_process` (`training.processes` is 1) in the command itself.
    """
    cmd = [sys.executable, "-m", "tuneforge.cli", "train", str(recipe)]
    cmd += [arg for o in overrides for arg in ("--set", o)]
    before = set(run_folder.iterdir()) if run_folder.is_dir() else set()
    env = {**os.environ, **({"TUNEFORGE_BENCH_METER_THIS": "1"} if in_process else {})}
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
    wall_s = time.perf_counter() - started
    new = [p for p in run_folder.iterdir() if p not in before and not p.name.startswith(".")]
    if done.returncode != 0 or len(new) != 1:
        raise SystemExit(f"tuneforge train failed (exit code {done.returncode}): {' '.join(cmd)}")
    return new[0], wall_s


def instrument_rank() -> None:
    """In a started training process: count as the arm does, dump under its rank after train."""
    folder = Path(os.environ[METER_DIR_ENV])
    meter = Meter()
    from transformers import Trainer

    instrument_trainer(meter)
    timed_train = Trainer.train

    def train_and_dump(self, *args, **kwargs):
        try:
            return timed_train(self, *args, **kwargs)
        finally:
            rank = os.environ.get("RANK", "0")  # set by the launcher after start-up
            write_json(folder / f"rank-{rank}.json", asdict(meter))

    Trainer.train = train_and_dump


def merge_rank_meters(meter: Meter, folder: Path) -> Meter:
    """The started processes' meters as one (the arm's own when no process wrote one).

    Tokens, examples and FLOP counts add up over the processes; steps, times and the model
    description are rank 0's (the processes step together); training RSS adds up.
    """
    files = sorted(folder.glob("rank-*.json"))
    if not files:
        return meter
    ranks = {int(f.stem.split("-")[1]): json.loads(f.read_text()) for f in files}
    zero = ranks[0]
    merged = Meter(**{k: v for k, v in zero.items() if k in Meter.__dataclass_fields__})
    for key in ("examples", "real_tokens", "padded_tokens", "loss_positions", "vocab_rows",
                "sum_sq_lengths", "prefix_reused", "sum_sq_prefix_reused",
                "peak_rss_train_mb"):  # fmt: skip
        setattr(merged, key, sum(r[key] for r in ranks.values()))
    merged.eval_after_s += meter.eval_after_s
    return merged


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return [proc.pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def _proc_kb(pid: int, file: str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass  # the process ended meanwhile
    return 0


def tree_rss_mb(pids: list[int]) -> float:
    """RSS summed over processes (cheap: /proc/PID/status)."""
    return sum(_proc_kb(p, "status", "VmRSS") for p in pids) / 1024


def tree_pss_mb(pids: list[int]) -> float:
    """PSS summed over processes: a page shared by several (torch's libraries, say) counts once
    in all, where the RSS sum counts it in each. Walks the page tables: costly, read sparingly."""
    return sum(_proc_kb(p, "smaps_rollup", "Pss") for p in pids) / 1024


class TreeMemory:
    """Peak RSS and PSS of a process tree, sampled while it runs.

    RSS is read 5 times a second; PSS (costly for a large process: reading it 5 times a second
    took a fifth of a core) only when the RSS sum is within 3% of its peak so far, at most once a
    second: the peak is where it matters.
    """

    def __init__(self) -> None:
        self.rss = self.pss = 0.0
        self._pss_at = 0.0

    def sample(self, pid: int) -> None:
        pids = tree_pids(pid)
        rss = tree_rss_mb(pids)
        self.rss = max(self.rss, rss)
        now = time.monotonic()
        if rss >= 0.97 * self.rss and now - self._pss_at >= 1.0:
            self._pss_at = now
            self.pss = max(self.pss, tree_pss_mb(pids))


def count_batch(meter: Meter, inputs: dict[str, Any], tokenizer=None) -> None:
    import torch

    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    lengths = mask.sum(dim=1)
    meter.steps += 1
    meter.examples += ids.shape[0]
    meter.real_tokens += int(lengths.sum())
    meter.padded_tokens += ids.numel()
    meter.sum_sq_lengths += int((lengths.long() ** 2).sum())
    prefix = inputs.get("shared_prefix")  # tuneforge.answer_forward.KEY
    if prefix is not None:
        copies = ids.shape[0] - 1
        meter.prefix_reused += copies * int(prefix)
        meter.sum_sq_prefix_reused += copies * int(prefix) ** 2
    labels = inputs.get("labels")
    if labels is None or labels.dim() == 1:  # classification: one prediction per example
        meter.loss_positions += ids.shape[0]
        return
    shift = inputs.get("shift_labels")
    if shift is None:
        shift = labels[:, 1:]
    meter.loss_positions += int((shift != -100).sum())
    keep = inputs.get("logits_to_keep", 0)
    rows = inputs.get("answer_positions")  # tuneforge.answer_forward.ROWS
    if rows is not None:
        meter.vocab_rows += int(rows.sum())
    elif isinstance(keep, torch.Tensor):
        meter.vocab_rows += ids.shape[0] * int(keep.numel())
    else:
        meter.vocab_rows += ids.shape[0] * (int(keep) or ids.shape[1])


def arm_report(meter: Meter, quality: dict[str, Any], wall_s: float, extra: dict | None = None):
    """The arm's figures as written to its JSON (MFU is added by the driver, which has the peak)."""
    import torch

    train_s = meter.train_s
    return {
        "wall_s": wall_s,
        "train_wall_s": meter.train_wall_s,
        "train_s": train_s,
        "eval_s": meter.eval_s,
        "save_s": meter.save_s,
        "evaluations": meter.evaluations,
        "steps": meter.steps,
        "examples": meter.examples,
        "real_tokens": meter.real_tokens,
        "padded_tokens": meter.padded_tokens,
        "padding_fraction": 1 - meter.real_tokens / meter.padded_tokens
        if meter.padded_tokens
        else 0,
        "loss_positions": meter.loss_positions,
        "prefix_reused": meter.prefix_reused,
        "computed_tokens_per_s": (meter.real_tokens - meter.prefix_reused) / train_s
        if train_s > 0
        else 0.0,
        "vocab_rows": meter.vocab_rows,
        "real_tokens_per_s": meter.real_tokens / train_s if train_s > 0 else 0.0,
        "padded_tokens_per_s": meter.padded_tokens / train_s if train_s > 0 else 0.0,
        "model_flops": meter.model_flops(),
        "model_flops_per_s": meter.model_flops() / train_s if train_s > 0 else 0.0,
        "model": meter.model,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_train_mb": meter.peak_rss_train_mb,
        "threads": torch.get_num_threads(),
        "quality": quality,
        **(extra or {}),
    }


# --------------------------------------------------------------------------------------------------
# Driver: one fresh process per arm, the peak measured around them, JSON and a table


def run_arms(script: Path, arms: list[str], argv: list[str], workdir: Path) -> dict[str, dict]:
    """`python script --arm NAME argv... --arm-output F` for each arm, in order; their JSONs."""
    results = {}
    for arm in arms:
        out = workdir / f"{arm}.json"
        cmd = [sys.executable, str(script), "--arm", arm, "--arm-output", str(out), *argv]
        print(f"== {arm}: {' '.join(cmd[1:])}", flush=True)
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "TUNEFORGE_QUIET": "1"})
        memory = TreeMemory()  # the arm and every process it starts
        while proc.poll() is None:
            memory.sample(proc.pid)
            time.sleep(0.2)
        # The whole job as a user times it: interpreter start, imports, data, scoring, training,
        # saving, until the process has exited (an arm that runs a command, `tuneforge train`,
        # reports that command's own time instead: the arm's measuring around it is not the job).
        job_wall_s = time.perf_counter() - started
        if proc.returncode != 0 or not out.is_file():
            raise SystemExit(f"the {arm} arm failed (exit code {proc.returncode})")
        results[arm] = {
            "job_wall_s": job_wall_s,
            **json.loads(out.read_text()),
            "peak_rss_all_mb": memory.rss,
            "peak_pss_all_mb": memory.pss,
        }
    return results


def summarise(results: dict[str, dict], peak: dict[str, Any], quality_keys: list[str]) -> dict:
    """Adds MFU to each arm and the tuneforge/baseline ratios."""
    for r in results.values():
        r["mfu"] = r["model_flops_per_s"] / peak["flops_per_s"]
    t, b = results["tuneforge"], results["baseline"]
    keys = [
        "real_tokens_per_s",
        "computed_tokens_per_s",
        "padded_tokens_per_s",
        "train_s",
        "wall_s",
        "job_wall_s",
        "eval_s",
        "peak_rss_mb",
        "peak_rss_train_mb",
        "peak_rss_all_mb",
        "peak_pss_all_mb",
        "mfu",
        "padded_tokens",
        "vocab_rows",
    ]
    ratios = {k: t[k] / b[k] if b[k] else None for k in keys}
    for k in quality_keys:
        tv, bv = t["quality"].get(k), b["quality"].get(k)
        ratios[k] = tv / bv if tv is not None and bv else None
    if "tuneforge-fp32" in results:  # auto (bf16 here) against fp32, both tuneforge
        f = results["tuneforge-fp32"]
        ratios["auto_over_fp32"] = {k: t[k] / f[k] if f[k] else None for k in keys}
    # each arm's whole job against the baseline's: how much faster (ablations, the rerun)
    ratios["job_speedup_by_arm"] = {
        name: b["job_wall_s"] / r["job_wall_s"] for name, r in results.items() if name != "baseline"
    }
    return ratios


def print_table(results: dict[str, dict], ratios: dict, peak: dict, quality_keys: list[str]):
    rows = [
        ("train time (s, without eval/save)", "train_s", "{:.1f}"),
        ("wall time of the arm (s)", "wall_s", "{:.1f}"),
        ("whole job: command start to exit (s)", "job_wall_s", "{:.1f}"),
        ("evaluation time (s)", "eval_s", "{:.1f}"),
        ("real tokens / s", "real_tokens_per_s", "{:.1f}"),
        ("computed tokens / s", "computed_tokens_per_s", "{:.1f}"),
        ("padded tokens / s", "padded_tokens_per_s", "{:.1f}"),
        ("padding fraction", "padding_fraction", "{:.3f}"),
        ("vocabulary rows computed", "vocab_rows", "{:,}"),
        ("MFU", "mfu", "{:.3f}"),
        ("peak RSS, process (MB)", "peak_rss_mb", "{:.0f}"),
        ("peak RSS, training (MB)", "peak_rss_train_mb", "{:.0f}"),
        ("peak RSS, all processes (MB)", "peak_rss_all_mb", "{:.0f}"),
        ("peak PSS, all processes (MB)", "peak_pss_all_mb", "{:.0f}"),
    ]
    print(
        f"\nfp32 matmul peak: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({peak['threads']} threads)"
    )
    fp32 = results.get("tuneforge-fp32")
    t_arm = results["tuneforge"]
    seeds = t_arm.get("seeds", 1)
    print(f"(means over {seeds} seed(s); tuneforge trained in {t_arm.get('precision', '?')})")
    head = f"{'':38} {'tuneforge':>12}"
    head += f" {'tf fp32':>12} {'auto/fp32':>9}" if fp32 else ""
    print(head + f" {'baseline':>12} {'ratio':>8}")
    for label, key, fmt in rows:
        t, b, r = t_arm[key], results["baseline"][key], ratios.get(key)
        line = f"{label:38} {fmt.format(t):>12}"
        if fp32:
            line += f" {fmt.format(fp32[key]):>12} {_ratio(ratios['auto_over_fp32'].get(key)):>9}"
        print(line + f" {fmt.format(b):>12} {_ratio(r):>8}")
    for key in quality_keys:
        t, b = t_arm["quality"].get(key), results["baseline"]["quality"].get(key)
        label = key.replace("test_", "test ", 1) if key.startswith("test_") else "validation " + key
        line = f"{label:38} {_num(t):>12}"
        if fp32:
            line += f" {_num(fp32['quality'].get(key)):>12} {'':>9}"
        print(line + f" {_num(b):>12} {_ratio(ratios.get(key)):>8}")
    for name, arm in results.items():
        if name not in ("tuneforge", "tuneforge-fp32", "baseline"):
            speedup = ratios["job_speedup_by_arm"][name]
            print(
                f"  {name}: whole job {arm['job_wall_s']:.1f} s ({speedup:.2f}x faster than the "
                "baseline's), "
                + ", ".join(f"{k} {_num(arm['quality'].get(k))}" for k in quality_keys)
            )


def _ratio(r) -> str:
    return "" if r is None else f"{r:.2f}x"


def _num(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


# tuneforge arms that change one default, each against the same baseline (the recipe overrides)
ARM_OVERRIDES = {
    "tuneforge": [],
    "tuneforge-fp32": ["training.precision=fp32"],
    "tuneforge-random-order": ["training.group_by_length=false"],  # random batches, as the baseline
    "tuneforge-tight-sort": ["training.length_jitter=0.05"],  # the length sort before issue 20
    "tuneforge-jitter-1": ["training.length_jitter=1"],  # the default of 2026-12-07's first change
    # the same job again: the base model's scores read from the first run's (baseline.reuse)
    "tuneforge-rerun": [],
}
# Every other tuneforge arm scores the base model itself, as a first run does, whatever the
# user's cache of base scores holds (runs/base_scores.py); it keeps its scores for the rerun.
FIRST_RUN = ["baseline.reuse=false"]


def arms_for(args) -> tuple[list[str], str]:
    """The arms to run, and the CPU's bf16 capability in words: where `precision: auto` trains
    in bf16 here (a CPU with native bf16), tuneforge runs in auto and in fp32, side by side;
    `--ablations` adds tuneforge with random batches, with the near-exact length sort
    (`length_jitter` 0.05, the default before issue 20's accuracy study) and with the loosest
    one studied (`length_jitter` 1); `--rerun` runs tuneforge's arm a second time, right after
    the first, with the base model's scores kept by it (what a later run of a sweep costs)."""
    from tuneforge import cpu_bf16

    cpu = cpu_bf16.detect()
    arms = ["tuneforge", "baseline"]
    if args.precision == "compare" and cpu.usable:
        arms.insert(1, "tuneforge-fp32")
    if args.ablations:
        arms[-1:-1] = ["tuneforge-random-order", "tuneforge-tight-sort", "tuneforge-jitter-1"]
    if args.rerun:
        arms.insert(1, "tuneforge-rerun")
    return arms, cpu.describe()


def differences(results: dict[str, dict], quality_keys: list[str]) -> dict[str, dict]:
    """Each arm's quality minus the baseline's over the seeds: mean and Welch's 95% interval of
    the difference (scipy; the arms' seeds are not paired: their batch orders differ)."""
    from scipy import stats

    base = results["baseline"].get("quality_seeds", {})
    out: dict[str, dict] = {}
    for name, arm in results.items():
        if name == "baseline":
            continue
        for key in quality_keys:
            a, b = arm.get("quality_seeds", {}).get(key), base.get(key)
            if not a or not b or len(a) < 2 or len(b) < 2:
                continue
            diff = sum(a) / len(a) - sum(b) / len(b)
            test = stats.ttest_ind(a, b, equal_var=False)
            low, high = (diff, diff) if math.isnan(test.pvalue) else test.confidence_interval(0.95)
            out.setdefault(name, {})[key] = {
                "difference": diff,
                "interval": [float(low), float(high)],
                "p_value": None if math.isnan(test.pvalue) else float(test.pvalue),
            }
    return out


def print_quality_study(results: dict[str, dict], diffs: dict, quality_keys: list[str]) -> None:
    """Per arm and quality figure: each seed's value, the mean with its interval, and the
    difference from the baseline with its interval."""
    print("\nquality over seeds (95% t-intervals; difference = arm - baseline, Welch)")
    for key in quality_keys:
        print(f"  {key}")
        for name, arm in results.items():
            values = arm.get("quality_seeds", {}).get(key)
            if not values:
                continue
            low, high = arm.get("quality_interval", {}).get(key, (math.nan, math.nan))
            line = (
                f"    {name:24} {' '.join(f'{v:.3f}' for v in values):40} "
                f"mean {arm['quality'][key]:.4f} [{low:.4f}, {high:.4f}]"
            )
            d = diffs.get(name, {}).get(key)
            if d:
                line += f"  diff {d['difference']:+.4f} [{d['interval'][0]:+.4f}, {d['interval'][1]:+.4f}]"
            print(line)


def mean_over_seeds(reports: list[dict]) -> dict:
    """One arm's figures over its seeds: numbers averaged, quality with each seed's value and a
    95% t-interval of the mean (scipy) where there are several."""
    from scipy import stats

    first = reports[0]
    out = {
        k: sum(r[k] for r in reports) / len(reports)
        if isinstance(v, (int, float)) and not isinstance(v, bool)
        else v
        for k, v in first.items()
    }
    quality, seeds, intervals = {}, {}, {}
    for key in first["quality"]:
        values = [r["quality"][key] for r in reports if r["quality"].get(key) is not None]
        if not values:
            continue
        mean = sum(values) / len(values)
        quality[key], seeds[key] = mean, values
        if len(values) > 1:
            sem = stats.sem(values)
            low, high = (
                stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)
                if sem
                else (mean, mean)
            )
            intervals[key] = [low, high]
    out.update(quality=quality, quality_seeds=seeds, quality_interval=intervals)
    out["seeds"] = len(reports)
    return out


def drive(args, script: Path, benchmark: str, recipe: Path, quality: list[str], prepare_quick):
    """The driver: quick-mode inputs, the peak before and after the arms (each seed), JSON, table."""
    import tempfile

    if args.merge:
        return merge(args, benchmark, quality)

    arms, cpu = arms_for(args)
    print(f"CPU: {cpu}; arms: {', '.join(arms)}; seeds: {args.seeds}", flush=True)
    per_seed: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as tmp:
        workdir = Path(tmp)
        if args.quick:
            prepare_quick(workdir)
        forwarded = ["--workdir", str(workdir)]
        forwarded += ["--quick"] if args.quick else []
        forwarded += ["--epochs", str(args.epochs)] if args.epochs is not None else []
        forwarded += ["--max-steps", str(args.max_steps)] if args.max_steps is not None else []
        forwarded += ["--max-length", str(args.max_length)] if args.max_length is not None else []
        forwarded += ["--train-rows", str(args.train_rows)] if args.train_rows is not None else []
        peak = matmul_peak()
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            found = run_arms(script, arms, [*forwarded, "--seed", str(seed)], workdir)
            for arm in arms:
                per_seed[arm].append(found[arm])
        after = matmul_peak()
        if after["flops_per_s"] > peak["flops_per_s"]:
            peak = after
    results = {arm: mean_over_seeds(reports) for arm, reports in per_seed.items()}
    ratios = summarise(results, peak, quality)
    diffs = differences(results, quality)
    write_json(
        args.output,
        {
            "benchmark": benchmark,
            "recipe": str(recipe.relative_to(ROOT)),
            "quick": args.quick,
            "epochs": args.epochs,
            "max_steps": args.max_steps,
            "seeds": args.seeds,
            "first_seed": args.first_seed,
            "cpu": cpu,
            "matmul_peak": peak,
            **results,
            "per_seed": per_seed,
            "ratios": ratios,
            "differences_from_baseline": diffs,
        },
    )
    print_table(results, ratios, peak, quality)
    if args.seeds > 1:
        print_quality_study(results, diffs, quality)
    print(f"\nwritten: {args.output}")


def merge(args, benchmark: str, quality: list[str]) -> None:
    """`--merge A.json B.json ...`: one study from the seeds of several runs (arms kept where they
    ran in every file; timings are not compared across runs, only quality)."""
    studies = []
    for path in args.merge:
        try:
            study = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            study = {"error": e}
        if (
            not isinstance(study, dict)
            or study.get("benchmark") != benchmark
            or "per_seed" not in study
        ):
            print(f"--merge: {path} is not a {benchmark} benchmark result", file=sys.stderr)
            raise SystemExit(2)
        studies.append(study)
    arms = [a for a in studies[0]["per_seed"] if all(a in s["per_seed"] for s in studies)]
    per_seed = {arm: [r for s in studies for r in s["per_seed"][arm]] for arm in arms}
    seeds = [[*range(s.get("first_seed", 0), s.get("first_seed", 0) + s["seeds"])] for s in studies]
    results = {arm: mean_over_seeds(reports) for arm, reports in per_seed.items()}
    diffs = differences(results, quality)
    write_json(
        args.output,
        {
            "benchmark": benchmark,
            "merged_from": [str(f) for f in args.merge],
            "seeds": [seed for group in seeds for seed in group],
            "cpus": [s.get("cpu") for s in studies],
            **results,
            "per_seed": per_seed,
            "differences_from_baseline": diffs,
        },
    )
    print_quality_study(results, diffs, quality)
    print(f"\nwritten: {args.output}")


def parse_args(doc: str, default_output: Path, argv: list[str] | None = None):
    import argparse

    p = argparse.ArgumentParser(
        description=doc.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny random model, a few steps (< 1 min)")
    p.add_argument("--epochs", type=float, help="override training.epochs (both arms)")
    p.add_argument("--max-steps", type=int, help="override training.max_steps (both arms)")
    p.add_argument("--max-length", type=int, help="override training.max_length (both arms)")
    p.add_argument(
        "--train-rows",
        type=int,
        help="train on N rows: the recipe's training rows repeated and shuffled (classification)",
    )
    p.add_argument("--output", type=Path, default=default_output, help="result JSON")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train each arm with N seeds from --first-seed (quality intervals)",
    )
    p.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="with --seeds N: seeds FIRST..FIRST+N-1 (more seeds for a study run earlier)",
    )
    p.add_argument(
        "--precision",
        choices=["compare", "auto"],
        default="compare",
        help="compare: tuneforge in precision auto and fp32 where this CPU has native bf16",
    )
    p.add_argument(
        "--ablations",
        action="store_true",
        help="also tuneforge with random batches, and with the near-exact length sort "
        "(training.length_jitter=0.05): the accuracy study",
    )
    p.add_argument(
        "--rerun",
        action="store_true",
        help="also tuneforge's job a second time right after the first: the base model's scores "
        "reused from it (baseline.reuse), as in a sweep's later runs",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="train nothing: one quality study from the seeds of earlier results (--output)",
    )
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--arm", choices=[*ARM_OVERRIDES, "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--arm-output", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def common_overrides(args, workdir: Path) -> list[str]:
    """Run folder and registry inside the benchmark's temporary folder; epochs / max_steps."""
    out = [
        f"output_dir={workdir / 'runs'}",
        f"registry={workdir / 'registry.sqlite'}",
        f"training.seed={args.seed}",
    ]
    out += ARM_OVERRIDES.get(args.arm, [])
    out += FIRST_RUN if args.arm != "tuneforge-rerun" else []
    if args.epochs is not None:
        out.append(f"training.epochs={args.epochs}")
    if args.max_steps is not None:
        out.append(f"training.max_steps={args.max_steps}")
    if args.max_length is not None:
        out.append(f"training.max_length={args.max_length}")
    return out


def data_path(path: Path, recipe: Path) -> Path:
    """Recipe data paths are relative to the working directory, else to the recipe's folder."""
    if path.is_absolute() or (ROOT / path).exists():
        return ROOT / path
    return recipe.parent / path
