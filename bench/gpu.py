"""GPU benchmark (issue 20): tuneforge against the plain Trainer + PEFT scripts in bf16 with SDPA.

On random-weight Llamas built from the embedded model's config.json and tokenizer (a ~135M one,
SmolLM2-135M's shapes, and a ~1.07B one: 16 layers, hidden 2048, intermediate 8192, 32/8 heads;
`scripts/gpu_check.py` builds both), with the chat data (sft: examples/data/alert_triage) and the
sentiment data (classification: examples/data/movie_reviews), each arm in a fresh process:

- `baseline`: bench/_baseline_sft.py / _baseline_classification.py as they are, run with the
  model loaded in bf16 with SDPA attention and the Trainer's bf16 (the plain script in bf16);
- `tuneforge`: `tuneforge.train` of recipes/alert_triage.yaml / sentiment.yaml with its CUDA
  defaults (sft: padding-free batches, output layer on labelled positions, Liger where
  installed, the frozen base in bf16);
- `tuneforge-padded` (by default for the 1B sft job only, --padded-arm-for): the same with
  `training.padding_free=false` and `training.kernels=none`, to tell what padding-free batches
  and the kernels add. Without the `flash_attn` package, sdpa keeps packed sequences apart with a
  (T x T) mask over the whole row, so its attention costs T^2 for T tokens a step: this arm
  shows whether that still beats length-sorted padded rows on the GPU at hand.

Same hyper-parameters in every arm: LoRA r/alpha/targets, batch size, learning rate, steps, seed,
max_length; LoRA dropout 0 and random batches (tuneforge's `training.group_by_length=false`),
so every arm trains the same examples in the same order and the loss curves compare step by step.
Measured per arm, over the training steps after the first --warmup ones (CUDA start-up, Triton
compilation): real tokens/s (tokens of the examples, padding not counted), the peak of
`torch.cuda.max_memory_allocated` during training, and the training loss at every step. The
summary gives each tuneforge arm's ratios to the baseline and whether its loss curve equals the
baseline's (5-step means within --loss-tolerance, relative). Evaluation, checkpoints and the
final scoring are not timed.

On the offline GPU machine (see /work/shared/gpu/README.md; `.whl/` and `gpu_model_files/` made
here as scripts/gpu_check.py's docstring says; optional: liger-kernel's wheel beside the others),
from the repository root:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src \
        USE_HUB_KERNELS=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 && \
        python3 bench/gpu.py --model-files gpu_model_files --out $OUT --budget 540

Here (CPU), a smoke run on a tiny random Llama with padding-free batches asked for (what
tests/e2e/test_bench_quick.py runs; figures meaningless):

    .venv/bin/python bench/gpu.py --quick

Writes OUT/gpu.json and OUT/gpu.md (default OUT: bench/results/gpu, --quick: a temporary folder)
after every arm, and one log per arm in OUT/logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
JOBS = {
    "sft": ROOT / "recipes" / "alert_triage.yaml",
    "classification": ROOT / "recipes" / "sentiment.yaml",
}
SIZES = {"135m": "small", "1b": "large"}  # scripts/gpu_check.py's names for the two shapes
ARMS = ("baseline", "tuneforge", "tuneforge-padded")
GIB = 1024**3


# ==================================================================================================
# One arm, in its own process (`--_arm SPEC`)


class StepMeter:
    """Counts each training step's real tokens and times it (the GPU synchronised on both ends);
    records the logged loss of every step and the training's peak GPU memory."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.losses: list[tuple[int, float]] = []
        self.peak_allocated = self.peak_reserved = 0

    def install(self) -> None:
        import torch
        from transformers import Trainer, TrainerCallback

        meter, step = self, Trainer.training_step

        def measured_step(trainer, model, inputs, *args, **kwargs):
            _sync(torch)
            t = time.perf_counter()
            loss = step(trainer, model, inputs, *args, **kwargs)
            _sync(torch)
            meter.steps.append({"seconds": time.perf_counter() - t, **count(inputs)})
            return loss

        class Record(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    meter.losses.append((state.global_step, float(logs["loss"])))

            def on_train_end(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    meter.peak_allocated = torch.cuda.max_memory_allocated()
                    meter.peak_reserved = torch.cuda.max_memory_reserved()

        init = Trainer.__init__

        def with_record(trainer, *args, **kwargs):
            init(trainer, *args, **kwargs)
            trainer.add_callback(Record())

        Trainer.training_step = measured_step
        Trainer.__init__ = with_record

    def report(self, warmup: int) -> dict[str, Any]:
        timed = self.steps[warmup:] or self.steps
        seconds = sum(s["seconds"] for s in timed)
        tokens = sum(s["tokens"] for s in timed)
        return {
            "steps": len(self.steps),
            "timed_steps": len(timed),
            "timed_seconds": round(seconds, 3),
            "real_tokens": int(sum(s["tokens"] for s in self.steps)),
            "loss_positions": int(sum(s["loss_positions"] for s in self.steps)),
            "examples": int(sum(s["examples"] for s in self.steps)),
            "real_tokens_per_s": round(tokens / seconds, 1) if seconds else None,
            "peak_allocated_gib": round(self.peak_allocated / GIB, 3),
            "peak_reserved_gib": round(self.peak_reserved / GIB, 3),
            "loss_curve": [loss for _, loss in sorted(self.losses)],
        }


def count(inputs: dict[str, Any]) -> dict[str, int]:
    """Real tokens, loss positions and examples of a training batch as the Trainer gets it:
    padded rows (attention mask), a padding-free row (position ids restart per example) or
    full blocks."""
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    tokens = int(mask.sum()) if mask is not None else ids.numel()
    positions = inputs.get("position_ids")
    if positions is not None and mask is None and ids.shape[0] == 1:
        examples = int((positions == 0).sum())
    else:
        examples = ids.shape[0]
    labels = inputs.get("shift_labels")
    if labels is None:
        labels = inputs["labels"]
        labels = labels[..., 1:] if labels.dim() > 1 else labels
    return {"tokens": tokens, "loss_positions": int((labels != -100).sum()), "examples": examples}


def _sync(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def plain_in_bf16() -> None:
    """The plain scripts as a user runs them on a GPU: the model loaded in bf16 with SDPA, the
    Trainer in bf16, the loss logged every step (patched in from outside, the scripts unchanged)."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        TrainingArguments,
    )

    cuda = torch.cuda.is_available()
    for auto in (AutoModelForCausalLM, AutoModelForSequenceClassification):
        load = auto.from_pretrained.__func__

        def loaded(cls, *args, _load=load, **kwargs):
            kwargs.setdefault("attn_implementation", "sdpa")
            if cuda:
                kwargs.setdefault("dtype", torch.bfloat16)
            return _load(cls, *args, **kwargs).to("cuda" if cuda else "cpu")

        auto.from_pretrained = classmethod(loaded)
    post_init = TrainingArguments.__post_init__

    def in_bf16(self):
        self.bf16 = self.bf16 or cuda
        self.logging_steps = 1
        self.logging_strategy = "steps"
        post_init(self)

    TrainingArguments.__post_init__ = in_bf16


def run_arm(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import set_seed

    meter = StepMeter()
    meter.install()
    t0 = time.perf_counter()
    s = spec["settings"]
    if spec["arm"] == "baseline":
        plain_in_bf16()
        set_seed(s["seed"])  # the adapters' initialisation as tuneforge seeds it
        quality = _baseline(spec)
    else:
        import tuneforge

        run = tuneforge.train(JOBS[spec["job"]], spec["overrides"])
        tuned = run.metrics["tuned"]["validation"]
        quality = {k: v for k, v in tuned.items() if isinstance(v, (int, float))}
        quality["precision"] = run.meta.get("precision")
    return {
        "arm": spec["arm"],
        "job": spec["job"],
        "size": spec["size"],
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "wall_s": round(time.perf_counter() - t0, 1),
        **meter.report(spec["warmup"]),
        "quality": quality,
    }


def _baseline(spec: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(BENCH))
    s, files = spec["settings"], spec["files"]
    common = {
        "max_steps": s["max_steps"],
        "batch_size": s["batch_size"],
        "learning_rate": s["learning_rate"],
        "max_length": s["max_length"],
        "seed": s["seed"],
        "lora_r": s["lora_r"],
        "lora_alpha": s["lora_alpha"],
        "lora_dropout": 0.0,
        "target_modules": "all-linear",
    }
    out = Path(spec["work"]) / f"baseline-{spec['job']}-{spec['size']}"
    if spec["job"] == "sft":
        from _baseline_sft import train_baseline

        return train_baseline(
            spec["model"], files["train"], files["validation"], out, eval_steps=None, **common
        )
    from _baseline_classification import train_baseline

    return train_baseline(spec["model"], files["train"], files["validation"], out, **common)


# ==================================================================================================
# The driver


def tuneforge_overrides(args, job: str, arm: str, model: Path, files: dict, work: Path) -> list:
    out = [
        f"base_model={model}",
        f"name=gpu-{job}-{arm}",
        f"output_dir={work / 'runs'}",
        f"data.train={files['train']}",
        f"data.validation={files['validation']}",
        f"training.max_steps={args.max_steps}",
        f"training.batch_size={args.batch_size}",
        f"training.learning_rate={args.learning_rate}",
        f"training.max_length={args.max_length}",
        f"training.seed={args.seed}",
        "training.warmup_ratio=0.0",
        "training.logging_steps=1",
        f"training.eval_steps={args.max_steps}",
        "training.group_by_length=false",  # the baseline's random batches, same order
        "training.processes=1",
        f"lora.r={args.lora_r}",
        f"lora.alpha={args.lora_alpha}",
        "lora.dropout=0.0",
        "lora.target_modules=all-linear",
        "baseline.enabled=false",
        "early_stopping.patience=null",
        "data_checks.leakage=off",
        "data_checks.duplicates=off",
    ]
    out.append("data.test=null")  # scored once at the end: not what is measured
    if job == "sft":
        out.append("sft.generation_examples=0")
    if args.quick:
        out.append("training.precision=fp32")
        if job == "sft" and arm == "tuneforge":
            out.append("training.padding_free=true")  # the path CUDA takes, on the CPU
    if arm == "tuneforge-padded":
        out += ["training.padding_free=false", "training.kernels=none"]
    return out


def data_files(job: str, args, work: Path) -> dict[str, Path]:
    folder = ROOT / "examples" / "data" / ("alert_triage" if job == "sft" else "movie_reviews")
    suffix = ".jsonl" if job == "sft" else ".csv"
    files = {split: folder / f"{split}{suffix}" for split in ("train", "validation")}
    if args.quick:  # the first rows only
        for split, n in (("train", 24), ("validation", 8)):
            lines = files[split].read_text(encoding="utf-8").splitlines()
            keep = lines[: n + 1] if suffix == ".csv" else lines[:n]
            files[split] = work / f"{job}-{split}{suffix}"
            files[split].write_text("\n".join(keep) + "\n", encoding="utf-8")
    return files


def build_models(args, work: Path, log) -> dict[str, Path]:
    """The random-weight models, built in subprocesses (this process holds no CUDA context)."""
    models = {}
    if args.quick:
        from tuneforge.testing import build_tiny_llama

        models["tiny"] = build_tiny_llama(work / "tiny-llama")
        return models
    for size in args.sizes:
        dest = work / f"llama-{size}"
        cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--_build"]
        cmd += [str(args.model_files), str(dest), SIZES[size], "cuda"]
        log(f"building the {size} model: {' '.join(cmd)}")
        subprocess.run(cmd, check=True)
        models[size] = dest
    return models


def compare_curves(base: list[float], other: list[float], window: int = 5) -> dict[str, Any]:
    """How far a loss curve is from the baseline's: per step, and in `window`-step means."""
    n = min(len(base), len(other))
    if n == 0:
        return {"steps_compared": 0}
    per_step = [abs(a - b) / max(abs(a), 1e-8) for a, b in zip(base[:n], other[:n], strict=True)]
    means = [
        abs(sum(base[i : i + window]) - sum(other[i : i + window]))
        / max(abs(sum(base[i : i + window])), 1e-8)
        for i in range(0, n, window)
    ]
    return {
        "steps_compared": n,
        "max_rel_diff_per_step": round(max(per_step), 4),
        "max_rel_diff_window_means": round(max(means), 4),
        "first_loss": [round(base[0], 4), round(other[0], 4)],
        "last_loss": [round(base[n - 1], 4), round(other[n - 1], 4)],
    }


def summarise(results: dict[str, dict], tolerance: float) -> list[dict[str, Any]]:
    rows = []
    for key, r in results.items():
        size, job, arm = key.split("/")
        base = results.get(f"{size}/{job}/baseline")
        row = {"size": size, "job": job, "arm": arm, "status": r.get("status", "PASS")}
        for k in ("real_tokens_per_s", "peak_allocated_gib", "peak_reserved_gib", "timed_steps"):
            row[k] = r.get(k)
        if (
            arm != "baseline"
            and base
            and r.get("real_tokens_per_s")
            and base.get("real_tokens_per_s")
        ):
            row["tokens_per_s_ratio"] = round(r["real_tokens_per_s"] / base["real_tokens_per_s"], 2)
            if base.get("peak_allocated_gib"):
                row["peak_memory_ratio"] = round(
                    r["peak_allocated_gib"] / base["peak_allocated_gib"], 2
                )
            curve = compare_curves(base["loss_curve"], r["loss_curve"])
            row["loss_curve"] = curve
            row["equal_loss_curve"] = curve.get("max_rel_diff_window_means", 1) <= tolerance
            row["same_examples"] = (r["examples"], r["real_tokens"], r["loss_positions"]) == (
                base["examples"],
                base["real_tokens"],
                base["loss_positions"],
            )
        rows.append(row)
    return rows


def markdown(rows: list[dict], env: dict[str, Any]) -> str:
    lines = [
        f"bench/gpu.py on {env.get('device')}, torch {env.get('torch')}, transformers "
        f"{env.get('transformers')}, liger-kernel {env.get('liger_kernel')}",
        "",
        "| model | job | arm | status | real tokens/s | x baseline | peak GiB (allocated) | "
        "x baseline | loss curve: max rel. diff of 5-step means | equal | same examples |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        curve = r.get("loss_curve", {})
        lines.append(
            f"| {r['size']} | {r['job']} | {r['arm']} | {r['status']} | "
            f"{_fmt(r.get('real_tokens_per_s'))} | {_fmt(r.get('tokens_per_s_ratio'), 2)} | "
            f"{_fmt(r.get('peak_allocated_gib'), 2)} | {_fmt(r.get('peak_memory_ratio'), 2)} | "
            f"{_fmt(curve.get('max_rel_diff_window_means'), 4)} | "
            f"{_fmt(r.get('equal_loss_curve'))} | {_fmt(r.get('same_examples'))} |"
        )
    return "\n".join(lines)


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:,.{digits}f}" if isinstance(v, float) else str(v)


def environment() -> dict[str, Any]:
    code = (
        "import json, importlib.util, torch, transformers\n"
        "spec = importlib.util.find_spec('liger_kernel')\n"
        "liger = None\n"
        "if spec is not None:\n"
        "    from importlib.metadata import version\n"
        "    liger = version('liger-kernel')\n"
        "print(json.dumps({'torch': torch.__version__, 'transformers': transformers.__version__,"
        " 'liger_kernel': liger, 'device': torch.cuda.get_device_name(0)"
        " if torch.cuda.is_available() else 'cpu'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_arm"]:
        spec = json.loads(Path(argv[1]).read_text())
        Path(spec["result"]).write_text(json.dumps(run_arm(spec), indent=1))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-files", type=Path, help="config.json + tokenizer files (GPU runs)")
    p.add_argument("--out", type=Path, help="where gpu.json, gpu.md and logs/ go")
    p.add_argument("--quick", action="store_true", help="CPU smoke run on a tiny random Llama")
    p.add_argument("--sizes", default="1b,135m", help="of 1b, 135m (in this order)")
    p.add_argument("--jobs", default="sft,classification", help="of sft, classification")
    p.add_argument("--arms", default="baseline,tuneforge", help=f"of {', '.join(ARMS)}")
    p.add_argument(
        "--padded-arm-for",
        default="1b/sft",
        help="size/job pairs that also run tuneforge-padded (what padding-free batches and the "
        "kernels add on their own); '' for none",
    )
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="first steps not timed")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss-tolerance", type=float, default=0.02)
    p.add_argument("--budget", type=float, default=0, help="seconds; arms not started by then skip")
    p.add_argument("--arm-timeout", type=float, default=600)
    args = p.parse_args(argv)
    if args.quick:
        args.max_steps, args.warmup, args.batch_size, args.max_length = 3, 1, 4, 512
        args.sizes = ["tiny"]
    else:
        args.sizes = args.sizes.split(",")
        if args.model_files is None:
            p.error("--model-files DIR is needed (config.json + tokenizer; see the docstring)")
    out = args.out or (
        Path(tempfile.gettempdir()) / "tuneforge-bench" / "gpu-quick"
        if args.quick
        else BENCH / "results" / "gpu"
    )
    (out / "logs").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tuneforge-gpu-bench-"))
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[gpu.py {time.monotonic() - started:6.0f}s] {msg}", flush=True)

    env = environment()
    log(f"environment: {env}")
    models = build_models(args, work, log)
    results: dict[str, dict] = {}
    for size, model in models.items():
        for job in args.jobs.split(","):
            files = data_files(job, args, work)
            arms = args.arms.split(",")
            if f"{size}/{job}" in args.padded_arm_for.split(",") and ARMS[2] not in arms:
                arms.append(ARMS[2])
            for arm in arms:
                key = f"{size}/{job}/{arm}"
                if args.budget and time.monotonic() - started > args.budget:
                    results[key] = {"status": "SKIP (budget)"}
                    continue
                results[key] = _run_arm(args, key, model, files, work, out, log)
                _write(out, results, args, env)
    rows = _write(out, results, args, env)
    print(markdown(rows, env))
    return 0 if all(r["status"] == "PASS" for r in rows if "SKIP" not in r["status"]) else 1


def _run_arm(args, key: str, model: Path, files: dict, work: Path, out: Path, log) -> dict:
    size, job, arm = key.split("/")
    spec = {
        "arm": arm,
        "job": job,
        "size": size,
        "model": str(model),
        "files": {k: str(v) for k, v in files.items()},
        "work": str(work),
        "warmup": args.warmup,
        "result": str(work / f"{size}-{job}-{arm}.json"),
        "overrides": tuneforge_overrides(args, job, arm, model, files, work),
        "settings": {
            k: getattr(args, k)
            for k in ("max_steps", "batch_size", "learning_rate", "max_length", "seed")
        }
        | {"lora_r": args.lora_r, "lora_alpha": args.lora_alpha},
    }
    spec_file = work / f"{size}-{job}-{arm}.spec.json"
    spec_file.write_text(json.dumps(spec))
    logfile = out / "logs" / f"{size}-{job}-{arm}.log"
    env = {**os.environ, "USE_HUB_KERNELS": "0", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    log(f"{key} ...")
    with logfile.open("w") as f:
        try:
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--_arm", str(spec_file)],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=args.arm_timeout,
            )
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-15:]
        log(f"{key} FAILED ({rc}); last lines of {logfile}:\n" + "\n".join(tail))
        return {"status": f"FAIL ({rc})"}
    result = json.loads(Path(spec["result"]).read_text())
    log(
        f"{key}: {result['real_tokens_per_s']} real tokens/s, peak {result['peak_allocated_gib']} GiB"
    )
    return {"status": "PASS", **result}


def _write(out: Path, results: dict, args, env: dict) -> list[dict]:
    rows = summarise(
        {k: v for k, v in results.items() if v["status"] == "PASS"}, args.loss_tolerance
    )
    rows += [
        {"size": k.split("/")[0], "job": k.split("/")[1], "arm": k.split("/")[2], **v}
        for k, v in results.items()
        if v["status"] != "PASS"
    ]
    settings = {k: v for k, v in vars(args).items() if not isinstance(v, Path)}
    doc = {"environment": env, "settings": settings, "summary": rows, "arms": results}
    (out / "gpu.json").write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    (out / "gpu.md").write_text(markdown(rows, env) + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__":
    sys.exit(main())
