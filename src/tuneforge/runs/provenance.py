"""Where a run came from, so it can be traced and reproduced: content hashes of the base
weights and data files, package versions, hardware and the git commit."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def sha256_path(path: Path) -> str:
    """Content hash of a file, or of every file below a folder (names included)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def weights_hash(model_dir: Path) -> str:
    """sha256 over the model's safetensors files, cached beside them by size, modification and
    change time and inode (a copy that keeps the modification time is hashed again)."""
    files = sorted(model_dir.glob("*.safetensors"))
    key = [
        (f.name, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino)
        for f, s in ((f, f.stat()) for f in files)
    ]
    cache = model_dir / ".tuneforge_weights_sha256.json"
    with contextlib.suppress(Exception):
        cached = json.loads(cache.read_text())
        if cached["key"] == [list(k) for k in key]:
            return cached["sha256"]
    h = hashlib.sha256()
    for f in files:
        h.update(sha256_path(f).encode())
    digest = h.hexdigest()
    with contextlib.suppress(OSError):
        cache.write_text(json.dumps({"key": key, "sha256": digest}))
    return digest


def git_commit(cwd: Path = Path(".")) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def data_hashes(sources: dict[str, str | Path]) -> dict[str, dict[str, Any]]:
    out = {}
    for split, src in sources.items():
        path = Path(str(src))
        if path.exists():
            # the absolute path too: a continued run finds its parent's files from any folder
            out[split] = {
                "path": str(path),
                "resolved": str(path.resolve()),
                "sha256": sha256_path(path),
            }
        else:  # e.g. "train.csv (validation_split=0.1, seed=0)"
            out[split] = {"path": str(src)}
    return out


# --------------------------------------------------------------------------------------------------
# Runs


def provenance(recipe, source, sources: dict[str, str]) -> dict[str, Any]:
    """What identifies a run's inputs: base weights, data content, versions, code."""
    return {
        "name": recipe.name,
        "task": recipe.task,
        "method": recipe.method,
        "base_model": recipe.base_model,
        "base_weights_sha256": weights_hash(source.path),
        "recipe": recipe.to_yaml_dict(),
        "data": data_hashes(sources),
        "versions": environment(),
        "git_commit": git_commit(),
    }


def environment() -> dict[str, Any]:
    """Package versions and hardware (the heavy imports stay in here: the CLI starts fast)."""
    import peft  # deferred: CLI start (peft)
    import torch  # deferred: CLI start (torch)
    import transformers  # deferred: CLI start (transformers)

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
