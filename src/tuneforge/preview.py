"""`data preview`: a few training examples exactly as the model will see them, before training.

Uses the same task code as training (reading, rendering, masking, packing), so what the preview
shows is what the loss sees.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.config import load_recipe
from tuneforge.models import load_tokenizer
from tuneforge.progress import status
from tuneforge.runs.parents import base_source
from tuneforge.tasks import get_task
from tuneforge.tasks.base import Preview


def preview_recipe(
    recipe_path: str | Path, overrides: list[str] | None = None, n: int = 3
) -> list[Preview]:
    recipe = load_recipe(recipe_path, overrides)
    task = get_task(recipe.task)
    source = base_source(recipe.base_model, trust_remote_code=recipe.trust_remote_code)
    with status(f"Loading tokenizer of {recipe.base_model}"):
        tokenizer = load_tokenizer(source.path, trust_remote_code=recipe.trust_remote_code)
    return task.preview(recipe, tokenizer, Path(recipe_path).parent, n)
