"""Every recipe shipped in recipes/ is valid and its data passes `tuneforge data check`.

The worked examples are what a new user runs first; a typo in a recipe or a leaked duplicate in an
example data set must fail CI, not the user's first run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_the_worked_examples_cover_every_task():
    from tuneforge.config import load_recipe

    tasks = {load_recipe(path).task for path in RECIPES}
    assert tasks == {"classification", "sft", "pretrain", "preference"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_data_passes_the_data_check(recipe, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name their data relative to the project root
    from tuneforge.config import load_recipe

    args = ["data", "check", str(recipe.relative_to(ROOT))]
    if load_recipe(recipe).base_model.startswith(("model:", "run:")):
        # a second step (DPO on the SFT version) names a registered version that does not exist
        # in a fresh registry; its data is checked with the tokenizer that version shares
        args += ["--set", "base_model=smollm2-135m"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    severities = [
        line.split("│")[1].strip() for line in result.output.splitlines() if line.startswith("│")
    ]
    assert "error" not in severities, result.output  # leakage, empty texts, unparseable rows
