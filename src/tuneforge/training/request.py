"""What a `train` call asks for (`Job`): read once where the job starts (`entry.py`), handed to
the process(es) that train (`job.py`), so every one of them runs the same recipe."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuneforge.config import Recipe, load_recipe
from tuneforge.errors import TuneforgeError
from tuneforge.runs.directory import unfinished_folder


@dataclass(frozen=True)
class Job:
    """What a `train` call asks for, read once: the recipe (or a resumed run's), the folder its
    relative paths start from, and the unfinished run to continue."""

    recipe: Recipe
    recipe_dir: Path
    resume: Path | None = None  # the run's .<name>.incomplete folder

    @classmethod
    def read(cls, recipe, overrides: list[str] | None, resume: Path | None) -> Job:
        if resume is not None:
            folder = unfinished_folder(resume)
            status_file = folder / "status.json"
            status = json.loads(status_file.read_text()) if status_file.is_file() else {}
            return cls(
                load_recipe(folder / "recipe.yaml", overrides),
                Path(status.get("recipe_dir", ".")),
                folder,
            )
        if isinstance(recipe, Recipe):
            return cls(recipe, Path("."))
        if recipe is None:
            raise TuneforgeError("train: give a recipe file (or --resume RUN)")
        return cls(load_recipe(recipe, overrides), Path(recipe).parent)
