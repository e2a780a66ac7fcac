"""Where tuneforge keeps its own files: the home folder (TUNEFORGE_HOME), the model cache, the
base model's kept scores and the default registry."""

from __future__ import annotations

import os
from pathlib import Path


def tuneforge_home() -> Path:
    return Path(os.environ.get("TUNEFORGE_HOME", Path.home() / ".cache" / "tuneforge"))


def models_cache() -> Path:
    return tuneforge_home() / "models"


def base_scores_cache() -> Path:
    """$TUNEFORGE_BASE_SCORES, else <tuneforge home>/cache/base-scores (runs/base_scores.py)."""
    if os.environ.get("TUNEFORGE_BASE_SCORES"):
        return Path(os.environ["TUNEFORGE_BASE_SCORES"])
    return tuneforge_home() / "cache" / "base-scores"


def default_registry() -> Path:
    """$TUNEFORGE_REGISTRY, else <tuneforge home>/registry.sqlite."""
    if os.environ.get("TUNEFORGE_REGISTRY"):
        return Path(os.environ["TUNEFORGE_REGISTRY"])
    return tuneforge_home() / "registry.sqlite"
