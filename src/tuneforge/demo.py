"""`tuneforge demo`: the sentiment recipe on the embedded model, from the project checkout."""

from __future__ import annotations

import os
from pathlib import Path

from tuneforge import train
from tuneforge.errors import TuneforgeError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_RECIPE = PROJECT_ROOT / "recipes" / "sentiment.yaml"


def run_demo(overrides: list[str]):
    if not DEMO_RECIPE.is_file():
        raise TuneforgeError(
            f"demo: {DEMO_RECIPE} not found",
            hint="the demo runs from a checkout of the tuneforge repository installed with `pip install -e .`",
        )
    # Data paths in the recipe are relative to the project root.
    cwd = Path.cwd()
    os.chdir(PROJECT_ROOT)
    try:
        return train(DEMO_RECIPE, [*overrides, f"output_dir={_output_dir(cwd, overrides)}"])
    finally:
        os.chdir(cwd)


def _output_dir(cwd: Path, overrides: list[str]) -> Path:
    for item in overrides:
        if item.startswith("output_dir="):
            return (cwd / item.split("=", 1)[1]).resolve()
    return cwd / "runs"
