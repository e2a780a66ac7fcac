#!/usr/bin/env python3
"""Run every task and method tuneforge should handle on this machine, as a user would, and print
one table: what ran, wall time, tokens/s, peak memory, PASS / FAIL / SKIP.

Random-weight Llama models are built here from the embedded model's config.json and tokenizer
(no weights, no network): on CUDA a ~135M one (SmolLM2-135M's shapes) and a ~1.07B one (hidden
2048, 16 layers, GQA 32/8 heads, intermediate 8192); with `--device cpu` two tiny ones (2 layers
hidden 32, 4 layers hidden 64) with the same tokenizer. The numbers check that each path runs and
how fast, never how well: the weights are random.

On the offline GPU machine (see /work/shared/gpu/README.md), from the repository root, with the
wheels in `.whl/` and the model files in `gpu_model_files/` (both made here, below; both
git-ignored; 26 + 3.5 MB, under the 64 MiB a command may carry), one line:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src USE_HUB_KERNELS=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 && python3 scripts/gpu_check.py --model-files gpu_model_files --out $OUT --budget 420

(`--budget 420`: steps not started after 7 minutes are skipped, so the table always comes back
inside a 10-minute command. The default rows took 7 minutes together on an H200, measured over two
runs with twice the training data they now use; about a third of each row is Python start-up and
imports.) Made here first:

    bash /work/shared/gpu/fetch_wheels.sh fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 \
        h11==0.16.0 annotated-doc==0.0.7 opentelemetry-api==1.45.2 "typing-extensions>=4.16" \
        absl-py six defusedxml      # the server's and ROUGE's dependencies beyond the usual set
    .venv/bin/python scripts/gpu_check.py --export-model-files gpu_model_files

QLoRA runs only where `import bitsandbytes` works (its ~43 MB wheel does not fit beside the
others); otherwise its row says SKIP. CPU mode (what CI runs, tests/e2e/test_gpu_check.py):
`python scripts/gpu_check.py --device cpu --out DIR`, about 1.5 minutes on 2 cores; rows ask for
bf16/fp16 only on CUDA (fp32 on a CPU) and the cuda-only row (qlora) says SKIP and why.

Every step is a subprocess (`python -m tuneforge.cli ...` through a small wrapper that records the
process's peak memory) with its own log in OUT/logs/; OUT/results.json and OUT/results.md hold the
table, rewritten after every step, so a run cut short still leaves what it measured. Exit code 1
when any step failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
GIB = 1024**3

# Files that describe a model without its weights: what --export-model-files copies and
# --model-files must hold (config.json and one tokenizer file at least).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)
TOKENIZER_FILES = tuple(
    f for f in MODEL_FILES if f not in ("config.json", "generation_config.json")
)

# Model shapes: (layers, hidden, intermediate, heads, kv_heads); None = the source config as is.
SIZES = {
    "cuda": {"small": None, "large": (16, 2048, 8192, 32, 8)},
    "cpu": {"small": (2, 32, 64, 4, 2), "large": (4, 64, 128, 4, 2)},
}


# ==================================================================================================
# Internal modes: run inside the step subprocesses (the parent never imports torch, so it holds no
# CUDA context and nvidia-smi's figures are the steps' own)


def _wrap_cli(memfile: str, args: list[str]) -> None:
    """Run `tuneforge ARGS` in this process and, at exit, write its peak memory to MEMFILE."""
    import atexit
    import resource
    import runpy

    def dump() -> None:
        peak: dict[str, Any] = {
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        }
        torch = sys.modules.get("torch")
        try:
            if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
                peak["cuda_max_allocated_bytes"] = max(
                    torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())
                )
                peak["cuda_max_reserved_bytes"] = max(
                    torch.cuda.max_memory_reserved(i) for i in range(torch.cuda.device_count())
                )
        except Exception as e:  # noqa: BLE001 - memory figures are best effort
            peak["cuda_error"] = repr(e)
        Path(memfile).write_text(json.dumps(peak))

    atexit.register(dump)

    def on_sigterm(signum, frame) -> None:  # uvicorn re-raises SIGTERM after its graceful shutdown
        raise SystemExit(128 + signum)  # exit through atexit, so the memory record is written

    signal.signal(signal.SIGTERM, on_sigterm)
    sys.argv = ["tuneforge", *args]
    runpy.run_module("tuneforge.cli", run_name="__main__", alter_sys=True)


def _probe_environment(outfile: str) -> None:
    """Versions and capabilities the parent needs to decide what to run."""
    import importlib
    import platform

    info: dict[str, Any] = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "datasets",
        "pydantic",
        "fastapi",
        "uvicorn",
        "rouge_score",
        "sacrebleu",
        "tuneforge",
    ):
        try:
            mod = importlib.import_module(name)
            info[name] = getattr(mod, "__version__", "installed")
        except Exception as e:  # noqa: BLE001
            info[name] = f"MISSING ({type(e).__name__}: {e})"[:200]
    import torch

    info["cuda"] = torch.cuda.is_available()
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
        info["bf16"] = torch.cuda.is_bf16_supported()
        info["cuda_version"] = torch.version.cuda
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except Exception as e:  # noqa: BLE001
        info["bitsandbytes"] = f"MISSING ({type(e).__name__}: {e})"[:200]
    info["cpus"] = os.cpu_count()
    Path(outfile).write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    missing = [k for k, v in info.items() if isinstance(v, str) and v.startswith("MISSING")]
    if set(missing) - {"bitsandbytes"}:
        print(f"missing: {', '.join(missing)}")
        sys.exit(1)


def _build_model(src: str, dest: str, size: str, device: str, seed: int = 0) -> None:
    """A random-weight Llama from SRC's config (resized) and tokenizer files, saved to DEST."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    src_dir, dest_dir = Path(src), Path(dest)
    config = LlamaConfig.from_pretrained(src_dir)
    shape = SIZES[device][size]
    if shape is not None:
        layers, hidden, inter, heads, kv = shape
        config.num_hidden_layers = layers
        config.hidden_size = hidden
        config.intermediate_size = inter
        config.num_attention_heads = heads
        config.num_key_value_heads = kv
        config.head_dim = hidden // heads
    torch.manual_seed(seed)
    t = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if device == "cuda":  # half the bytes to write and read; tuneforge loads it as float32
        model = model.to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(dest_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (src_dir / name).is_file():
            shutil.copy2(src_dir / name, dest_dir / name)
    tokenizer = AutoTokenizer.from_pretrained(dest_dir)  # loads: the folder is complete
    summary = {
        "parameters": n,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "intermediate": config.intermediate_size,
        "heads": f"{config.num_attention_heads}/{config.num_key_value_heads}",
        "vocab": len(tokenizer),
        "dtype": str(model.dtype),
        "seconds": round(time.perf_counter() - t, 1),
    }
    (dest_dir / "gpu_check_model.json").write_text(json.dumps(summary))
    print(json.dumps(summary))


def _tiny_tokenizer_files(dest: str) -> None:
    """Fallback model files when the embedded model is not available: tuneforge.testing's tokenizer
    and a Llama config (CPU mode only)."""
    from tuneforge.testing import build_tiny_llama

    tmp = Path(dest) / "_tiny"
    build_tiny_llama(tmp)
    for name in MODEL_FILES:
        if (tmp / name).is_file():
            shutil.copy2(tmp / name, Path(dest) / name)
    shutil.rmtree(tmp)


# ==================================================================================================
# Model files: --export-model-files, --model-files, the embedded model's cache


def embedded_model_dir() -> Path:
    from tuneforge.models import resolve_base_model

    return Path(resolve_base_model("smollm2-135m").path)


def export_model_files(dest: Path) -> None:
    src = embedded_model_dir()
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in MODEL_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
            copied.append(name)
    size = sum((dest / n).stat().st_size for n in copied)
    print(f"copied {', '.join(copied)} from {src} to {dest} ({size / 1e6:.1f} MB)")


def check_model_files(path: Path) -> None:
    if not (path / "config.json").is_file():
        sys.exit(f"--model-files {path}: no config.json there")
    if not any((path / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        sys.exit(f"--model-files {path}: no tokenizer files there (tokenizer.json ...)")


# ==================================================================================================
# Synthetic data (seeded, pure Python)


def _words(text: str) -> list[str]:
    return text.split()


NEUTRAL = _words(
    "the a this that film story plot scene actor director camera music script ending start "
    "character dialogue set light colour sound pace cast crew city night day house road friend "
    "family team season episode chapter moment year hour minute line shot frame cut voice"
)
POSITIVE = _words(
    "wonderful brilliant moving superb delightful charming gripping lovely clever warm"
)
NEGATIVE = _words("boring dull awful tedious clumsy bland messy dreadful shallow lifeless")
TOPICS = _words("network storage billing payroll backup firewall printer database email laptop")


def _sentence(rng: random.Random, n: int, extra: list[str] | None = None) -> str:
    words = [rng.choice(NEUTRAL) for _ in range(n)] + (extra or [])
    rng.shuffle(words)
    return " ".join(words).capitalize() + "."


def write_data(root: Path, scale: dict[str, int], seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}

    def cls_rows(n: int) -> list[dict]:
        rows = []
        for i in range(n):
            label = "positive" if i % 2 else "negative"
            pool = POSITIVE if label == "positive" else NEGATIVE
            cues = [rng.choice(pool) for _ in range(rng.randint(1, 3))]
            rows.append(
                {"text": _sentence(rng, rng.randint(6, scale["words"]), cues), "label": label}
            )
        return rows

    for split, n in (
        ("train", scale["cls_train"]),
        ("validation", scale["eval"]),
        ("test", scale["eval"]),
    ):
        path = root / f"cls_{split}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows(cls_rows(n))
        files[f"cls_{split}"] = path

    def sft_rows(n: int) -> list[dict]:
        rows = []
        for _ in range(n):
            topic = rng.choice(TOPICS)
            body = _sentence(rng, rng.randint(8, scale["words"]), [topic])
            urgency = rng.choice(["low", "high"])
            rows.append(
                {
                    "prompt": f"Summarise this ticket in one line.\n\n{body} Urgency {urgency}.",
                    "completion": f"A {urgency}-urgency {topic} ticket.",
                }
            )
        return rows

    for split, n in (
        ("train", scale["sft_train"]),
        ("validation", scale["eval"]),
        ("test", scale["eval"]),
    ):
        path = root / f"sft_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in sft_rows(n)), encoding="utf-8")
        files[f"sft_{split}"] = path

    for split, n in (("train", scale["docs_train"]), ("validation", scale["docs_eval"])):
        folder = root / f"corpus_{split}"
        folder.mkdir(exist_ok=True)
        for i in range(n):
            paras = [
                " ".join(_sentence(rng, rng.randint(6, 14)) for _ in range(rng.randint(2, 5)))
                for _ in range(scale["paragraphs"])
            ]
            (folder / f"doc_{i:03d}.txt").write_text("\n\n".join(paras) + "\n", encoding="utf-8")
        files[f"corpus_{split}"] = folder
    return files


# ==================================================================================================
# Recipes


def recipe_text(
    name: str,
    *,
    model: Path,
    task: str,
    method: str,
    data: dict[str, Any],
    out: Path,
    device: str,
    train: dict[str, Any],
    baseline: bool,
    sft: dict[str, Any],
) -> str:
    if task == "classification":
        data_block = {
            "train": str(data["cls_train"]),
            "validation": str(data["cls_validation"]),
            "test": str(data["cls_test"]),
            "text_field": "text",
            "label_field": "label",
        }
    elif task == "sft":
        data_block = {
            "train": str(data["sft_train"]),
            "validation": str(data["sft_validation"]),
            "prompt_field": "prompt",
            "completion_field": "completion",
        }
    else:
        data_block = {
            "train": str(data["corpus_train"]),
            "validation": str(data["corpus_validation"]),
        }
    recipe: dict[str, Any] = {
        "name": name,
        "base_model": str(model),
        "task": task,
        "data": data_block,
        "method": method,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "freeze": {"trainable_layers": 1},
        "training": train,
        "baseline": {"enabled": baseline},
        # random texts from a small vocabulary: duplicates and imbalance are not what is checked
        "data_checks": {"duplicates": "off", "imbalance": "off", "short_text": "off"},
        "device": device,
        "output_dir": str(out),
    }
    if task == "sft":
        recipe["sft"] = sft
    return json.dumps(recipe, indent=1)  # JSON is YAML


# ==================================================================================================
# GPU memory sampling (nvidia-smi, whole device)


class GpuSampler:
    """Samples the GPU's memory.used every 200 ms with one long-running nvidia-smi; a step's peak
    is the largest sample within its start and end. It sees every process on the GPU."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.proc: subprocess.Popen | None = None
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return
        index = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip() or "0"
        try:
            self.proc = subprocess.Popen(
                [
                    exe,
                    "--query-gpu=memory.used",
                    "--format=csv,noheader,nounits",
                    "-i",
                    index,
                    "-lms",
                    "200",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.samples.append((time.monotonic(), float(line.strip()) * 1024**2))
            except ValueError:
                continue

    def peak(self, start: float, end: float) -> float | None:
        inside = [b for t, b in self.samples if start <= t <= end + 0.3]
        return max(inside) if inside else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ==================================================================================================
# Steps


@dataclass
class Step:
    name: str
    what: str
    action: Callable[[Step], None] | None = None
    needs: tuple[str, ...] = ()
    skip: str | None = None  # why this step cannot run here (SKIP)
    cuda_only: bool = False
    # filled in when run
    status: str = "-"
    seconds: float | None = None
    tokens_per_s: float | None = None
    tokens_note: str = ""
    torch_peak: float | None = None
    gpu_peak: float | None = None
    rss_peak: float | None = None
    note: str = ""
    log: Path | None = None
    tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class StepFailed(Exception):
    pass


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = args.device
        self.out: Path = args.out.resolve()
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.work = (
            Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="gpu_check-"))
        )
        self.work.mkdir(parents=True, exist_ok=True)
        self.steps: list[Step] = []
        self.by_name: dict[str, Step] = {}
        self.env_info: dict[str, Any] = {}
        self.runs: dict[str, Path] = {}
        self.models: dict[str, Path] = {}
        self.data: dict[str, Any] = {}
        self.sampler = GpuSampler() if self.device == "cuda" else None
        self.started = time.monotonic()
        self.child_env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "USE_HUB_KERNELS": "0",
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "TUNEFORGE_QUIET": "1",  # no progress bars in the logs
            "TUNEFORGE_HOME": str(self.work / "home"),  # registry and caches of this check only
            "TUNEFORGE_REGISTRY": str(self.work / "home" / "registry.sqlite"),
            "COLUMNS": "160",
        }
        if self.device == "cpu":
            self.child_env["CUDA_VISIBLE_DEVICES"] = ""

    # ---------------------------------------------------------------------------------------------
    # Subprocesses

    def _popen(self, step: Step, argv: list[str], memfile: Path | None, log) -> subprocess.Popen:
        if memfile is not None:
            argv = [sys.executable, str(SCRIPT), "--_wrap", str(memfile), "--", *argv]
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.child_env,
            cwd=self.work,
            start_new_session=True,  # a timeout ends the step's whole process group
        )

    def _read_mem(self, step: Step, memfile: Path) -> None:
        if not memfile.is_file():
            return
        mem = json.loads(memfile.read_text())
        if "cuda_max_allocated_bytes" in mem:
            step.torch_peak = max(step.torch_peak or 0, mem["cuda_max_allocated_bytes"])
        step.rss_peak = max(step.rss_peak or 0, mem.get("max_rss_bytes", 0))

    def cli(self, step: Step, *args: str, timeout: float | None = None) -> str:
        """`tuneforge ARGS` in a subprocess; its output is appended to the step's log and returned."""
        return self.python(step, ["--cli", *map(str, args)], timeout=timeout)

    def python(self, step: Step, argv: list[str], timeout: float | None = None) -> str:
        assert step.log is not None
        memfile = self.work / "mem" / f"{step.name}-{time.monotonic_ns()}.json"
        memfile.parent.mkdir(exist_ok=True)
        if argv[0] == "--cli":
            argv, mem = argv[1:], memfile
        else:
            argv, mem = [sys.executable, str(SCRIPT), *argv, "--_memfile", str(memfile)], None
        start = self.log_size(step)
        with step.log.open("a", encoding="utf-8") as log:
            proc = self._popen(step, argv, mem, log)
            try:
                rc = proc.wait(timeout=timeout or self.args.step_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise StepFailed(
                    f"timed out after {timeout or self.args.step_timeout:.0f} s"
                ) from None
        self._read_mem(step, memfile)
        text = step.log.read_text(encoding="utf-8", errors="replace")[start:]
        if rc != 0:
            raise StepFailed(f"exit code {rc}")
        return text

    @staticmethod
    def log_size(step: Step) -> int:
        assert step.log is not None
        return (
            len(step.log.read_text(encoding="utf-8", errors="replace")) if step.log.is_file() else 0
        )

    # ---------------------------------------------------------------------------------------------
    # Plan

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        self.by_name[step.name] = step
        return step

    def plan(self) -> None:
        """The rows, most important first (a --budget cut leaves the tail out). Each training row
        trains one task x method; the precision a row asks for is the CUDA one (fp32 on a CPU).
        `--all` adds rows that repeat covered paths in other combinations."""
        cuda = self.device == "cuda"

        def step(name: str, what: str, action, needs=(), *, extra: bool = False) -> None:
            if extra and not self.args.all:
                return
            self.add(Step(name, what, action, tuple(needs)))

        def train(
            name,
            task,
            method,
            size,
            precision="auto",
            *,
            gc=False,
            baseline=False,
            cuda_only=False,
            extra=False,
        ):
            if extra and not self.args.all:
                return
            used = precision if cuda else "auto"
            what = f"train {task} {method}, {size} model, precision {used}"
            what += " (fp32 on CPU)" if not cuda else ""
            what += ", gradient checkpointing" if gc else ""
            what += " (base model scored before)" if baseline else ""
            row = Step(
                name,
                what,
                self.do_train(task, method, size, used, gc, baseline),
                ("data", f"build-{size}"),
                cuda_only=cuda_only,
            )
            if cuda_only and not cuda:
                row.skip = "needs CUDA"
            self.add(row)

        step("environment", "versions, CUDA, bitsandbytes", self.do_environment)
        step("data", "synthetic classification CSV, sft JSONL, pretrain text", self.do_data)
        step("build-small", self._size_text("small"), self.do_build("small"), ["environment"])
        train("cls-lora", "classification", "lora", "small", baseline=True)
        train("sft-lora", "sft", "lora", "small", baseline=True)
        step("predict-cls", "predict --input CSV (cls-lora)", self.do_predict_cls, ["cls-lora"])
        step(
            "predict-sft",
            "predict --input JSONL, greedy answers (sft-lora)",
            self.do_predict_sft,
            ["sft-lora"],
        )
        step(
            "eval-base-cls",
            "eval --base on the test CSV (cls-lora)",
            self.do_eval_base("cls-lora", "cls_test"),
            ["cls-lora"],
        )
        step(
            "eval-base-sft",
            "eval --base on the test JSONL (sft-lora)",
            self.do_eval_base("sft-lora", "sft_test"),
            ["sft-lora"],
            extra=True,
        )
        step(
            "bias-probe",
            "eval --bias: identity-swap probe, base and tuned (cls-lora)",
            self.do_bias,
            ["cls-lora"],
        )
        step(
            "serve-classify",
            "serve: /health, POST /v1/classify (cls-lora), SIGTERM",
            self.do_serve("cls-lora", "classify"),
            ["cls-lora"],
        )
        step(
            "serve-chat",
            "serve: /health, POST /v1/chat/completions (sft-lora), SIGTERM",
            self.do_serve("sft-lora", "chat"),
            ["sft-lora"],
        )
        step(
            "export-merged-cls",
            "export --format merged, verified by reloading (cls-lora)",
            self.do_export("cls-lora"),
            ["cls-lora"],
        )
        step(
            "export-merged-sft",
            "export --format merged, verified by reloading (sft-lora)",
            self.do_export("sft-lora"),
            ["sft-lora"],
        )
        train("cls-full", "classification", "full", "small", "fp16")
        train("cls-freeze", "classification", "freeze", "small", "bf16")
        train("pretrain-lora", "pretrain", "lora", "small", "bf16")
        train("sft-full", "sft", "full", "small", extra=True)
        train("sft-lora-fp16", "sft", "lora", "small", "fp16", cuda_only=True, extra=True)
        train("pretrain-freeze", "pretrain", "freeze", "small", extra=True)
        step("build-large", self._size_text("large"), self.do_build("large"), ["environment"])
        train("cls-lora-large", "classification", "lora", "large")
        train("sft-lora-large-gc", "sft", "lora", "large", "bf16", gc=True)
        # on CUDA, the environment step skips it when bitsandbytes is missing
        train("sft-qlora-large", "sft", "qlora", "large", "bf16", cuda_only=True)

        if self.args.only:
            pattern = re.compile(self.args.only)
            keep: set[str] = {"environment"}

            def pull(name: str) -> None:
                if name not in keep:
                    keep.add(name)
                    for dep in self.by_name[name].needs:
                        pull(dep)

            for s in self.steps:
                if pattern.search(s.name):
                    pull(s.name)
            self.steps = [s for s in self.steps if s.name in keep]
        if self.args.no_large:
            for s in self.steps:
                if s.name == "build-large" or "build-large" in s.needs:
                    s.skip = "--no-large"

    def _size_text(self, size: str) -> str:
        shape = SIZES[self.device][size]
        if shape is None:
            return f"build the {size} random Llama (the embedded model's shapes, ~135M)"
        layers, hidden, inter, heads, kv = shape
        approx = " (~1.07B)" if self.device == "cuda" else ""
        return f"build the {size} random Llama: {layers} layers, hidden {hidden}, intermediate {inter}, heads {heads}/{kv}{approx}"

    # ---------------------------------------------------------------------------------------------
    # Scale of the runs

    @property
    def scale(self) -> dict[str, int]:
        if self.device == "cuda":
            return {
                "cls_train": 256,
                "sft_train": 128,
                "eval": 48,
                "words": 40,
                "docs_train": 48,
                "docs_eval": 8,
                "paragraphs": 4,
            }
        return {
            "cls_train": 16,
            "sft_train": 12,
            "eval": 6,
            "words": 12,
            "docs_train": 4,
            "docs_eval": 2,
            "paragraphs": 2,
        }

    def training_block(self, task: str, method: str, precision: str, gc: bool) -> dict[str, Any]:
        cuda = self.device == "cuda"
        block: dict[str, Any] = {
            "epochs": 1,
            "batch_size": (16 if task != "pretrain" else 8) if cuda else 4,
            "learning_rate": 1.0e-4 if method == "full" else 2.0e-4,
            "max_length": (256 if task == "pretrain" else 128) if cuda else 64,
            "logging_steps": 5 if cuda else 1,
            "seed": 0,
            "precision": precision,
            "gradient_checkpointing": gc,
        }
        if not cuda:
            block["max_steps"] = 2
        return block

    @property
    def sft_block(self) -> dict[str, Any]:
        if self.device == "cuda":
            return {"generation_examples": 8, "max_new_tokens": 24}
        return {"generation_examples": 2, "max_new_tokens": 4}

    # ---------------------------------------------------------------------------------------------
    # Actions

    def do_environment(self, step: Step) -> None:
        outfile = self.work / "environment.json"
        self.python(step, ["--_probe", str(outfile)], timeout=300)
        self.env_info = json.loads(outfile.read_text())
        (self.out / "environment.json").write_text(json.dumps(self.env_info, indent=1))
        if self.device == "cuda" and not self.env_info.get("cuda"):
            raise StepFailed("--device cuda but torch sees no CUDA GPU")
        info = self.env_info
        step.note = f"torch {info.get('torch')}, transformers {info.get('transformers')}, peft {info.get('peft')}"
        if info.get("cuda"):
            step.note += (
                f"; {info.get('gpu')} ({info.get('gpu_memory_gib')} GiB), bf16 {info.get('bf16')}"
            )
        bnb = str(info.get("bitsandbytes"))
        step.note += f"; bitsandbytes {'missing' if bnb.startswith('MISSING') else bnb}"
        qlora = self.by_name.get("sft-qlora-large")
        if qlora is not None and not qlora.skip and bnb.startswith("MISSING"):
            qlora.skip = "bitsandbytes is not installed"
        if self.device == "cuda" and info.get("bf16") is False:
            for s in self.steps:
                if "precision bf16" in s.what:
                    s.skip = "this GPU has no bf16"

    def do_data(self, step: Step) -> None:
        self.data = write_data(self.work / "data", self.scale)
        s = self.scale
        step.note = (
            f"classification {s['cls_train']} train / {s['eval']} val / {s['eval']} test, "
            f"sft {s['sft_train']} / {s['eval']} / {s['eval']}, pretrain {s['docs_train']} + {s['docs_eval']} docs"
        )

    def do_build(self, size: str) -> Callable[[Step], None]:
        def action(step: Step) -> None:
            dest = self.work / "models" / size
            if dest.exists():
                shutil.rmtree(dest)
            self.python(
                step, ["--_build", str(self.model_files), str(dest), size, self.device], timeout=600
            )
            info = json.loads((dest / "gpu_check_model.json").read_text())
            self.models[size] = dest
            step.note = f"{_count(info['parameters'])} parameters, vocab {info['vocab']}, saved {info['dtype'].removeprefix('torch.')}"

        return action

    def do_train(
        self, task: str, method: str, size: str, precision: str, gc: bool, baseline: bool
    ) -> Callable[[Step], None]:
        def action(step: Step) -> None:
            out = self.work / "runs" / step.name
            recipe = self.work / "recipes" / f"{step.name}.yaml"
            recipe.parent.mkdir(parents=True, exist_ok=True)
            recipe.write_text(
                recipe_text(
                    f"gpu-check-{step.name}",
                    model=self.models[size],
                    task=task,
                    method=method,
                    data=self.data,
                    out=out,
                    device=self.device,
                    train=self.training_block(task, method, precision, gc),
                    baseline=baseline,
                    sft=self.sft_block,
                ),
                encoding="utf-8",
            )
            self.cli(step, "train", recipe)
            finished = (
                [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
                if out.is_dir()
                else []
            )
            if len(finished) != 1:
                raise StepFailed(
                    f"expected one finished run folder in {out}, found {[p.name for p in finished]}"
                )
            run = finished[0]
            for name in ("run.json", "metrics.json", "recipe.yaml", "report.md"):
                if not (run / name).is_file():
                    raise StepFailed(f"{run.name} has no {name}")
            self.runs[step.name] = run
            meta = json.loads((run / "run.json").read_text())
            metrics = json.loads((run / "metrics.json").read_text())
            self._training_rate(step, meta, metrics)
            tuned = metrics.get("tuned", {}).get("validation", {})
            shown = {
                k: tuned[k]
                for k in ("accuracy", "macro_f1", "loss", "perplexity")
                if isinstance(tuned.get(k), (int, float))
            }
            params = meta.get("parameters", {})
            step.note = (
                f"trainable {_count(params.get('trainable', 0))} of {_count(params.get('total', 0))}; "
                + ", ".join(f"{k} {v:.3g}" for k, v in shown.items())
                + f"; timings {meta.get('timings')}"
            )

        return action

    @staticmethod
    def _training_rate(step: Step, meta: dict, metrics: dict) -> None:
        tokens = (meta.get("info") or {}).get("tokens", {})
        train_tokens = tokens.get("train") if isinstance(tokens, dict) else None
        end = next(
            (h for h in reversed(metrics.get("log_history", [])) if "train_runtime" in h), None
        )
        if not train_tokens or end is None or not end.get("train_runtime"):
            step.tokens_note = "no token count in run.json"
            return
        epochs = float(end.get("epoch", 1.0))
        step.tokens_per_s = train_tokens * epochs / float(end["train_runtime"])
        step.extra["train_tokens_seen"] = round(train_tokens * epochs)
        step.extra["train_runtime_s"] = end["train_runtime"]

    def _run(self, name: str) -> Path:
        if name not in self.runs:
            raise StepFailed(f"no run from {name}")
        return self.runs[name]

    def do_predict_cls(self, step: Step) -> None:
        run = self._run("cls-lora")
        out = self.work / "predict" / "cls.jsonl"
        self.cli(
            step,
            "predict",
            run,
            "--input",
            self.data["cls_test"],
            "--output",
            out,
            "--device",
            self.device,
        )
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        labels = {r.get("label") for r in rows}
        if len(rows) != self.scale["eval"] or not labels <= {"positive", "negative"}:
            raise StepFailed(
                f"{out}: {len(rows)} rows with labels {labels}, expected {self.scale['eval']}"
            )
        step.note = f"{len(rows)} texts classified"

    def do_predict_sft(self, step: Step) -> None:
        run = self._run("sft-lora")
        out = self.work / "predict" / "sft.jsonl"
        self.cli(
            step,
            "predict",
            run,
            "--input",
            self.data["sft_test"],
            "--output",
            out,
            "--device",
            self.device,
        )
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        if len(rows) != self.scale["eval"] or any(
            not isinstance(r.get("completion"), str) for r in rows
        ):
            raise StepFailed(
                f"{out}: {len(rows)} rows, expected {self.scale['eval']} with a completion"
            )
        step.note = f"{len(rows)} answers generated"

    def do_eval_base(self, run_name: str, data_key: str) -> Callable[[Step], None]:
        def action(step: Step) -> None:
            text = self.cli(
                step,
                "eval",
                self._run(run_name),
                "--data",
                self.data[data_key],
                "--base",
                "--json",
                "--device",
                self.device,
            )
            obj = _last_json(text)
            if obj is None:
                raise StepFailed("eval --json printed no JSON object")
            base = obj.get("base") if isinstance(obj.get("base"), dict) else {}
            shown = [
                k
                for k in ("accuracy", "macro_f1", "loss", "perplexity", "rougeL")
                if isinstance(obj.get(k), (int, float))
            ]
            if not shown or not base:
                raise StepFailed(
                    f"eval --json: no metrics or no base model figures in {sorted(obj)}"
                )
            step.note = f"n={obj.get('n')}: " + ", ".join(
                f"{k} {obj[k]:.3g} (base {base[k]:.3g})"
                if isinstance(base.get(k), (int, float))
                else f"{k} {obj[k]:.3g}"
                for k in shown
            )

        return action

    def do_bias(self, step: Step) -> None:
        run = self._run("cls-lora")
        self.cli(step, "eval", run, "--bias", "--device", self.device)
        if not (run / "bias.json").is_file():
            raise StepFailed("no bias.json written")
        probe = json.loads((run / "bias.json").read_text())
        flips = {
            side: max(
                (
                    c.get("flip_rate", 0)
                    for c in (probe.get(side) or {}).get("categories", {}).values()
                ),
                default=None,
            )
            for side in ("base", "tuned")
        }
        if flips["tuned"] is None:
            raise StepFailed(f"bias.json has no tuned categories: {sorted(probe)}")
        step.note = "largest flip rate over categories: " + ", ".join(
            f"{side} {v:.2f}" for side, v in flips.items() if v is not None
        )

    def do_export(self, run_name: str) -> Callable[[Step], None]:
        def action(step: Step) -> None:
            dest = self.work / "exports" / f"{run_name}-merged"
            self.cli(
                step,
                "export",
                self._run(run_name),
                "--format",
                "merged",
                "--output",
                dest,
                "--force",
                "--device",
                self.device,
            )
            weights = list(dest.glob("*.safetensors"))
            if not weights or not (dest / "config.json").is_file():
                raise StepFailed(f"{dest} has no safetensors weights or config.json")
            size = sum(p.stat().st_size for p in weights)
            step.note = f"{len(weights)} safetensors file(s), {size / 1e6:,.0f} MB, verified against the run"

        return action

    def do_serve(self, run_name: str, kind: str) -> Callable[[Step], None]:
        def action(step: Step) -> None:
            run = self._run(run_name)
            assert step.log is not None
            memfile = self.work / "mem" / f"{step.name}.json"
            memfile.parent.mkdir(exist_ok=True)
            start = self.log_size(step)
            with step.log.open("a", encoding="utf-8") as log:
                proc = self._popen(
                    step, ["serve", str(run), "--port", "0", "--device", self.device], memfile, log
                )
            try:
                url = self._wait_ready(step, proc, start)
                if kind == "classify":
                    t = time.perf_counter()
                    body = _post(
                        f"{url}/v1/classify",
                        {"input": ["A wonderful, moving film.", "A dull and tedious mess."]},
                    )
                    latency = time.perf_counter() - t
                    labels = [d.get("label") for d in body.get("data", [])]
                    if len(labels) != 2 or any(
                        label not in ("positive", "negative") for label in labels
                    ):
                        raise StepFailed(f"/v1/classify answered {body}")
                    step.note = f"labels {labels} in {latency * 1000:.0f} ms"
                else:
                    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as r:
                        model = json.loads(r.read())["data"][0]["id"]
                    request = {
                        "model": model,
                        "messages": [
                            {
                                "role": "user",
                                "content": "Summarise this ticket in one line.\n\nThe printer on floor two is jammed again.",
                            }
                        ],
                        "max_tokens": 16,
                        "temperature": 0,
                    }
                    t = time.perf_counter()
                    body = _post(f"{url}/v1/chat/completions", request)
                    latency = time.perf_counter() - t
                    content = body["choices"][0]["message"]["content"]
                    generated = int(body.get("usage", {}).get("completion_tokens", 0))
                    if not isinstance(content, str) or generated < 1:
                        raise StepFailed(f"/v1/chat/completions answered {body}")
                    step.tokens_per_s = generated / latency
                    step.tokens_note = "generated tokens / request time"
                    step.note = f"{generated} tokens in {latency * 1000:.0f} ms: {content[:40]!r}"
                with step.log.open("a", encoding="utf-8") as log:
                    log.write(f"\n[gpu_check] response: {json.dumps(body)[:2000]}\n")
            finally:
                rc = _stop(proc)
            self._read_mem(step, memfile)
            text = step.log.read_text(encoding="utf-8", errors="replace")[start:]
            if (
                rc not in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
                or "Application shutdown complete" not in text
            ):
                raise StepFailed(
                    f"the server did not shut down cleanly on SIGTERM (exit code {rc})"
                )

        return action

    def _wait_ready(self, step: Step, proc: subprocess.Popen, start: int) -> str:
        assert step.log is not None
        deadline = time.monotonic() + self.args.step_timeout
        url = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StepFailed(
                    f"the server exited with code {proc.returncode} before it was ready"
                )
            if not url:
                found = re.search(
                    r" on (http://127\.0\.0\.1:\d+) ", step.log.read_text(errors="replace")[start:]
                )
                url = found.group(1) if found else ""
            if url:
                try:
                    with urllib.request.urlopen(f"{url}/ready", timeout=5) as r:  # model loaded
                        if r.status == 200:
                            return url
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.25)
        raise StepFailed(f"the server was not ready within {self.args.step_timeout:.0f} s")

    # ---------------------------------------------------------------------------------------------
    # Running and reporting

    @property
    def model_files(self) -> Path:
        return self.args.model_files_resolved

    def run(self) -> int:
        self.plan()
        print(
            f"gpu_check: device {self.device}, {len(self.steps)} steps; work folder {self.work}; logs in {self.logs}",
            flush=True,
        )
        try:
            for step in self.steps:
                self.run_step(step)
                self.write_results()
        finally:
            if self.sampler is not None:
                self.sampler.stop()
        self.write_results()
        self.bundle_logs()
        print()
        print(self.markdown())
        failed = [s for s in self.steps if s.status == "FAIL"]
        for s in failed:
            print(f"\n--- {s.name} FAILED ({s.note}); last lines of {s.log}:\n{s.tail}")
        total = time.monotonic() - self.started
        print(
            f"\n{sum(s.status == 'PASS' for s in self.steps)} passed, {len(failed)} failed, "
            f"{sum(s.status == 'SKIP' for s in self.steps)} skipped in {total:.0f} s; results in {self.out}"
        )
        if not self.args.keep_work and not self.args.work:
            shutil.rmtree(self.work, ignore_errors=True)
        return 1 if failed else 0

    def bundle_logs(self) -> None:
        """All logs in one file too: some ways of fetching OUT bring back only a few files."""
        import tarfile

        with tarfile.open(self.out / "logs.tar.gz", "w:gz") as tar:
            tar.add(self.logs, arcname="logs")

    def run_step(self, step: Step) -> None:
        missing = [
            d
            for d in step.needs
            if self.by_name.get(d) is not None and self.by_name[d].status != "PASS"
        ]
        if step.skip:
            step.status, step.note = "SKIP", step.skip
        elif missing:
            step.status, step.note = "SKIP", f"needs {', '.join(missing)}, which did not pass"
        elif self.args.budget and time.monotonic() - self.started > self.args.budget:
            step.status, step.note = "SKIP", f"past the time budget of {self.args.budget:.0f} s"
        if step.status == "SKIP":
            print(f"[{step.name}] SKIP: {step.note}", flush=True)
            return
        step.log = self.logs / f"{step.name}.log"
        step.log.write_text(f"# {step.name}: {step.what}\n", encoding="utf-8")
        print(f"[{step.name}] {step.what} ...", flush=True)
        t0 = time.monotonic()
        try:
            assert step.action is not None
            step.action(step)
            step.status = "PASS"
        except StepFailed as e:
            step.status, step.note = "FAIL", f"{e}" + (f"; {step.note}" if step.note else "")
        except Exception as e:  # noqa: BLE001 - a bug in this script is a failed step, not a crash
            step.status, step.note = "FAIL", f"gpu_check error: {type(e).__name__}: {e}"
            with step.log.open("a") as log:
                import traceback

                log.write(traceback.format_exc())
        t1 = time.monotonic()
        step.seconds = t1 - t0
        if self.sampler is not None:
            step.gpu_peak = self.sampler.peak(t0, t1)
        if step.status == "FAIL":
            lines = step.log.read_text(encoding="utf-8", errors="replace").splitlines()
            step.tail = "\n".join(lines[-self.args.tail_lines :])
        print(f"[{step.name}] {step.status} in {step.seconds:.1f} s {step.note}", flush=True)

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for s in self.steps:
            rows.append(
                {
                    "step": s.name,
                    "what": s.what,
                    "status": s.status,
                    "cuda_only": s.cuda_only,
                    "wall_s": None if s.seconds is None else round(s.seconds, 1),
                    "tokens_per_s": None if s.tokens_per_s is None else round(s.tokens_per_s, 1),
                    "tokens_note": s.tokens_note,
                    "torch_peak_gib": _gib(s.torch_peak),
                    "gpu_used_peak_gib": _gib(s.gpu_peak),
                    "rss_peak_gib": _gib(s.rss_peak),
                    "note": s.note,
                    "log": str(s.log.relative_to(self.out)) if s.log else None,
                    "log_tail": s.tail,
                    **s.extra,
                }
            )
        return rows

    def write_results(self) -> None:
        doc = {
            "device": self.device,
            "environment": self.env_info,
            "wall_s": round(time.monotonic() - self.started, 1),
            "columns": COLUMN_NOTES,
            "steps": self.rows(),
        }
        (self.out / "results.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
        (self.out / "results.md").write_text(self.markdown() + "\n", encoding="utf-8")

    def markdown(self) -> str:
        head = "| step | status | wall s | train tokens/s | torch peak GiB | GPU used peak GiB | peak RSS GiB | what / note |"
        lines = [
            f"gpu_check on {self.device}"
            + (f" ({self.env_info.get('gpu')})" if self.env_info.get("gpu") else "")
            + f", {time.monotonic() - self.started:.0f} s in all",
            "",
            head,
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.rows():
            note = f"{r['what']}" + (f" — {r['note']}" if r["note"] else "")
            lines.append(
                f"| {r['step']} | {r['status']} | {_fmt(r['wall_s'])} | {_fmt(r['tokens_per_s'])} | "
                f"{_fmt(r['torch_peak_gib'], 2)} | {_fmt(r['gpu_used_peak_gib'], 2)} | {_fmt(r['rss_peak_gib'], 2)} | "
                f"{note.replace('|', '/')} |"
            )
        lines += ["", *[f"- {k}: {v}" for k, v in COLUMN_NOTES.items()]]
        return "\n".join(lines)


COLUMN_NOTES = {
    "wall s": "the step's wall time, Python start-up, imports and model loading included",
    "train tokens/s": "training rows: real (unpadded) training tokens from run.json's info.tokens.train x epochs "
    "run / the Trainer's train_runtime (in-training evaluation included); serve-chat: generated tokens / "
    "request time",
    "torch peak GiB": "torch.cuda.max_memory_allocated in the step's tuneforge process (the largest over "
    "its calls); CUDA only",
    "GPU used peak GiB": "largest nvidia-smi memory.used of the whole GPU sampled every 200 ms during "
    "the step (CUDA context and allocator cache included; other processes too)",
    "peak RSS GiB": "the step's largest tuneforge process's peak resident memory (ru_maxrss)",
}


def _count(n: float) -> str:
    return f"{n / 1e6:,.1f}M" if n >= 1e6 else f"{n / 1e3:,.1f}k"


def _gib(b: float | None) -> float | None:
    return None if b is None else round(b / GIB, 3)


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if isinstance(v, float) else str(v)


def _last_json(text: str) -> dict | None:
    """The last top-level JSON object in a log (eval --json prints one, possibly over many lines)."""
    start = text.rfind("\n{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[start + 1 :])
            if isinstance(obj, dict):
                return obj
        except json.JSONDecodeError:
            pass
        start = text.rfind("\n{", 0, start)
    return None


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise StepFailed(f"POST {url}: HTTP {e.code}: {e.read()[:500]!r}") from None


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.terminate()  # uvicorn shuts down gracefully on SIGTERM
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()
    return proc.returncode


# ==================================================================================================
# Entry point


def _internal(argv: list[str]) -> bool:
    """The step subprocesses' modes (not for users): --_wrap, --_probe, --_build."""
    if not argv or not argv[0].startswith("--_"):
        return False
    memfile = None
    if "--_memfile" in argv:
        i = argv.index("--_memfile")
        memfile, argv = argv[i + 1], argv[:i] + argv[i + 2 :]
    mode, rest = argv[0], argv[1:]
    if mode == "--_wrap":
        _wrap_cli(rest[0], rest[2:] if rest[1:2] == ["--"] else rest[1:])
        return True
    if memfile is not None:  # the same memory record as a wrapped CLI call
        import atexit
        import resource

        def dump() -> None:
            peak: dict[str, Any] = {
                "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            }
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
                peak["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
            Path(memfile).write_text(json.dumps(peak))

        atexit.register(dump)
    if mode == "--_probe":
        _probe_environment(rest[0])
    elif mode == "--_build":
        _build_model(*rest[:4])
    elif mode == "--_tiny-files":
        _tiny_tokenizer_files(rest[0])
    else:
        sys.exit(f"unknown internal mode {mode}")
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if _internal(argv):
        return 0
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device",
        choices=["auto", "cuda", "cpu"],
        default="auto",
        help="auto: cuda when nvidia-smi sees a GPU, else cpu (tiny models, a few steps)",
    )
    p.add_argument(
        "--model-files",
        type=Path,
        help="folder with config.json + tokenizer files (default: the embedded model's, from tuneforge's cache)",
    )
    p.add_argument(
        "--export-model-files",
        type=Path,
        metavar="DIR",
        help="copy the embedded model's config and tokenizer files (~3.5 MB) to DIR and exit",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("gpu_check_out"),
        help="where results.json, results.md and logs/ go",
    )
    p.add_argument("--work", help="work folder (default: a temporary one, removed at the end)")
    p.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the temporary work folder (runs, models, data)",
    )
    p.add_argument(
        "--only", help="regex: run only the steps whose name matches (and what they need)"
    )
    p.add_argument("--no-large", action="store_true", help="skip the large model's rows")
    p.add_argument(
        "--all",
        action="store_true",
        help="also the rows that repeat covered paths in other combinations (eval --base on sft, "
        "sft full, sft lora fp16, pretrain freeze)",
    )
    p.add_argument("--step-timeout", type=float, default=600, help="seconds one step may take")
    p.add_argument(
        "--budget",
        type=float,
        default=0,
        help="seconds: steps not started by then are skipped (0: no budget)",
    )
    p.add_argument("--tail-lines", type=int, default=15, help="log lines shown for a failed step")
    args = p.parse_args(argv)

    if args.export_model_files:
        export_model_files(args.export_model_files)
        return 0
    if args.device == "auto":
        args.device = "cuda" if _nvidia_gpu() else "cpu"
    if args.model_files:
        check_model_files(args.model_files)
        args.model_files_resolved = args.model_files.resolve()
    else:
        try:
            args.model_files_resolved = embedded_model_dir()
        except Exception as e:  # noqa: BLE001
            if args.device == "cuda":
                sys.exit(f"no model files: pass --model-files DIR ({type(e).__name__}: {e})")
            # CPU mode without the embedded model: tuneforge.testing's tokenizer instead
            dest = Path(tempfile.mkdtemp(prefix="gpu_check-files-"))
            subprocess.run([sys.executable, str(SCRIPT), "--_tiny-files", str(dest)], check=True)
            print(f"the embedded model is not available ({e}); using tuneforge.testing's tokenizer")
            args.model_files_resolved = dest
    return Check(args).run()


def _nvidia_gpu() -> bool:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


if __name__ == "__main__":
    sys.exit(main())
