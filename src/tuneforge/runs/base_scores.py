"""The untouched base model's scores, kept across runs: a sweep scores the base model once.

Every run measures the base model on its evaluation splits beside the tuned one (the gain is
measured, not claimed). Runs that differ only in how they train (learning rate, epochs, LoRA rank,
seed, ...) measure the same base model on the same rows the same way, and get the same figures:
12-18 s of a 2-3 minute classification job on a 2-core CPU, minutes for a larger model or a
generating task. So the figures are kept under `<TUNEFORGE_HOME>/cache/base-scores/` (or
$TUNEFORGE_BASE_SCORES), one file per key, and a later run with the same key reads them instead
of scoring again (`baseline.reuse`).

The key is a sha256 over everything the scoring reads or runs on:
- the base model's files: the weights' content hash (`provenance.weights_hash`, cached by size and
  time) and every other file of the folder (config, tokenizer, chat template);
- the evaluation rows of each split and the task's data description (`info`: labels, fields);
- the recipe, less the fields that only shape training (`NOT_SCORING`);
- the tuneforge code (every module of the package), the torch, transformers and PEFT versions,
  the processor, the device, the inference precision and the thread count.
Anything else changed scores again. A cache file that cannot be read is a miss, and a cache that
cannot be written only costs the next run the scoring: the run itself never fails on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from tuneforge.paths import base_scores_cache
from tuneforge.runs.provenance import sha256_path, weights_hash

# Recipe fields that shape training only, never how the untouched base model is scored (checked:
# no task reads them while scoring); a sweep over them reuses one scoring. And `baseline.reuse`.
NOT_SCORING: dict[str, Any] = {
    "name": True,
    "method": True,
    "lora": True,
    "freeze": True,
    "evaluation": True,  # bootstrap settings: the comparisons are computed after, every run
    "output_dir": True,
    "registry": True,
    "baseline": {"reuse": True},
    "training": {
        "epochs": True,
        "max_steps": True,
        "learning_rate": True,
        "gradient_accumulation_steps": True,
        "gradient_checkpointing": True,
        "seed": True,  # the base model's scoring draws no random number (greedy answers)
        "weight_decay": True,
        "label_smoothing": True,
        "warmup_ratio": True,
        "lr_scheduler": True,
        "eval_steps": True,
        "save_steps": True,
        "logging_steps": True,
        "group_by_length": True,
        "length_jitter": True,
        "report_to": True,
        "processes": True,
    },
}
KEEP = 64  # most recently used entries kept; older ones are removed when one is added
# Packages whose versions enter the key besides torch, transformers and PEFT: tokenisation, chat
# templates, the bf16 wrapper, the metrics.
PACKAGES = (
    "tokenizers",
    "accelerate",
    "jinja2",
    "numpy",
    "scikit-learn",
    "scipy",
    "sacrebleu",
    "rouge-score",
)
# Environment variables that change which kernels run.
ENVIRONMENT = ("USE_HUB_KERNELS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# Files of a model folder bigger than this enter the key by name, size and time, not content.
LARGE_FILE = 16 << 20


def key(
    recipe,
    model_dir: Path,
    splits: dict[str, list[dict]],
    info: dict[str, Any],
    *,
    device: str,
    precision: str,
    weights_sha256: str | None = None,
) -> str | None:
    """The sha256 that names one scoring (see the module's docstring); call it where the scoring
    runs (the thread count is part of it). `weights_sha256`: the weights' hash where the caller
    has it (the run's provenance), else computed (cached beside the weights when writable).
    None when the model's files could not all be read: nothing is reused or kept then."""
    import peft  # deferred: the versions, where the job has imported them already
    import torch  # deferred: as above
    import transformers  # deferred: as above

    try:
        files = _model_files(model_dir)
        weights = weights_sha256 or weights_hash(model_dir)
    except OSError:
        return None
    parts = {
        "recipe": recipe.model_dump(mode="json", exclude=NOT_SCORING),
        "weights": weights,
        "model_files": files,
        "splits": splits,
        "info": info,
        "code": _code_hash(),
        "versions": [torch.__version__, transformers.__version__, peft.__version__],
        "packages": {name: _version(name) for name in PACKAGES},
        "environment": {name: os.environ.get(name) for name in ENVIRONMENT},
        "machine": [platform.machine(), platform.processor(), _cpu_model()],
        "device": [device, torch.cuda.get_device_name(device) if device.startswith("cuda") else ""],
        "precision": precision,
        "threads": torch.get_num_threads(),
    }
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def reused_or_scored(
    digest: str | None,
    splits: Iterable[str],
    score: Callable[[], dict[str, Any]],
    *,
    reuse: bool,
    run: str,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The scores kept under `digest` for exactly `splits` when `reuse` allows and there are
    some, else `score()`'s, kept under `digest` (as scored for `run`). Returns (scores, origin):
    origin is {"run", "created", "seconds", "key"} of the kept scoring read, None when scored now.
    `run` names who scored: a run's folder name, or what `tuneforge eval` measured.
    A None digest (the model's files could not be read) scores and keeps nothing."""
    splits = list(splits)
    kept = load(digest, splits) if digest and reuse else None
    if kept is not None:
        origin = {field: kept[field] for field in ("run", "created", "seconds")}
        return kept["scores"], {**origin, "key": digest}
    t = time.perf_counter()
    scores = score()
    if digest is not None:
        save(digest, scores, run=run, seconds=time.perf_counter() - t)
    return scores, None


def reuse_message(origin: dict[str, Any], again: str) -> str:
    """The line that says a scoring was read, not run; `again` says how to score anew."""
    return (
        f"Base model scores reused from run {origin['run']} ({origin['created']}, "
        f"{origin['seconds']} s to score): the same base model, evaluation rows, settings and "
        f"tuneforge code ({again} scores again)"
    )


def load(digest: str, splits: Iterable[str]) -> dict[str, Any] | None:
    """The kept entry of a key ({"scores", "run", "created", "seconds"}) with scores for exactly
    `splits`; None when there is none or it cannot be read whole. A hit counts as a use (the
    entry is kept the longest)."""
    path = base_scores_cache() / f"{digest}.json"
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(entry, dict)
        or entry.get("key") != digest
        or not all(field in entry for field in ("run", "created", "seconds"))
        or not isinstance(entry.get("scores"), dict)
        or set(entry["scores"]) != set(splits)
    ):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)
    return entry


def save(digest: str, scores: dict[str, Any], *, run: str, seconds: float) -> None:
    """Keep a scoring under its key (written whole or not at all; failures are ignored)."""
    entry = {
        "key": digest,
        "run": run,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(seconds, 1),
        "scores": scores,
    }
    with contextlib.suppress(OSError):
        target = base_scores_cache()
        target.mkdir(parents=True, exist_ok=True)
        # a name of its own: two runs may write the same key at once
        fd, tmp = tempfile.mkstemp(prefix=f".{digest}.", suffix=".tmp", dir=target)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f, default=str)
            os.replace(tmp, target / f"{digest}.json")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _prune(target)


def _prune(target: Path) -> None:
    entries = sorted(target.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        with contextlib.suppress(OSError):
            old.unlink()


def _model_files(model_dir: Path) -> list[tuple[str, Any]]:
    """Every file of the model folder but the weights (hashed apart) and hidden files."""
    out: list[tuple[str, Any]] = []
    for f in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = f.relative_to(model_dir)
        if f.suffix == ".safetensors" or any(part.startswith(".") for part in relative.parts):
            continue
        stat = f.stat()
        if stat.st_size <= LARGE_FILE:
            out.append((str(relative), sha256_path(f)))
        else:  # the change time and inode too: a copy that keeps the modification time differs
            out.append(
                (str(relative), [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino])
            )
    return out


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _code_hash() -> str:
    """sha256 over tuneforge's own modules: a changed scoring code scores again."""
    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(package.rglob("*.py")):
        h.update(str(f.relative_to(package)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""
